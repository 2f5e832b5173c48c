"""Read interactions: read, vread, instance history and search.

Permission is checked against the STORED resource's origin; search narrows in
SQL to the origins the caller may read, so totals and paging never count what
the caller cannot see. A chained parameter looks into the referenced type, so it
is narrowed to the targets the caller may read, and refused (403) like a search
of that type when the caller may read none of it.

Each returns, with its result, the `Audit` its AuditEvent names: the versions
it returned (and a search's query). The API records that event before the
response leaves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

from hub.access.policy import Access
from hub.audit.events import Entity, query_entity
from hub.fhir import jsonio
from hub.fhir.bundle import Entry, bundle, format_instant
from hub.fhir.outcome import FhirError, Issue, not_found, operation_outcome
from hub.fhir.query import Query, parse_search, parse_whole_number, whole_number
from hub.interactions.exchange import Audit, Exchange
from hub.store import resources
from hub.store.resources import StoredRow
from hub.store.search import search as run_search


@dataclass(frozen=True)
class Found:
    """A resource version to return, with what the HTTP headers and the AuditEvent need."""

    rtype: str
    id: str
    version_id: int
    last_updated: datetime
    content: str
    audit: Audit


@dataclass(frozen=True)
class Listed:
    """A searchset or history Bundle, with what its AuditEvent names."""

    bundle: str
    audit: Audit


def gone(rtype: str, id: str) -> FhirError:
    return FhirError.single(410, "deleted", f"{rtype}/{id} has been deleted")


def _version_entity(rtype: str, id: str, version_id: int) -> Entity:
    return Entity(what=f"{rtype}/{id}/_history/{version_id}")


async def _readable_current(exchange: Exchange, rtype: str, id: str) -> StoredRow:
    access = exchange.authorised()
    row = await exchange.runtime.database.read(resources.current(exchange.domain, rtype, id))
    if row is None:
        raise not_found(f"{rtype}/{id} does not exist")
    if not access.allows("read", rtype, row.origin):
        raise access.refusal(exchange.interaction, f"{rtype}/{id}")
    return row


async def read(exchange: Exchange, rtype: str, id: str) -> Found:
    row = await _readable_current(exchange, rtype, id)
    if row.deleted:
        raise gone(rtype, id)
    audit = Audit((_version_entity(rtype, id, row.version_id),))
    return Found(rtype, id, row.version_id, row.last_updated, row.content, audit)


async def vread(exchange: Exchange, rtype: str, id: str, version: str) -> Found:
    number = whole_number(version)
    if number is None:  # not ASCII digits, or more than any stored version can have
        raise not_found(f"{rtype}/{id} has no version {version[:40]!r}")
    row = await _readable_current(exchange, rtype, id)
    stored_version = await exchange.runtime.database.read(
        resources.version(exchange.domain, rtype, id, number)
    )
    if stored_version is None:
        raise not_found(f"{rtype}/{id} has no version {version}")
    if stored_version.deleted:
        raise gone(rtype, f"{id}/_history/{version}")
    assert row.pk == stored_version.resource_pk
    return Found(
        rtype,
        id,
        stored_version.version_id,
        stored_version.last_updated,
        stored_version.content,
        Audit((_version_entity(rtype, id, stored_version.version_id),)),
    )


async def history(
    exchange: Exchange, rtype: str, id: str, params: Sequence[tuple[str, str]]
) -> Listed:
    """The instance history Bundle, newest first, paged by `_count` and `_cursor`."""
    settings = exchange.runtime.settings
    controls = dict(params)
    count = settings.default_page_size
    if "_count" in controls:
        count = parse_whole_number(controls["_count"], "_count", minimum=1)
    count = min(count, settings.max_page_size)
    before = parse_whole_number(controls["_cursor"], "_cursor") if "_cursor" in controls else None
    row = await _readable_current(exchange, rtype, id)
    versions = await exchange.runtime.database.read(
        resources.history(row.pk, count=count + 1, before_version=before)
    )
    page, more = versions[:count], len(versions) > count
    base = exchange.runtime.fhir_base(exchange.domain)
    url = f"{base}/{rtype}/{id}/_history"
    audit = Audit(tuple(_version_entity(rtype, id, v.version_id) for v in page))
    entries = [
        Entry(
            full_url=f"{base}/{rtype}/{id}",
            resource_json=None if v.deleted else v.content,
            request_method=v.method,
            request_url=f"{rtype}/{id}" if v.method != "POST" else rtype,
            response_status={"POST": "201", "DELETE": "204"}.get(v.method, "200"),
            response_etag=f'W/"{v.version_id}"',
            response_last_modified=format_instant(v.last_updated),
        )
        for v in page
    ]
    links = [("self", f"{url}?{urlencode(params)}" if params else url)]
    if more:
        links.append(
            ("next", f"{url}?{urlencode({'_count': count, '_cursor': page[-1].version_id})}")
        )
    return Listed(bundle("history", entries, total=None, links=links), audit)


# Building and compiling a search's SQL costs about 50 µs per value: beyond this many
# values (2 ms) it is done off the event loop, where it costs a thread hand-off instead.
COSTLY_SEARCH = 40


def search_query(exchange: Exchange, rtype: str, params: Sequence[tuple[str, str]]) -> Query:
    prefer = exchange.prefer
    return parse_search(rtype, params, strict=prefer.strict, any_code=prefer.lenient)


def refuse_unreadable_chains(access: Access, query: Query) -> None:
    """403 for a chain into a type the caller may read nothing of, as a search of that type gets.

    Where the caller may read some of the type, the search narrows the chain instead.
    """
    for clause in query.clauses:
        target = clause.target_type
        if target is not None and access.readable_origins(target) == frozenset():
            why = f"{clause.name} looks into {target} resources, which may not be read"
            raise access.refusal("read", target, why)


def _page_url(base: str, query: Query, cursor: str | None) -> str:
    pairs = query.canonical_params()
    if cursor:
        pairs.append(("_cursor", cursor))
    return (
        f"{base}/{query.resource_type}?{urlencode(pairs)}"
        if pairs
        else f"{base}/{query.resource_type}"
    )


async def search(
    exchange: Exchange, rtype: str, params: Sequence[tuple[str, str]], query_string: str
) -> Listed:
    """The searchset Bundle for `params`, narrowed to what the caller may read.

    Its AuditEvent names the query (`query_string`, as the client sent it) and every
    version on the page.
    """
    access = exchange.authorised()
    if not access.may_search(rtype):
        raise access.refusal(exchange.interaction, rtype)
    query = search_query(exchange, rtype, params)
    refuse_unreadable_chains(access, query)
    settings = exchange.runtime.settings
    # `_count=0` asks for the total only (FHIR R4 §3.1.1.5.5): 0 must not become the default.
    count = settings.default_page_size if query.count is None else query.count
    page_size = min(count, settings.max_page_size)
    page = await exchange.runtime.database.read(
        run_search(
            domain=exchange.domain,
            query=query,
            allowed_origins=access.origins("search", rtype),
            page_size=page_size,
            target_origins=access.readable_origins,
        ),
        costly=query.size > COSTLY_SEARCH,
    )
    base = exchange.runtime.fhir_base(exchange.domain)
    audit = Audit(
        (
            query_entity(rtype, query_string),
            *(_version_entity(row.rtype, row.id, row.version_id) for row in page.rows),
        )
    )
    links = [("self", _page_url(base, query, query.cursor))]
    if page.next_cursor:
        links.append(("next", _page_url(base, query, page.next_cursor)))
    if page.previous_cursor:
        links.append(("previous", _page_url(base, query, page.previous_cursor)))
    entries = [
        Entry(
            full_url=f"{base}/{row.rtype}/{row.id}", resource_json=row.content, search_mode="match"
        )
        for row in page.rows
    ]
    if query.unknown:
        warning = operation_outcome(
            Issue(
                "not-supported",
                f"Unknown search parameter {name!r} was ignored",
                (name,),
                severity="warning",
            )
            for name in query.unknown
        )
        entries.append(
            Entry(
                full_url=f"urn:uuid:{exchange.trace.request_id}",
                resource_json=jsonio.dumps(warning),
                search_mode="outcome",
            )
        )
    return Listed(bundle("searchset", entries, total=page.total, links=links), audit)
