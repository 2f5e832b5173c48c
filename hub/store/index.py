"""Writing and reading the search-index rows of resources (`idx_*` tables).

The rows always describe the CURRENT version of a resource: `write_index`
adds them on create and replaces them on update, `clear_index` drops them on
delete. One `executemany` per table. `load_chain_targets` reads them back as
`IndexValues`, the shape `extract()` produces, so chained subscription
matching can use stored targets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Table, bindparam, delete, false, insert, select, tuple_

from hub.fhir.extract import DateRow, IndexValues, ReferenceRow, StringRow, TokenRow, UriRow
from hub.fhir.match import Target
from hub.store.sql import Prepared, Work, execute, execute_many
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
ROW_COLUMNS: dict[str, tuple[str, ...]] = {
    "idx_token": TokenRow._fields,
    "idx_string": StringRow._fields,
    "idx_reference": ReferenceRow._fields,
    "idx_date": DateRow._fields,
    "idx_uri": UriRow._fields,
}
_OWNER_COLUMNS = ("resource_pk", "domain", "rtype")

_INSERTS = {
    table.name: Prepared(insert(table), column_keys=_OWNER_COLUMNS + ROW_COLUMNS[table.name])
    for table in INDEX_TABLES
}
_CLEARS = tuple(
    Prepared(delete(table).where(table.c.resource_pk == bindparam("pk"))) for table in INDEX_TABLES
)


def _rows_by_table(values: IndexValues) -> Iterable[tuple[Table, Sequence[tuple[Any, ...]]]]:
    return zip(
        INDEX_TABLES,
        (values.tokens, values.strings, values.references, values.dates, values.uris),
        strict=True,
    )


def clear_index(resource_pk: int) -> Work[None]:
    """Remove every index row of a resource (it was deleted, or is being re-indexed)."""
    for statement in _CLEARS:
        yield from execute(statement, {"pk": resource_pk})


def write_index(
    resource_pk: int, domain: str, rtype: str, values: IndexValues, *, new: bool = False
) -> Work[None]:
    """Replace the index rows of a resource with `values`; a `new` one has none to clear."""
    if not new:
        yield from clear_index(resource_pk)
    yield from write_index_rows([(resource_pk, domain, rtype, values)])


def write_index_rows(owners: Sequence[tuple[int, str, str, IndexValues]]) -> Work[None]:
    """The index rows of several new resources: one statement per table for all of them."""
    by_table: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for resource_pk, domain, rtype, values in owners:
        for table, rows in _rows_by_table(values):
            if rows:
                by_table[table.name] += ((resource_pk, domain, rtype, *row) for row in rows)
    for table in INDEX_TABLES:
        yield from execute_many(_INSERTS[table.name], by_table.get(table.name, ()))


def load_chain_targets(
    domain: str, refs: Iterable[tuple[str, str]]
) -> Work[dict[tuple[str, str], Target]]:
    """The current, non-deleted resources `(type, id)` of `domain`: index values and origin.

    For `hub.fhir.match.matches`, so that a chain in a Subscription's criteria is
    narrowed to the targets its owner may read, as a search would be. References to
    missing or deleted resources are absent from the result.
    """
    wanted = sorted(set(refs))
    if not wanted:
        return {}
    found = yield from execute(
        select(RESOURCES.c.pk, RESOURCES.c.rtype, RESOURCES.c.id, RESOURCES.c.origin).where(
            RESOURCES.c.domain == domain,
            RESOURCES.c.deleted == false(),
            tuple_(RESOURCES.c.rtype, RESOURCES.c.id).in_(wanted),
        )
    )
    identity = {pk: ((rtype, id_), origin) for pk, rtype, id_, origin in found.rows}
    if not identity:
        return {}
    collected: dict[int, dict[str, list[tuple[Any, ...]]]] = defaultdict(lambda: defaultdict(list))
    for table in INDEX_TABLES:
        columns = [table.c[name] for name in ROW_COLUMNS[table.name]]
        rows = yield from execute(
            select(table.c.resource_pk, *columns)
            .where(table.c.resource_pk.in_(list(identity)))
            .order_by(table.c.pk)
        )
        for resource_pk, *row in rows.rows:
            collected[resource_pk][table.name].append(tuple(row))
    return {
        ref: Target(index_values(collected.get(pk, {})), origin)
        for pk, (ref, origin) in identity.items()
    }


def index_values(rows: dict[str, list[tuple[Any, ...]]]) -> IndexValues:
    """`IndexValues` from stored rows by table name (their value columns only)."""
    return IndexValues(
        tokens=tuple(TokenRow(*row) for row in rows.get("idx_token", ())),
        strings=tuple(StringRow(*row) for row in rows.get("idx_string", ())),
        references=tuple(ReferenceRow(*row) for row in rows.get("idx_reference", ())),
        dates=tuple(DateRow(*row) for row in rows.get("idx_date", ())),
        uris=tuple(UriRow(*row) for row in rows.get("idx_uri", ())),
    )
