"""`hub audit verify`: check a domain's audit trail against its hash chain and chain key.

Walks the chain in order and reports, naming the link, every event that was
altered, removed, moved, hidden (marked deleted, given another version) or
made unfindable, links that are missing, a head that does not match the
chain's end, and events that are in the database but not in the chain. The
key never comes from the database.

The chain vouches for an event's JSON only, but reads and searches go by the
row's columns and index rows. So every column they use (`domain`, `rtype`,
`id`, `version_id`, `deleted`, `last_updated`, `origin`), the history row and
every search-index row (values, domain and type) must be exactly what the
chained JSON implies: an intact event that cannot be found is reported too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.audit.chain import GENESIS, HEADS, KEY_FILE, LINKS, link_digest
from hub.audit.index import event_index
from hub.fhir import jsonio
from hub.fhir.bundle import format_instant
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
class _Version:
    """One history row of an event (the hub writes exactly one: version 1, POST)."""

    version_id: int
    last_updated: datetime
    deleted: bool
    method: str
    content: str


@dataclass(frozen=True)
class _Row:
    """The columns of an event's `resources` row that reads and searches go by."""

    domain: str
    rtype: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    origin: str | None
    content: str


@dataclass(frozen=True)
class _Link:
    seq: int
    digest: str
    resource_pk: int
    row: _Row | None
    versions: list[_Version]


async def _links(session: AsyncSession, domain: str) -> AsyncIterator[list[_Link]]:
    """The chain in order, in batches, with each link's stored event and its history rows.

    Three simple queries per batch (links by key, events and versions by
    primary key) rather than one join: the plan stays an index lookup even
    on tables the database has not analysed yet. Events are looked up by
    primary key alone, so a row moved to another domain or type is still
    found (and reported as moved rather than as removed).
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
            pk: _Row(*columns)
            for pk, *columns in await session.execute(
                select(
                    RESOURCES.c.pk,
                    RESOURCES.c.domain,
                    RESOURCES.c.rtype,
                    RESOURCES.c.id,
                    RESOURCES.c.version_id,
                    RESOURCES.c.last_updated,
                    RESOURCES.c.deleted,
                    RESOURCES.c.origin,
                    RESOURCES.c.content,
                ).where(RESOURCES.c.pk.in_(pks))
            )
        }
        history: dict[int, list[_Version]] = defaultdict(list)
        found = await session.execute(
            select(
                VERSIONS.c.resource_pk,
                VERSIONS.c.version_id,
                VERSIONS.c.last_updated,
                VERSIONS.c.deleted,
                VERSIONS.c.method,
                VERSIONS.c.content,
            )
            .where(VERSIONS.c.resource_pk.in_(pks))
            .order_by(VERSIONS.c.resource_pk, VERSIONS.c.version_id)
        )
        for resource_pk, *columns in found:
            history[resource_pk].append(_Version(*columns))
        yield [
            _Link(
                seq=link.seq,
                digest=link.digest,
                resource_pk=link.resource_pk,
                row=events.get(link.resource_pk),
                versions=history.get(link.resource_pk, []),
            )
            for link in links
        ]
        if len(links) < BATCH:
            return
        after = links[-1].seq


async def _stored_index(session: AsyncSession, pks: Sequence[int]) -> dict[int, set[Any]]:
    """The index rows of resources `pks`, as comparable tuples `(table, domain, rtype, *values)`.

    A row's domain and type count as much as its values: searches look rows up by
    `(domain, rtype, param, value)`, so a row filed under another one is never found.
    """
    stored: dict[int, set[Any]] = defaultdict(set)
    for table in INDEX_TABLES:
        values = [c for c in table.c if c.name not in ("pk", "resource_pk", "domain", "rtype")]
        rows = await session.execute(
            select(table.c.resource_pk, table.c.domain, table.c.rtype, *values).where(
                table.c.resource_pk.in_(pks)
            )
        )
        for resource_pk, *row in rows:
            stored[resource_pk].add((table.name, *row))
    return stored


def _expected_index(event: dict[str, Any], domain: str) -> set[Any]:
    # The hub's own events are indexed by the fast builder, which equals `extract` for them.
    values: IndexValues = (
        event_index(event) if origin_device(event) == HUB_DEVICE else extract(event)
    )
    kinds = (values.tokens, values.strings, values.references, values.dates, values.uris)
    return {
        (table.name, domain, "AuditEvent", *row)
        for table, rows in zip(INDEX_TABLES, kinds, strict=True)
        for row in rows
    }


def _parsed(content: str) -> dict[str, Any] | None:
    """The stored JSON as an object, or None when it is not one (only ever after an edit)."""
    try:
        event = jsonio.loads(content)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _history_problems(version: _Version, last_updated: str) -> list[str]:
    """How an event's one history row differs from the one the hub writes (version 1, POST)."""
    differences = []
    if version.version_id != 1:
        differences.append(f"version_id {version.version_id}, not 1")
    if format_instant(version.last_updated) != last_updated:
        differences.append(
            f"last_updated {format_instant(version.last_updated)}, not {last_updated}"
        )
    if version.deleted:
        differences.append("marked deleted")
    if version.method != "POST":
        differences.append(f"method {version.method!r}, not 'POST'")
    return differences


def _link_problems(
    link: _Link, previous_digest: str, key: bytes, domain: str, stored_index: set[Any]
) -> Iterable[str]:
    row = link.row
    if row is None:
        yield f"link {link.seq}: its AuditEvent was removed from the database"
        return
    event = _parsed(row.content)
    # Named by the id in the JSON when it has one (after a rename, the id the event was
    # written with), else by the id column.
    content_id = event.get("id") if event is not None else None
    event_id = content_id if isinstance(content_id, str) else row.id
    name = f"link {link.seq}: AuditEvent/{event_id}"
    authentic = link_digest(key, previous_digest, row.content) == link.digest
    if not authentic:
        yield f"{name} does not match the chain (altered, or moved from another place in it)"
    if [version.content for version in link.versions] != [row.content]:
        yield f"{name}: its history was altered (AuditEvents have exactly one version)"
    if row.deleted or row.version_id != 1:
        yield f"{name} was marked deleted or given another version: it is hidden from reads"
    if (row.domain, row.rtype) != (domain, "AuditEvent"):
        yield (
            f"{name}: its row was moved to {row.rtype} in domain {row.domain!r}: "
            "reads and searches miss it"
        )
    if not authentic or event is None:
        return  # the columns can only be judged against JSON the chain vouches for

    # Everything reads and searches go by instead of the JSON must be what the JSON says.
    if row.id != content_id:
        yield f"{name}: its id column was changed to {row.id!r}: reads and _id searches miss it"
    meta = event.get("meta")
    last_updated = str(meta.get("lastUpdated")) if isinstance(meta, dict) else "nothing"
    if format_instant(row.last_updated) != last_updated:
        yield (
            f"{name}: its last_updated column was changed to {format_instant(row.last_updated)} "
            f"(the event says {last_updated}): _lastUpdated searches misplace it"
        )
    origin = origin_device(event)
    if row.origin != origin:
        yield (
            f"{name}: its origin column was changed to {row.origin!r} (its resource-origin is "
            f"{origin!r}): searches narrowed to origins misplace it"
        )
    if len(link.versions) == 1 and (
        differences := _history_problems(link.versions[0], last_updated)
    ):
        yield f"{name}: its history was altered ({'; '.join(differences)}): reads of it miss it"
    # The index rows are checked in full (values, domain and type): they are read by
    # primary key per batch, and the expected rows come from the same fast builder the
    # hub writes them with, so this costs about what writing the event did.
    expected = _expected_index(event, domain)
    if stored_index != expected:
        tables = ", ".join(sorted({entry[0] for entry in stored_index ^ expected}))
        yield (
            f"link {link.seq}: the search index of AuditEvent/{event_id} was altered "
            f"in {tables} (searches would miss or misreport it)"
        )


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
            problems += _link_problems(
                link, previous_digest, key, domain, stored_index.get(link.resource_pk, set())
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
