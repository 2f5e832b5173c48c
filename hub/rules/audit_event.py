"""What an application-posted AuditEvent must hold to be a KT2AuditEvent.

Applications post their own `receive` events and processing errors
(Koppeltaal client error handling). The hub stores them in the same trail as
its own, so it insists on the essentials an auditor needs to read them
(`check_kt2_essentials`), and, since the chain then vouches for them, that a
posted event speaks only for its poster (`check_posted_by`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any

from hub.fhir import jsonio
from hub.fhir.outcome import Issue

# A posted event larger than this (compact JSON, UTF-8) is refused: the trail is kept
# forever and chained, so one application may not fill it with a few requests.
MAX_POSTED_EVENT_BYTES = 64 * 1024


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


def check_posted_by(
    event: Mapping[str, Any],
    caller_device: str,
    *,
    reserved_types: Collection[tuple[str, str]],
    max_bytes: int = MAX_POSTED_EVENT_BYTES,
) -> list[Issue]:
    """Every way a posted (structurally valid) event speaks for someone else.

    `caller_device` is the poster's own Device reference (`Device/<client_id>`):
    every requesting agent and `source.observer` must be it, so an application
    cannot name another application, or the hub, as the one who acted or
    observed. `reserved_types` are the (system, code) pairs of the hub's own
    event kinds; a posted event may not claim one (nor its code without a
    system, which a `type=<code>` search would find just the same).
    """
    return list(_impersonations(event, caller_device, reserved_types, max_bytes))


def _impersonations(
    event: Mapping[str, Any],
    caller_device: str,
    reserved_types: Collection[tuple[str, str]],
    max_bytes: int,
) -> Iterator[Issue]:
    size = len(jsonio.dumps(event).encode("utf-8"))
    if size > max_bytes:
        yield Issue(
            "too-long",
            f"A posted AuditEvent may be at most {max_bytes} bytes of JSON; this one is {size}",
            ("AuditEvent",),
        )
    event_type = _mapping(event.get("type"))
    code, system = event_type.get("code"), event_type.get("system")
    if any(code == c and system in (None, s) for s, c in reserved_types):
        yield Issue(
            "business-rule",
            f"AuditEvents of type {code!r} are written by the hub alone",
            ("AuditEvent.type",),
        )
    requestors = [
        (index, agent)
        for index, agent in enumerate(_mappings(event.get("agent")))
        if agent.get("requestor") is True
    ]
    if not requestors:
        yield Issue(
            "business-rule",
            f"A posted AuditEvent needs a requesting agent (requestor true): {caller_device}",
            ("AuditEvent.agent",),
        )
    for index, agent in requestors:
        if _reference(agent.get("who")) != caller_device:
            yield Issue(
                "business-rule",
                f"The requesting agent of a posted AuditEvent must be the poster, {caller_device}",
                (f"AuditEvent.agent[{index}].who",),
            )
    if _reference(_mapping(event.get("source")).get("observer")) != caller_device:
        yield Issue(
            "business-rule",
            f"The observer of a posted AuditEvent must be the poster, {caller_device}",
            ("AuditEvent.source.observer",),
        )
