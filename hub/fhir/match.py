"""In-memory evaluation of a `Query` against one resource, for subscriptions.

`matches(query, resource, values, resolve=…, readable=…)` is true exactly when
a search with `query` would return the resource: it applies the same rules to
the same `IndexValues` that `hub.store.search` compiles to SQL (result controls
such as `_sort` or `_count` do not filter, so they are ignored). A property test
keeps the two in agreement.

A chained clause only looks into targets the reader may read: `resolve` gives a
target's index values and origin, `readable(type)` the origins of that type the
reader may read (None = any, empty = none), exactly as `hub.store.search` is
given them for the searching caller. For a Subscription the reader is its owner.

For the subscription registry:

- `chain_targets(query, values)` lists the `(type, id)` references a chained
  clause will ask `resolve` for, so they can be loaded in one query first.
- `index_keys(values)` are the keys a resource offers; `required_key_sets(query)`
  are, per AND clause that is a plain token or reference, the OR-set of keys of
  which a matching resource has at least one. `required_keys(query)` picks one
  such set (the smallest) or None. A registry can file each subscription under
  every key of its `required_keys` (or under "always test" when None), and for
  a changed resource test only the subscriptions filed under its `index_keys`:
  `matches` implies `required_keys(query) & index_keys(values)` is non-empty.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hub.fhir.extract import IndexValues, ReferenceRow, TokenRow, instant
from hub.fhir.query import (
    Clause,
    DateValue,
    MissingValue,
    Query,
    ReferenceValue,
    TextValue,
    TokenValue,
    UriValue,
)


@dataclass(frozen=True)
class Target:
    """A chain target as `resolve` finds it: its index values and resource-origin Device id."""

    values: IndexValues
    origin: str | None


Resolver = Callable[[str, str], Target | None]
# The origins of a resource type the reader may read: None = any, empty = none.
OriginsOf = Callable[[str], frozenset[str] | None]
# (parameter code, kind, value); kind is "token" (a code), "reference" (an id) or "url".
Key = tuple[str, str, str]

_ONE_MICROSECOND = timedelta(microseconds=1)


def unrestricted(_rtype: str) -> frozenset[str] | None:
    """`OriginsOf` for a reader that may read every origin of every type (the hub itself)."""
    return None


def origin_allowed(origins: frozenset[str] | None, origin: str | None) -> bool:
    """Whether a resource of `origin` is among `origins`; one without origin only under None."""
    return origins is None or (origin is not None and origin in origins)


def date_matches(
    prefix: str, low: datetime, high: datetime, r_low: datetime, r_high: datetime
) -> bool:
    """Whether the resource range `[r_low, r_high)` satisfies `prefix` + search range `[low, high)`.

    FHIR R4 semantics: eq = the search range contains the resource range; gt/lt
    = the resource range reaches past the end / before the start of the search
    range; ge/le = gt/lt or eq; sa/eb = wholly after / before; ne = not eq.
    """
    contained = low <= r_low and r_high <= high
    if prefix == "eq":
        return contained
    if prefix == "ne":
        return not contained
    if prefix == "gt":
        return r_high > high
    if prefix == "lt":
        return r_low < low
    if prefix == "ge":
        return r_high > high or contained
    if prefix == "le":
        return r_low < low or contained
    if prefix == "sa":
        return r_low >= high
    if prefix == "eb":
        return r_high <= low
    raise ValueError(f"unknown date prefix {prefix}")


def token_matches(row: TokenRow, value: TokenValue) -> bool:
    if value.code is not None and row.code != value.code:
        return False
    if value.system is None:
        return True
    return row.system is None if value.system == "" else row.system == value.system


def reference_matches(row: ReferenceRow, value: ReferenceValue) -> bool:
    if value.url is not None:
        # An absolute URL matches itself, or a relative reference to the same Type/id.
        same_target = value.ref_id is not None and (row.ref_type, row.ref_id) == (
            value.ref_type,
            value.ref_id,
        )
        return row.url == value.url or (row.url is None and same_target)
    return row.ref_id == value.ref_id and value.ref_type in (None, row.ref_type)


def _value_matches(clause: Clause, values: IndexValues, value: object) -> bool:
    code, modifier = clause.param.code, clause.modifier
    if isinstance(value, MissingValue):
        return values.has(code) != value.missing
    if isinstance(value, TokenValue):
        return any(row.param == code and token_matches(row, value) for row in values.tokens)
    if isinstance(value, TextValue) and clause.param.type == "token":
        return any(
            row.param == code and row.text is not None and row.text.startswith(value.norm)
            for row in values.tokens
        )
    if isinstance(value, TextValue):
        rows = [row for row in values.strings if row.param == code]
        if modifier == "exact":
            return any(row.exact == value.text for row in rows)
        if modifier == "contains":
            return any(value.norm in row.norm for row in rows)
        return any(row.norm.startswith(value.norm) for row in rows)
    if isinstance(value, ReferenceValue):
        return any(row.param == code and reference_matches(row, value) for row in values.references)
    if isinstance(value, DateValue):
        return any(
            row.param == code and date_matches(value.prefix, value.low, value.high, *row[1:])
            for row in values.dates
        )
    if isinstance(value, UriValue):
        uris = [row.value for row in values.uris if row.param == code]
        if modifier == "below":
            return any(uri.startswith(value.value) for uri in uris)
        if modifier == "above":
            return any(value.value.startswith(uri) for uri in uris)
        return value.value in uris
    raise TypeError(f"unexpected search value {value!r}")


def _column_matches(clause: Clause, resource: Mapping[str, Any]) -> bool:
    if clause.param.column == "id":
        found = any(
            isinstance(value, TokenValue) and value.code == resource.get("id")
            for value in clause.values
        )
        return found != (clause.modifier == "not")
    updated = instant(str((resource.get("meta") or {}).get("lastUpdated", "")))
    if updated is None:
        return False
    # An instant is the one-microsecond range the database column stands for.
    return any(
        isinstance(value, DateValue)
        and date_matches(value.prefix, value.low, value.high, updated, updated + _ONE_MICROSECOND)
        for value in clause.values
    )


def _clause_matches(
    clause: Clause,
    resource: Mapping[str, Any],
    values: IndexValues,
    resolve: Resolver,
    readable: OriginsOf,
) -> bool:
    if clause.chain is not None:
        inner = clause.chain
        assert clause.target_type is not None
        origins = readable(clause.target_type)
        if origins is not None and not origins:
            return False  # The reader may read no resource of the target type.
        for ref_type, ref_id in _chain_refs(clause, values):
            target = resolve(ref_type, ref_id)
            if (
                target is not None
                and origin_allowed(origins, target.origin)
                and _clause_matches(inner, {}, target.values, resolve, readable)
            ):
                return True
        return False
    if clause.param.column is not None:
        return _column_matches(clause, resource)
    found = any(_value_matches(clause, values, value) for value in clause.values)
    return not found if clause.modifier == "not" else found


def matches(
    query: Query,
    resource: Mapping[str, Any],
    values: IndexValues,
    *,
    resolve: Resolver,
    readable: OriginsOf,
) -> bool:
    """Whether a search with `query` would return `resource` (whose index values are `values`).

    The search is the one of a reader who may read the origins `readable(type)`
    of chained target types (see the module docstring); that the reader may read
    `resource` itself is for the caller to check.
    """
    if resource.get("resourceType") != query.resource_type:
        return False
    return all(
        _clause_matches(clause, resource, values, resolve, readable) for clause in query.clauses
    )


def _chain_refs(clause: Clause, values: IndexValues) -> set[tuple[str, str]]:
    return {
        (row.ref_type, row.ref_id)
        for row in values.references
        if row.param == clause.param.code
        and row.ref_type == clause.target_type
        and row.ref_type is not None
        and row.ref_id is not None
    }


def chain_targets(query: Query, values: IndexValues) -> set[tuple[str, str]]:
    """The `(type, id)`s that `matches` will pass to `resolve` for this resource."""
    targets: set[tuple[str, str]] = set()
    for clause in query.clauses:
        if clause.chain is not None:
            targets |= _chain_refs(clause, values)
    return targets


def index_keys(values: IndexValues) -> frozenset[Key]:
    """The keys a resource with `values` offers to the subscription registry."""
    keys: set[Key] = set()
    for token in values.tokens:
        if token.code is not None:
            keys.add((token.param, "token", token.code))
    for reference in values.references:
        if reference.ref_id is not None:
            keys.add((reference.param, "reference", reference.ref_id))
        if reference.url is not None:
            keys.add((reference.param, "url", reference.url))
    return frozenset(keys)


def _clause_keys(clause: Clause) -> frozenset[Key] | None:
    type_modifier = clause.param.type == "reference" and (clause.modifier or "")[:1].isupper()
    plain = clause.modifier is None or type_modifier
    if clause.chain is not None or clause.param.column is not None or not plain:
        return None
    keys: set[Key] = set()
    for value in clause.values:
        if isinstance(value, TokenValue) and value.code is not None:
            keys.add((clause.param.code, "token", value.code))
        elif isinstance(value, ReferenceValue) and value.ref_id is not None:
            keys.add((clause.param.code, "reference", value.ref_id))
        elif isinstance(value, ReferenceValue) and value.url is not None:
            keys.add((clause.param.code, "url", value.url))
        else:
            return None
    return frozenset(keys)


def required_key_sets(query: Query) -> tuple[frozenset[Key], ...]:
    """Per plain token/reference clause, the keys of which a match has at least one."""
    found = (_clause_keys(clause) for clause in query.clauses)
    return tuple(keys for keys in found if keys)


def required_keys(query: Query) -> frozenset[Key] | None:
    """The most selective-looking required key set (fewest keys, references first), if any."""
    candidates = required_key_sets(query)
    if not candidates:
        return None
    return min(candidates, key=lambda keys: (len(keys), next(iter(keys))[1] != "reference"))
