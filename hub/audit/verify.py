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

The walk reads one page of links at a time, each page in its own snapshot, so
a trail of any size is never loaded at once. Links are only ever appended, so
events written meanwhile just lengthen the walk; the head is read in the
snapshot of the last page, so it is judged against exactly the chain that page
ends. Then the domain's AuditEvents are scanned, a page at a time, for any
that no link points to (an event and its link are committed together, so no
snapshot sees one without the other).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.audit.chain import KEY_FILE
from hub.audit.index import event_index
from hub.fhir import jsonio
from hub.fhir.bundle import format_instant
from hub.fhir.extract import IndexValues, extract
from hub.fhir.origin import origin_device
from hub.store import trail
from hub.store.audit import GENESIS, chain_head, link_digest
from hub.store.db import Database
from hub.store.resources import VersionRow
from hub.store.sql import Work
from hub.store.trail import ChainedEvent

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


@dataclass(frozen=True)
class Verdict:
    """What a walk found: its problems (none when intact) and the head it verified."""

    problems: list[str]
    head: tuple[int, str]


@dataclass(frozen=True)
class _Page:
    events: list[ChainedEvent]
    index: dict[int, set[Any]]
    head: tuple[int, str] | None  # read with the last page only


def _page(domain: str, after_seq: int, limit: int) -> Work[_Page]:
    """One page of the chain with its events' index rows; the head too when it is the last."""
    events = yield from trail.chain_page(domain, after_seq, limit)
    through_seq = events[-1].seq if events else after_seq
    index = yield from trail.index_rows(domain, after_seq, through_seq)
    if len(events) == limit:
        return _Page(events, index, None)
    head = yield from chain_head(domain)
    return _Page(events, index, head)


async def verify_domain(
    database: Database, domain: str, key: bytes, *, batch: int = BATCH
) -> Verdict:
    """Every problem found in `domain`'s audit trail (empty when intact), and its head."""
    problems: list[str] = []
    previous_seq, previous_digest = 0, GENESIS
    head: tuple[int, str] | None = None
    while head is None:
        page = await database.read(_page(domain, previous_seq, batch))
        for event in page.events:
            if event.seq != previous_seq + 1:
                problems.append(
                    f"links {previous_seq + 1}..{event.seq - 1} are missing: events were removed"
                )
            problems += _link_problems(
                event, previous_digest, key, domain, page.index.get(event.resource_pk, set())
            )
            previous_seq, previous_digest = event.seq, event.digest
        head = page.head

    if head != (previous_seq, previous_digest):
        problems.append(
            f"the chain ends at link {previous_seq} but its head says {head[0]}: "
            "the newest events were removed or the head was altered"
        )
    problems += await _unchained(database, domain, batch)
    return Verdict(problems, head)


async def _unchained(database: Database, domain: str, batch: int, *, named: int = 5) -> list[str]:
    """AuditEvents of `domain` that no link points to: inserted outside the chain."""
    count, examples = 0, list[str]()
    after_pk, scanned = 0, batch
    while scanned == batch:
        page = await database.read(trail.unchained(domain, after_pk, batch))
        count += len(page.ids)
        examples += page.ids[: named - len(examples)]
        after_pk, scanned = page.through_pk, page.scanned
    if not count:
        return []
    listed = ", ".join(f"AuditEvent/{event_id}" for event_id in examples)
    return [
        f"{count} AuditEvent(s) of {domain!r} are not in the chain (inserted outside it): {listed}"
    ]


def _expected_index(event: dict[str, Any], domain: str) -> set[Any]:
    # The hub's own events are indexed by the fast builder, which equals `extract` for them.
    values: IndexValues = (
        event_index(event) if origin_device(event) == HUB_DEVICE else extract(event)
    )
    kinds = (values.tokens, values.strings, values.references, values.dates, values.uris)
    return {
        (table, domain, "AuditEvent", *row)
        for table, rows in zip(trail.INDEX_KINDS, kinds, strict=True)
        for row in rows
    }


def _parsed(content: str) -> dict[str, Any] | None:
    """The stored JSON as an object, or None when it is not one (only ever after an edit)."""
    try:
        event = jsonio.loads(content)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _history_problems(version: VersionRow, last_updated: str) -> list[str]:
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
    link: ChainedEvent, previous_digest: str, key: bytes, domain: str, stored_index: set[Any]
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
    if [version.content for version in link.history] != [row.content]:
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
    if len(link.history) == 1 and (differences := _history_problems(link.history[0], last_updated)):
        yield f"{name}: its history was altered ({'; '.join(differences)}): reads of it miss it"
    # The index rows are checked in full (values, domain and type): they are read by
    # primary key per page, and the expected rows come from the same fast builder the
    # hub writes them with, so this costs about what writing the event did.
    expected = _expected_index(event, domain)
    if stored_index != expected:
        tables = ", ".join(sorted({entry[0] for entry in stored_index ^ expected}))
        yield (
            f"link {link.seq}: the search index of AuditEvent/{event_id} was altered "
            f"in {tables} (searches would miss or misreport it)"
        )


async def check_anchor(database: Database, domain: str, seq: int, digest: str) -> list[str]:
    """Problems with a head recorded earlier: its link must still be there, unchanged.

    The one attack the chain alone cannot show is removing the newest events and
    rewinding the head to match; an anchor kept outside the database catches it.
    """
    if (seq, digest) == (0, GENESIS):
        return []  # the head of a trail that was empty: every chain still starts there
    stored = await database.read(trail.link_digest_at(domain, seq))
    if stored is None:
        return [f"anchor {seq}: that link is gone: the chain was cut back below it"]
    if stored != digest:
        return [f"anchor {seq}: the link's digest changed: the chain was rewritten from there"]
    return []
