"""Delivery health: each Subscription's consecutive delivery failures (`delivery_health`).

Three failures in a row turn a Subscription's status to `error`, and a success
forgets the count (`hub.interactions.delivery`). The counter is changed in the unit
of work that records the attempt, so it always agrees with the outbox row and
the Subscription's status.

A Subscription's first failure creates its row race-free: `INSERT ... ON
CONFLICT DO NOTHING` (a concurrent creator makes the second one do nothing),
then `SELECT ... FOR UPDATE`, so two workers that fail at once count two
failures, not one (on SQLite the single writer thread serialises them).
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from hub.store.sql import Prepared, Work, dialect, execute
from hub.store.tables import DeliveryHealth

HEALTH: Table = DeliveryHealth.__table__  # type: ignore[attr-defined]

_COLUMNS = ("domain", "subscription_id", "consecutive_failures")
_CREATE = {
    "sqlite": Prepared(
        sqlite_insert(HEALTH).on_conflict_do_nothing(index_elements=["domain", "subscription_id"]),
        column_keys=_COLUMNS,
    ),
    "postgresql": Prepared(
        pg_insert(HEALTH).on_conflict_do_nothing(index_elements=["domain", "subscription_id"]),
        column_keys=_COLUMNS,
    ),
}
# Bind names differ from the column names: SQLAlchemy reserves those for SET values.
_THIS = (
    HEALTH.c.domain == bindparam("health_domain"),
    HEALTH.c.subscription_id == bindparam("health_subscription"),
)
_LOCKED = Prepared(select(HEALTH.c.consecutive_failures).where(*_THIS).with_for_update())
_COUNTED = Prepared(
    update(HEALTH)
    .where(*_THIS)
    .values(consecutive_failures=bindparam("failures"), last_error=bindparam("error"))
)
_RESET = Prepared(
    update(HEALTH)
    .where(*_THIS, HEALTH.c.consecutive_failures > 0)
    .values(consecutive_failures=0, last_error=None)
)
_READ = Prepared(select(HEALTH.c.consecutive_failures, HEALTH.c.last_error).where(*_THIS))


def _key(domain: str, subscription_id: str) -> dict[str, str]:
    return {"health_domain": domain, "health_subscription": subscription_id}


def reset_failures(domain: str, subscription_id: str) -> Work[bool]:
    """Zero the Subscription's failure counter; False when it was zero (or never set)."""
    reset = yield from execute(_RESET, _key(domain, subscription_id))
    return reset.rowcount > 0


def reset_failures_of(domain: str, subscription_ids: Collection[str]) -> Work[set[str]]:
    """Zero the failure counters of many Subscriptions in one statement.

    Only counters above zero are written; answers the ids whose counter that was.
    """
    if not subscription_ids:
        return set()
    reset = yield from execute(
        update(HEALTH)
        .where(
            HEALTH.c.domain == domain,
            HEALTH.c.subscription_id.in_(sorted(subscription_ids)),
            HEALTH.c.consecutive_failures > 0,
        )
        .values(consecutive_failures=0, last_error=None)
        .returning(HEALTH.c.subscription_id)
    )
    return {str(subscription_id) for (subscription_id,) in reset.rows}


def count_failure(
    domain: str, subscription_id: str, error: str | None, *, failures: int = 1
) -> Work[int]:
    """Count `failures` more failures in a row (the last one's error); the new count.

    The row is locked until the unit ends, so concurrent failures are each counted.
    """
    backend = yield from dialect()
    yield from execute(
        _CREATE[backend],
        {"domain": domain, "subscription_id": subscription_id, "consecutive_failures": 0},
    )
    locked = yield from execute(_LOCKED, _key(domain, subscription_id))
    counted = int(locked.one()[0]) + failures
    yield from execute(
        _COUNTED, _key(domain, subscription_id) | {"failures": counted, "error": error}
    )
    return counted


def failures(domain: str, subscription_id: str) -> Work[tuple[int, str | None]]:
    """The consecutive failures and the last error (0 and None when never counted)."""
    found = yield from execute(_READ, _key(domain, subscription_id))
    if not found.rows:
        return 0, None
    count, error = found.rows[0]
    return int(count), error
