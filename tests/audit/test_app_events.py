"""Applications add their own AuditEvents (e.g. `receive`) to the same, append-only trail."""

from __future__ import annotations

from typing import Any

import pytest

from tests.audit.database import audit_row, verify
from tests.audit.test_rest_events import assert_rest_event
from tests.audit.trail import (
    DCM,
    HUB_DEVICE,
    RESOURCE_ORIGIN,
    TraceHeaders,
    event_of,
    extension,
    search_events,
)
from tests.support.hub import HubServer

LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"


def receive_event(client_id: str, trace_id: str) -> dict[str, Any]:
    """A KT2 `receive` event, as an application writes it after a notification."""
    return {
        "resourceType": "AuditEvent",
        "meta": {"profile": ["http://koppeltaal.nl/fhir/StructureDefinition/KT2AuditEvent"]},
        "extension": [
            {"url": "http://koppeltaal.nl/fhir/StructureDefinition/trace-id", "valueId": trace_id}
        ],
        "type": {"system": LIFECYCLE, "code": "receive"},
        "action": "E",
        "recorded": "2025-03-01T12:00:00.000Z",
        "outcome": "0",
        # The receiving application alone: the sender's agent is not part of it.
        "agent": [{"who": {"reference": f"Device/{client_id}"}, "requestor": True}],
        "source": {"observer": {"reference": f"Device/{client_id}"}},
        "entity": [{"what": {"reference": "Task/123/_history/1"}}],
    }


@pytest.mark.parametrize("client_id", ["module", "portal", "practitioner-portal", "xis", "admin"])
async def test_an_app_may_add_its_receive_event(shared_hub: HubServer, client_id: str) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client(client_id) as app:
        response = await app.post(
            "/AuditEvent", json=receive_event(client_id, ids.trace_id), headers=ids.headers
        )
    assert response.status_code == 201, response.text
    stored = response.json()
    assert extension(stored, RESOURCE_ORIGIN)["valueReference"] == {
        "reference": f"Device/{client_id}"
    }

    # The app's event and the hub's record of the create share the trace id.
    trail = await search_events(shared_hub, {"traceId": ids.trace_id})
    assert [event["type"]["code"] for event in trail] == ["rest", "receive"]
    hub_record, app_event = trail
    assert app_event == stored
    assert_rest_event(hub_record, ids, interaction="create", action="C", caller=client_id)
    assert hub_record["entity"][0]["what"] == {"reference": f"AuditEvent/{stored['id']}/_history/1"}

    by_origin = await search_events(
        shared_hub, {"resource-origin": f"Device/{client_id}", "traceId": ids.trace_id}
    )
    assert [event["id"] for event in by_origin] == [stored["id"]]
    by_type = await search_events(shared_hub, {"type": f"{LIFECYCLE}|receive", "_id": stored["id"]})
    assert [event["id"] for event in by_type] == [stored["id"]]


async def test_an_app_cannot_claim_another_origin(shared_hub: HubServer) -> None:
    event = receive_event("module", "trace-1")
    event["extension"].append(
        {
            "url": "http://koppeltaal.nl/fhir/StructureDefinition/resource-origin",
            "valueReference": {"reference": "Device/koppeltaal-hub"},
        }
    )
    async with shared_hub.client("module") as module:
        response = await module.post("/AuditEvent", json=event)
    assert response.status_code == 422


async def test_a_role_without_create_may_not_add_events(shared_hub: HubServer) -> None:
    async with shared_hub.client("auditor") as auditor:
        response = await auditor.post("/AuditEvent", json=receive_event("auditor", "trace-1"))
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("remove", "expression"),
    [
        ("type", "AuditEvent.type"),
        ("recorded", "AuditEvent.recorded"),
        ("agent", "AuditEvent.agent"),
        ("source", "AuditEvent.source.observer"),
        ("entity", "AuditEvent.entity"),
    ],
)
async def test_a_missing_essential_is_named(
    shared_hub: HubServer, remove: str, expression: str
) -> None:
    event = receive_event("module", "trace-1")
    del event[remove]
    async with shared_hub.client("module") as module:
        response = await module.post("/AuditEvent", json=event)
    assert response.status_code == 422
    issues = response.json()["issue"]
    assert [issue["expression"] for issue in issues] == [[expression]]


async def test_every_missing_essential_is_named_at_once(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    event = {
        "resourceType": "AuditEvent",
        "agent": [{"who": {"reference": "Patient/1"}, "requestor": True}],
        "source": {"site": "somewhere"},
    }
    async with shared_hub.client("module") as module:
        response = await module.post("/AuditEvent", json=event, headers=ids.headers)
    assert response.status_code == 422
    expressions = [issue["expression"][0] for issue in response.json()["issue"]]
    assert expressions == [
        "AuditEvent.type",
        "AuditEvent.recorded",
        "AuditEvent.agent",
        "AuditEvent.source.observer",
        "AuditEvent.entity",
    ]
    refused = await event_of(shared_hub, ids.request_id)
    assert refused["outcome"] == "4"
    assert "needs a type" in refused["outcomeDesc"]


@pytest.mark.parametrize(
    "mangled",
    [
        {"agent": 7},
        {"agent": ["x"]},
        {"agent": [{"who": "Device/module"}]},
        {"entity": {"what": "x"}},
        {"source": []},
    ],
)
async def test_wrongly_shaped_essentials_are_refused_not_crashed_on(
    shared_hub: HubServer, mangled: dict[str, Any]
) -> None:
    event = {**receive_event("module", "trace-1"), **mangled}
    async with shared_hub.client("module") as module:
        response = await module.post("/AuditEvent", json=event)
    assert response.status_code == 422


async def test_a_structurally_broken_event_with_its_essentials_is_400(
    shared_hub: HubServer,
) -> None:
    event = {**receive_event("module", "trace-1"), "outcome": {"not": "a code"}}
    async with shared_hub.client("module") as module:
        response = await module.post("/AuditEvent", json=event)
    assert response.status_code == 400


# --- a posted event speaks only for its poster ------------------------------------------


async def _post_as_module(
    shared_hub: HubServer, event: dict[str, Any], ids: TraceHeaders | None = None
) -> tuple[int, list[dict[str, Any]]]:
    ids = ids or TraceHeaders.new()
    async with shared_hub.client("module") as module:
        response = await module.post("/AuditEvent", json=event, headers=ids.headers)
    body = response.json()
    return response.status_code, body.get("issue", []) if response.status_code >= 400 else []


def _expressions(issues: list[dict[str, Any]]) -> list[str]:
    return [expression for issue in issues for expression in issue.get("expression", [])]


@pytest.mark.parametrize("impostor", ["Device/xis", HUB_DEVICE])
async def test_an_app_may_not_name_another_as_requestor(
    shared_hub: HubServer, impostor: str
) -> None:
    event = receive_event("module", "trace-1")
    event["agent"] = [
        {"who": {"reference": "Device/module"}, "requestor": False},
        {"who": {"reference": impostor}, "requestor": True},
    ]
    status, issues = await _post_as_module(shared_hub, event)
    assert status == 422
    assert _expressions(issues) == ["AuditEvent.agent[1].who"]
    assert issues[0]["code"] == "business-rule"


async def test_a_second_requestor_besides_the_poster_is_refused(shared_hub: HubServer) -> None:
    event = receive_event("module", "trace-1")
    event["agent"].append({"who": {"reference": "Device/xis"}, "requestor": True})
    status, issues = await _post_as_module(shared_hub, event)
    assert status == 422
    assert _expressions(issues) == ["AuditEvent.agent[1].who"]


async def test_an_event_without_a_requestor_is_refused(shared_hub: HubServer) -> None:
    event = receive_event("module", "trace-1")
    event["agent"][0]["requestor"] = False
    status, issues = await _post_as_module(shared_hub, event)
    assert status == 422
    assert _expressions(issues) == ["AuditEvent.agent"]


@pytest.mark.parametrize("observer", [HUB_DEVICE, "Device/xis"])
async def test_an_app_may_not_name_another_as_observer(
    shared_hub: HubServer, observer: str
) -> None:
    event = receive_event("module", "trace-1")
    event["source"] = {"observer": {"reference": observer}}
    status, issues = await _post_as_module(shared_hub, event)
    assert status == 422
    assert _expressions(issues) == ["AuditEvent.source.observer"]


@pytest.mark.parametrize(
    "event_type",
    [
        {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        {"system": LIFECYCLE, "code": "transmit"},
        {"system": DCM, "code": "110114", "display": "User Authentication"},
        {"code": "transmit"},  # no system: `type=transmit` would find it all the same
    ],
)
async def test_the_hubs_own_event_kinds_are_reserved(
    shared_hub: HubServer, event_type: dict[str, Any]
) -> None:
    event = {**receive_event("module", "trace-1"), "type": event_type}
    status, issues = await _post_as_module(shared_hub, event)
    assert status == 422
    assert _expressions(issues) == ["AuditEvent.type"]


async def test_every_impersonation_is_named_at_once(shared_hub: HubServer) -> None:
    event = {
        **receive_event("module", "trace-1"),
        "type": {"system": LIFECYCLE, "code": "transmit"},
    }
    event["agent"] = [{"who": {"reference": "Device/xis"}, "requestor": True}]
    event["source"] = {"observer": {"reference": HUB_DEVICE}}
    ids = TraceHeaders.new()
    status, issues = await _post_as_module(shared_hub, event, ids)
    assert status == 422
    assert _expressions(issues) == [
        "AuditEvent.type",
        "AuditEvent.agent[0].who",
        "AuditEvent.source.observer",
    ]
    # Refused, so it is not in the trail: only the hub's record of the refusal is.
    assert [
        e["type"]["code"] for e in await search_events(shared_hub, {"traceId": ids.trace_id})
    ] == ["rest"]


async def test_an_oversized_event_is_refused(shared_hub: HubServer) -> None:
    event = receive_event("module", "trace-1")
    event["entity"][0]["description"] = "x" * (64 * 1024)
    status, issues = await _post_as_module(shared_hub, event)
    assert status == 422
    assert _expressions(issues) == ["AuditEvent"]
    assert issues[0]["code"] == "too-long"


async def test_the_posters_own_event_is_still_stored_and_chained(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    event = receive_event("module", ids.trace_id)
    # Other parties may still be named, only not as the one who acted or observed.
    event["agent"].append({"who": {"reference": HUB_DEVICE}, "requestor": False})
    event["entity"][0]["description"] = "x" * 1000
    async with shared_hub.client("module") as module:
        response = await module.post("/AuditEvent", json=event, headers=ids.headers)
    assert response.status_code == 201, response.text
    stored = response.json()
    trail = await search_events(shared_hub, {"traceId": ids.trace_id})
    assert [e["id"] for e in trail if e["type"]["code"] == "receive"] == [stored["id"]]
    # It joined the domain's chain, which still verifies.
    _pk, seq = await audit_row(shared_hub.settings.database_url, stored["id"])
    assert seq > 0
    assert verify(shared_hub).exit_code == 0
