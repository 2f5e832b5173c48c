"""The audit trail's tables: AuditEvents stored as resources, each a link of its domain's chain.

Tamper evidence is a keyed hash chain per domain:
`digest = HMAC-SHA256(key, previous digest || stored JSON)`. The key lives
with the hub's keys, outside the database (`hub.audit.chain`), so somebody who
can write the database but not read the key cannot re-forge the chain after
an edit. Appends serialise on the domain's head row (`FOR UPDATE` on
PostgreSQL; on SQLite the single writer thread holds the database), which
makes the chain a total order even with several processes writing at once.
Within a group commit, links are appended in commit order, unit by unit.
The head is locked LAST in every unit: a unit that locks a resource row after
the head could deadlock against another process doing the opposite.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from hub.store.resources import NewVersion, insert_new
from hub.store.sql import Prepared, Work, dialect, execute, execute_many
from hub.store.tables import AuditChainHead, AuditChainLink

GENESIS = "0" * 64

LINKS: Table = AuditChainLink.__table__  # type: ignore[attr-defined]
HEADS: Table = AuditChainHead.__table__  # type: ignore[attr-defined]

_HEAD = Prepared(select(HEADS.c.seq, HEADS.c.digest).where(HEADS.c.domain == bindparam("domain")))
_HEAD_LOCKED = Prepared(
    select(HEADS.c.seq, HEADS.c.digest)
    .where(HEADS.c.domain == bindparam("domain"))
    .with_for_update()
)
_NEW_HEAD = {
    "sqlite": Prepared(
        sqlite_insert(HEADS).on_conflict_do_nothing(index_elements=["domain"]),
        column_keys=("domain", "seq", "digest"),
    ),
    "postgresql": Prepared(
        pg_insert(HEADS).on_conflict_do_nothing(index_elements=["domain"]),
        column_keys=("domain", "seq", "digest"),
    ),
}
_INSERT_LINK = Prepared(insert(LINKS), column_keys=("domain", "seq", "resource_pk", "digest"))
_MOVE_HEAD = Prepared(
    update(HEADS)
    .where(HEADS.c.domain == bindparam("head_domain"))
    .values(seq=bindparam("new_seq"), digest=bindparam("new_digest"))
)


def link_digest(key: bytes, previous: str, content: str) -> str:
    return hmac.new(
        key, previous.encode("ascii") + content.encode("utf-8"), hashlib.sha256
    ).hexdigest()


def _locked_head(domain: str) -> Work[tuple[int, str]]:
    """The domain's head, locked for this transaction (made at the genesis if missing)."""
    found = yield from execute(_HEAD_LOCKED, {"domain": domain})
    if not found.rows:
        backend = yield from dialect()
        yield from execute(_NEW_HEAD[backend], {"domain": domain, "seq": 0, "digest": GENESIS})
        found = yield from execute(_HEAD_LOCKED, {"domain": domain})
    seq, digest = found.one()
    return int(seq), str(digest)


def append_links(domain: str, links: Sequence[tuple[int, str]], key: bytes) -> Work[None]:
    """Chain stored AuditEvents `(resources.pk, stored JSON)`, in order."""
    if not links:
        return
    seq, digest = yield from _locked_head(domain)
    rows = []
    for resource_pk, content in links:
        seq += 1
        digest = link_digest(key, digest, content)
        rows.append((domain, seq, resource_pk, digest))
    yield from execute_many(_INSERT_LINK, rows)
    yield from execute(_MOVE_HEAD, {"head_domain": domain, "new_seq": seq, "new_digest": digest})


def append_events(events: Sequence[NewVersion], key: bytes) -> Work[list[int]]:
    """Store AuditEvents (version 1 each) and chain them in the given order; their pks.

    Call it last in a unit: it locks the chain heads.
    """
    if not events:
        return []
    pks = yield from insert_new(events)
    by_domain: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for event, pk in zip(events, pks, strict=True):
        by_domain[event.domain].append((pk, event.content))
    # Heads in a fixed order: two units never wait for each other's head in a cycle.
    for domain in sorted(by_domain):
        yield from append_links(domain, by_domain[domain], key)
    return pks


def chain_head(domain: str) -> Work[tuple[int, str]]:
    """The domain's newest link `(seq, digest)`; the genesis when it has none."""
    found = yield from execute(_HEAD, {"domain": domain})
    if not found.rows:
        return 0, GENESIS
    seq, digest = found.rows[0]
    return int(seq), str(digest)
