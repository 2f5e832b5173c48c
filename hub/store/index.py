"""Writing and reading the search-index rows of resources (`idx_*` tables).

The rows always describe the CURRENT version of a resource: `write_index`
replaces them on every create and update, `clear_index` drops them on delete.
`load_chain_targets` reads them back as `IndexValues`, the same shape
`extract()` produces, so chained subscription matching can use stored targets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Table, delete, false, insert, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from hub.fhir.extract import DateRow, IndexValues, ReferenceRow, StringRow, TokenRow, UriRow
from hub.fhir.match import Target
from hub.store.tables import (
    DateIndex,
    ReferenceIndex,
    StoredResource,
    StringIndex,
    TokenIndex,
    UriIndex,
)

TOKEN: Table = TokenIndex.__table__  # type: ignore[attr-defined]
STRING: Table = StringIndex.__table__  # type: ignore[attr-defined]
REFERENCE: Table = ReferenceIndex.__table__  # type: ignore[attr-defined]
DATE: Table = DateIndex.__table__  # type: ignore[attr-defined]
URI: Table = UriIndex.__table__  # type: ignore[attr-defined]
RESOURCES: Table = StoredResource.__table__  # type: ignore[attr-defined]

INDEX_TABLES: tuple[Table, ...] = (TOKEN, STRING, REFERENCE, DATE, URI)
# The columns of each table that hold one row's values, in `IndexValues` row order.
_ROW_COLUMNS: dict[str, tuple[str, ...]] = {
    "idx_token": TokenRow._fields,
    "idx_string": StringRow._fields,
    "idx_reference": ReferenceRow._fields,
    "idx_date": DateRow._fields,
    "idx_uri": UriRow._fields,
}


def _rows_by_table(values: IndexValues) -> Iterable[tuple[Table, Sequence[tuple[Any, ...]]]]:
    return zip(
        INDEX_TABLES,
        (values.tokens, values.strings, values.references, values.dates, values.uris),
        strict=True,
    )


async def clear_index(session: AsyncSession, resource_pk: int) -> None:
    """Remove every index row of a resource (it was deleted, or is being re-indexed)."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        # One round trip: data-modifying CTEs delete from all five tables at once.
        statement = select(literal(1))
        for table in INDEX_TABLES:
            statement = statement.add_cte(
                delete(table).where(table.c.resource_pk == resource_pk).cte(f"d_{table.name}")
            )
        await connection.execute(statement)
        return
    for table in INDEX_TABLES:
        await connection.execute(delete(table).where(table.c.resource_pk == resource_pk))


async def write_index(
    session: AsyncSession,
    resource_pk: int,
    domain: str,
    rtype: str,
    values: IndexValues,
    *,
    new: bool = False,
) -> None:
    """Replace the index rows of a resource with `values` (delete, then bulk insert).

    A `new` resource has no rows yet: skipping the delete saves one statement per
    index table, a fifth of a create's SQL.
    """
    if not new:
        await clear_index(session, resource_pk)
    connection = await session.connection()
    for table, rows in _rows_by_table(values):
        if not rows:
            continue
        columns = _ROW_COLUMNS[table.name]
        await connection.execute(
            insert(table),
            [
                {"resource_pk": resource_pk, "domain": domain, "rtype": rtype}
                | dict(zip(columns, row, strict=True))
                for row in rows
            ],
        )


async def load_chain_targets(
    session: AsyncSession, domain: str, refs: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Target]:
    """The current, non-deleted resources `(type, id)` of `domain`: index values and origin.

    For `hub.fhir.match.matches`, so that a chain in a Subscription's criteria is
    narrowed to the targets its owner may read, as a search would be. References to
    missing or deleted resources are absent from the result.
    """
    wanted = sorted(set(refs))
    if not wanted:
        return {}
    connection = await session.connection()
    found = await connection.execute(
        select(RESOURCES.c.pk, RESOURCES.c.rtype, RESOURCES.c.id, RESOURCES.c.origin).where(
            RESOURCES.c.domain == domain,
            RESOURCES.c.deleted == false(),
            tuple_(RESOURCES.c.rtype, RESOURCES.c.id).in_(wanted),
        )
    )
    identity = {pk: ((rtype, id_), origin) for pk, rtype, id_, origin in found.all()}
    if not identity:
        return {}
    collected: dict[int, dict[str, list[tuple[Any, ...]]]] = defaultdict(lambda: defaultdict(list))
    for table in INDEX_TABLES:
        columns = [table.c[name] for name in _ROW_COLUMNS[table.name]]
        rows = await connection.execute(
            select(table.c.resource_pk, *columns)
            .where(table.c.resource_pk.in_(list(identity)))
            .order_by(table.c.pk)
        )
        for resource_pk, *row in rows.all():
            collected[resource_pk][table.name].append(tuple(row))
    return {
        ref: Target(_values(collected.get(pk, {})), origin)
        for pk, (ref, origin) in identity.items()
    }


def _values(rows: dict[str, list[tuple[Any, ...]]]) -> IndexValues:
    return IndexValues(
        tokens=tuple(TokenRow(*row) for row in rows.get("idx_token", ())),
        strings=tuple(StringRow(*row) for row in rows.get("idx_string", ())),
        references=tuple(ReferenceRow(*row) for row in rows.get("idx_reference", ())),
        dates=tuple(DateRow(*row) for row in rows.get("idx_date", ())),
        uris=tuple(UriRow(*row) for row in rows.get("idx_uri", ())),
    )
