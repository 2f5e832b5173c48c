"""The durable delivery queue (transactional outbox).

Rows are written in the unit of work of the write that causes them, so a
committed write always has its notifications queued and a rolled-back one
never does. Workers claim due rows atomically with a lease; a row whose worker
died comes back when the lease runs out (at-least-once delivery).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Table,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)

from hub.store.sql import Prepared, Work, dialect, execute, execute_many
from hub.store.tables import OutboxRow

OUTBOX: Table = OutboxRow.__table__  # type: ignore[attr-defined]

PENDING = "pending"
GAVE_UP = "gave-up"  # retries exhausted; kept for the operator
CHANNEL = "hub_outbox"  # the PostgreSQL NOTIFY channel that wakes dispatchers


class Entry(NamedTuple):
    """A row of the outbox, in column order."""

    pk: int
    domain: str
    channel: str
    subscription_id: str | None
    resource_type: str
    resource_id: str
    version_id: int
    source_device: str | None
    request_id: str
    trace_id: str
    recipient: str | None
    kind: str | None
    state: str
    attempts: int
    next_attempt_at: datetime
    first_attempt_at: datetime | None
    lease_owner: str | None
    lease_until: datetime | None
    last_error: str | None
    created_at: datetime
    origin: str | None
    """The resource's resource-origin Device, for the subscriber's right to read it."""


@dataclass(frozen=True)
class Trigger:
    """What every row of one write shares: what changed, whose it is, who caused it, its trace.

    Due `now`.
    """

    domain: str
    resource_type: str
    resource_id: str
    version_id: int
    origin: str | None
    source_device: str | None
    request_id: str
    trace_id: str
    now: datetime

    def values(self) -> tuple[Any, ...]:
        """The shared columns, in `_COLUMNS` order (due now, created now)."""
        return (
            self.domain, self.resource_type, self.resource_id, self.version_id, self.origin,
            self.source_device, self.request_id, self.trace_id, self.now, self.now,
        )  # fmt: skip


_COLUMNS = (
    "domain", "resource_type", "resource_id", "version_id", "origin", "source_device",
    "request_id", "trace_id", "next_attempt_at", "created_at", "channel", "subscription_id",
    "recipient", "kind", "state", "attempts",
)  # fmt: skip
_INSERT = Prepared(insert(OUTBOX), column_keys=_COLUMNS)
# A receiver reacts to a notification by searching, so two notifications for one
# resource that are both still waiting carry no more news than one: the waiting
# row takes the newer version and the newer trigger's trace ids.
_COALESCE = Prepared(
    update(OUTBOX)
    .where(
        OUTBOX.c.subscription_id == bindparam("subscription"),
        OUTBOX.c.resource_type == bindparam("rtype"),
        OUTBOX.c.resource_id == bindparam("rid"),
        OUTBOX.c.state == PENDING,
        OUTBOX.c.domain == bindparam("dom"),
        OUTBOX.c.attempts == 0,
        OUTBOX.c.lease_owner.is_(None),
    )
    .values(
        version_id=bindparam("new_version"),
        origin=bindparam("new_origin"),
        source_device=bindparam("new_source"),
        request_id=bindparam("new_request"),
        trace_id=bindparam("new_trace"),
    )
)
_OWNED = (OUTBOX.c.pk == bindparam("row_pk"), OUTBOX.c.lease_owner == bindparam("owner"))
_COMPLETE = Prepared(delete(OUTBOX).where(*_OWNED))
_RENEW = Prepared(update(OUTBOX).where(*_OWNED).values(lease_until=bindparam("until")))


def _row(
    trigger: Trigger,
    channel: str,
    *,
    subscription_id: str | None = None,
    recipient: str | None = None,
    kind: str | None = None,
) -> tuple[Any, ...]:
    """A new row's values in `_COLUMNS` order: due now, not yet tried."""
    return (
        *trigger.values(),
        channel, subscription_id, recipient, kind, PENDING, 0,
    )  # fmt: skip


def enqueue_webhooks(trigger: Trigger, subscription_ids: Sequence[str]) -> Work[int]:
    """Queue a notification per Subscription (one statement), folding into waiting ones.

    A version 1 is new: no row of it can be waiting, so no coalescing is tried.
    """
    fresh = list(subscription_ids)
    if trigger.version_id > 1:
        fresh = []
        for subscription_id in subscription_ids:
            coalesced = yield from execute(
                _COALESCE,
                {
                    "subscription": subscription_id,
                    "rtype": trigger.resource_type,
                    "rid": trigger.resource_id,
                    "dom": trigger.domain,
                    "new_version": trigger.version_id,
                    "new_origin": trigger.origin,
                    "new_source": trigger.source_device,
                    "new_request": trigger.request_id,
                    "new_trace": trigger.trace_id,
                },
            )
            if not coalesced.rowcount:
                fresh.append(subscription_id)
    yield from execute_many(
        _INSERT, [_row(trigger, "rest-hook", subscription_id=sid) for sid in fresh]
    )
    return len(subscription_ids)


def enqueue_email(trigger: Trigger, *, recipient: str, kind: str) -> Work[None]:
    """Queue a patient e-mail (a notice or an invitation)."""
    yield from execute_many(_INSERT, [_row(trigger, "email", recipient=recipient, kind=kind)])


def announce() -> Work[None]:
    """Wake the dispatchers of every process when this transaction commits (PostgreSQL).

    NOTIFY is transactional: it is delivered at commit and dropped on rollback, so
    no dispatcher looks for rows that do not exist yet. On SQLite the in-process
    wake-up covers it.
    """
    if (yield from dialect()) == "postgresql":
        yield from execute(text(f"NOTIFY {CHANNEL}"))


def _not_skipped(
    skip_rows: Collection[int], skip_subscriptions: Collection[str]
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if skip_rows:
        conditions.append(OUTBOX.c.pk.not_in(sorted(skip_rows)))
    if skip_subscriptions:
        conditions.append(
            or_(
                OUTBOX.c.subscription_id.is_(None),
                OUTBOX.c.subscription_id.not_in(sorted(skip_subscriptions)),
            )
        )
    return conditions


def claim(
    *,
    owner: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    skip_rows: Collection[int] = (),
    skip_subscriptions: Collection[str] = (),
) -> Work[list[Entry]]:
    """Lease up to `limit` due rows to `owner`; no two workers ever hold one row at once.

    `skip_rows` are rows `owner` is delivering already: their lease may have run out
    while they waited for their endpoint, and `owner` must not take them twice.
    `skip_subscriptions` are those whose endpoint is busy: more of their rows would
    only wait.
    """
    due = (
        select(OUTBOX.c.pk)
        .where(
            OUTBOX.c.state == PENDING,
            OUTBOX.c.next_attempt_at <= now,
            or_(OUTBOX.c.lease_until.is_(None), OUTBOX.c.lease_until < now),
            *_not_skipped(skip_rows, skip_subscriptions),
        )
        .order_by(OUTBOX.c.next_attempt_at)
        .limit(limit)
    )
    if (yield from dialect()) == "postgresql":
        # Concurrent claimers skip each other's candidate rows instead of queueing on them.
        due = due.with_for_update(skip_locked=True)
    claimed = yield from execute(
        update(OUTBOX)
        .where(OUTBOX.c.pk.in_(due.scalar_subquery()))
        .values(lease_owner=owner, lease_until=now + lease)
        .returning(*OUTBOX.c)
    )
    return sorted((Entry(*row) for row in claimed.rows), key=lambda e: (e.next_attempt_at, e.pk))


def complete(row: Entry, *, owner: str) -> Work[bool]:
    """Remove a delivered row; False if the lease was lost (another worker took it over)."""
    done = yield from execute(_COMPLETE, {"row_pk": row.pk, "owner": owner})
    return done.rowcount == 1


def drop(row: Entry, *, owner: str) -> Work[bool]:
    """Discard a row that must not be sent (subscription gone or off, permission lost)."""
    return (yield from complete(row, owner=owner))


def complete_all(pks: Collection[int], *, owner: str) -> Work[set[int]]:
    """Remove delivered (or dropped) rows in one statement; the pks `owner` still held.

    A row whose lease was lost meanwhile stays: its new holder delivers it.
    """
    if not pks:
        return set()
    done = yield from execute(
        delete(OUTBOX)
        .where(OUTBOX.c.pk.in_(sorted(pks)), OUTBOX.c.lease_owner == owner)
        .returning(OUTBOX.c.pk)
    )
    return {int(pk) for (pk,) in done.rows}


def reschedule(
    row: Entry,
    *,
    owner: str,
    next_attempt_at: datetime | None,
    error: str,
    now: datetime,
) -> Work[bool]:
    """Record a failed attempt: retry at `next_attempt_at`, or give up when it is None."""
    values: dict[str, object] = {
        "attempts": row.attempts + 1,
        "last_error": error,
        "lease_owner": None,
        "lease_until": None,
        "first_attempt_at": row.first_attempt_at or now,
    }
    if next_attempt_at is None:
        values["state"] = GAVE_UP
    else:
        values["next_attempt_at"] = next_attempt_at
    changed = yield from execute(
        update(OUTBOX).where(OUTBOX.c.pk == row.pk, OUTBOX.c.lease_owner == owner).values(**values)
    )
    return changed.rowcount == 1


def renew(row: Entry, *, owner: str, until: datetime) -> Work[bool]:
    """Extend `owner`'s lease on `row`; False when the lease was lost meanwhile."""
    renewed = yield from execute(_RENEW, {"row_pk": row.pk, "owner": owner, "until": until})
    return renewed.rowcount == 1


def next_due(
    *, skip_rows: Collection[int] = (), skip_subscriptions: Collection[str] = ()
) -> Work[datetime | None]:
    """When the earliest pending row can next be claimed (the dispatcher sleeps until then).

    A leased row becomes claimable when its lease runs out, not before. The rows
    `claim` is told to skip do not count: waking for them would claim nothing.
    """
    claimable_at = case(
        (OUTBOX.c.lease_until > OUTBOX.c.next_attempt_at, OUTBOX.c.lease_until),
        else_=OUTBOX.c.next_attempt_at,
    )
    found = yield from execute(
        select(func.min(claimable_at).label("due")).where(
            OUTBOX.c.state == PENDING, *_not_skipped(skip_rows, skip_subscriptions)
        )
    )
    due = found.scalar()
    if isinstance(due, str):  # SQLite: MIN over a CASE has no declared type
        return datetime.fromisoformat(due)
    return due if isinstance(due, datetime) else None


def entries(*, state: str | None = None) -> Work[list[Entry]]:
    """Every row (of one state), oldest first: for operators, tests and the benchmark."""
    statement = select(*OUTBOX.c).order_by(OUTBOX.c.pk)
    if state is not None:
        statement = statement.where(OUTBOX.c.state == state)
    found = yield from execute(statement)
    return [Entry(*row) for row in found.rows]


def pending_count() -> Work[int]:
    found = yield from execute(select(func.count()).where(OUTBOX.c.state == PENDING))
    return int(found.scalar() or 0)
