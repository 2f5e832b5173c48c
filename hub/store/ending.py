"""The Subscriptions housekeeping looks at for an `end` that has passed.

Whether an `end` has passed is decided in Python (`hub.housekeeping`) on the
stored JSON; SQL only narrows the rows to live Subscriptions that mention one.
"""

from __future__ import annotations

from sqlalchemy import Table, false, select

from hub.store.sql import Prepared, Work, execute
from hub.store.tables import StoredResource

RESOURCES: Table = StoredResource.__table__  # type: ignore[attr-defined]

_WITH_END = Prepared(
    select(RESOURCES.c.domain, RESOURCES.c.id, RESOURCES.c.content).where(
        RESOURCES.c.rtype == "Subscription",
        RESOURCES.c.deleted == false(),
        RESOURCES.c.content.contains('"end"'),
    )
)


def subscriptions_with_end() -> Work[list[tuple[str, str, str]]]:
    """`(domain, id, stored JSON)` of every Subscription, of every domain, that is not
    deleted and whose JSON mentions `"end"` (the caller checks the element itself)."""
    found = yield from execute(_WITH_END)
    return [(str(domain), str(id), str(content)) for domain, id, content in found.rows]
