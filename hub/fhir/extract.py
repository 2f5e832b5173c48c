"""Search-index values of a resource: what every search parameter of its type finds.

`extract(resource)` evaluates each parameter's FHIRPath and turns the values it
selects into rows for the index tables. The same `IndexValues` drive SQL search
(as rows in `idx_*`) and in-memory subscription matching, so a resource matches
a subscription exactly when a search would return it.

The rules follow the FHIR R4 search page:

- token: `code`/`string`/`id`/`uri` give a code without system; `boolean` gives
  `true`/`false`; Coding gives system|code (display as text); CodeableConcept
  gives each of its codings, plus its `text`; Identifier and ContactPoint give
  system|value (Identifier.type.text as text). Text is stored normalised.
- string: plain strings, and every part of a HumanName or Address.
- reference: `Type/id` (relative, or absolute under any base), absolute or
  canonical URLs (`url`, plus type/id when it ends in `Type/id`); `#contained`
  references are skipped.
- date: the closed-open UTC range `[low, high)` that a date, dateTime, instant
  or Period covers at its precision. Times without zone, and dates, are UTC.
- uri: the string as is.
- phonetic (R4's `phonetic`, a string parameter): a token row, without system, per
  phonetic key (`hub.fhir.phonetic`) of each word of a HumanName's text, family and given.

`_id` and `_lastUpdated` are columns of `resources`, not index rows.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from hub.fhir.fhirpath import reference_target
from hub.fhir.phonetic import name_keys
from hub.fhir.search_params import SearchParam, params_for

# Index columns are bounded, and PostgreSQL limits a whole b-tree entry to 2,704 bytes
# (`ix_idx_token_lookup` holds domain, rtype, param, code and system). So values are
# clipped to these many BYTES of UTF-8, at a character boundary (`clip`), here and in
# query values alike: equality and prefixes then look at the same first characters, in
# SQL and in memory. The worst entry, a token's code and system with 64-character
# domain, type and parameter, stays under 1,800 bytes; for ASCII these are the
# character limits of the columns.
MAX_CODE = 512
MAX_URL = 1024
MAX_NORM = 500
MAX_TYPE = 64  # `ref_type` column; no resource type comes near

# The earliest and latest instants a range can reach; an open Period end is "far future".
MIN_DATE = datetime(1, 1, 1)
MAX_DATE = datetime(9999, 12, 31, 23, 59, 59, 999999)


class TokenRow(NamedTuple):
    param: str
    system: str | None
    code: str | None
    text: str | None


class StringRow(NamedTuple):
    param: str
    norm: str
    exact: str


class ReferenceRow(NamedTuple):
    param: str
    ref_type: str | None
    ref_id: str | None
    url: str | None


class DateRow(NamedTuple):
    param: str
    low: datetime
    high: datetime


class UriRow(NamedTuple):
    param: str
    value: str


_Row = TypeVar("_Row")


@dataclass(frozen=True)
class IndexValues:
    """The index rows of one resource, by kind."""

    tokens: tuple[TokenRow, ...] = ()
    strings: tuple[StringRow, ...] = ()
    references: tuple[ReferenceRow, ...] = ()
    dates: tuple[DateRow, ...] = ()
    uris: tuple[UriRow, ...] = ()

    def has(self, param: str) -> bool:
        """Whether any row belongs to `param` (the opposite of `:missing=true`)."""
        rows: Iterable[tuple[Any, ...]] = (
            *self.tokens, *self.strings, *self.references, *self.dates, *self.uris,
        )  # fmt: skip
        return any(row[0] == param for row in rows)


def normalize(text: str) -> str:
    """Lower-case (case-folded), without accents and clipped: how strings are compared."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(char for char in decomposed if not unicodedata.combining(char))
    return clip(unicodedata.normalize("NFC", stripped.casefold()), MAX_NORM) or ""


def clip(text: str | None, limit: int) -> str | None:
    """`text` cut to at most `limit` bytes of UTF-8, never inside a character; None if empty."""
    if not text:
        return None
    if len(text) * 4 <= limit:  # no character takes more than 4 bytes
        return text
    if text.isascii():
        return text[:limit]
    # surrogatepass: a lone surrogate (3 bytes) is clipped like any character, never an error.
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text
    end = limit
    while encoded[end] & 0xC0 == 0x80:  # a continuation byte: its character starts before
        end -= 1
    return encoded[:end].decode("utf-8", "surrogatepass")


_DATE = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def date_range(text: str) -> tuple[datetime, datetime] | None:
    """The UTC range `[low, high)` a FHIR date/dateTime/instant covers, or None if malformed.

    Precision decides the width: `2024` is the whole year, `2024-03-01T10:00`
    one minute, `…:00.5` a tenth of a second. Results are naive UTC datetimes.
    """
    found = _DATE.fullmatch(text.strip())
    if not found:
        return None
    parts = found.groupdict()
    try:
        low = datetime(
            int(parts["year"]), int(parts["month"] or 1), int(parts["day"] or 1),
            int(parts["hour"] or 0), int(parts["minute"] or 0), int(parts["second"] or 0),
            int((parts["fraction"] or "0")[:6].ljust(6, "0")),
        )  # fmt: skip
    except ValueError:
        return None
    high = _end_of_precision(low, parts)
    zone = parts["zone"]
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])) * sign
        low, high = _shift(low, -offset), _shift(high, -offset)
    return low, high


def _end_of_precision(low: datetime, parts: Mapping[str, str | None]) -> datetime:
    if parts["fraction"]:
        digits = min(len(parts["fraction"] or ""), 6)
        return _shift(low, timedelta(microseconds=10 ** (6 - digits)))
    if parts["second"]:
        return _shift(low, timedelta(seconds=1))
    if parts["minute"]:
        return _shift(low, timedelta(minutes=1))
    if parts["day"]:
        return _shift(low, timedelta(days=1))
    if parts["month"]:
        return (
            low.replace(year=low.year + 1, month=1)
            if low.month == 12
            else (low.replace(month=low.month + 1))
        )
    return low.replace(year=low.year + 1) if low.year < 9999 else MAX_DATE


def _shift(moment: datetime, delta: timedelta) -> datetime:
    try:
        return moment + delta
    except OverflowError:
        return MAX_DATE if delta > timedelta(0) else MIN_DATE


def instant(text: str) -> datetime | None:
    """A FHIR instant (meta.lastUpdated) as a naive UTC datetime."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _tokens(param: str, value: Any) -> Iterable[TokenRow]:
    if isinstance(value, bool):
        yield TokenRow(param, None, "true" if value else "false", None)
    elif isinstance(value, str) and value:
        yield TokenRow(param, None, clip(value, MAX_CODE), None)
    elif isinstance(value, Mapping):
        if "coding" in value or set(value) <= {"text", "id", "extension"}:
            for coding in value.get("coding") or ():
                if isinstance(coding, Mapping):
                    yield from _tokens(param, coding)
            if isinstance(value.get("text"), str):
                yield TokenRow(param, None, None, normalize(value["text"]))
            return
        identifier_like = "value" in value  # Identifier or ContactPoint
        code = value.get("value") if identifier_like else value.get("code")
        if identifier_like:
            type_ = value.get("type")
            text = type_.get("text") if isinstance(type_, Mapping) else None
        else:
            text = value.get("display")
        row = TokenRow(
            param, clip(_text_or_none(value.get("system")), MAX_CODE),
            clip(_text_or_none(code), MAX_CODE), normalize(text) if isinstance(text, str) else None,
        )  # fmt: skip
        if row.system or row.code or row.text:
            yield row


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# The parts of HumanName and Address that string search looks at.
_STRING_PARTS = (
    "text", "family", "given", "prefix", "suffix",
    "line", "city", "district", "state", "postalCode", "country",
)  # fmt: skip


def _strings(param: str, value: Any) -> Iterable[StringRow]:
    if isinstance(value, str):
        if value:
            yield StringRow(param, normalize(value), value)
    elif isinstance(value, Mapping):
        for part in _STRING_PARTS:
            parts = value.get(part)
            for text in parts if isinstance(parts, list) else [parts]:
                if isinstance(text, str) and text:
                    yield StringRow(param, normalize(text), text)


# The parts of a HumanName that `phonetic` looks at: "a portion of family or given name".
_NAME_PARTS = ("text", "family", "given")


def _phonetic_tokens(param: str, value: Any) -> Iterable[TokenRow]:
    """One token row per phonetic key of the name's words (`hub.fhir.phonetic.name_keys`)."""
    texts: list[Any] = [value] if isinstance(value, str) else []
    if isinstance(value, Mapping):
        for part in _NAME_PARTS:
            parts = value.get(part)
            texts.extend(parts if isinstance(parts, list) else [parts])
    for text in texts:
        if isinstance(text, str):
            for key in name_keys(text):
                yield TokenRow(param, None, clip(key, MAX_CODE), None)


def reference_row(param: str, reference: str) -> ReferenceRow | None:
    """The index row of one reference string (relative, absolute or canonical)."""
    if not reference or reference.startswith("#"):
        return None
    absolute = ":" in reference.split("/", 1)[0]
    url = clip(reference.split("|", 1)[0], MAX_URL) if absolute else None  # canonical|version
    target = reference_target(url or reference)
    if target is not None and len(target[0]) > MAX_TYPE:  # `Aaaa…aaa/x`: no resource type
        target = None
    if target is None and url is None:
        return None
    ref_type, ref_id = target or (None, None)
    return ReferenceRow(param, ref_type, ref_id, url)


def _references(param: str, value: Any) -> Iterable[ReferenceRow]:
    if isinstance(value, Mapping):
        value = value.get("reference")
    if isinstance(value, str):
        row = reference_row(param, value)
        if row:
            yield row


def _dates(param: str, value: Any) -> Iterable[DateRow]:
    if isinstance(value, str):
        found = date_range(value)
        if found:
            yield DateRow(param, *found)
    elif isinstance(value, Mapping) and ("start" in value or "end" in value):
        start = date_range(value["start"]) if isinstance(value.get("start"), str) else None
        end = date_range(value["end"]) if isinstance(value.get("end"), str) else None
        yield DateRow(param, start[0] if start else MIN_DATE, end[1] if end else MAX_DATE)


def _uris(param: str, value: Any) -> Iterable[UriRow]:
    if isinstance(value, str) and value:
        yield UriRow(param, clip(value, MAX_URL) or "")


def _unique(rows: Iterable[_Row]) -> tuple[_Row, ...]:
    return tuple(dict.fromkeys(rows))


def extract(resource: Mapping[str, Any]) -> IndexValues:
    """The index values of `resource` for every search parameter of its type."""
    params = params_for(str(resource.get("resourceType")))
    tokens: list[TokenRow] = []
    strings: list[StringRow] = []
    references: list[ReferenceRow] = []
    dates: list[DateRow] = []
    uris: list[UriRow] = []
    for param in params.values():
        if param.column is not None:
            continue
        for value in _evaluate(param, resource):
            if param.kind == "phonetic":
                tokens.extend(_phonetic_tokens(param.code, value))
            elif param.type == "token":
                tokens.extend(_tokens(param.code, value))
            elif param.type == "string":
                strings.extend(_strings(param.code, value))
            elif param.type == "reference":
                references.extend(_references(param.code, value))
            elif param.type == "date":
                dates.extend(_dates(param.code, value))
            elif param.type == "uri":
                uris.extend(_uris(param.code, value))
    return IndexValues(
        _unique(tokens), _unique(strings), _unique(references), _unique(dates), _unique(uris)
    )


def _evaluate(param: SearchParam, resource: Mapping[str, Any]) -> list[Any]:
    return param.compiled.evaluate(resource)
