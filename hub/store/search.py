"""Search: a parsed `Query` compiled to SQL over `resources` and the index tables.

Every filter is a semi-join on an index table (the resource JSON is never
scanned); `_id` and `_lastUpdated` are columns of `resources`. The semantics of
each condition mirror `hub.fhir.match`, which evaluates the same `Query` in
memory for subscriptions; a property test keeps the two in agreement.

Paging is keyset, not offset: rows are ordered by the sort keys and then `pk`
(creation order, stable under updates; AuditEvents newest first), and a page
starts strictly after (or, going back, before) the boundary row's sort values.
Inserts and deletes between requests therefore never shift or repeat rows.

A chained clause (`Task?instantiates.publisherId=x`) looks into the referenced
resources, so it is narrowed like the search itself: it only matches targets
whose origin the caller may read (`target_origins`), or a search could probe
the fields of resources the caller cannot read.

The cursor is `base64url(json) "." base64url(check)`: the json holds the
direction and the boundary values, the check is a BLAKE2b digest over them and
the query's filters and sort. It is tamper-evident, not secret: it grants
nothing, since every filter and the origin narrowing are applied again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    Table,
    and_,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
)

from hub.fhir import jsonio
from hub.fhir.extract import MAX_URL, normalize
from hub.fhir.match import OriginsOf, unrestricted
from hub.fhir.outcome import bad_request
from hub.fhir.query import (
    ID as _ID,
)
from hub.fhir.query import (
    Clause,
    DateValue,
    MissingValue,
    Query,
    ReferenceValue,
    TextValue,
    TokenValue,
    UriValue,
    Value,
)
from hub.fhir.search_params import params_for
from hub.store.index import DATE, REFERENCE, RESOURCES, STRING, TOKEN, URI
from hub.store.resources import StoredRow
from hub.store.sql import Row, Work, execute

# Types whose default order is newest first.
_NEWEST_FIRST = frozenset({"AuditEvent"})
_TABLES: dict[str, Table] = {
    "token": TOKEN, "string": STRING, "reference": REFERENCE, "date": DATE, "uri": URI,
    "phonetic": TOKEN,
}  # fmt: skip


@dataclass(frozen=True)
class SearchPage:
    rows: list[StoredRow]
    total: int | None
    next_cursor: str | None
    previous_cursor: str | None


@dataclass(frozen=True)
class _SortKey:
    expression: ColumnElement[Any]
    descending: bool
    nullable: bool


class _Range:
    """The SQL for "the row's range [low, high)" compared with a bound.

    A `resources.last_updated` instant is the range [t, t + 1 µs), so `high > x`
    becomes `t >= x` and `high <= x` becomes `t < x`.
    """

    def __init__(self, low: ColumnElement[Any], high: ColumnElement[Any] | None) -> None:
        self.low, self.high = low, high

    def low_ge(self, bound: datetime) -> ColumnElement[bool]:
        return self.low >= bound

    def low_lt(self, bound: datetime) -> ColumnElement[bool]:
        return self.low < bound

    def high_gt(self, bound: datetime) -> ColumnElement[bool]:
        return self.high > bound if self.high is not None else self.low >= bound

    def high_le(self, bound: datetime) -> ColumnElement[bool]:
        return self.high <= bound if self.high is not None else self.low < bound


def _date_condition(value: DateValue, row: _Range) -> ColumnElement[bool]:
    """`hub.fhir.match.date_matches` as SQL."""
    contained = and_(row.low_ge(value.low), row.high_le(value.high))
    conditions: dict[str, ColumnElement[bool]] = {
        "eq": contained,
        "ne": not_(contained),
        "gt": row.high_gt(value.high),
        "lt": row.low_lt(value.low),
        "ge": or_(row.high_gt(value.high), contained),
        "le": or_(row.low_lt(value.low), contained),
        "sa": row.low_ge(value.high),
        "eb": row.high_le(value.low),
    }
    return conditions[value.prefix]


def _next_prefix(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix`."""
    for index in range(len(prefix) - 1, -1, -1):
        code = ord(prefix[index]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000  # Skip surrogates: they cannot be stored as text.
        if code <= 0x10FFFF:
            return prefix[:index] + chr(code)
    return None


def _starts_with(column: ColumnElement[str], prefix: str) -> ColumnElement[bool]:
    """A prefix test as a range, so an index on `column` (byte order) answers it."""
    upper = _next_prefix(prefix)
    lower = column >= prefix
    return and_(lower, column < upper) if upper is not None else lower


def _value_condition(clause: Clause, table: FromClause, value: Value) -> ColumnElement[bool]:
    c, modifier = table.c, clause.modifier
    if isinstance(value, TokenValue):
        conditions = [] if value.code is None else [c.code == value.code]
        if value.system == "":
            conditions.append(c.system.is_(None))
        elif value.system is not None:
            conditions.append(c.system == value.system)
        return and_(*conditions)
    if isinstance(value, TextValue) and clause.param.type == "token":
        return func.substr(c.text, 1, len(value.norm)) == value.norm
    if isinstance(value, TextValue):
        if modifier == "exact":
            return and_(c.norm == normalize(value.text), c.exact == value.text)
        if modifier == "contains":
            return c.norm.contains(value.norm, autoescape=True)
        return _starts_with(c.norm, value.norm)
    if isinstance(value, ReferenceValue):
        return _reference_condition(table, value)
    if isinstance(value, DateValue):
        return _date_condition(value, _Range(c.low, c.high))
    if isinstance(value, UriValue):
        if modifier == "below":
            return func.substr(c.value, 1, len(value.value)) == value.value
        if modifier == "above":
            return func.substr(literal(value.value), 1, func.length(c.value)) == c.value
        return c.value == value.value
    raise TypeError(f"unexpected search value {value!r}")


def _reference_condition(table: FromClause, value: ReferenceValue) -> ColumnElement[bool]:
    """`hub.fhir.match.reference_matches` as SQL."""
    c = table.c
    if value.url is not None:
        if value.ref_id is None:
            return c.url == value.url
        same_target = and_(c.url.is_(None), c.ref_type == value.ref_type, c.ref_id == value.ref_id)
        return or_(c.url == value.url, same_target)
    if value.ref_type is None:
        return c.ref_id == value.ref_id
    return and_(c.ref_id == value.ref_id, c.ref_type == value.ref_type)


def _has_row(
    row: FromClause,
    owner_pk: ColumnElement[Any],
    domain: str,
    rtype: str,
    param: str,
    condition: ColumnElement[bool] | None = None,
) -> ColumnElement[bool]:
    """The resource `owner_pk` has an index row (of alias `row`) of `param` [meeting `condition`].

    Written as `pk IN (SELECT resource_pk …)`, an uncorrelated semi-join: SQLite
    then reads the matching index rows through the lookup index and fetches
    resources by primary key, instead of probing the index for every resource
    of the type as it does for a correlated EXISTS. PostgreSQL plans both alike.
    """
    where = [row.c.domain == domain, row.c.rtype == rtype, row.c.param == param]
    if condition is not None:
        where.append(condition)
    return owner_pk.in_(select(row.c.resource_pk).where(*where))


def _clause_condition(
    clause: Clause, owner: FromClause, domain: str, rtype: str, target_origins: OriginsOf
) -> ColumnElement[bool]:
    """The SQL of one clause for the resource row `owner` (`resources` or an alias of it)."""
    param = clause.param
    if clause.chain is not None:
        return _chain_condition(clause, owner, domain, rtype, target_origins)
    if param.column == "id":
        ids = [value.code for value in clause.values if isinstance(value, TokenValue)]
        return owner.c.id.not_in(ids) if clause.modifier == "not" else owner.c.id.in_(ids)
    if param.column == "last_updated":
        point = _Range(owner.c.last_updated, None)
        dates = [value for value in clause.values if isinstance(value, DateValue)]
        return or_(*(_date_condition(value, point) for value in dates))
    row = _TABLES[param.kind].alias()
    first = clause.values[0]
    if isinstance(first, MissingValue):
        present = _has_row(row, owner.c.pk, domain, rtype, param.code)
        return not_(present) if first.missing else present
    condition = or_(*(_value_condition(clause, row, value) for value in clause.values))
    found = _has_row(row, owner.c.pk, domain, rtype, param.code, condition)
    return not_(found) if clause.modifier == "not" else found


def _chain_condition(
    clause: Clause, owner: FromClause, domain: str, rtype: str, target_origins: OriginsOf
) -> ColumnElement[bool]:
    """The resource references a live, readable `target_type` resource meeting the inner clause."""
    assert clause.chain is not None
    assert clause.target_type is not None
    origins = target_origins(clause.target_type)
    if origins is not None and not origins:
        return false()  # The caller may read no resource of the target type.
    reference = REFERENCE.alias()
    target = RESOURCES.alias()
    inner = _clause_condition(clause.chain, target, domain, clause.target_type, target_origins)
    # `hub.fhir.match.origin_allowed`: a target without origin only when any origin is readable.
    readable = [] if origins is None else [target.c.origin.in_(sorted(origins))]
    return exists(
        select(literal(1))
        .select_from(reference)
        .join(
            target,
            and_(
                target.c.domain == domain,
                target.c.rtype == clause.target_type,
                target.c.id == reference.c.ref_id,
            ),
        )
        .where(
            reference.c.resource_pk == owner.c.pk,
            reference.c.domain == domain,
            reference.c.rtype == rtype,
            reference.c.param == clause.param.code,
            reference.c.ref_type == clause.target_type,
            target.c.deleted == false(),
            *readable,
            inner,
        )
    )


def _filters(
    query: Query, domain: str, allowed_origins: frozenset[str] | None, target_origins: OriginsOf
) -> list[ColumnElement[bool]]:
    owner = RESOURCES
    filters = [
        owner.c.domain == domain,
        owner.c.rtype == query.resource_type,
        owner.c.deleted == false(),
    ]
    if allowed_origins is not None:
        filters.append(owner.c.origin.in_(sorted(allowed_origins)))
    filters.extend(
        _clause_condition(clause, owner, domain, query.resource_type, target_origins)
        for clause in query.clauses
    )
    return filters


def _sort_value(kind: str, table: Table) -> ColumnElement[Any]:
    """What one index row of a parameter of `kind` sorts by."""
    if kind == "date":
        return table.c.low  # the start of the row's range
    if kind == "string":
        return table.c.norm  # case and accents ignored, as string search does
    if kind == "token":
        return table.c.code  # the code, whatever its system (text-only rows have none)
    # A reference as `Type/id` (relative or absolute alike), else its URL.
    return func.coalesce(table.c.ref_type + "/" + table.c.ref_id, table.c.url)


def _sort_keys(query: Query, domain: str) -> list[_SortKey]:
    """The ORDER BY keys of `query`: its `_sort`, then `pk` (creation order) to break ties.

    A parameter can hold several values (a Patient's names, a Task's codes), so a
    resource sorts by its lowest value going up (`_sort=family`) and by its highest
    going down (`_sort=-family`); a resource without a value sorts last either way.
    """
    keys: list[_SortKey] = []
    params = params_for(query.resource_type)
    for key in query.sort:
        if key.code == "_id":
            keys.append(_SortKey(RESOURCES.c.id, key.descending, nullable=False))
        elif key.code == "_lastUpdated":
            keys.append(_SortKey(RESOURCES.c.last_updated, key.descending, nullable=False))
        else:
            kind = params[key.code].kind
            table = _TABLES[kind]
            extreme = func.max if key.descending else func.min
            value = (
                select(extreme(_sort_value(kind, table)))
                .where(
                    table.c.resource_pk == RESOURCES.c.pk,
                    table.c.domain == domain,
                    table.c.rtype == query.resource_type,
                    table.c.param == key.code,
                )
                .scalar_subquery()
            )
            keys.append(_SortKey(value, key.descending, nullable=True))
    newest_first = query.resource_type in _NEWEST_FIRST
    keys.append(_SortKey(RESOURCES.c.pk, newest_first, nullable=False))
    return keys


def _order(key: _SortKey, backwards: bool) -> ColumnElement[Any]:
    descending = key.descending != backwards
    ordered = key.expression.desc() if descending else key.expression.asc()
    if not key.nullable:
        return ordered
    # Values absent sort last going forwards, so first when walking backwards.
    return ordered.nulls_first() if backwards else ordered.nulls_last()


def _after(key: _SortKey, bound: Any, backwards: bool) -> ColumnElement[bool]:
    """Rows strictly after `bound` on this key, in the walking direction."""
    nulls_last = not backwards
    if bound is None:
        return false() if nulls_last else key.expression.is_not(None)
    descending = key.descending != backwards
    beyond: ColumnElement[bool] = key.expression < bound if descending else key.expression > bound
    if key.nullable and nulls_last:
        return or_(beyond, key.expression.is_(None))
    return beyond


def _equal(key: _SortKey, bound: Any) -> ColumnElement[bool]:
    return key.expression.is_(None) if bound is None else key.expression == bound


def _beyond(
    keys: Sequence[_SortKey], bounds: Sequence[Any], backwards: bool
) -> ColumnElement[bool]:
    """Lexicographic "after the boundary row" over all keys (the keyset predicate)."""
    alternatives = []
    for index, key in enumerate(keys):
        equal_before = [_equal(keys[j], bounds[j]) for j in range(index)]
        alternatives.append(and_(*equal_before, _after(key, bounds[index], backwards)))
    return or_(*alternatives)


def _fingerprint(query: Query) -> bytes:
    filters = [(clause.name, clause.innermost.raw) for clause in query.clauses]
    sort = [(key.code, key.descending) for key in query.sort]
    return json.dumps([query.resource_type, filters, sort]).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _check(query: Query, payload: bytes) -> bytes:
    return hashlib.blake2b(_fingerprint(query) + b"\0" + payload, digest_size=12).digest()


def _encode_value(value: Any) -> Any:
    return {"t": value.isoformat()} if isinstance(value, datetime) else value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) != {"t"} or not isinstance(value["t"], str):
            raise ValueError("not an instant")
        return datetime.fromisoformat(value["t"])
    return value


def encode_cursor(query: Query, bounds: Sequence[Any], *, backwards: bool) -> str:
    payload = json.dumps(
        {"d": "prev" if backwards else "next", "k": [_encode_value(b) for b in bounds]},
        separators=(",", ":"),
    ).encode()
    return f"{_b64(payload)}.{_b64(_check(query, payload))}"


_MAX_CURSOR = 4096  # characters: a real cursor holds a few short values
_MAX_KEY = 2**63 - 1  # `pk` is a BIGINT
_MAX_TEXT = 2 * MAX_URL  # characters: more than any sortable index value holds
_SURROGATE = re.compile("[\ud800-\udfff]")


def _bound_fits(kind: str, value: Any) -> bool:
    """Whether a cursor's boundary value is one the sort key can hold (a forged one may not)."""
    if kind == "pk":
        return type(value) is int and 0 <= value <= _MAX_KEY
    if kind == "id":
        return isinstance(value, str) and _ID.fullmatch(value) is not None
    if value is None:
        return kind in ("date", "text")
    if kind == "text":
        return isinstance(value, str) and len(value) <= _MAX_TEXT and _storable(value)
    return isinstance(value, datetime) and value.tzinfo is None


def _storable(text: str) -> bool:
    """No NUL and no lone surrogate: text that every database can compare with."""
    return "\x00" not in text and _SURROGATE.search(text) is None


_COLUMN_BOUNDS = {"_id": "id", "_lastUpdated": "instant"}


def _bound_kinds(query: Query) -> list[str]:
    """What each key of `_sort_keys(query)` holds: `id`, `instant`, `pk`, or a `date` or
    `text` that may be null (a parameter's lowest or highest value, if any)."""
    params = params_for(query.resource_type)
    kinds = [
        _COLUMN_BOUNDS.get(key.code) or ("date" if params[key.code].kind == "date" else "text")
        for key in query.sort
    ]
    return [*kinds, "pk"]


def decode_cursor(query: Query, cursor: str, size: int) -> tuple[list[Any], bool]:
    """The boundary values and direction (backwards?) of `cursor`, or a 400.

    The check is not secret, so a cursor with a right check may still hold anything:
    every value is checked against the sort key it bounds before it reaches SQL.
    """
    kinds = _bound_kinds(query)
    try:
        if len(cursor) > _MAX_CURSOR or size != len(kinds):
            raise ValueError("size")
        payload_text, _, check_text = cursor.partition(".")
        payload = _unb64(payload_text)
        if _unb64(check_text) != _check(query, payload):
            raise ValueError("check failed")
        document = jsonio.loads(payload)
        bounds = [_decode_value(value) for value in document["k"]]
        if len(bounds) != size or document["d"] not in ("next", "prev"):
            raise ValueError("shape")
        if not all(_bound_fits(kind, bound) for kind, bound in zip(kinds, bounds, strict=True)):
            raise ValueError("values")
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, RecursionError):
        raise bad_request(
            "The paging cursor is invalid, or belongs to another search", "_cursor"
        ) from None
    return bounds, document["d"] == "prev"


def _nothing(_rtype: str) -> frozenset[str]:
    return frozenset()


def search(
    *,
    domain: str,
    query: Query,
    allowed_origins: frozenset[str] | None,
    page_size: int,
    target_origins: OriginsOf | None = None,
) -> Work[SearchPage]:
    """One page of the resources of `domain` that match `query`.

    `allowed_origins` narrows to resources whose resource-origin Device is in
    the set (None = no narrowing), in SQL, so totals and pages stay right.
    `target_origins(type)` likewise narrows the targets a chained clause looks
    into (None = any, empty = none). Left out, it fails closed: chains are
    unrestricted only for an unrestricted search (`allowed_origins` None, the
    hub's own searches) and match nothing otherwise.
    """
    if target_origins is None:
        target_origins = unrestricted if allowed_origins is None else _nothing
    filters = _filters(query, domain, allowed_origins, target_origins)
    total = None
    if query.total != "none" or query.summary == "count":
        counted = select(func.count()).select_from(RESOURCES).where(*filters)
        total = int((yield from execute(counted)).scalar())
    if query.summary == "count" or page_size <= 0:
        return SearchPage([], total, None, None)
    keys = _sort_keys(query, domain)
    bounds: list[Any] | None = None
    backwards = False
    if query.cursor:
        bounds, backwards = decode_cursor(query, query.cursor, len(keys))
    statement: Select[Any] = select(
        *RESOURCES.c, *(key.expression.label(f"sort_{i}") for i, key in enumerate(keys))
    ).where(*filters)
    if bounds is not None:
        statement = statement.where(_beyond(keys, bounds, backwards))
    statement = statement.order_by(*(_order(key, backwards) for key in keys))
    fetched = (yield from execute(statement.limit(page_size + 1))).rows
    more = len(fetched) > page_size
    fetched = fetched[:page_size]
    if backwards:
        fetched.reverse()
    width = len(RESOURCES.c)
    rows = [StoredRow(*row[:width]) for row in fetched]
    if not fetched:
        return SearchPage(rows, total, None, None)

    def boundary(row: Row) -> list[Any]:
        return list(row[width:])

    has_next = more if not backwards else True
    has_previous = more if backwards else bounds is not None
    return SearchPage(
        rows,
        total,
        encode_cursor(query, boundary(fetched[-1]), backwards=False) if has_next else None,
        encode_cursor(query, boundary(fetched[0]), backwards=True) if has_previous else None,
    )
