"""The delivery queue as an operator sees it, on both backends: figures and "due now".

Rows are made and moved by the outbox's own functions (queue, claim, reschedule), as
the hub does; only what `hub.store.delivery_state` reports and changes is checked.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from hub.store import outbox
from hub.store.db import Database
from hub.store.delivery_state import Queue, make_due, queue_of, queues, rows
from hub.store.outbox import Entry, Trigger

NOW = datetime(2026, 11, 22, 12, 0, 0)
LEASE = timedelta(seconds=60)


def _trigger(domain: str, resource_id: str, at: datetime) -> Trigger:
    return Trigger(domain, "Task", resource_id, 1, "xis", "xis", f"r-{resource_id}", "t", at)


async def _queue(
    database: Database, domain: str, resource_id: str, subscription: str, at: datetime
) -> None:
    await database.write(outbox.enqueue_webhooks(_trigger(domain, resource_id, at), [subscription]))


async def _by_resource(database: Database) -> dict[str, Entry]:
    return {row.resource_id: row for row in await database.read(outbox.entries())}


async def _scene(database: Database) -> None:
    """s1 in domain d: one failed (retry in an hour), one given up, one in flight.

    s2 in d: one failed (retry in ten minutes). s1 in domain e: one waiting a day.
    """
    for n, (domain, resource_id, subscription) in enumerate(
        [
            ("d", "failed", "s1"),
            ("d", "given-up", "s1"),
            ("d", "in-flight", "s1"),
            ("d", "other-subscription", "s2"),
            ("e", "other-domain", "s1"),
        ]
    ):
        await _queue(database, domain, resource_id, subscription, NOW + timedelta(seconds=n))
    claimed = await database.write(
        outbox.claim(owner="w", now=NOW + timedelta(seconds=10), lease=LEASE, limit=10)
    )
    later = {
        "failed": NOW + timedelta(hours=1),
        "given-up": None,
        "other-subscription": NOW + timedelta(minutes=10),
        "other-domain": NOW + timedelta(days=1),
    }
    for row in claimed:
        if row.resource_id in later:
            await database.write(
                outbox.reschedule(
                    row,
                    owner="w",
                    next_attempt_at=later[row.resource_id],
                    error="HTTP 503",
                    now=NOW,
                )
            )


async def test_the_queue_of_a_subscription_counts_each_state(database: Database) -> None:
    await _scene(database)
    during_lease = NOW + timedelta(seconds=20)
    queue = await database.read(queue_of("d", "s1", now=during_lease))
    assert queue == Queue(
        domain="d",
        channel="rest-hook",
        subscription_id="s1",
        pending=2,
        in_flight=1,
        gave_up=1,
        oldest_pending=NOW,  # "failed", queued first
        next_attempt=NOW + timedelta(seconds=2),  # "in-flight": due since it was queued
    )
    # Once the lease has run out, the row is no longer held by anyone.
    assert (await database.read(queue_of("d", "s1", now=NOW + LEASE * 2))).in_flight == 0
    nothing = await database.read(queue_of("d", "no-such", now=during_lease))
    assert (nothing.pending, nothing.gave_up, nothing.next_attempt) == (0, 0, None)


async def test_queues_are_listed_per_domain_and_subscription(database: Database) -> None:
    await _scene(database)
    await database.write(
        outbox.enqueue_email(_trigger("d", "mail", NOW), recipient="p@example.org", kind="notice")
    )
    listed = await database.read(queues(now=NOW))
    assert [(q.domain, q.channel, q.subscription_id, q.pending) for q in listed] == [
        ("d", "email", None, 1),
        ("d", "rest-hook", "s1", 2),
        ("d", "rest-hook", "s2", 1),
        ("e", "rest-hook", "s1", 1),
    ]
    assert [q.domain for q in await database.read(queues(domain="e", now=NOW))] == ["e"]
    only = await database.read(queues(domain="d", subscription_id="s2", now=NOW))
    assert [(q.subscription_id, q.next_attempt) for q in only] == [
        ("s2", NOW + timedelta(minutes=10))
    ]
    listed_rows = await database.read(rows("d", "s1"))
    # Pending first, the next to be tried first; then the given-up one.
    assert [r.resource_id for r in listed_rows] == ["in-flight", "failed", "given-up"]


async def test_make_due_moves_only_waiting_rows_of_that_subscription(database: Database) -> None:
    await _scene(database)
    now = NOW + timedelta(seconds=20)  # the in-flight row is still leased
    assert await database.write(make_due("d", "s1", now=now)) == 1
    after = await _by_resource(database)
    assert after["failed"].next_attempt_at == now
    assert after["failed"].attempts == 1  # the retry schedule goes on from where it was
    assert after["given-up"].state == outbox.GAVE_UP  # given up stays given up
    assert after["in-flight"].lease_owner == "w"  # being sent: left alone
    assert after["other-subscription"].next_attempt_at == NOW + timedelta(minutes=10)
    assert after["other-domain"].next_attempt_at == NOW + timedelta(days=1)
    # Already due: nothing to bring forward.
    assert await database.write(make_due("d", "s1", now=now)) == 0
    # The whole domain: the other Subscription's row too, never another domain's.
    assert await database.write(make_due("d", None, now=now)) == 1
    after = await _by_resource(database)
    assert after["other-subscription"].next_attempt_at == now
    assert after["other-domain"].next_attempt_at == NOW + timedelta(days=1)
    # A claim now takes the rows made due.
    claimed = await database.write(outbox.claim(owner="v", now=now, lease=LEASE, limit=10))
    assert {row.resource_id for row in claimed} == {"failed", "other-subscription"}
