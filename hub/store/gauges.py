"""The figures `GET /metrics` reads from the database: the outbox and the Subscriptions.

Read at every scrape, in one snapshot, so every hub process on the database
reports the same figures (`hub.metrics`). Both queries stay on indexes: the
outbox by its state (`ix_outbox_due`), the Subscriptions' statuses by the token
index of their `status` search parameter, per domain (`ix_idx_token_lookup`),
which holds the current version of every Subscription that is not deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Table, bindparam, func, select

from hub.metrics import DatabaseFigures, OutboxGroup, SubscriptionGroup
from hub.store.clock import utcnow
from hub.store.sql import Prepared, Work, execute
from hub.store.tables import OutboxRow, TokenIndex

OUTBOX: Table = OutboxRow.__table__  # type: ignore[attr-defined]
TOKEN: Table = TokenIndex.__table__  # type: ignore[attr-defined]

_OUTBOX = Prepared(
    select(
        OUTBOX.c.state,
        OUTBOX.c.domain,
        OUTBOX.c.channel,
        func.count().label("rows"),
        func.min(OUTBOX.c.created_at).label("oldest"),
    )
    .where(OUTBOX.c.state.in_(("pending", "gave-up")))
    .group_by(OUTBOX.c.state, OUTBOX.c.domain, OUTBOX.c.channel)
)
_STATUSES = Prepared(
    select(TOKEN.c.code, func.count().label("subscriptions"))
    .where(
        TOKEN.c.domain == bindparam("domain"),
        TOKEN.c.rtype == "Subscription",
        TOKEN.c.param == "status",
    )
    .group_by(TOKEN.c.code)
)


def _moment(value: object) -> datetime | None:
    if isinstance(value, str):  # SQLite, should the aggregate lose the column's type
        return datetime.fromisoformat(value)
    return value if isinstance(value, datetime) else None


def figures(domains: Sequence[str]) -> Work[DatabaseFigures]:
    """The outbox by domain, channel and state, and the Subscriptions of `domains` by status."""
    now = utcnow()
    found = yield from execute(_OUTBOX)
    outbox = [
        OutboxGroup(str(domain), str(channel), str(state), int(rows), _moment(oldest))
        for state, domain, channel, rows, oldest in found.rows
    ]
    subscriptions = []
    for domain in domains:
        counted = yield from execute(_STATUSES, {"domain": domain})
        subscriptions += [
            SubscriptionGroup(domain, str(status), int(count))
            for status, count in counted.rows
            if status is not None
        ]
    return DatabaseFigures(now, tuple(domains), outbox, subscriptions)
