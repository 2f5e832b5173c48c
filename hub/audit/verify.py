"""`hub audit verify`: check a domain's audit trail against its hash chain and chain key.

Walks the chain in order and reports, naming the link, every event that was
altered, removed, moved, hidden (marked deleted, given another version) or
made unfindable (its search-index rows changed), links that are missing, a
head that does not match the chain's end, and events that are in the
database but not in the chain. The key never comes from the database.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.audit.chain import GENESIS, HEADS, KEY_FILE, LINKS, link_digest
from hub.audit.index import event_index
from hub.fhir import jsonio
from hub.fhir.extract import IndexValues, extract
from hub.fhir.origin import origin_device
from hub.store.db import Database
from hub.store.index import INDEX_TABLES
from hub.store.tables import ResourceVersion, StoredResource

RESOURCES: Table = StoredResource.__table__  # type: ignore[attr-defined]
VERSIONS: Table = ResourceVersion.__table__  # type: ignore[attr-defined]
HUB_DEVICE = "koppeltaal-hub"  # hub.runtime.HUB_DEVICE, without importing the whole hub
BATCH = 1000


class MissingChainKey(RuntimeError):
    pass


def read_key(keys_dir: Path) -> bytes:
    """The existing chain key (verification never creates one)."""
    path = keys_dir / KEY_FILE
    if not path.exists():
        raise MissingChainKey(f"no audit chain key at {path}: is HUB_KEYS_DIR the hub's?")
    return bytes.fromhex(path.read_text().strip())


async def verify_domain(database: Database, domain: str, key: bytes) -> list[str]:
    """Every problem found in `domain`'s audit trail; empty when it is intact.

    Reads in one snapshot, so events appended meanwhile neither break nor hide anything.
    """
    async with database.read() as session:
        return await verify_chain(session, domain, key)


@dataclass(frozen=True)
class _Link:
    seq: int
    digest: str
    resource_pk: int
    event_id: str | None
    content: str | None
    current_version: int | None
    deleted: bool | None
    versions: list[str]


async def _links(session: AsyncSession, domain: str) -> AsyncIterator[list[_Link]]:
    """The chain in order, in batches, with each link's stored event and its history rows.

    Three simple queries per batch (links by key, events and versions by
    primary key) rather than one join: the plan stays an index lookup even
    on tables the database has not analysed yet.
    """
    after = 0
    while True:
        links = (
            await session.execute(
                select(LINKS.c.seq, LINKS.c.digest, LINKS.c.resource_pk)
                .where(LINKS.c.domain == domain, LINKS.c.seq > after)
                .order_by(LINKS.c.seq)
                .limit(BATCH)
            )
        ).all()
        if not links:
            return
        pks = [link.resource_pk for link in links]
        events = {
            row.pk: row
            for row in await session.execute(
                select(
                    RESOURCES.c.pk,
                    RESOURCES.c.id,
                    RESOURCES.c.content,
                    RESOURCES.c.version_id,
                    RESOURCES.c.deleted,
                ).where(
                    RESOURCES.c.pk.in_(pks),
                    RESOURCES.c.rtype == "AuditEvent",
                    RESOURCES.c.domain == domain,
                )
            )
        }
        history: dict[int, list[str]] = defaultdict(list)
        found = await session.execute(
            select(VERSIONS.c.resource_pk, VERSIONS.c.content)
            .where(VERSIONS.c.resource_pk.in_(pks))
            .order_by(VERSIONS.c.resource_pk, VERSIONS.c.version_id)
        )
        for resource_pk, content in found:
            history[resource_pk].append(content)
        batch = []
        for link in links:
            event = events.get(link.resource_pk)
            batch.append(
                _Link(
                    seq=link.seq,
                    digest=link.digest,
                    resource_pk=link.resource_pk,
                    event_id=event.id if event else None,
                    content=event.content if event else None,
                    current_version=event.version_id if event else None,
                    deleted=event.deleted if event else None,
                    versions=history.get(link.resource_pk, []),
                )
            )
        yield batch
        if len(links) < BATCH:
            return
        after = links[-1].seq


async def _stored_index(session: AsyncSession, pks: Sequence[int]) -> dict[int, set[Any]]:
    """The index rows of resources `pks`, as comparable tuples `(table, *values)`."""
    stored: dict[int, set[Any]] = defaultdict(set)
    for table in INDEX_TABLES:
        columns = [c for c in table.c if c.name not in ("pk", "resource_pk", "domain", "rtype")]
        rows = await session.execute(
            select(table.c.resource_pk, *columns).where(table.c.resource_pk.in_(pks))
        )
        for resource_pk, *values in rows:
            stored[resource_pk].add((table.name, *values))
    return stored


def _expected_index(content: str) -> set[Any]:
    event = jsonio.loads(content)
    # The hub's own events are indexed by the fast builder, which equals `extract` for them.
    values: IndexValues = (
        event_index(event) if origin_device(event) == HUB_DEVICE else extract(event)
    )
    kinds = (values.tokens, values.strings, values.references, values.dates, values.uris)
    return {
        (table.name, *row) for table, rows in zip(INDEX_TABLES, kinds, strict=True) for row in rows
    }


def _link_problems(link: _Link, previous_digest: str, key: bytes) -> Iterable[str]:
    name = f"link {link.seq}: AuditEvent/{link.event_id}"
    if link.content is None:
        yield f"link {link.seq}: its AuditEvent was removed from the database"
        return
    if link_digest(key, previous_digest, link.content) != link.digest:
        yield f"{name} does not match the chain (altered, or moved from another place in it)"
    if link.versions != [link.content]:
        yield f"{name}: its history was altered (AuditEvents have exactly one version)"
    if link.deleted or link.current_version != 1:
        yield f"{name} was marked deleted or given another version: it is hidden from reads"


async def verify_chain(session: AsyncSession, domain: str, key: bytes) -> list[str]:
    """Every problem with the audit trail of `domain`, in chain order; empty when intact."""
    problems: list[str] = []
    previous_seq, previous_digest = 0, GENESIS
    async for links in _links(session, domain):
        stored_index = await _stored_index(session, [link.resource_pk for link in links])
        for link in links:
            if link.seq != previous_seq + 1:
                problems.append(
                    f"links {previous_seq + 1}..{link.seq - 1} are missing: events were removed"
                )
            problems += _link_problems(link, previous_digest, key)
            if link.content is not None and stored_index.get(
                link.resource_pk, set()
            ) != _expected_index(link.content):
                problems.append(
                    f"link {link.seq}: the search index of AuditEvent/{link.event_id} was altered "
                    "(searches would miss or misreport it)"
                )
            previous_seq, previous_digest = link.seq, link.digest

    head = (
        await session.execute(select(HEADS.c.seq, HEADS.c.digest).where(HEADS.c.domain == domain))
    ).one_or_none()
    head_seq, head_digest = (int(head.seq), str(head.digest)) if head else (0, GENESIS)
    if (head_seq, head_digest) != (previous_seq, previous_digest):
        problems.append(
            f"the chain ends at link {previous_seq} but its head says {head_seq}: "
            "the newest events were removed or the head was altered"
        )
    problems += await _unchained(session, domain)
    return problems


async def _unchained(session: AsyncSession, domain: str) -> list[str]:
    """AuditEvents of `domain` that no link points to: inserted outside the hub."""
    outside = (
        RESOURCES.c.domain == domain,
        RESOURCES.c.rtype == "AuditEvent",
        RESOURCES.c.pk.not_in(select(LINKS.c.resource_pk).where(LINKS.c.domain == domain)),
    )
    count = (
        await session.execute(select(func.count()).select_from(RESOURCES).where(*outside))
    ).scalar_one()
    if not count:
        return []
    examples = await session.execute(
        select(RESOURCES.c.id).where(*outside).order_by(RESOURCES.c.pk).limit(5)
    )
    named = ", ".join(f"AuditEvent/{event_id}" for event_id in examples.scalars())
    return [
        f"{count} AuditEvent(s) of {domain!r} are not in the chain (inserted outside it): {named}"
    ]


async def chain_head(database: Database, domain: str) -> tuple[int, str]:
    """The newest link (sequence number, digest): record it somewhere else as an anchor."""
    async with database.read() as session:
        row = (
            await session.execute(
                select(HEADS.c.seq, HEADS.c.digest).where(HEADS.c.domain == domain)
            )
        ).one_or_none()
    return (0, GENESIS) if row is None else (int(row[0]), str(row[1]))


async def check_anchor(database: Database, domain: str, seq: int, digest: str) -> list[str]:
    """Problems with a head recorded earlier: its link must still be there, unchanged.

    The one attack the chain alone cannot show is removing the newest events and
    rewinding the head to match; an anchor kept outside the database catches it.
    """
    async with database.read() as session:
        stored = (
            await session.execute(
                select(LINKS.c.digest).where(LINKS.c.domain == domain, LINKS.c.seq == seq)
            )
        ).scalar_one_or_none()
    if stored is None:
        return [f"anchor {seq}: that link is gone: the chain was cut back below it"]
    if stored != digest:
        return [f"anchor {seq}: the link's digest changed: the chain was rewritten from there"]
    return []
