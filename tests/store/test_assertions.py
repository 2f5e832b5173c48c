"""Used client-assertion jtis: first use wins, replays lose, on both backends and at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import text

from hub.store.assertions import purge_expired, remember_jti
from hub.store.db import Database
from hub.store.sql import Work, execute

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


async def remember(database: Database, domain: str, client_id: str, jti: str) -> bool:
    return await database.write(remember_jti(domain, client_id, jti, LATER))


def _count() -> Work[int]:
    found = yield from execute(text("SELECT count(*) FROM used_assertions"))
    return int(found.scalar())


async def count(database: Database) -> int:
    return await database.read(_count())


async def test_the_first_use_wins_and_a_replay_loses(database: Database) -> None:
    assert await remember(database, "demo", "epd", "j1") is True
    assert await remember(database, "demo", "epd", "j1") is False
    assert await count(database) == 1


async def test_jtis_are_per_client_and_per_domain(database: Database) -> None:
    assert await remember(database, "demo", "epd", "j1") is True
    assert await remember(database, "demo", "module", "j1") is True
    assert await remember(database, "other", "epd", "j1") is True
    assert await count(database) == 3


async def test_a_replay_does_not_spoil_the_transaction(database: Database) -> None:
    def unit() -> Work[list[bool]]:
        first = yield from remember_jti("demo", "epd", "j1", LATER)
        replay = yield from remember_jti("demo", "epd", "j1", LATER)
        # The same unit goes on working and commits.
        other = yield from remember_jti("demo", "epd", "j2", LATER)
        return [first, replay, other]

    assert await database.write(unit()) == [True, False, True]
    assert await count(database) == 2


async def test_concurrent_uses_of_one_jti_let_exactly_one_through(database: Database) -> None:
    results = await asyncio.gather(*(remember(database, "demo", "epd", "same") for _ in range(8)))
    assert sorted(results) == [False] * 7 + [True]


async def test_purge_forgets_only_expired_assertions(database: Database) -> None:
    def unit() -> Work[None]:
        yield from remember_jti("demo", "epd", "old", NOW - timedelta(seconds=1))
        yield from remember_jti("demo", "epd", "edge", NOW)
        yield from remember_jti("demo", "epd", "new", NOW + timedelta(seconds=1))

    await database.write(unit())
    assert await database.write(purge_expired(NOW)) == 1
    assert await count(database) == 2
    # A purged jti belonged to an expired assertion, which verification refuses anyway.
    assert await remember(database, "demo", "epd", "old") is True
    assert await remember(database, "demo", "epd", "new") is False


async def test_times_are_compared_in_utc(database: Database) -> None:
    plus_two = timezone(timedelta(hours=2))
    # 13:00+02:00 is 11:00 UTC: expired at NOW (12:00 UTC).
    await database.write(
        remember_jti("demo", "epd", "j", NOW.astimezone(plus_two) - timedelta(hours=1))
    )
    assert await database.write(purge_expired(NOW.astimezone(plus_two))) == 1
