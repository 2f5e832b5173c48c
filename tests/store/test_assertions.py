"""Used client-assertion jtis: first use wins, replays lose, on both backends and at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import text

from hub.store.assertions import purge_expired, remember_jti
from hub.store.db import Database

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


async def remember(database: Database, domain: str, client_id: str, jti: str) -> bool:
    async with database.write() as session:
        return await remember_jti(session, domain, client_id, jti, LATER)


async def count(database: Database) -> int:
    async with database.read() as session:
        row = (await session.execute(text("SELECT count(*) FROM used_assertions"))).one()
    return int(row[0])


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
    async with database.write() as session:
        assert await remember_jti(session, "demo", "epd", "j1", LATER) is True
        assert await remember_jti(session, "demo", "epd", "j1", LATER) is False
        # The same transaction goes on working and commits.
        assert await remember_jti(session, "demo", "epd", "j2", LATER) is True
    assert await count(database) == 2


async def test_concurrent_uses_of_one_jti_let_exactly_one_through(database: Database) -> None:
    results = await asyncio.gather(*(remember(database, "demo", "epd", "same") for _ in range(8)))
    assert sorted(results) == [False] * 7 + [True]


async def test_purge_forgets_only_expired_assertions(database: Database) -> None:
    async with database.write() as session:
        await remember_jti(session, "demo", "epd", "old", NOW - timedelta(seconds=1))
        await remember_jti(session, "demo", "epd", "edge", NOW)
        await remember_jti(session, "demo", "epd", "new", NOW + timedelta(seconds=1))
    async with database.write() as session:
        assert await purge_expired(session, NOW) == 1
    assert await count(database) == 2
    # A purged jti belonged to an expired assertion, which verification refuses anyway.
    assert await remember(database, "demo", "epd", "old") is True
    assert await remember(database, "demo", "epd", "new") is False


async def test_times_are_compared_in_utc(database: Database) -> None:
    plus_two = timezone(timedelta(hours=2))
    async with database.write() as session:
        # 13:00+02:00 is 11:00 UTC: expired at NOW (12:00 UTC).
        await remember_jti(
            session, "demo", "epd", "j", NOW.astimezone(plus_two) - timedelta(hours=1)
        )
    async with database.write() as session:
        assert await purge_expired(session, NOW.astimezone(plus_two)) == 1
