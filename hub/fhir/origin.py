"""The Koppeltaal `resource-origin` extension: which application's Device made a resource."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RESOURCE_ORIGIN = "http://koppeltaal.nl/fhir/StructureDefinition/resource-origin"


def origin_references(resource: Mapping[str, Any]) -> list[Any]:
    """Every `valueReference.reference` of resource-origin extensions (normally zero or one)."""
    return [
        (extension.get("valueReference") or {}).get("reference")
        for extension in resource.get("extension") or ()
        if isinstance(extension, Mapping) and extension.get("url") == RESOURCE_ORIGIN
    ]


def origin_device(resource: Mapping[str, Any]) -> str | None:
    """The Device id of the resource's origin, or None when it has none."""
    for reference in origin_references(resource):
        if isinstance(reference, str) and reference.startswith("Device/"):
            return reference.removeprefix("Device/")
    return None


def with_origin(resource: dict[str, Any], device_id: str) -> dict[str, Any]:
    """Add the resource-origin extension (the resource must not have one yet)."""
    extension = {"url": RESOURCE_ORIGIN, "valueReference": {"reference": f"Device/{device_id}"}}
    resource["extension"] = [*(resource.get("extension") or ()), extension]
    return resource
