"""Parsing and validating request bodies as FHIR R4 resources.

Validation uses the `fhir.resources.R4B` models, whose R4 subset matches R4
(4.0.1) for the types the hub serves, except for elements R4B added; those are
refused explicitly here. The model is only a checker: the stored JSON is the
client's own document (plus server-set fields), never the model re-serialised.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from hub.fhir import jsonio
from hub.fhir.bindings import check_values
from hub.fhir.outcome import FhirError, Issue, bad_request
from hub.fhir.search_params import SUPPORTED_TYPES

# Elements that exist in R4B but not in R4 (4.0.1): a client must not use them.
R4B_ONLY_ELEMENTS: Mapping[str, tuple[str, ...]] = {
    "ActivityDefinition": ("subjectCanonical", "_subjectCanonical"),
}

Rules = Callable[[Mapping[str, Any]], Iterable[Issue]]
"""A resource type's own rules: every issue they find in a resource, whatever JSON it holds."""


@cache
def _model(resource_type: str) -> Any:
    return get_fhir_model_class(resource_type)


def is_supported(resource_type: str) -> bool:
    return resource_type in SUPPORTED_TYPES


def parse_body(body: bytes, *, expected_type: str) -> dict[str, Any]:
    """Decode a request body into a resource dict of `expected_type` (else 400)."""
    if not body.strip():
        raise bad_request("The request body is empty; a FHIR resource is required")
    try:
        resource = jsonio.loads(body)
    except jsonio.JsonError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}", code="structure") from exc
    if not isinstance(resource, dict):
        raise bad_request("The request body must be a JSON object (a FHIR resource)")
    actual = resource.get("resourceType")
    if actual != expected_type:
        raise bad_request(
            f"Expected a {expected_type} resource, got resourceType {actual!r}",
            f"{expected_type}.resourceType" if actual is None else "resourceType",
        )
    return resource


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def refuse_unstorable(resource: Mapping[str, Any]) -> None:
    """400 naming every string of `resource` that holds a NUL or a lone surrogate.

    Checked last before a write is prepared, so the type's own rules speak first.
    """
    issues = list(_unstorable(resource, str(resource.get("resourceType"))))
    if issues:
        raise FhirError(400, issues)


def _unstorable(value: Any, path: str) -> Iterator[Issue]:
    """Strings (names too) with a NUL or a lone surrogate: no database text can hold them.

    FHIR strings may not contain them either (R4 §2.24.0.1: no characters below U+0020
    but tab, CR and LF; JSON text is Unicode).
    """
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        where = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"
        if isinstance(key, str) and _UNSTORABLE.search(key):
            yield Issue("structure", "A property name contains a NUL or a lone surrogate",
                        (ascii(where),))  # fmt: skip
        elif isinstance(item, str):
            found = _UNSTORABLE.search(item)
            if found:
                yield Issue(
                    "invariant",
                    f"The value contains U+{ord(found.group()):04X} at position {found.start()}, "
                    "which a FHIR string may not contain",
                    (where,),
                )
        elif isinstance(item, dict | list):
            yield from _unstorable(item, where)


def _path(resource_type: str, location: tuple[int | str, ...]) -> str:
    path = resource_type
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("__root__", "root"):  # fhir_core's own errors say "root"
            path += f".{part}"
    return path


def _empty_values(value: Any, path: str) -> Iterator[Issue]:
    """FHIR JSON has no nulls, `[]` or `{}` as property values (R4 JSON §2.6.2).

    A null inside an array is allowed: it keeps primitive values and their
    `_element` extensions aligned.
    """
    if isinstance(value, dict):
        if not value:
            yield Issue("structure", "An object may not be empty", (path,))
        for key, item in value.items():
            if item is None:
                yield Issue(
                    "structure",
                    f"{key!r} is null; leave the element out instead",
                    (f"{path}.{key}",),
                )
            else:
                yield from _empty_values(item, f"{path}.{key}")
    elif isinstance(value, list):
        if not value:
            yield Issue(
                "structure", "An array may not be empty; leave the element out instead", (path,)
            )
        for index, item in enumerate(value):
            if item is not None:
                yield from _empty_values(item, f"{path}[{index}]")


# Pydantic's and fhir_core's error types for an element that is missing or of the wrong
# JSON type ("json_invalid": a string where an object belongs; "model_validation_format":
# another value where one belongs).
_WRONG_TYPE_ERRORS = ("missing", "_type", "_parsing", "json_invalid", "model_validation_format")


def _is_resource_type(name: Any) -> bool:
    try:
        return isinstance(name, str) and bool(_model(name).has_resource_base())
    except ValueError:  # "... is not a valid FHIR Model"
        return False


def _unknown_resource_types(value: Any, path: str) -> Iterator[Issue]:
    """Objects below `value` whose `resourceType` names no FHIR resource type."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        where = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
        if (
            isinstance(item, dict)
            and "resourceType" in item
            and not _is_resource_type(item["resourceType"])
        ):
            yield Issue(
                "structure",
                "resourceType must name a FHIR R4 resource type",
                (f"{where}.resourceType",),
            )
        if isinstance(item, dict | list):
            yield from _unknown_resource_types(item, where)


def _is_about_shape(error: ErrorDetails) -> bool:
    """Whether pydantic refuses an element's presence, emptiness, JSON type or shape.

    Anything else (an unknown element, the characters or format of a present value) is
    a fact of its own.
    """
    kind = error["type"]
    if kind == "extra_forbidden":
        return False
    value = error.get("input")
    return (
        kind.endswith(_WRONG_TYPE_ERRORS)
        or isinstance(value, dict | list)  # e.g. a choice element with no or two values
        or value == ""
    )


def validate(resource: Mapping[str, Any], *, rules: Rules | None = None) -> None:
    """Check `resource` against the R4 structure and its type's own `rules`; raise one 400.

    The 400 lists every problem of both, so a client fixes its request in one round
    trip. `rules` run even when the structure is broken, so they must take any JSON.
    Where a rule names an element whose presence, emptiness, JSON type or shape the
    model refuses too, both say the same thing and only the rule's issue (which knows
    what the element is for) is kept; what the model says about a value's characters
    or format, or about unknown elements, is always kept: rules do not check that.
    `hub.fhir.bindings` adds what the model lets through (a code outside its required
    binding, a primitive of the wrong JSON type), in place of the model's own word on
    the same element.
    """
    resource_type = str(resource["resourceType"])
    shape = list(_empty_values(dict(resource), resource_type))
    other = [
        Issue(
            "structure",
            f"{element} is not an element of FHIR R4 {resource_type}",
            (f"{resource_type}.{element.lstrip('_')}",),
        )
        for element in R4B_ONLY_ELEMENTS.get(resource_type, ())
        if element in resource
    ]
    try:
        _model(resource_type).model_validate(resource)
    except ValidationError as exc:
        for error in exc.errors():
            location = tuple(error["loc"])
            # One line: pydantic's messages can span lines (and quote regexes with newlines).
            message = " ".join(str(error["msg"]).split())
            if error["type"] == "extra_forbidden":
                message = f"Unknown element {location[-1]!r}"
            issue = Issue("structure", message, (_path(resource_type, location),))
            (shape if _is_about_shape(error) else other).append(issue)
    except (KeyError, TypeError):
        # The model looks a contained resource's class up by its resourceType unchecked,
        # and raises on one that names no resource: it has no verdict then but that.
        unknown = list(_unknown_resource_types(resource, resource_type))
        if not unknown:
            raise
        other += unknown
    own = list(rules(resource)) if rules is not None else []
    # What the model coerces or lets through: a primitive's JSON type, a bound code.
    # Where it names an element the model complained about too, it says it precisely.
    # A rule's word on an element comes first, as it does over the model's.
    ruled = {issue.expression for issue in own}
    values = [issue for issue in check_values(resource) if issue.expression not in ruled]
    typed = {issue.expression for issue in values}
    issues = [
        *(issue for issue in shape if issue.expression not in typed | ruled),
        *(issue for issue in other if issue.expression not in typed),
        *values,
        *own,
    ]
    if issues:
        raise FhirError(400, issues)
