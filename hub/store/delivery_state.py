"""The delivery queue as an operator sees it: what waits, since when, until when; "try now".

Read by `Subscription/$status`, the delivery console and `hub deliveries list`; changed
by `Subscription/$resend` and `hub deliveries retry` (`hub.interactions.subscription_state`).
The figures come from the outbox rows themselves (`hub.store.outbox`), so every process
on one database sees the same ones.

Making rows due now only moves `next_attempt_at` of rows that wait for a later attempt:
a row in flight (leased, its lease still running) is being tried already, and one that
gave up stays given up (README "Delivery state, resend and the console"). The retry
schedule is not reset: a row that fails again waits as long as its attempts call for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, or_, select, update

from hub.store.outbox import GAVE_UP, OUTBOX, PENDING, Entry
from hub.store.sql import Work, execute

# The most rows `rows` lists for one Subscription: an operator's screenful.
MAX_LISTED_ROWS = 200


@dataclass(frozen=True)
class Queue:
    """The outbox rows of one Subscription (or of a domain's e-mails: `subscription_id` None)."""

    domain: str
    channel: str
    subscription_id: str | None
    pending: int = 0
    in_flight: int = 0
    """Of the pending rows, those a dispatcher holds right now (being sent, or waiting
    for a free place of their endpoint)."""
    gave_up: int = 0
    oldest_pending: datetime | None = None
    """When the oldest pending row was queued."""
    next_attempt: datetime | None = None
    """The earliest `next_attempt_at` of the pending rows (in the past: due now)."""


def _moment(value: Any) -> datetime | None:
    """A datetime read through an aggregate (SQLite may hand one back as text)."""
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    return value if isinstance(value, datetime) else None


def _in_flight(now: datetime) -> ColumnElement[int]:
    return case((OUTBOX.c.lease_until > now, 1), else_=0)


def _queues(conditions: Sequence[ColumnElement[bool]], now: datetime) -> Work[list[Queue]]:
    found = yield from execute(
        select(
            OUTBOX.c.domain,
            OUTBOX.c.channel,
            OUTBOX.c.subscription_id,
            OUTBOX.c.state,
            func.count().label("rows"),
            func.sum(_in_flight(now)).label("in_flight"),
            func.min(OUTBOX.c.created_at).label("oldest"),
            func.min(OUTBOX.c.next_attempt_at).label("next"),
        )
        .where(OUTBOX.c.state.in_((PENDING, GAVE_UP)), *conditions)
        .group_by(OUTBOX.c.domain, OUTBOX.c.channel, OUTBOX.c.subscription_id, OUTBOX.c.state)
    )
    queues: dict[tuple[str, str, str | None], Queue] = {}
    for domain, channel, subscription_id, state, rows, in_flight, oldest, next_ in found.rows:
        key = (str(domain), str(channel), subscription_id)
        queue = queues.get(key) or Queue(*key)
        if state == PENDING:
            queue = Queue(
                *key,
                pending=int(rows),
                in_flight=int(in_flight or 0),
                gave_up=queue.gave_up,
                oldest_pending=_moment(oldest),
                next_attempt=_moment(next_),
            )
        else:
            queue = Queue(
                *key,
                pending=queue.pending,
                in_flight=queue.in_flight,
                gave_up=int(rows),
                oldest_pending=queue.oldest_pending,
                next_attempt=queue.next_attempt,
            )
        queues[key] = queue
    return sorted(queues.values(), key=lambda q: (q.domain, q.channel, q.subscription_id or ""))


def queue_of(domain: str, subscription_id: str, *, now: datetime) -> Work[Queue]:
    """The queue of one Subscription's notifications (empty when nothing waits)."""
    found = yield from _queues(
        [OUTBOX.c.domain == domain, OUTBOX.c.subscription_id == subscription_id], now
    )
    return found[0] if found else Queue(domain, "rest-hook", subscription_id)


def queues(
    *, domain: str | None = None, subscription_id: str | None = None, now: datetime
) -> Work[list[Queue]]:
    """Every queue with a pending or given-up row, per domain, channel and Subscription."""
    conditions = []
    if domain is not None:
        conditions.append(OUTBOX.c.domain == domain)
    if subscription_id is not None:
        conditions.append(OUTBOX.c.subscription_id == subscription_id)
    return (yield from _queues(conditions, now))


def rows(domain: str, subscription_id: str, *, limit: int = MAX_LISTED_ROWS) -> Work[list[Entry]]:
    """A Subscription's pending and given-up rows, the next to be tried first."""
    found = yield from execute(
        select(*OUTBOX.c)
        .where(
            OUTBOX.c.domain == domain,
            OUTBOX.c.subscription_id == subscription_id,
            OUTBOX.c.state.in_((PENDING, GAVE_UP)),
        )
        .order_by(OUTBOX.c.state.desc(), OUTBOX.c.next_attempt_at, OUTBOX.c.pk)
        .limit(limit)
    )
    return [Entry(*row) for row in found.rows]


def make_due(domain: str, subscription_id: str | None, *, now: datetime) -> Work[int]:
    """Bring the pending rows of a Subscription (None: of the whole domain) forward to `now`.

    Only rows waiting for a later attempt and not held by a dispatcher are changed;
    answers how many were.
    """
    conditions = [
        OUTBOX.c.domain == domain,
        OUTBOX.c.state == PENDING,
        OUTBOX.c.next_attempt_at > now,
        or_(OUTBOX.c.lease_until.is_(None), OUTBOX.c.lease_until < now),
    ]
    if subscription_id is not None:
        conditions.append(OUTBOX.c.subscription_id == subscription_id)
    changed = yield from execute(update(OUTBOX).where(*conditions).values(next_attempt_at=now))
    return changed.rowcount
