"""The stored side of the subscription index: the generation stamp, and the live Subscriptions.

Each process keeps its own in-memory index of live Subscriptions
(`hub.notify.registry`). Every transaction that changes a Subscription of a
domain re-stamps the domain's generation row with a random value; a write
compares the stamp its index was built from with this row inside its own unit
of work, so it never matches against a stale index, whichever process changed
the Subscription.

A generation is a random stamp, not a counter: a counter bumped in a
transaction that then rolls back would be bumped to the same number by the
next change, and an index cached from the rolled-back transaction's
uncommitted rows would pass for current.
"""

from __future__ import annotations

import secrets

from sqlalchemy import Table, bindparam, false, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from hub.store.sql import Prepared, Work, dialect, execute
from hub.store.tables import StoredResource, SubscriptionGeneration

GENERATIONS: Table = SubscriptionGeneration.__table__  # type: ignore[attr-defined]
RESOURCES: Table = StoredResource.__table__  # type: ignore[attr-defined]

_GENERATION = Prepared(
    select(GENERATIONS.c.generation).where(GENERATIONS.c.domain == bindparam("domain"))
)
_SQLITE_BUMP = sqlite_insert(GENERATIONS)
_PG_BUMP = pg_insert(GENERATIONS)
_BUMP = {
    "sqlite": Prepared(
        _SQLITE_BUMP.on_conflict_do_update(
            index_elements=["domain"], set_={"generation": _SQLITE_BUMP.excluded.generation}
        ),
        column_keys=("domain", "generation"),
    ),
    "postgresql": Prepared(
        _PG_BUMP.on_conflict_do_update(
            index_elements=["domain"], set_={"generation": _PG_BUMP.excluded.generation}
        ),
        column_keys=("domain", "generation"),
    ),
}
_LIVE = Prepared(
    select(RESOURCES.c.content).where(
        RESOURCES.c.domain == bindparam("domain"),
        RESOURCES.c.rtype == "Subscription",
        RESOURCES.c.deleted == false(),
    )
)


def generation(domain: str) -> Work[int]:
    """The domain's current stamp (0 for a domain whose Subscriptions never changed)."""
    found = yield from execute(_GENERATION, {"domain": domain})
    return int(found.scalar() or 0)


def bump_generation(domain: str) -> Work[int]:
    """Call in every unit that changes a Subscription of `domain`; returns the new stamp."""
    # Never 0, the generation of a domain without the row; 62 bits fit a signed BIGINT.
    stamp = secrets.randbits(62) | 1
    backend = yield from dialect()
    yield from execute(_BUMP[backend], {"domain": domain, "generation": stamp})
    return stamp


def subscription_contents(domain: str) -> Work[list[str]]:
    """The stored JSON of every Subscription of `domain` that is not deleted."""
    found = yield from execute(_LIVE, {"domain": domain})
    return [str(content) for (content,) in found.rows]


_WITH_END = Prepared(
    select(RESOURCES.c.domain, RESOURCES.c.id, RESOURCES.c.content).where(
        RESOURCES.c.rtype == "Subscription",
        RESOURCES.c.deleted == false(),
        RESOURCES.c.content.contains('"end"'),
    )
)


def subscriptions_with_end() -> Work[list[tuple[str, str, str]]]:
    """`(domain, id, stored JSON)` of every live Subscription, of every domain, that mentions
    `"end"`: housekeeping decides on the element itself whether it has passed."""
    found = yield from execute(_WITH_END)
    return [(str(domain), str(id_), str(content)) for domain, id_, content in found.rows]
