"""FHIR search parameters parsed into one `Query`, for SQL search and subscription matching.

A `Query` is an AND of `Clause`s, one per parameter occurrence; the values of
one clause (comma-separated) are OR-ed. A chained clause
(`instantiates.publisherId=x`) carries the target type and an inner clause that
the referenced resource must satisfy. Result controls (`_count`, `_sort`,
`_total`, `_summary`, `_cursor`) sit beside the clauses; `_format` is ignored.

Every mistake is a 400 whose OperationOutcome names the parameter. In lenient
mode (ordinary searches) unknown parameters and modifiers are ignored and
listed in `Query.unknown`; strict mode (Subscription.criteria) refuses them.
A parameter's name and modifier are checked before its value: an empty value
(`status=`) is ignored, as FHIR says, but only once the name is known to mean
something, so `?bogus=` is still reported (lenient) or refused (strict).

Subscription.criteria also refuse the result controls that cannot describe a
standing search: `_cursor` (one position in one earlier search's pages),
`_format` (the encoding of one response), and `_summary=count` / `_count=0`
(a search that returns no resources at all, while a resource matches a
Subscription exactly when a search with its criteria would return it).
`_sort`, `_total` and a positive `_count` only shape the search the subscriber
runs when notified; matching ignores them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, cast
from urllib.parse import parse_qsl

from hub.fhir.bindings import token_codes
from hub.fhir.extract import MAX_CODE, MAX_URL, clip, date_range, normalize, reference_row
from hub.fhir.outcome import bad_request
from hub.fhir.phonetic import query_key
from hub.fhir.search_params import SUPPORTED_TYPES, SearchParam, params_for

Prefix = Literal["eq", "ne", "lt", "le", "gt", "ge", "sa", "eb"]
Total = Literal["none", "estimate", "accurate"]

_PREFIXES = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "sa", "eb"})
_MODIFIERS: dict[str, frozenset[str]] = {
    "token": frozenset({"missing", "not", "text"}),
    "string": frozenset({"missing", "exact", "contains"}),
    "reference": frozenset({"missing"}),
    "date": frozenset({"missing"}),
    "uri": frozenset({"missing", "below", "above"}),
    "phonetic": frozenset({"missing"}),
}
_COLUMN_MODIFIERS = {"_id": frozenset({"not"}), "_lastUpdated": frozenset[str]()}
# Modifiers FHIR R4 defines: outside this set a modifier is simply unknown.
_FHIR_MODIFIERS = frozenset(
    {"missing", "exact", "contains", "not", "text", "in", "not-in", "below", "above",
     "identifier", "ofType", "iterate", "type"}
)  # fmt: skip
_CONTROLS = frozenset({"_count", "_sort", "_total", "_summary", "_cursor", "_format"})
# The kinds of parameter `_sort` orders by (`hub.store.search` says how): not uri or phonetic.
_SORTABLE = frozenset({"date", "string", "token", "reference"})
# Result controls that make no sense in Subscription.criteria, whatever their value.
_NOT_IN_CRITERIA: dict[str, str] = {
    "_cursor": "it is a position in the pages of one earlier search",
    "_format": "it chooses the encoding of one response, not which resources match",
}
# Cost bounds. A real Koppeltaal search has a handful of clauses (a Task's owner, status and
# patient; a Patient's identifier) with one to a few values each. Every clause is a subquery the
# database must plan, and planning time grows faster than the clause count (on PostgreSQL 200
# `name=` clauses took over 50 s to plan; 30 take well under 0.1 s), so a search is refused
# with a 400 long before it could hold a pooled connection: 30 clauses, enough for every
# parameter of the richest type (Patient has 30) once each, which the CapabilityStatement
# promises; a chain counts as one, unknown and empty parameters count too, result controls do
# not. And 50 values per clause: an OR of ids or codes a client may reasonably batch.
MAX_CLAUSES = 30
MAX_VALUES = 50
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]+")
ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # a logical id (FHIR R4 id), as stored
_ID = ID
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class TokenValue:
    """`[system|]code`: system None = any system, "" = no system; code None = any code."""

    system: str | None
    code: str | None


@dataclass(frozen=True)
class TextValue:
    """A string to compare (string parameters, token `:text`); `norm` as `normalize()`."""

    text: str
    norm: str


@dataclass(frozen=True)
class ReferenceValue:
    """`Type/id`, a bare id (type None), or an absolute URL (`url`, plus type/id if any)."""

    ref_type: str | None
    ref_id: str | None
    url: str | None = None


@dataclass(frozen=True)
class DateValue:
    """A prefixed date: the UTC range `[low, high)` its precision covers."""

    prefix: Prefix
    low: datetime
    high: datetime


@dataclass(frozen=True)
class UriValue:
    value: str


@dataclass(frozen=True)
class MissingValue:
    missing: bool


Value = TokenValue | TextValue | ReferenceValue | DateValue | UriValue | MissingValue


@dataclass(frozen=True)
class Clause:
    """One parameter occurrence: its values are OR-ed.

    `modifier` is a modifier name, or for references a resource type
    (`subject:Patient`). A chained clause has no values of its own: `chain` is
    the clause the referenced `target_type` resource must satisfy.
    """

    param: SearchParam
    modifier: str | None
    values: tuple[Value, ...]
    raw: tuple[str, ...]
    target_type: str | None = None
    chain: Clause | None = None

    @property
    def name(self) -> str:
        name = self.param.code + (f":{self.modifier}" if self.modifier else "")
        return f"{name}.{self.chain.name}" if self.chain else name

    @property
    def innermost(self) -> Clause:
        return self.chain.innermost if self.chain else self


@dataclass(frozen=True)
class SortKey:
    code: str  # `_id`, `_lastUpdated`, or a date, string, token or reference parameter
    descending: bool = False


@dataclass(frozen=True)
class Query:
    resource_type: str
    clauses: tuple[Clause, ...] = ()
    unknown: tuple[str, ...] = ()
    count: int | None = None
    sort: tuple[SortKey, ...] = ()
    total: Total | None = None
    summary: Literal["count"] | None = None
    cursor: str | None = None

    @property
    def size(self) -> int:
        """How many values its clauses hold in all (at least one each): what its SQL costs."""
        return sum(max(1, len(clause.innermost.values)) for clause in self.clauses)

    def canonical_params(self) -> list[tuple[str, str]]:
        """The query as `(name, value)` pairs, escaped, without `_cursor`.

        For self links and echoing Subscription.criteria; paging links add
        their own `_cursor`.
        """
        pairs = [(clause.name, ",".join(clause.innermost.raw)) for clause in self.clauses]
        if self.sort:
            keys = ",".join(("-" if key.descending else "") + key.code for key in self.sort)
            pairs.append(("_sort", keys))
        if self.count is not None:
            pairs.append(("_count", str(self.count)))
        if self.total is not None:
            pairs.append(("_total", self.total))
        if self.summary is not None:
            pairs.append(("_summary", self.summary))
        return pairs


def split_escaped(text: str, separator: str, *, limit: int = -1) -> list[str]:
    """Split on `separator` where it is not escaped with a backslash (escapes are kept)."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            current.append(char + next(chars, ""))
        elif char == separator and limit != len(parts):
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    r"""Undo `\,` `\$` `\|` `\\` (other backslashes stay as they are)."""
    return re.sub(r"\\([,$|\\])", r"\1", text)


MAX_DIGITS = 18  # every 18-digit number fits a 64-bit (BIGINT) column


def whole_number(text: str) -> int | None:
    """`text` as a non-negative integer if it is 1 to 18 ASCII digits, else None.

    `str.isdigit()` and `int()` accept other digits (`²`, `٣`), signs and spaces, and
    `int()` raises on more than 4,300 digits: every number a client sends goes through here.
    """
    if 0 < len(text) <= MAX_DIGITS and text.isascii() and text.isdigit():
        return int(text)
    return None


def parse_whole_number(text: str, expression: str, *, minimum: int = 0) -> int:
    """`whole_number(text)`, or a 400 naming `expression` when it is none or below `minimum`."""
    number = whole_number(text)
    if number is None or number < minimum:
        raise bad_request(
            f"{expression} must be a whole number of at most {MAX_DIGITS} digits"
            + (f", at least {minimum}" if minimum else "")
            + f", not {_shown(text)}",
            expression,
        )
    return number


def _shown(text: str, limit: int = 40) -> str:
    """`text` quoted for a message: escaped (no control characters) and shortened."""
    return repr(text[:limit]) + (
        f" (and {len(text) - limit} more characters)" if len(text) > limit else ""
    )


def refuse_unstorable(text: str, expression: str) -> None:
    """400 for a NUL or a lone surrogate: no database text (PostgreSQL's least) can hold them."""
    found = _UNSTORABLE.search(text)
    if found is not None:
        raise bad_request(
            f"{expression} contains the character U+{ord(found.group()):04X} at position "
            f"{found.start()}, which cannot be stored",
            expression,
        )


def parse_criteria(criteria: str) -> Query:
    """Parse a Subscription.criteria `Type?query` (always strict)."""
    resource_type, _, query_string = criteria.strip().partition("?")
    try:
        pairs = parse_qsl(query_string, keep_blank_values=True, strict_parsing=bool(query_string))
    except ValueError as error:
        raise bad_request(f"Malformed criteria query: {error}", "Subscription.criteria") from None
    if resource_type not in SUPPORTED_TYPES:
        raise bad_request(
            f"Criteria must start with a supported resource type, not {resource_type!r}",
            "Subscription.criteria",
        )
    for name, _ in pairs:
        if name in _NOT_IN_CRITERIA:
            raise bad_request(
                f"{name} cannot be used in Subscription.criteria: {_NOT_IN_CRITERIA[name]}", name
            )
    query = parse_search(resource_type, pairs, strict=True)
    if query.summary == "count" or query.count == 0:
        control = "_summary=count" if query.summary == "count" else "_count=0"
        raise bad_request(
            f"{control} cannot be used in Subscription.criteria: a search with it returns no "
            "resources, so no resource could ever match",
            control.partition("=")[0],
        )
    return query


def parse_search(
    resource_type: str,
    params: Sequence[tuple[str, str]],
    *,
    strict: bool = False,
    any_code: bool = False,
) -> Query:
    """Parse search parameters `params` of `resource_type` into a `Query` (400 on errors).

    A token value outside the required binding of its parameter's element
    (`Task?status=compleeted`) can never match: a 400, unless `any_code` (the caller
    asked `Prefer: handling=lenient`), when it simply matches nothing.
    """
    if resource_type not in SUPPORTED_TYPES:
        raise bad_request(f"Resource type {resource_type!r} is not supported")
    _refuse_too_many(params)
    clauses: list[Clause] = []
    unknown: list[str] = []
    controls: dict[str, str] = {}
    for name, value in params:
        refuse_unstorable(name, _shown(name))
        refuse_unstorable(value, name)
        if name in _CONTROLS:
            if value == "":
                continue  # An empty parameter is ignored (FHIR R4 §3.1.1.5).
            if name in controls:
                raise bad_request(f"Parameter {name} may be given only once", name)
            controls[name] = value
            continue
        # The name and modifier first: `?bogus=` is unknown whatever its (empty) value.
        named = _parse_name(resource_type, name, strict=strict)
        if named is None:
            unknown.append(name)
        elif value != "":  # An empty parameter is ignored (FHIR R4 §3.1.1.5).
            clause = named.clause(value)
            if not any_code:
                _refuse_unbound_codes(clause, lenient_hint=not strict)
            clauses.append(clause)
    return Query(
        resource_type=resource_type,
        clauses=tuple(clauses),
        unknown=tuple(unknown),
        count=_parse_count(controls.get("_count")),
        sort=_parse_sort(resource_type, controls.get("_sort")),
        total=_parse_total(controls.get("_total")),
        summary=_parse_summary(controls.get("_summary")),
        cursor=controls.get("_cursor") or None,
    )


def _refuse_too_many(params: Sequence[tuple[str, str]]) -> None:
    """400 for a search of more than MAX_CLAUSES parameters, before any of them is parsed."""
    searched = [name for name, _ in params if name not in _CONTROLS]
    if len(searched) > MAX_CLAUSES:
        name = searched[MAX_CLAUSES]
        raise bad_request(
            f"A search may have at most {MAX_CLAUSES} search parameters (result controls such "
            f"as _count and _sort aside); this one has {len(searched)}: narrow it",
            _shown(name) if _UNSTORABLE.search(name) else name,
            code="too-costly",
        )


@dataclass(frozen=True)
class _Named:
    """What a parameter name means (parameter, modifier, chain); a value makes it a `Clause`."""

    param: SearchParam
    modifier: str | None
    name: str  # as written, for error messages
    target_type: str | None = None
    inner: _Named | None = None

    def clause(self, value: str) -> Clause:
        if self.inner is None:
            return _clause(self.param, self.modifier, value, self.name)
        chain = self.inner.clause(value)
        return Clause(self.param, self.modifier, (), (), target_type=self.target_type, chain=chain)


def _parse_name(resource_type: str, name: str, *, strict: bool) -> _Named | None:
    """The meaning of parameter `name`; None when unknown (lenient), a 400 when wrong."""
    head, dot, chained = name.partition(".")
    code, _, modifier = head.partition(":")
    param = params_for(resource_type).get(code)
    if param is None:
        if strict:
            raise bad_request(f"Unknown search parameter {code!r} for {resource_type}", name)
        return None
    if dot:
        return _parse_chain(param, modifier or None, chained, name, strict=strict)
    if modifier and not _modifier_allowed(param, modifier, name, strict=strict):
        return None
    return _Named(param, modifier or None, name)


def _modifier_allowed(param: SearchParam, modifier: str, name: str, *, strict: bool) -> bool:
    """Whether to use the clause; False = unknown modifier, ignored in lenient mode."""
    allowed = _COLUMN_MODIFIERS.get(param.code, _MODIFIERS[param.kind])
    if modifier in allowed:
        return True
    if _TYPE_NAME.fullmatch(modifier) and param.type == "reference":
        if param.targets and modifier not in param.targets:
            raise bad_request(f"{param.code} cannot refer to a {modifier}", name)
        return True
    if modifier in _FHIR_MODIFIERS or _TYPE_NAME.fullmatch(modifier):
        raise bad_request(
            f"Modifier :{modifier} is not supported for {param.type} parameter {param.code}", name
        )
    if strict:
        raise bad_request(f"Unknown modifier :{modifier} on {param.code} in {name!r}", name)
    return False


def _parse_chain(
    param: SearchParam, modifier: str | None, chained: str, name: str, *, strict: bool
) -> _Named | None:
    if param.type != "reference":
        raise bad_request(f"Only reference parameters can be chained, not {param.code}", name)
    if "." in chained:
        raise bad_request("Only one level of chaining is supported", name)
    if modifier is not None and not _TYPE_NAME.fullmatch(modifier):
        raise bad_request(f"Modifier :{modifier} cannot be used in a chain", name)
    inner_code, _, inner_modifier = chained.partition(":")
    candidates = [modifier] if modifier else list(param.targets)
    targets = [t for t in candidates if t in SUPPORTED_TYPES and inner_code in params_for(t)]
    if not targets:
        raise bad_request(f"No target of {param.code} has a search parameter {inner_code}", name)
    if len(targets) > 1:
        raise bad_request(
            f"{param.code}.{inner_code} is ambiguous: say which type, e.g. "
            f"{param.code}:{targets[0]}.{inner_code}",
            name,
        )
    inner_param = params_for(targets[0])[inner_code]
    if inner_param.column:
        raise bad_request(f"{inner_code} cannot be used in a chain", name)
    if inner_modifier and not _modifier_allowed(inner_param, inner_modifier, name, strict=strict):
        return None
    inner = _Named(inner_param, inner_modifier or None, name)
    return _Named(param, modifier, name, target_type=targets[0], inner=inner)


def _clause(param: SearchParam, modifier: str | None, value: str, name: str) -> Clause:
    raw = tuple(part for part in split_escaped(value, ",") if part != "")
    if not raw:
        raise bad_request(f"Parameter {name} has no value", name)
    if len(raw) > MAX_VALUES:
        raise bad_request(
            f"Parameter {name} may have at most {MAX_VALUES} comma-separated values, "
            f"not {len(raw)}: split the search",
            name,
            code="too-costly",
        )
    if modifier == "missing":
        if raw not in (("true",), ("false",)):
            raise bad_request(f"{name} must be true or false", name)
        return Clause(param, modifier, (MissingValue(raw[0] == "true"),), raw)
    if param.type == "date":
        raw = tuple(_restore_plus(part) for part in raw)
    values = tuple(_value(param, modifier, part, name) for part in raw)
    return Clause(param, modifier, values, raw)


def _value(param: SearchParam, modifier: str | None, raw: str, name: str) -> Value:
    if param.kind == "phonetic":
        return _phonetic_value(unescape(raw), name)
    if param.type == "token" and modifier != "text":
        parts = split_escaped(raw, "|", limit=1)
        if param.column is not None:
            return TokenValue(None, unescape(raw))
        if len(parts) == 1:
            return TokenValue(None, clip(unescape(raw), MAX_CODE))
        system, code = (unescape(part) for part in parts)
        if not system and not code:
            raise bad_request(f"{name}: '|' needs a system or a code", name)
        return TokenValue(clip(system, MAX_CODE) or "", clip(code, MAX_CODE))
    if param.type in ("token", "string"):
        text = unescape(raw)
        return TextValue(text, normalize(text))
    if param.type == "uri":
        return UriValue(clip(unescape(raw), MAX_URL) or "")
    if param.type == "date":
        return _date_value(raw, name)
    return _reference_value(param, modifier, unescape(raw), name)


def _phonetic_value(text: str, name: str) -> TokenValue:
    """The phonetic key of a name (`hub.fhir.phonetic`), matched like a token code."""
    key = query_key(text)
    if not key:
        raise bad_request(f"{name}: {text!r} has no letters to compare by sound", name)
    return TokenValue(None, clip(key, MAX_CODE))


def _restore_plus(raw: str) -> str:
    # An unencoded `+` in a query string arrives as a space: `…T10:00:00 01:00`.
    return re.sub(r"(T[\d:.]+) (\d{2}:\d{2})$", r"\1+\2", raw)


def _date_value(raw: str, name: str) -> DateValue:
    prefix, text = ("eq", raw)
    if raw[:2].isalpha():
        prefix, text = raw[:2], raw[2:]
        if prefix == "ap":
            raise bad_request(f"{name}: the prefix ap (approximately) is not supported", name)
        if prefix not in _PREFIXES:
            raise bad_request(f"{name}: unknown prefix {prefix!r}", name)
    found = date_range(text)
    if found is None:
        raise bad_request(
            f"{name}: malformed date {text!r} (use YYYY, YYYY-MM, YYYY-MM-DD or "
            "YYYY-MM-DDThh:mm[:ss[.fff]][Z|+hh:mm])",
            name,
        )
    return DateValue(cast(Prefix, prefix), *found)


def _reference_value(
    param: SearchParam, modifier: str | None, text: str, name: str
) -> ReferenceValue:
    if _ID.fullmatch(text):
        return ReferenceValue(modifier, text)
    row = reference_row(param.code, text)
    if row is None:
        raise bad_request(f"{name}: {text!r} is not a reference (Type/id, id or URL)", name)
    if row.url is None and modifier and row.ref_type != modifier:
        raise bad_request(f"{name}: {text!r} is not a {modifier} reference", name)
    return ReferenceValue(row.ref_type, row.ref_id, row.url)


def _refuse_unbound_codes(clause: Clause, *, lenient_hint: bool) -> None:
    """400 for a token code outside the required binding of the clause's element."""
    inner = clause.innermost  # a chain's value is its last parameter's
    if inner.param.type != "token" or inner.param.column is not None:
        return
    bound = token_codes(inner.param.expression)
    if bound is None:
        return
    for value in inner.values:
        code = value.code if isinstance(value, TokenValue) else None
        if code is not None and not bound.allows(code):
            raise bad_request(
                bound.refusal(clause.name, code)
                + (" (Prefer: handling=lenient searches anyway)" if lenient_hint else ""),
                clause.name,
                code="code-invalid",
            )


def _parse_count(value: str | None) -> int | None:
    if value is None:
        return None
    return parse_whole_number(value, "_count")


def _parse_sort(resource_type: str, value: str | None) -> tuple[SortKey, ...]:
    if not value:
        return ()
    params = params_for(resource_type)
    keys: list[SortKey] = []
    for item in value.split(","):
        code = item.removeprefix("-")
        param = params.get(code)
        if param is None or param.kind not in _SORTABLE:
            raise bad_request(
                f"Cannot sort {resource_type} on {code!r}: use _id, _lastUpdated or a date, "
                "string, token or reference parameter of the type",
                "_sort",
            )
        if any(key.code == code for key in keys):
            raise bad_request(f"_sort names {code} twice", "_sort")
        keys.append(SortKey(code, item.startswith("-")))
    return tuple(keys)


def _parse_total(value: str | None) -> Total | None:
    if value is None:
        return None
    if value not in ("none", "estimate", "accurate"):
        raise bad_request(f"_total must be none, estimate or accurate, not {value!r}", "_total")
    return cast(Total, value)


def _parse_summary(value: str | None) -> Literal["count"] | None:
    if value is None or value == "false":
        return None
    if value != "count":
        raise bad_request(f"_summary supports only count (or false), not {value!r}", "_summary")
    return "count"
