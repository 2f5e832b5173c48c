"""KT2AuditEvent builders: REST events of every interaction, `transmit` events, logins.

Pure functions: they take what happened and return the AuditEvent as a dict,
ready to be stored. Codes and shapes follow the Koppeltaal facts (AuditEvent) and
write every coding as the reference implementation does (docs/architecture.md,
"AuditEvent codings"): a `subtype` display, an `entity.type` from
`resource-types`, the object-role displays, no `what` on a delete, and no
`network` on the requesting application's agent.

Events stored before these codings keep their old shape: the chain covers the
stored JSON, so nothing here may ever rewrite them.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.fhir.bundle import format_instant
from hub.fhir.extract import clip
from hub.fhir.origin import RESOURCE_ORIGIN
from hub.fhir.search_params import SUPPORTED_TYPES
from hub.trace import TraceIds

KT2_AUDIT_PROFILE = "http://koppeltaal.nl/fhir/StructureDefinition/KT2AuditEvent"
TRACE_ID_EXTENSION = "http://koppeltaal.nl/fhir/StructureDefinition/trace-id"
REQUEST_ID_EXTENSION = "http://koppeltaal.nl/fhir/StructureDefinition/request-id"
CORRELATION_ID_EXTENSION = "http://koppeltaal.nl/fhir/StructureDefinition/correlation-id"

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"

# restful-interaction code → AuditEvent.action (Koppeltaal facts).
ACTIONS = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "history-instance": "R",
    "capabilities": "R",
    "update": "U",
    "delete": "D",
    "search-type": "E",
    "patch": "U",
    "operation": "E",
}

# object-role code → display, for the roles the hub's entities take.
OBJECT_ROLES = {"24": "Query", "9": "Subscriber"}
QUERY_ROLE = "24"
SUBSCRIBER_ROLE = "9"

# The entity detail that keeps the reference of a delete's resource: the event may
# not name it in `entity.what` (the resource is gone), and an auditor still asks which.
DELETED_REFERENCE = "reference"

SOURCE_ROLE = {"system": DCM, "code": "110153", "display": "Source Role ID"}
DESTINATION_ROLE = {"system": DCM, "code": "110152", "display": "Destination Role ID"}


def outcome_code(status: int) -> str:
    """AuditEvent.outcome for an HTTP status: 0 success, 4 minor (4xx), 8 serious (5xx)."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


@dataclass(frozen=True)
class Entity:
    """Something an interaction touched: `Type/id/_history/n`, or a search query of `rtype`."""

    what: str | None = None
    query: str | None = None
    role: str | None = None  # object-role code: QUERY_ROLE, SUBSCRIBER_ROLE
    detail: tuple[tuple[str, str], ...] = ()  # (type, valueString) facts about the entity
    rtype: str | None = None  # the resource type where `what` names none (a search)

    @property
    def resource_type(self) -> str | None:
        """The entity's resource type, if it is one this hub serves."""
        rtype = self.rtype
        if rtype is None and self.what is not None:
            rtype = self.what.partition("/")[0]
        return rtype if rtype in SUPPORTED_TYPES else None

    def to_json(self, *, reference: bool = True) -> dict[str, Any]:
        """The entity as written; `reference=False` for a deleted resource, named in a detail."""
        entity: dict[str, Any] = {}
        details = [{"type": kind, "valueString": value} for kind, value in self.detail]
        if self.what is not None and reference:
            entity["what"] = {"reference": self.what}
        elif self.what is not None:
            details.append({"type": DELETED_REFERENCE, "valueString": self.what})
        rtype = self.resource_type
        if rtype is not None:
            entity["type"] = {"system": RESOURCE_TYPES, "code": rtype, "display": rtype}
        if self.role is not None:
            entity["role"] = {
                "system": OBJECT_ROLE,
                "code": self.role,
                "display": OBJECT_ROLES[self.role],
            }
        if self.query is not None:
            entity["query"] = base64.b64encode(self.query.encode("utf-8")).decode("ascii")
        if details:
            entity["detail"] = details
        return entity


def query_entity(rtype: str | None, query_string: str) -> Entity:
    """The entity of a search: its query string, typed as the searched resource type."""
    return Entity(query=query_string, role=QUERY_ROLE, rtype=rtype)


def _extensions(trace: TraceIds, hub_device: str) -> list[dict[str, Any]]:
    extensions: list[dict[str, Any]] = [
        {"url": TRACE_ID_EXTENSION, "valueId": trace.trace_id},
        {"url": REQUEST_ID_EXTENSION, "valueId": trace.request_id},
    ]
    if trace.correlation_id:
        extensions.append({"url": CORRELATION_ID_EXTENSION, "valueId": trace.correlation_id})
    extensions.append(
        {"url": RESOURCE_ORIGIN, "valueReference": {"reference": f"Device/{hub_device}"}}
    )
    return extensions


def _source(hub_device: str, site: str) -> dict[str, Any]:
    return {
        "site": site,
        "observer": {"reference": f"Device/{hub_device}"},
        "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }


def _agent(
    role: dict[str, str], *, device: str | None, requestor: bool, endpoint: str | None = None
) -> dict[str, Any]:
    """An agent; only a transmit's destination has a `network` (its endpoint, type 5)."""
    agent: dict[str, Any] = {"type": {"coding": [role]}}
    if device is not None:
        agent["who"] = {"reference": f"Device/{device}"}
    agent["requestor"] = requestor
    if endpoint:
        agent["network"] = {"address": endpoint, "type": "5"}
    return agent


def _with_outcome(event: dict[str, Any], status: int, description: str | None) -> dict[str, Any]:
    event["outcome"] = outcome_code(status)
    if description and event["outcome"] != "0":
        event["outcomeDesc"] = description
    return event


def rest_event(
    *,
    interaction: str,
    status: int,
    outcome_description: str | None,
    caller_device: str | None,
    hub_device: str,
    site: str,
    trace: TraceIds,
    entities: Sequence[Entity],
    recorded: datetime,
) -> dict[str, Any]:
    """The AuditEvent of one REST interaction; `caller_device` None = unauthenticated.

    A delete's entities carry their type but no `what`: the resource they would
    reference is gone (its reference is kept in a `reference` detail).
    """
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "meta": {"profile": [KT2_AUDIT_PROFILE]},
        "extension": _extensions(trace, hub_device),
        "type": {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": RESTFUL_INTERACTION, "code": interaction, "display": interaction}],
        "action": ACTIONS[interaction],
        "recorded": format_instant(recorded),
    }
    _with_outcome(event, status, outcome_description)
    event["agent"] = [
        _agent(SOURCE_ROLE, device=caller_device, requestor=True),
        _agent(DESTINATION_ROLE, device=hub_device, requestor=False),
    ]
    event["source"] = _source(hub_device, site)
    if entities:
        reference = interaction != "delete"
        event["entity"] = [entity.to_json(reference=reference) for entity in entities]
    return event


def login_event(
    *,
    success: bool,
    outcome_description: str | None,
    client_device: str | None,
    hub_device: str,
    site: str,
    trace: TraceIds,
    recorded: datetime,
) -> dict[str, Any]:
    """The AuditEvent of one token request (DICOM User Authentication / Login).

    Beyond the Koppeltaal facts, which audit FHIR interactions only: a failed client
    authentication is what an auditor most wants to find. `client_device` is the
    authenticated client, so None for a refusal (the claim is in the description).
    """
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "meta": {"profile": [KT2_AUDIT_PROFILE]},
        "extension": _extensions(trace, hub_device),
        "type": {"system": DCM, "code": "110114", "display": "User Authentication"},
        "subtype": [{"system": DCM, "code": "110122", "display": "Login"}],
        "action": "E",
        "recorded": format_instant(recorded),
    }
    _with_outcome(event, 200 if success else 401, outcome_description)
    event["agent"] = [
        _agent(SOURCE_ROLE, device=client_device, requestor=True),
        _agent(DESTINATION_ROLE, device=hub_device, requestor=False),
    ]
    event["source"] = _source(hub_device, site)
    return event


def transmit_event(
    *,
    success: bool,
    outcome_description: str | None,
    source_device: str | None,
    destination_device: str | None,
    destination: str,
    resource_version: str,
    subscription: tuple[str, str] | None,
    hub_device: str,
    site: str,
    trace: TraceIds,
    recorded: datetime,
) -> dict[str, Any]:
    """The `transmit` AuditEvent of one notification attempt (success or failure).

    `destination` is the webhook endpoint (or `mailto:` address of a patient e-mail);
    `subscription` the (id, criteria) of the Subscription that caused a webhook.
    """
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "meta": {"profile": [KT2_AUDIT_PROFILE]},
        "extension": _extensions(trace, hub_device),
        "type": {
            "system": LIFECYCLE,
            "code": "transmit",
            "display": "Transmit Record Lifecycle Event",
        },
        "action": "E",
        "recorded": format_instant(recorded),
        "outcome": "0" if success else "4",
    }
    if not success and outcome_description:
        event["outcomeDesc"] = outcome_description
    event["agent"] = [
        _agent(SOURCE_ROLE, device=source_device, requestor=True),
        _agent(
            DESTINATION_ROLE,
            device=destination_device,
            requestor=False,
            endpoint=destination,
        ),
    ]
    event["source"] = _source(hub_device, site)
    entities = [Entity(what=resource_version).to_json()]
    if subscription is not None:
        subscription_id, criteria = subscription
        entities.append(
            Entity(
                what=f"Subscription/{subscription_id}", query=criteria, role=SUBSCRIBER_ROLE
            ).to_json()
        )
    event["entity"] = entities
    return event


# What a request can make long (its path, query, addresses, the refusal's text) is cut to
# this many bytes of UTF-8 when an event cannot be stored whole (`truncated`).
MAX_TRUNCATED_TEXT = 2048
TRUNCATED_WHAT = "truncated-what"
TRUNCATED_QUERY = "truncated-query"


def _digest(data: bytes) -> str:
    return f"SHA-256 {hashlib.sha256(data).hexdigest()} of {len(data)} bytes"


def _cut(text: str) -> str:
    """`text` clipped, the SHA-256 of the whole noted after it: MAX_TRUNCATED_TEXT bytes at most."""
    note = f"… [truncated: {_digest(text.encode('utf-8', 'surrogatepass'))}]"
    return f"{clip(text, MAX_TRUNCATED_TEXT - len(note.encode())) or ''}{note}"


def _too_long(text: str) -> bool:
    return len(text) > MAX_TRUNCATED_TEXT // 4 and len(text.encode("utf-8", "surrogatepass")) > (
        MAX_TRUNCATED_TEXT
    )


def _cut_strings(value: Any) -> tuple[Any, bool]:
    """`value` with every long string cut (`_cut`), and whether any was."""
    if isinstance(value, str):
        return (_cut(value), True) if _too_long(value) else (value, False)
    if isinstance(value, Mapping):
        # An entity's `query` is base64Binary: `_truncate_entity` cuts its bytes.
        pairs = {
            key: (item, False) if key == "query" else _cut_strings(item)
            for key, item in value.items()
        }
        return {key: item for key, (item, _) in pairs.items()}, any(
            cut for _, cut in pairs.values()
        )
    if isinstance(value, list):
        items = [_cut_strings(item) for item in value]
        return [item for item, _ in items], any(cut for _, cut in items)
    return value, False


def _truncate_entity(entity: dict[str, Any]) -> bool:
    """Cut the entity's `what` and `query` in place, each digest noted as a detail."""
    notes: list[dict[str, Any]] = []
    what = entity.get("what")
    reference = what.get("reference") if isinstance(what, dict) else None
    if isinstance(what, dict) and isinstance(reference, str) and _too_long(reference):
        what["reference"] = f"{clip(reference, MAX_TRUNCATED_TEXT - len('…'.encode()))}…"
        notes.append({"type": TRUNCATED_WHAT, "valueString": _digest(reference.encode())})
    query = entity.get("query")
    if isinstance(query, str) and len(query) > MAX_TRUNCATED_TEXT * 4 // 3 + 4:
        try:
            data = base64.b64decode(query, validate=True)
        except binascii.Error:
            data = query.encode("ascii", "replace")
        text = data.decode("utf-8", "replace")
        cut = (clip(text, MAX_TRUNCATED_TEXT) or "").encode("utf-8", "surrogatepass")
        entity["query"] = base64.b64encode(cut).decode("ascii")
        notes.append({"type": TRUNCATED_QUERY, "valueString": _digest(data)})
    if notes:
        details = entity.get("detail")
        entity["detail"] = [*(details if isinstance(details, list) else ()), *notes]
    return bool(notes)


def truncated(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """`event` with what a request made long cut to a few kB, or None if nothing is long.

    For an event that could not be stored whole: the entity's `what` and `query` are
    cut, each with the SHA-256 of the whole as an entity detail (`truncated-what`,
    `truncated-query`); any other long text (outcomeDesc, an address, a detail) is cut
    with the digest noted after it. A refusal thus stays on the trail whatever was asked.
    """
    result: dict[str, Any] = copy.deepcopy(dict(event))
    changed = False
    for entity in result.get("entity") or ():
        if isinstance(entity, dict):
            changed = _truncate_entity(entity) or changed
    cut, cut_any = _cut_strings(result)
    if not (changed or cut_any):
        return None
    assert isinstance(cut, dict)
    return cut
