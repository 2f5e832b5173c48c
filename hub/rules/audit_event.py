"""What an application-posted AuditEvent must hold to be a KT2AuditEvent.

Applications post their own `receive` events and processing errors
(Koppeltaal client error handling). The hub stores them in the same trail as
its own, so it insists on the essentials an auditor needs to read them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from hub.fhir.outcome import Issue


def _missing(element: str, what: str) -> Issue:
    return Issue("required", f"A KT2AuditEvent needs {what}", (f"AuditEvent.{element}",))


def check_kt2_essentials(event: Mapping[str, Any]) -> list[Issue]:
    """Every missing essential: type, recorded, a Device agent, source.observer, entity.

    Runs before the R4 structure check, so it takes any JSON: a wrongly shaped
    element counts as missing.
    """
    return list(_problems(event))


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _mappings(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _reference(value: Any) -> str:
    reference = _mapping(value).get("reference")
    return reference if isinstance(reference, str) else ""


def _problems(event: Mapping[str, Any]) -> Iterator[Issue]:
    if not _mapping(event.get("type")).get("code"):
        yield _missing("type", "a type with a code (e.g. iso-21089-lifecycle receive)")
    if not event.get("recorded"):
        yield _missing("recorded", "the time it was recorded")
    if not any(
        _reference(agent.get("who")).startswith("Device/")
        for agent in _mappings(event.get("agent"))
    ):
        yield _missing("agent", "an agent whose `who` references a Device")
    if not _reference(_mapping(event.get("source")).get("observer")):
        yield _missing("source.observer", "a source.observer reference (the reporting Device)")
    if not any(
        entity.get("what") or entity.get("query") for entity in _mappings(event.get("entity"))
    ):
        yield _missing("entity", "an entity naming what the event is about")
