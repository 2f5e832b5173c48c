"""Reading the audit trail the way an auditor does: FHIR search over HTTP.

Every test request carries its own trace ids (`TraceHeaders.new()`), so
`event_of(hub, ids.request_id)` finds exactly the AuditEvent of that request.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.support.hub import HubServer

KT2_AUDIT_PROFILE = "http://koppeltaal.nl/fhir/StructureDefinition/KT2AuditEvent"
KT = "http://koppeltaal.nl/fhir/StructureDefinition"
TRACE_ID = f"{KT}/trace-id"
REQUEST_ID = f"{KT}/request-id"
CORRELATION_ID = f"{KT}/correlation-id"
RESOURCE_ORIGIN = f"{KT}/resource-origin"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
HUB_DEVICE = "Device/koppeltaal-hub"

Params = Mapping[str, str] | Sequence[tuple[str, str]]


@dataclass(frozen=True)
class TraceHeaders:
    """The Koppeltaal trace headers of one test request."""

    request_id: str
    trace_id: str
    correlation_id: str | None

    @classmethod
    def new(cls, *, trace_id: str | None = None, correlated: bool = True) -> TraceHeaders:
        return cls(
            request_id=f"req-{uuid.uuid4()}",
            trace_id=trace_id or f"trace-{uuid.uuid4()}",
            correlation_id=f"cause-{uuid.uuid4()}" if correlated else None,
        )

    @property
    def headers(self) -> dict[str, str]:
        headers = {"X-Request-Id": self.request_id, "X-Trace-Id": self.trace_id}
        if self.correlation_id is not None:
            headers["X-Correlation-Id"] = self.correlation_id
        return headers


async def search_events(
    hub: HubServer, params: Params, *, domain: str = "test", auditor: str = "auditor"
) -> list[Any]:
    """The AuditEvents `auditor` finds with `params` (first page, up to 500)."""
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    async with hub.client(auditor, domain) as client:
        response = await client.get("/AuditEvent", params=[*pairs, ("_count", "500")])
    assert response.status_code == 200, response.text
    return [
        entry["resource"]
        for entry in response.json().get("entry", [])
        if entry["search"]["mode"] == "match"
    ]


async def event_of(hub: HubServer, request_id: str, *, domain: str = "test") -> Any:
    """The one AuditEvent of the request with this X-Request-Id."""
    events = await search_events(hub, {"requestId": request_id}, domain=domain)
    assert len(events) == 1, f"expected one AuditEvent for {request_id}, found {events}"
    return events[0]


def extension(event: Mapping[str, Any], url: str) -> Any:
    values = [e for e in event.get("extension", []) if e["url"] == url]
    assert len(values) <= 1, f"{url} appears {len(values)} times"
    return values[0] if values else None


def whats(event: Mapping[str, Any]) -> list[str | None]:
    """entity[*].what references, in order (None for an entity without one)."""
    return [entity.get("what", {}).get("reference") for entity in event.get("entity", [])]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def outcome_text(operation_outcome: Mapping[str, Any]) -> str:
    """The OperationOutcome's diagnostics as one line: what `outcomeDesc` must say."""
    return "; ".join(issue["diagnostics"] for issue in operation_outcome["issue"])
