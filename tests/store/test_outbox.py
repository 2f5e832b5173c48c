"""The outbox on both backends: coalescing, atomic claims with leases, completion, retries."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from sqlalchemy import select

from hub.store import outbox
from hub.store.db import Database
from hub.store.tables import OutboxRow

NOW = datetime(2026, 11, 22, 12, 0, 0)
LEASE = timedelta(seconds=60)


async def _enqueue(
    database: Database, resource_id: str, *, request_id: str = "r1", at: datetime = NOW
) -> None:
    async with database.write() as session:
        await outbox.enqueue_webhook(
            session,
            domain="d",
            subscription_id="sub",
            resource_type="Task",
            resource_id=resource_id,
            version_id=int(request_id.removeprefix("r")),
            source_device="xis",
            request_id=request_id,
            trace_id=f"trace-{request_id}",
            now=at,
        )


async def _rows(database: Database) -> list[OutboxRow]:
    async with database.read() as session:
        return list((await session.execute(select(OutboxRow).order_by(OutboxRow.pk))).scalars())  # type: ignore[arg-type]


async def test_waiting_notifications_for_one_resource_coalesce(database: Database) -> None:
    await _enqueue(database, "t1", request_id="r1")
    await _enqueue(database, "t1", request_id="r2")
    await _enqueue(database, "t2", request_id="r3")
    rows = await _rows(database)
    assert [(r.resource_id, r.version_id, r.request_id, r.trace_id) for r in rows] == [
        ("t1", 2, "r2", "trace-r2"),
        ("t2", 3, "r3", "trace-r3"),
    ]


async def test_a_claimed_row_is_not_coalesced_into(database: Database) -> None:
    await _enqueue(database, "t1", request_id="r1")
    async with database.write() as session:
        [claimed] = await outbox.claim(session, owner="a", now=NOW, lease=LEASE, limit=10)
    await _enqueue(database, "t1", request_id="r2")
    rows = await _rows(database)
    assert [(r.pk == claimed.pk, r.request_id) for r in rows] == [(True, "r1"), (False, "r2")]


async def test_claims_never_overlap_and_leases_expire(database: Database) -> None:
    for index in range(10):
        await _enqueue(database, f"t{index}", request_id=f"r{index + 1}")

    async def claim(owner: str) -> list[int]:
        async with database.write() as session:
            rows = await outbox.claim(session, owner=owner, now=NOW, lease=LEASE, limit=4)
        return [row.pk for row in rows if row.pk is not None]

    first, second, third = await asyncio.gather(claim("a"), claim("b"), claim("c"))
    claimed = first + second + third
    assert len(claimed) == len(set(claimed)) == 10
    assert await claim("d") == []  # everything is leased

    async with database.write() as session:
        retaken = await outbox.claim(
            session, owner="e", now=NOW + LEASE + timedelta(seconds=1), lease=LEASE, limit=20
        )
    assert sorted(row.pk or 0 for row in retaken) == sorted(
        claimed
    )  # a dead worker's rows come back


async def test_complete_and_reschedule_need_the_lease(database: Database) -> None:
    await _enqueue(database, "t1", request_id="r1")
    await _enqueue(database, "t2", request_id="r2")
    async with database.write() as session:
        first, second = await outbox.claim(session, owner="a", now=NOW, lease=LEASE, limit=10)
    async with database.write() as session:
        assert not await outbox.complete(session, first, owner="b")  # not b's lease
        assert await outbox.complete(session, first, owner="a")
        assert await outbox.reschedule(
            session,
            second,
            owner="a",
            next_attempt_at=NOW + timedelta(seconds=30),
            error="HTTP 503",
            now=NOW,
        )
    [row] = await _rows(database)
    assert (row.resource_id, row.attempts, row.last_error, row.lease_owner) == (
        "t2",
        1,
        "HTTP 503",
        None,
    )
    assert row.first_attempt_at == NOW
    async with database.read() as session:
        assert await outbox.next_due(session) == NOW + timedelta(seconds=30)
    async with database.write() as session:
        assert (
            await outbox.claim(
                session, owner="a", now=NOW + timedelta(seconds=29), lease=LEASE, limit=5
            )
            == []
        )
        [again] = await outbox.claim(
            session, owner="a", now=NOW + timedelta(seconds=30), lease=LEASE, limit=5
        )
        assert await outbox.reschedule(
            session, again, owner="a", next_attempt_at=None, error="gone", now=NOW
        )
    [row] = await _rows(database)
    assert row.state == outbox.GAVE_UP
    async with database.read() as session:
        assert await outbox.next_due(session) is None


async def test_next_due_waits_for_a_running_lease(database: Database) -> None:
    await _enqueue(database, "t1", request_id="r1")
    async with database.write() as session:
        await outbox.claim(session, owner="a", now=NOW, lease=LEASE, limit=1)
    async with database.read() as session:
        assert await outbox.next_due(session) == NOW + LEASE


async def test_renew_extends_only_a_held_lease(database: Database) -> None:
    await _enqueue(database, "t1", request_id="r1")
    async with database.write() as session:
        [row] = await outbox.claim(session, owner="a", now=NOW, lease=LEASE, limit=1)
    async with database.write() as session:
        assert await outbox.renew(session, row, owner="a", until=NOW + 2 * LEASE)
        assert not await outbox.renew(session, row, owner="b", until=NOW + 3 * LEASE)
    [stored] = await _rows(database)
    assert stored.lease_until == NOW + 2 * LEASE
