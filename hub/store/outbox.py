"""The durable delivery queue (transactional outbox).

Rows are written in the transaction of the write that causes them, so a
committed write always has its notifications queued and a rolled-back one
never does. Workers claim due rows atomically with a lease; a row whose worker
died comes back when the lease runs out (at-least-once delivery).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, delete, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from hub.store.db import affected, dialect_of
from hub.store.tables import OutboxRow

PENDING = "pending"
GAVE_UP = "gave-up"  # retries exhausted; kept for the operator


def _trigger(
    domain: str,
    resource_type: str,
    resource_id: str,
    version_id: int,
    source_device: str | None,
    request_id: str,
    trace_id: str,
    now: datetime,
) -> dict[str, Any]:
    """The columns every row shares: what changed, who caused it, and its trace; due now."""
    return {
        "domain": domain,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "version_id": version_id,
        "source_device": source_device,
        "request_id": request_id,
        "trace_id": trace_id,
        "next_attempt_at": now,
        "created_at": now,
    }


async def enqueue_webhook(
    session: AsyncSession,
    *,
    domain: str,
    subscription_id: str,
    resource_type: str,
    resource_id: str,
    version_id: int,
    source_device: str | None,
    request_id: str,
    trace_id: str,
    now: datetime,
) -> None:
    """Queue a notification, or fold it into one for the same resource not yet tried.

    A receiver reacts to a notification by searching, so two notifications for
    one resource that are both still waiting carry no more news than one: the
    waiting row takes the newer version and the newer trigger's trace ids.
    """
    # A create's id is new: no row of it can be waiting, so skip the UPDATE.
    if version_id > 1:
        coalesced = await session.execute(
            update(OutboxRow)
            .where(
                col(OutboxRow.subscription_id) == subscription_id,
                col(OutboxRow.resource_type) == resource_type,
                col(OutboxRow.resource_id) == resource_id,
                col(OutboxRow.state) == PENDING,
                col(OutboxRow.domain) == domain,
                col(OutboxRow.attempts) == 0,
                col(OutboxRow.lease_owner).is_(None),
            )
            .values(
                version_id=version_id,
                source_device=source_device,
                request_id=request_id,
                trace_id=trace_id,
            )
        )
        if affected(coalesced):
            return
    session.add(
        OutboxRow(
            channel="rest-hook",
            subscription_id=subscription_id,
            **_trigger(
                domain,
                resource_type,
                resource_id,
                version_id,
                source_device,
                request_id,
                trace_id,
                now,
            ),
        )
    )


def email_row(
    *,
    domain: str,
    resource_type: str,
    resource_id: str,
    version_id: int,
    source_device: str | None,
    request_id: str,
    trace_id: str,
    recipient: str,
    kind: str,
    now: datetime,
) -> OutboxRow:
    return OutboxRow(
        channel="email",
        recipient=recipient,
        kind=kind,
        **_trigger(
            domain, resource_type, resource_id, version_id, source_device, request_id, trace_id, now
        ),
    )


async def claim(
    session: AsyncSession,
    *,
    owner: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    skip_rows: Collection[int] = (),
    skip_subscriptions: Collection[str] = (),
) -> Sequence[OutboxRow]:
    """Lease up to `limit` due rows to `owner`; no two workers ever hold one row at once.

    `skip_rows` are rows `owner` is delivering already: their lease may have run out
    while they waited for their endpoint, and `owner` must not take them twice.
    `skip_subscriptions` are those whose endpoint is busy: more of their rows would
    only wait.
    """
    due = (
        select(col(OutboxRow.pk))
        .where(
            col(OutboxRow.state) == PENDING,
            col(OutboxRow.next_attempt_at) <= now,
            or_(col(OutboxRow.lease_until).is_(None), col(OutboxRow.lease_until) < now),
            *_not_skipped(skip_rows, skip_subscriptions),
        )
        .order_by(col(OutboxRow.next_attempt_at))
        .limit(limit)
    )
    if dialect_of(session) == "postgresql":
        # Concurrent claimers skip each other's candidate rows instead of queueing on them.
        due = due.with_for_update(skip_locked=True)
    statement = (
        update(OutboxRow)
        .where(col(OutboxRow.pk).in_(due.scalar_subquery()))
        .values(lease_owner=owner, lease_until=now + lease)
        .returning(OutboxRow)
    )
    result = await session.execute(statement.execution_options(synchronize_session=False))
    return result.scalars().all()


def _not_skipped(
    skip_rows: Collection[int], skip_subscriptions: Collection[str]
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if skip_rows:
        conditions.append(col(OutboxRow.pk).not_in(skip_rows))
    if skip_subscriptions:
        conditions.append(
            or_(
                col(OutboxRow.subscription_id).is_(None),
                col(OutboxRow.subscription_id).not_in(skip_subscriptions),
            )
        )
    return conditions


async def complete(session: AsyncSession, row: OutboxRow, *, owner: str) -> bool:
    """Remove a delivered row; False if the lease was lost (another worker took it over)."""
    result = await session.execute(
        delete(OutboxRow).where(col(OutboxRow.pk) == row.pk, col(OutboxRow.lease_owner) == owner)
    )
    return bool(affected(result))


async def reschedule(
    session: AsyncSession,
    row: OutboxRow,
    *,
    owner: str,
    next_attempt_at: datetime | None,
    error: str,
    now: datetime,
) -> bool:
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
    result = await session.execute(
        update(OutboxRow)
        .where(col(OutboxRow.pk) == row.pk, col(OutboxRow.lease_owner) == owner)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(affected(result))


async def drop(session: AsyncSession, row: OutboxRow, *, owner: str) -> None:
    """Discard a row that must not be sent (subscription gone or off, permission lost)."""
    await session.execute(
        delete(OutboxRow).where(col(OutboxRow.pk) == row.pk, col(OutboxRow.lease_owner) == owner)
    )


CHANNEL = "hub_outbox"


async def announce(session: AsyncSession) -> None:
    """Wake the dispatchers of every process when this transaction commits (PostgreSQL).

    NOTIFY is transactional: it is delivered at commit and dropped on rollback, so
    no dispatcher looks for rows that do not exist yet. SQLite has one process
    per database in practice; the in-process wake-up covers it.
    """
    if dialect_of(session) == "postgresql":
        await session.execute(text(f"NOTIFY {CHANNEL}"))


async def next_due(
    session: AsyncSession,
    *,
    skip_rows: Collection[int] = (),
    skip_subscriptions: Collection[str] = (),
) -> datetime | None:
    """When the earliest pending row can next be claimed (the dispatcher sleeps until then).

    A leased row becomes claimable when its lease runs out, not before. The rows
    `claim` is told to skip do not count: waking for them would claim nothing.
    """
    claimable_at = case(
        (col(OutboxRow.lease_until) > col(OutboxRow.next_attempt_at), col(OutboxRow.lease_until)),
        else_=col(OutboxRow.next_attempt_at),
    )
    statement = select(func.min(claimable_at)).where(
        col(OutboxRow.state) == PENDING, *_not_skipped(skip_rows, skip_subscriptions)
    )
    due: datetime | None = (await session.execute(statement)).scalar_one_or_none()
    return due


async def renew(session: AsyncSession, row: OutboxRow, *, owner: str, until: datetime) -> bool:
    """Extend `owner`'s lease on `row`; False when the lease was lost meanwhile."""
    result = await session.execute(
        update(OutboxRow)
        .where(col(OutboxRow.pk) == row.pk, col(OutboxRow.lease_owner) == owner)
        .values(lease_until=until)
        .execution_options(synchronize_session=False)
    )
    if affected(result):
        row.lease_until = until
    return bool(affected(result))
