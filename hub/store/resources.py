"""The resource repository: current versions, full history, and their index rows.

ONE function writes a resource version for every caller (REST writes, the
hub's own Subscription status changes, Devices, AuditEvents): `prepare` does
everything that needs no database (stamp → serialise → extract), outside any
transaction where the caller can; `write` inserts or replaces it, with its
history row and index rows, inside the caller's unit of work. Nothing here
decides permissions or validates content.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Table, and_, bindparam, insert, select, update

from hub.fhir import jsonio
from hub.fhir.extract import IndexValues, extract
from hub.fhir.stamp import stamp
from hub.store.index import clear_index, write_index, write_index_rows
from hub.store.sql import Prepared, Work, execute, execute_many
from hub.store.tables import ResourceVersion, StoredResource

RESOURCES: Table = StoredResource.__table__  # type: ignore[attr-defined]
VERSIONS: Table = ResourceVersion.__table__  # type: ignore[attr-defined]


class StoredRow(NamedTuple):
    """A row of `resources`: the current version of a resource (deleted ones stay)."""

    pk: int
    domain: str
    rtype: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    origin: str | None
    content: str


class VersionRow(NamedTuple):
    """A row of `resource_versions`: one version, deletions included."""

    resource_pk: int
    version_id: int
    last_updated: datetime
    deleted: bool
    method: str
    content: str


@dataclass(frozen=True)
class NewVersion:
    """A resource version ready to store: its stored JSON and index rows are made."""

    domain: str
    rtype: str
    id: str
    version_id: int
    last_updated: datetime
    origin: str | None
    content: str
    values: IndexValues
    method: str
    resource: Mapping[str, Any]


Indexer = Callable[[Mapping[str, Any]], IndexValues]


def prepare(
    domain: str,
    resource: Mapping[str, Any],
    *,
    id: str,
    version_id: int,
    now: datetime,
    origin: str | None,
    method: str,
    index: Indexer = extract,
) -> NewVersion:
    """Stamp, serialise and index `resource` as version `version_id` (no database needed)."""
    stamped = stamp(resource, id=id, version_id=version_id, last_updated=now)
    return NewVersion(
        domain=domain,
        rtype=str(stamped["resourceType"]),
        id=id,
        version_id=version_id,
        last_updated=now,
        origin=origin,
        content=jsonio.dumps(stamped),
        values=index(stamped),
        method=method,
        resource=stamped,
    )


_IDENTITY = and_(
    RESOURCES.c.domain == bindparam("domain"),
    RESOURCES.c.rtype == bindparam("rtype"),
    RESOURCES.c.id == bindparam("id"),
)
_CURRENT = Prepared(select(*RESOURCES.c).where(_IDENTITY))
_CURRENT_LOCKED = Prepared(select(*RESOURCES.c).where(_IDENTITY).with_for_update())
_VERSION = Prepared(
    select(*VERSIONS.c)
    .join(RESOURCES, VERSIONS.c.resource_pk == RESOURCES.c.pk)
    .where(_IDENTITY, VERSIONS.c.version_id == bindparam("version_id"))
)
_INSERT = Prepared(
    insert(RESOURCES).returning(RESOURCES.c.pk),
    column_keys=("domain", "rtype", "id", "version_id", "last_updated", "deleted", "origin",
                 "content"),
)  # fmt: skip
_INSERT_VERSION = Prepared(
    insert(VERSIONS),
    column_keys=("resource_pk", "version_id", "last_updated", "deleted", "method", "content"),
)
# The row's version must still be the one the caller read: a lost race changes nothing.
_ADVANCE = Prepared(
    update(RESOURCES)
    .where(
        RESOURCES.c.pk == bindparam("row_pk"),
        RESOURCES.c.version_id == bindparam("previous"),
    )
    .values(
        version_id=bindparam("new_version"),
        last_updated=bindparam("new_last_updated"),
        deleted=bindparam("new_deleted"),
        content=bindparam("new_content"),
    )
)


def current(
    domain: str, rtype: str, id: str, *, for_update: bool = False
) -> Work[StoredRow | None]:
    """The current row of a resource (deleted or not), locked when `for_update`."""
    found = yield from execute(
        _CURRENT_LOCKED if for_update else _CURRENT, {"domain": domain, "rtype": rtype, "id": id}
    )
    return StoredRow(*found.rows[0]) if found.rows else None


def existing_ids(domain: str, rtype: str, ids: Iterable[str]) -> Work[set[str]]:
    """Which of `ids` exist in `domain` as `rtype` (deleted ones included)."""
    wanted = sorted(set(ids))
    if not wanted:
        return set()
    found = yield from execute(
        select(RESOURCES.c.id).where(
            RESOURCES.c.domain == domain, RESOURCES.c.rtype == rtype, RESOURCES.c.id.in_(wanted)
        )
    )
    return {str(id_) for (id_,) in found.rows}


def version(domain: str, rtype: str, id: str, version_id: int) -> Work[VersionRow | None]:
    found = yield from execute(
        _VERSION, {"domain": domain, "rtype": rtype, "id": id, "version_id": version_id}
    )
    return VersionRow(*found.rows[0]) if found.rows else None


def history(
    resource_pk: int,
    *,
    count: int,
    before_version: int | None = None,
    since: datetime | None = None,
) -> Work[list[VersionRow]]:
    """Versions newest first; `before_version` pages backwards through them."""
    conditions = [VERSIONS.c.resource_pk == resource_pk]
    if before_version is not None:
        conditions.append(VERSIONS.c.version_id < before_version)
    if since is not None:
        conditions.append(VERSIONS.c.last_updated >= since)
    found = yield from execute(
        select(*VERSIONS.c)
        .where(and_(*conditions))
        .order_by(VERSIONS.c.version_id.desc())
        .limit(count)
    )
    return [VersionRow(*row) for row in found.rows]


def _resource_row(version: NewVersion) -> dict[str, Any]:
    return {
        "domain": version.domain,
        "rtype": version.rtype,
        "id": version.id,
        "version_id": version.version_id,
        "last_updated": version.last_updated,
        "deleted": False,
        "origin": version.origin,
        "content": version.content,
    }


def _history_row(resource_pk: int, version: NewVersion, *, deleted: bool) -> dict[str, Any]:
    return {
        "resource_pk": resource_pk,
        "version_id": version.version_id,
        "last_updated": version.last_updated,
        "deleted": deleted,
        "method": version.method,
        "content": version.content,
    }


def insert_new(versions: Sequence[NewVersion]) -> Work[list[int]]:
    """Store new resources (version 1): rows, history and index rows; their pks, in order."""
    pks: list[int] = []
    for new in versions:
        inserted = yield from execute(_INSERT, _resource_row(new))
        pks.append(int(inserted.scalar()))
    yield from execute_many(
        _INSERT_VERSION,
        [
            (pk, new.version_id, new.last_updated, False, new.method, new.content)
            for pk, new in zip(pks, versions, strict=True)
        ],
    )
    yield from write_index_rows(
        [(pk, new.domain, new.rtype, new.values) for pk, new in zip(pks, versions, strict=True)]
    )
    return pks


class VersionConflict(Exception):
    """The row moved on since the caller read it (only without a lock can this happen)."""


def write(new: NewVersion, *, previous: StoredRow | None) -> Work[StoredRow]:
    """Store `new`: a new resource when `previous` is None, else its next version.

    `previous` is the current row the caller read (locked, in the same unit); the
    update applies only while the row is still at that version.
    """
    if previous is None:
        [pk] = yield from insert_new([new])
        return StoredRow(
            pk, new.domain, new.rtype, new.id, new.version_id, new.last_updated, False,
            new.origin, new.content,
        )  # fmt: skip
    yield from _advance(previous, new, deleted=False, content=new.content)
    yield from write_index(previous.pk, new.domain, new.rtype, new.values)
    return previous._replace(
        version_id=new.version_id,
        last_updated=new.last_updated,
        deleted=False,
        content=new.content,
    )


def delete(row: StoredRow, *, now: datetime) -> Work[StoredRow]:
    """Mark a locked resource deleted: a new, empty version; search no longer finds it."""
    gone = NewVersion(
        domain=row.domain,
        rtype=row.rtype,
        id=row.id,
        version_id=row.version_id + 1,
        last_updated=now,
        origin=row.origin,
        content="",
        values=IndexValues((), (), (), (), ()),
        method="DELETE",
        resource={},
    )
    # The current row keeps the last live JSON; the history records the deletion.
    yield from _advance(row, gone, deleted=True, content=row.content)
    yield from clear_index(row.pk)
    return row._replace(version_id=gone.version_id, last_updated=now, deleted=True)


def _advance(row: StoredRow, new: NewVersion, *, deleted: bool, content: str) -> Work[None]:
    if new.version_id != row.version_id + 1:
        raise VersionConflict(
            f"{row.rtype}/{row.id}: version {new.version_id} cannot follow {row.version_id}"
        )
    moved = yield from execute(
        _ADVANCE,
        {
            "row_pk": row.pk,
            "previous": row.version_id,
            "new_version": new.version_id,
            "new_last_updated": new.last_updated,
            "new_deleted": deleted,
            "new_content": content,
        },
    )
    if moved.rowcount != 1:
        raise VersionConflict(f"{row.rtype}/{row.id} is no longer at version {row.version_id}")
    yield from execute(_INSERT_VERSION, _history_row(row.pk, new, deleted=deleted))
