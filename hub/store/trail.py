"""Reading the audit trail back for `hub audit verify`: links, their events, and what hides them.

The chain (`hub.store.audit`) vouches for each event's stored JSON. Reads and
searches go by the event's row, its history row and its index rows instead,
so the verifier needs all of them exactly as stored: an event is looked up by
primary key alone, so a row moved to another domain or type is still found
(and can be reported as moved rather than as removed).

Each unit is small and pages on its own terms, so a verifier can walk a chain
of millions of links one page (one snapshot) at a time.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, NamedTuple

from sqlalchemy import bindparam, select

from hub.store.audit import LINKS
from hub.store.index import INDEX_TABLES, ROW_COLUMNS
from hub.store.resources import RESOURCES, VERSIONS, StoredRow, VersionRow
from hub.store.sql import Prepared, Work, execute

# The index tables in `IndexValues` order (tokens, strings, references, dates, uris).
INDEX_KINDS: tuple[str, ...] = tuple(table.name for table in INDEX_TABLES)


class ChainedEvent(NamedTuple):
    """One link of a domain's chain, with the event it points to as stored.

    `row` is None when no resource has the link's primary key (the event was
    removed); `history` holds its history rows, oldest first.
    """

    seq: int
    digest: str
    resource_pk: int
    row: StoredRow | None
    history: list[VersionRow]


_LINKS_AFTER = Prepared(
    select(LINKS.c.seq, LINKS.c.digest, LINKS.c.resource_pk)
    .where(LINKS.c.domain == bindparam("domain"), LINKS.c.seq > bindparam("after"))
    .order_by(LINKS.c.seq)
    .limit(bindparam("limit"))
)
# The events a range of links points to, by primary key: `after < seq <= through`.
_PAGE_PKS = select(LINKS.c.resource_pk).where(
    LINKS.c.domain == bindparam("domain"),
    LINKS.c.seq > bindparam("after"),
    LINKS.c.seq <= bindparam("through"),
)
_PAGE_EVENTS = Prepared(select(*RESOURCES.c).where(RESOURCES.c.pk.in_(_PAGE_PKS)))
_PAGE_HISTORY = Prepared(
    select(*VERSIONS.c)
    .where(VERSIONS.c.resource_pk.in_(_PAGE_PKS))
    .order_by(VERSIONS.c.resource_pk, VERSIONS.c.version_id)
)
_PAGE_INDEX = tuple(
    (
        table.name,
        Prepared(
            select(
                table.c.resource_pk,
                table.c.domain,
                table.c.rtype,
                *(table.c[name] for name in ROW_COLUMNS[table.name]),
            ).where(table.c.resource_pk.in_(_PAGE_PKS))
        ),
    )
    for table in INDEX_TABLES
)
# A page of a domain's AuditEvents by primary key, and the links that point to them.
_EVENTS_AFTER = Prepared(
    select(RESOURCES.c.pk, RESOURCES.c.id)
    .where(
        RESOURCES.c.domain == bindparam("domain"),
        RESOURCES.c.rtype == "AuditEvent",
        RESOURCES.c.pk > bindparam("after"),
    )
    .order_by(RESOURCES.c.pk)
    .limit(bindparam("limit"))
)
# No condition on the links' domain: the lookup stays on their `resource_pk` index
# whatever the planner believes about the domain's size (its statistics may be stale).
_LINKS_TO = Prepared(
    select(LINKS.c.resource_pk, LINKS.c.domain).where(
        LINKS.c.resource_pk.in_(
            select(RESOURCES.c.pk).where(
                RESOURCES.c.domain == bindparam("domain"),
                RESOURCES.c.rtype == "AuditEvent",
                RESOURCES.c.pk > bindparam("after"),
                RESOURCES.c.pk <= bindparam("through"),
            )
        )
    )
)
_LINK_DIGEST = Prepared(
    select(LINKS.c.digest).where(
        LINKS.c.domain == bindparam("domain"), LINKS.c.seq == bindparam("seq")
    )
)


def chain_page(domain: str, after_seq: int, limit: int) -> Work[list[ChainedEvent]]:
    """Up to `limit` links of `domain` after `after_seq`, in order, with their events.

    Three simple queries (the links by key; the events and their history rows by
    primary key, for that range of links) rather than one join: the plan stays an
    index lookup even on tables the database has not analysed yet. Events are
    looked up by primary key alone, so a row moved to another domain or type is
    still found.
    """
    links = yield from execute(_LINKS_AFTER, {"domain": domain, "after": after_seq, "limit": limit})
    if not links.rows:
        return []
    page = {"domain": domain, "after": after_seq, "through": int(links.rows[-1][0])}
    events = yield from execute(_PAGE_EVENTS, page)
    rows = {int(row[0]): StoredRow(*row) for row in events.rows}
    versions = yield from execute(_PAGE_HISTORY, page)
    history: dict[int, list[VersionRow]] = defaultdict(list)
    for version in versions.rows:
        history[int(version[0])].append(VersionRow(*version))
    return [
        ChainedEvent(
            seq=int(seq),
            digest=str(digest),
            resource_pk=int(resource_pk),
            row=rows.get(int(resource_pk)),
            history=history.get(int(resource_pk), []),
        )
        for seq, digest, resource_pk in links.rows
    ]


def index_rows(
    domain: str, after_seq: int, through_seq: int
) -> Work[dict[int, set[tuple[Any, ...]]]]:
    """The index rows of the events of links `after_seq < seq <= through_seq` of `domain`.

    By the events' primary keys, as comparable `(table, domain, rtype, *row)`
    tuples, `row` in the order of its `hub.fhir.extract` row type (`TokenRow`,
    ...). A row's domain and type count as much as its values: searches look
    rows up by `(domain, rtype, param, value)`, so a row filed under another
    is never found.
    """
    stored: dict[int, set[tuple[Any, ...]]] = defaultdict(set)
    if through_seq <= after_seq:
        return stored
    page = {"domain": domain, "after": after_seq, "through": through_seq}
    for name, statement in _PAGE_INDEX:
        found = yield from execute(statement, page)
        for resource_pk, *row in found.rows:
            stored[int(resource_pk)].add((name, *row))
    return stored


class Unchained(NamedTuple):
    """One page of a domain's AuditEvents, in primary-key order, checked against the chain."""

    scanned: int  # events in the page
    through_pk: int  # the last primary key in it (the next page starts after it)
    ids: list[str]  # the ids of those no link of the domain points to: inserted outside it


def unchained(domain: str, after_pk: int, limit: int) -> Work[Unchained]:
    """Up to `limit` AuditEvents of `domain` after primary key `after_pk`, and which are unlinked.

    A page at a time, by primary key, rather than one anti-join over the whole
    trail: an anti-join planned on stale statistics can cost a scan of the
    chain per event. An event and its link are committed together, so any one
    snapshot sees both or neither.
    """
    events = yield from execute(
        _EVENTS_AFTER, {"domain": domain, "after": after_pk, "limit": limit}
    )
    if not events.rows:
        return Unchained(0, after_pk, [])
    through = int(events.rows[-1][0])
    links = yield from execute(_LINKS_TO, {"domain": domain, "after": after_pk, "through": through})
    linked = {int(pk) for pk, link_domain in links.rows if link_domain == domain}
    return Unchained(
        scanned=len(events.rows),
        through_pk=through,
        ids=[str(event_id) for pk, event_id in events.rows if int(pk) not in linked],
    )


def link_digest_at(domain: str, seq: int) -> Work[str | None]:
    """The digest of link `seq` of `domain`; None when there is no such link."""
    found = yield from execute(_LINK_DIGEST, {"domain": domain, "seq": seq})
    digest = found.scalar()
    return None if digest is None else str(digest)
