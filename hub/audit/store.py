"""Storing AuditEvents: as ordinary (searchable) resources, each chained for tamper evidence.

Every request stores one, so this is the hub's hottest write path, and it is
written for statements rather than objects: a batch of N events costs the
same ten statements as one event (one INSERT per table, the chain head locked
once per domain), sent straight to the driver (`hub.audit.driver`), and the
index rows come from `hub.audit.index` rather than the FHIRPath evaluator.
That is what lets the group-committing `AuditWriter` keep up with reads. The
rows are the ones `hub.store.resources` writes for any resource: the event is
found, read and paged like any other.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from hub.audit import chain
from hub.audit.driver import AuditDriver
from hub.audit.index import event_index
from hub.fhir import jsonio
from hub.fhir.extract import DateRow, IndexValues, ReferenceRow, StringRow, TokenRow, UriRow
from hub.fhir.origin import origin_device
from hub.fhir.stamp import stamp
from hub.store.index import INDEX_TABLES
from hub.store.tables import ResourceVersion, StoredResource
from hub.trace import new_id

RESOURCES: Table = StoredResource.__table__  # type: ignore[attr-defined]
VERSIONS: Table = ResourceVersion.__table__  # type: ignore[attr-defined]
_RESOURCE_COLUMNS = (
    "domain", "rtype", "id", "version_id", "last_updated", "deleted", "origin", "content",
)  # fmt: skip
_VERSION_COLUMNS = ("resource_pk", "version_id", "last_updated", "deleted", "method", "content")
_INDEX_COLUMNS = ("resource_pk", "domain", "rtype")
# Each index table with the columns that hold a row's values, in `IndexValues` order.
_INDEX_KINDS = tuple(
    zip(
        INDEX_TABLES,
        (
            TokenRow._fields,
            StringRow._fields,
            ReferenceRow._fields,
            DateRow._fields,
            UriRow._fields,
        ),
        strict=True,
    )
)


@dataclass(frozen=True)
class Prepared:
    """An AuditEvent ready to store: its id, stored JSON, origin and index rows."""

    domain: str
    id: str
    content: str
    origin: str | None
    values: IndexValues
    last_updated: datetime


def prepare(domain: str, event: Mapping[str, Any], now: datetime) -> Prepared:
    """Everything about storing `event` that needs no database (done outside any transaction)."""
    stamped = stamp(event, id=new_id(), version_id=1, last_updated=now)
    return Prepared(
        domain,
        stamped["id"],
        jsonio.dumps(stamped),
        origin_device(stamped),
        event_index(stamped),
        now,
    )


async def _index(driver: AuditDriver, prepared: Sequence[Prepared], pks: Sequence[int]) -> None:
    rows: list[list[tuple[Any, ...]]] = [[] for _ in _INDEX_KINDS]
    for event, pk in zip(prepared, pks, strict=True):
        common = (pk, event.domain, "AuditEvent")
        values = event.values
        rows[0] += ((*common, *row) for row in values.tokens)
        rows[1] += ((*common, *row) for row in values.strings)
        rows[2] += ((*common, *row) for row in values.references)
        rows[3] += (
            (*common, param, driver.time(low), driver.time(high))
            for param, low, high in values.dates
        )
        rows[4] += ((*common, *row) for row in values.uris)
    for (table, fields), table_rows in zip(_INDEX_KINDS, rows, strict=True):
        await driver.insert(table.name, _INDEX_COLUMNS + fields, table_rows)


async def store_prepared(
    session: AsyncSession, prepared: Sequence[Prepared], *, chain_key: bytes
) -> None:
    """Store prepared AuditEvents in the caller's transaction, chained in the given order.

    The chain heads are locked last, so on PostgreSQL concurrent writers wait
    for each other only as long as it takes to append the links and commit.
    """
    if not prepared:
        return
    driver = await AuditDriver.of(session)
    returned = await driver.insert_returning(
        RESOURCES.name,
        _RESOURCE_COLUMNS,
        [
            (
                event.domain,
                "AuditEvent",
                event.id,
                1,
                driver.time(event.last_updated),
                False,
                event.origin,
                event.content,
            )
            for event in prepared
        ],
        returning="id, pk",
    )
    pk_of = {event_id: int(pk) for event_id, pk in returned}
    pks = [pk_of[event.id] for event in prepared]
    await driver.insert(
        VERSIONS.name,
        _VERSION_COLUMNS,
        [
            (pk, 1, driver.time(event.last_updated), False, "POST", event.content)
            for event, pk in zip(prepared, pks, strict=True)
        ],
    )
    await _index(driver, prepared, pks)
    by_domain: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for event, pk in zip(prepared, pks, strict=True):
        by_domain[event.domain].append((pk, event.content))
    # Heads in a fixed order: two batches never wait for each other's head in a cycle.
    for domain in sorted(by_domain):
        await chain.append(driver, domain=domain, links=by_domain[domain], key=chain_key)


async def store_event(
    session: AsyncSession,
    *,
    domain: str,
    event: Mapping[str, Any],
    chain_key: bytes,
    now: datetime,
) -> str:
    """Store one AuditEvent in the caller's transaction (a write and its audit commit together).

    Returns the event's id.
    """
    prepared = prepare(domain, event, now)
    await store_prepared(session, [prepared], chain_key=chain_key)
    return prepared.id


async def chain_posted(
    session: AsyncSession, *, domain: str, resource_pk: int, content: str, chain_key: bytes
) -> None:
    """Chain an AuditEvent an application posted (stored by the ordinary create path)."""
    driver = await AuditDriver.of(session)
    await chain.append(driver, domain=domain, links=[(resource_pk, content)], key=chain_key)
