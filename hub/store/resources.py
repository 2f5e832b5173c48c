"""The resource repository: current versions, full history, and their index rows.

Every function takes the caller's session, so a write, its history row, its
index rows, its AuditEvent and its outbox rows all commit in one transaction
(DESIGN.md §6). Nothing here decides permissions or validates content.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from hub.fhir.extract import IndexValues
from hub.store.index import clear_index, write_index
from hub.store.tables import ResourceVersion, StoredResource


async def current(
    session: AsyncSession, domain: str, rtype: str, id: str, *, for_update: bool = False
) -> StoredResource | None:
    """The current row of a resource (deleted or not), locked when `for_update`."""
    statement = select(StoredResource).where(
        col(StoredResource.domain) == domain,
        col(StoredResource.rtype) == rtype,
        col(StoredResource.id) == id,
    )
    if for_update:
        statement = statement.with_for_update()
    return (await session.execute(statement)).scalar_one_or_none()


async def version(
    session: AsyncSession, domain: str, rtype: str, id: str, version_id: int
) -> tuple[StoredResource, ResourceVersion] | None:
    statement = (
        select(StoredResource, ResourceVersion)
        .join(ResourceVersion, col(ResourceVersion.resource_pk) == col(StoredResource.pk))
        .where(
            col(StoredResource.domain) == domain,
            col(StoredResource.rtype) == rtype,
            col(StoredResource.id) == id,
            col(ResourceVersion.version_id) == version_id,
        )
    )
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else (row[0], row[1])


async def history(
    session: AsyncSession,
    resource: StoredResource,
    *,
    count: int,
    before_version: int | None = None,
    since: datetime | None = None,
) -> Sequence[ResourceVersion]:
    """Versions newest first; `before_version` pages backwards through them."""
    conditions = [col(ResourceVersion.resource_pk) == resource.pk]
    if before_version is not None:
        conditions.append(col(ResourceVersion.version_id) < before_version)
    if since is not None:
        conditions.append(col(ResourceVersion.last_updated) >= since)
    statement = (
        select(ResourceVersion)
        .where(and_(*conditions))
        .order_by(col(ResourceVersion.version_id).desc())
        .limit(count)
    )
    return (await session.execute(statement)).scalars().all()


async def insert(
    session: AsyncSession,
    *,
    domain: str,
    rtype: str,
    id: str,
    content: str,
    last_updated: datetime,
    origin: str | None,
    values: IndexValues,
) -> StoredResource:
    row = StoredResource(
        domain=domain,
        rtype=rtype,
        id=id,
        version_id=1,
        last_updated=last_updated,
        origin=origin,
        content=content,
    )
    session.add(row)
    await session.flush()
    assert row.pk is not None
    session.add(
        ResourceVersion(
            resource_pk=row.pk,
            version_id=1,
            last_updated=last_updated,
            method="POST",
            content=content,
        )
    )
    await write_index(session, row.pk, domain, rtype, values, new=True)
    return row


def _next_version(
    session: AsyncSession, row: StoredResource, *, last_updated: datetime, method: str, content: str
) -> None:
    """Advance a locked row to its next version and record that version in the history."""
    assert row.pk is not None
    row.version_id += 1
    row.last_updated = last_updated
    row.deleted = method == "DELETE"
    if not row.deleted:
        row.content = content
    session.add(row)
    session.add(
        ResourceVersion(
            resource_pk=row.pk,
            version_id=row.version_id,
            last_updated=last_updated,
            deleted=row.deleted,
            method=method,
            content=content,
        )
    )


async def replace(
    session: AsyncSession,
    row: StoredResource,
    *,
    content: str,
    last_updated: datetime,
    values: IndexValues,
    method: str = "PUT",
) -> StoredResource:
    """Store a new version of a resource the caller holds locked (`current(for_update=True)`)."""
    _next_version(session, row, last_updated=last_updated, method=method, content=content)
    await session.flush()
    assert row.pk is not None
    await write_index(session, row.pk, row.domain, row.rtype, values)
    return row


async def delete(
    session: AsyncSession, row: StoredResource, *, last_updated: datetime
) -> StoredResource:
    """Mark a locked resource deleted: a new, empty version; search no longer finds it."""
    _next_version(session, row, last_updated=last_updated, method="DELETE", content="")
    await session.flush()
    assert row.pk is not None
    await clear_index(session, row.pk)
    return row
