"""FHIR JSON in and out, without losing decimal precision.

FHIR decimals are exact: `1.50` must be served back as `1.50`, never `1.5`.
Numbers with a fraction or exponent are therefore parsed as `Decimal` and
written back as their original text. Documents without such numbers (the vast
majority) are written by the C encoder at full speed.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

_encode_string = json.encoder.encode_basestring

MAX_DEPTH = 100
"""How deeply arrays and objects may nest: FHIR resources need far fewer levels, and
every recursive walk of a document (validation, indexing, writing) stays bounded."""

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class JsonError(ValueError):
    """The body is not a JSON document the hub accepts."""


def _refuse_constant(name: str) -> Any:
    raise JsonError(f"{name} is not a valid JSON number")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JsonError(f"duplicate property {key!r}")
        result[key] = value
    return result


def loads(body: bytes | str) -> Any:
    """Parse JSON; decimals become `Decimal`, duplicate keys and NaN are refused.

    Bytes must be UTF-8 (FHIR allows no other encoding); json.loads would guess
    UTF-16 or UTF-32 from the first bytes.
    """
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonError(f"the body is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    _check_depth(body)
    try:
        return json.loads(
            body,
            parse_float=Decimal,
            parse_constant=_refuse_constant,
            object_pairs_hook=_object_without_duplicates,
        )
    except JsonError:
        raise
    except RecursionError:
        raise JsonError(f"arrays and objects nest deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonError(str(exc)) from exc


def _check_depth(text: str) -> None:
    """Refuse nesting beyond `MAX_DEPTH` before parsing (the parser itself recurses)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    depth = 0
    for char in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise JsonError(f"arrays and objects nest deeper than {MAX_DEPTH} levels")
        else:
            depth -= 1


class _HasDecimal(Exception):
    pass


def _no_decimals(value: Any) -> Any:
    if isinstance(value, Decimal):
        raise _HasDecimal
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> str:
    """Compact JSON text; `Decimal`s are written exactly as they were read."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_no_decimals)
    except _HasDecimal:
        parts: list[str] = []
        _write(value, parts)
        return "".join(parts)


def _write(value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(_encode_string(key))
            out.append(":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    elif isinstance(value, Decimal):
        out.append(str(value))
    else:
        out.append(json.dumps(value, ensure_ascii=False))
