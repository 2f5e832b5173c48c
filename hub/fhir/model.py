"""Parsing and validating request bodies as FHIR R4 resources.

Validation uses the `fhir.resources.R4B` models, whose R4 subset matches R4
(4.0.1) for the types the hub serves, except for elements R4B added; those are
refused explicitly here. The model is only a checker: the stored JSON is the
client's own document (plus server-set fields), never the model re-serialised.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from hub.fhir import jsonio
from hub.fhir.outcome import FhirError, Issue, bad_request
from hub.fhir.search_params import SUPPORTED_TYPES

# Elements that exist in R4B but not in R4 (4.0.1): a client must not use them.
R4B_ONLY_ELEMENTS: Mapping[str, tuple[str, ...]] = {
    "ActivityDefinition": ("subjectCanonical", "_subjectCanonical"),
}


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


def _path(resource_type: str, location: tuple[int | str, ...]) -> str:
    path = resource_type
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "__root__":
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


def validate(resource: Mapping[str, Any]) -> None:
    """Check `resource` against the R4 structure; raise 400 listing every problem."""
    resource_type = str(resource["resourceType"])
    issues = list(_empty_values(dict(resource), resource_type))
    issues += [
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
            issues.append(Issue("structure", message, (_path(resource_type, location),)))
    if issues:
        raise FhirError(400, issues)
