"""The outbox on both backends: coalescing, atomic claims with leases, completion, retries."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

from hub.store import outbox
from hub.store.db import Database
from hub.store.outbox import Entry, Trigger
from hub.store.sql import Work

NOW = datetime(2026, 11, 22, 12, 0, 0)
LEASE = timedelta(seconds=60)


def _trigger(resource_id: str, request_id: str, at: datetime = NOW) -> Trigger:
    return Trigger(
        domain="d",
        resource_type="Task",
        resource_id=resource_id,
        version_id=int(request_id.removeprefix("r")),
        origin="xis",
        source_device="xis",
        request_id=request_id,
        trace_id=f"trace-{request_id}",
        now=at,
    )


async def _enqueue(
    database: Database, resource_id: str, *, request_id: str = "r1", at: datetime = NOW
) -> None:
    await database.write(outbox.enqueue_webhooks(_trigger(resource_id, request_id, at), ["sub"]))


async def _rows(database: Database) -> list[Entry]:
    return await database.read(outbox.entries())


async def _claim(
    database: Database, owner: str, *, now: datetime = NOW, limit: int = 10
) -> list[Entry]:
    return await database.write(outbox.claim(owner=owner, now=now, lease=LEASE, limit=limit))


async def test_waiting_notifications_for_one_resource_coalesce(database: Database) -> None:
    await _enqueue(database, "t1", request_id="r1")
    await _enqueue(database, "t1", request_id="r2")
    await _enqueue(database, "t2", request_id="r3")
    rows = await _rows(database)
    assert [(r.resource_id, r.version_id, r.request_id, r.trace_id) for r in rows] == [
        ("t1", 2, "r2", "trace-r2"),
        ("t2", 3, "r3", "trace-r3"),
    ]


async def test_one_trigger_queues_a_row_per_subscription(database: Database) -> None:
    queued = await database.write(outbox.enqueue_webhooks(_trigger("t1", "r1"), ["a", "b"]))
    assert queued == 2
    rows = await _rows(database)
    assert [(r.subscription_id, r.channel, r.state, r.attempts) for r in rows] == [
        ("a", "rest-hook", outbox.PENDING, 0),
        ("b", "rest-hook", outbox.PENDING, 0),
    ]
    assert {(r.next_attempt_at, r.created_at) for r in rows} == {(NOW, NOW)}


async def test_a_claimed_row_is_not_coalesced_into(database: Database) -> None:
    await _enqueue(database, "t1", request_id="r1")
    [claimed] = await _claim(database, "a")
    await _enqueue(database, "t1", request_id="r2")
    rows = await _rows(database)
    assert [(r.pk == claimed.pk, r.request_id) for r in rows] == [(True, "r1"), (False, "r2")]


async def test_claims_never_overlap_and_leases_expire(database: Database) -> None:
    for index in range(10):
        await _enqueue(database, f"t{index}", request_id=f"r{index + 1}")

    async def claim(owner: str) -> list[int]:
        return [row.pk for row in await _claim(database, owner, limit=4)]

    first, second, third = await asyncio.gather(claim("a"), claim("b"), claim("c"))
    claimed = first + second + third
    assert len(claimed) == len(set(claimed)) == 10
    assert await claim("d") == []  # everything is leased

    retaken = await _claim(database, "e", now=NOW + LEASE + timedelta(seconds=1), limit=20)
    assert sorted(row.pk for row in retaken) == sorted(claimed)  # a dead worker's rows come back


async def test_claims_skip_the_rows_and_subscriptions_they_are_told_to(
    database: Database,
) -> None:
    await database.write(outbox.enqueue_webhooks(_trigger("t1", "r1"), ["a", "b", "c"]))
    first, second, third = await _rows(database)
    claimed = await database.write(
        outbox.claim(
            owner="w",
            now=NOW,
            lease=LEASE,
            limit=10,
            skip_rows={first.pk},
            skip_subscriptions={"b"},
        )
    )
    assert [row.pk for row in claimed] == [third.pk]
    assert await database.read(outbox.next_due(skip_rows={first.pk, third.pk})) == NOW
    assert await database.read(outbox.next_due(skip_rows={first.pk, second.pk})) == NOW + LEASE


async def test_complete_and_reschedule_need_the_lease(database: Database) -> None:
    await _enqueue(database, "t1", request_id="r1")
    await _enqueue(database, "t2", request_id="r2")
    first, second = await _claim(database, "a")
    assert not await database.write(outbox.complete(first, owner="b"))  # not b's lease
    assert await database.write(outbox.complete(first, owner="a"))
    assert await database.write(
        outbox.reschedule(
            second,
            owner="a",
            next_attempt_at=NOW + timedelta(seconds=30),
            error="HTTP 503",
            now=NOW,
        )
    )
    [row] = await _rows(database)
    assert (row.resource_id, row.attempts, row.last_error, row.lease_owner) == (
        "t2",
        1,
        "HTTP 503",
        None,
    )
    assert row.first_attempt_at == NOW
    assert await database.read(outbox.next_due()) == NOW + timedelta(seconds=30)
    assert await _claim(database, "a", now=NOW + timedelta(seconds=29), limit=5) == []
    [again] = await _claim(database, "a", now=NOW + timedelta(seconds=30), limit=5)
    assert await database.write(
        outbox.reschedule(again, owner="a", next_attempt_at=None, error="gone", now=NOW)
    )
    [row] = await _rows(database)
    assert row.state == outbox.GAVE_UP
    assert await database.read(outbox.next_due()) is None
    assert [r.pk for r in await database.read(outbox.entries(state=outbox.GAVE_UP))] == [row.pk]
    assert await database.read(outbox.pending_count()) == 0


async def test_a_dropped_row_is_gone_only_for_its_lease_holder(database: Database) -> None:
    await _enqueue(database, "t1", request_id="r1")
    [row] = await _claim(database, "a")
    assert not await database.write(outbox.drop(row, owner="b"))
    assert await database.write(outbox.drop(row, owner="a"))
    assert await _rows(database) == []


async def test_next_due_waits_for_a_running_lease(database: Database) -> None:
    await _enqueue(database, "t1", request_id="r1")
    await _claim(database, "a", limit=1)
    assert await database.read(outbox.next_due()) == NOW + LEASE


async def test_renew_extends_only_a_held_lease(database: Database) -> None:
    await _enqueue(database, "t1", request_id="r1")
    [row] = await _claim(database, "a", limit=1)
    assert await database.write(outbox.renew(row, owner="a", until=NOW + 2 * LEASE))
    assert not await database.write(outbox.renew(row, owner="b", until=NOW + 3 * LEASE))
    [stored] = await _rows(database)
    assert stored.lease_until == NOW + 2 * LEASE


async def test_a_failing_unit_queues_nothing(database: Database) -> None:
    def enqueue_then_fail() -> Work[None]:
        yield from outbox.enqueue_webhooks(_trigger("t1", "r1"), ["sub"])
        raise RuntimeError("the write failed after queueing")

    with pytest.raises(RuntimeError, match="after queueing"):
        await database.write(enqueue_then_fail())
    assert await _rows(database) == []
