"""The AuditEvent of every REST interaction, field by field (Koppeltaal facts: AuditEvent).

Each test makes one request against a real hub with its own trace headers,
then finds that request's AuditEvent by `requestId` as an auditor would.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from tests.audit.trail import (
    AUDIT_EVENT_TYPE,
    CORRELATION_ID,
    DCM,
    HUB_DEVICE,
    KT2_AUDIT_PROFILE,
    OBJECT_ROLE,
    REQUEST_ID,
    RESOURCE_ORIGIN,
    RESOURCE_TYPES,
    RESTFUL_INTERACTION,
    TRACE_ID,
    TraceHeaders,
    b64,
    event_of,
    extension,
    whats,
)
from tests.support.hub import HubServer


def assert_rest_event(
    event: Mapping[str, Any],
    ids: TraceHeaders,
    *,
    interaction: str,
    action: str,
    outcome: str = "0",
    caller: str | None = "xis",
) -> None:
    """The fields every REST AuditEvent carries, whatever the interaction."""
    assert event["resourceType"] == "AuditEvent"
    assert event["meta"]["profile"] == [KT2_AUDIT_PROFILE]
    assert extension(event, TRACE_ID) == {"url": TRACE_ID, "valueId": ids.trace_id}
    assert extension(event, REQUEST_ID) == {"url": REQUEST_ID, "valueId": ids.request_id}
    if ids.correlation_id is None:
        assert extension(event, CORRELATION_ID) is None
    else:
        assert extension(event, CORRELATION_ID) == {
            "url": CORRELATION_ID,
            "valueId": ids.correlation_id,
        }
    assert extension(event, RESOURCE_ORIGIN)["valueReference"] == {"reference": HUB_DEVICE}
    assert (event["type"]["system"], event["type"]["code"]) == (AUDIT_EVENT_TYPE, "rest")
    assert event["subtype"] == [
        {"system": RESTFUL_INTERACTION, "code": interaction, "display": interaction}
    ]
    assert event["action"] == action
    assert event["outcome"] == outcome
    if outcome == "0":
        assert "outcomeDesc" not in event

    requestor, hub = event["agent"]
    assert [(c["system"], c["code"]) for c in requestor["type"]["coding"]] == [(DCM, "110153")]
    assert requestor["requestor"] is True
    assert "network" not in requestor  # as the reference writes it: only a transmit's destination
    if caller is None:
        assert "who" not in requestor
    else:
        assert requestor["who"] == {"reference": f"Device/{caller}"}
    assert [(c["system"], c["code"]) for c in hub["type"]["coding"]] == [(DCM, "110152")]
    assert hub["who"] == {"reference": HUB_DEVICE}
    assert hub["requestor"] is False

    assert event["source"]["site"] == "test-site"
    assert event["source"]["observer"] == {"reference": HUB_DEVICE}
    # Every entity naming a resource is typed as that resource type.
    for entity in event.get("entity", []):
        if "what" in entity:
            rtype = entity["what"]["reference"].partition("/")[0]
            assert entity["type"] == {"system": RESOURCE_TYPES, "code": rtype, "display": rtype}


def _recorded(event: Mapping[str, Any]) -> datetime:
    return datetime.fromisoformat(event["recorded"].replace("Z", "+00:00"))


async def _create_patient(xis: httpx.AsyncClient, **fields: Any) -> Any:
    response = await xis.post("/Patient", json={"resourceType": "Patient", **fields})
    assert response.status_code == 201, response.text
    return response.json()


async def test_create(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    before = datetime.now(UTC)
    async with shared_hub.client("xis") as xis:
        response = await xis.post("/Patient", json={"resourceType": "Patient"}, headers=ids.headers)
    after = datetime.now(UTC)
    assert response.status_code == 201
    patient = response.json()

    event = await event_of(shared_hub, ids.request_id)
    assert_rest_event(event, ids, interaction="create", action="C")
    assert whats(event) == [f"Patient/{patient['id']}/_history/1"]
    assert before <= _recorded(event) <= after


async def test_read(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client("xis") as xis:
        patient = await _create_patient(xis)
        response = await xis.get(f"/Patient/{patient['id']}", headers=ids.headers)
    assert response.status_code == 200

    event = await event_of(shared_hub, ids.request_id)
    assert_rest_event(event, ids, interaction="read", action="R")
    assert whats(event) == [f"Patient/{patient['id']}/_history/1"]


async def test_vread(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client("xis") as xis:
        patient = await _create_patient(xis)
        updated = await xis.put(
            f"/Patient/{patient['id']}",
            json={**patient, "gender": "other"},
            headers={"If-Match": 'W/"1"'},
        )
        assert updated.status_code == 200
        response = await xis.get(f"/Patient/{patient['id']}/_history/1", headers=ids.headers)
    assert response.status_code == 200

    event = await event_of(shared_hub, ids.request_id)
    assert_rest_event(event, ids, interaction="vread", action="R")
    assert whats(event) == [f"Patient/{patient['id']}/_history/1"]


async def test_update(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client("xis") as xis:
        patient = await _create_patient(xis)
        response = await xis.put(
            f"/Patient/{patient['id']}",
            json={**patient, "gender": "female"},
            headers={"If-Match": 'W/"1"', **ids.headers},
        )
    assert response.status_code == 200

    event = await event_of(shared_hub, ids.request_id)
    assert_rest_event(event, ids, interaction="update", action="U")
    assert whats(event) == [f"Patient/{patient['id']}/_history/2"]


async def test_delete(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client("xis") as xis:
        created = await xis.post("/Practitioner", json={"resourceType": "Practitioner"})
        practitioner_id = created.json()["id"]
        response = await xis.delete(f"/Practitioner/{practitioner_id}", headers=ids.headers)
    assert response.status_code == 200

    event = await event_of(shared_hub, ids.request_id)
    assert_rest_event(event, ids, interaction="delete", action="D")
    # A deleted resource cannot be referenced: the entity has its type but no `what`; the
    # deletion's own version is kept in a detail for the auditor who asks which one.
    assert event["entity"] == [
        {
            "type": {"system": RESOURCE_TYPES, "code": "Practitioner", "display": "Practitioner"},
            "detail": [
                {"type": "reference", "valueString": f"Practitioner/{practitioner_id}/_history/2"}
            ],
        }
    ]


async def test_search_type(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client("xis") as xis:
        patient = await _create_patient(xis, gender="unknown")
        query = f"_id={patient['id']}&gender=unknown"
        response = await xis.get(f"/Patient?{query}", headers=ids.headers)
    assert response.status_code == 200
    assert response.json()["total"] == 1

    event = await event_of(shared_hub, ids.request_id)
    assert_rest_event(event, ids, interaction="search-type", action="E")
    query_entity, *found = event["entity"]
    assert query_entity["role"] == {"system": OBJECT_ROLE, "code": "24", "display": "Query"}
    patient_type = {"system": RESOURCE_TYPES, "code": "Patient", "display": "Patient"}
    assert query_entity["type"] == patient_type
    assert query_entity["query"] == b64(query)
    assert "what" not in query_entity
    assert [entity["what"]["reference"] for entity in found] == [
        f"Patient/{patient['id']}/_history/1"
    ]
    assert [entity["type"]["code"] for entity in found] == ["Patient"]


async def test_search_by_post_audits_the_form_as_the_query(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client("xis") as xis:
        patient = await _create_patient(xis)
        form = f"_id={patient['id']}"
        response = await xis.post(
            "/Patient/_search",
            content=form,
            headers={"Content-Type": "application/x-www-form-urlencoded", **ids.headers},
        )
    assert response.status_code == 200

    event = await event_of(shared_hub, ids.request_id)
    assert_rest_event(event, ids, interaction="search-type", action="E")
    assert event["entity"][0]["query"] == b64(form)
    assert whats(event) == [None, f"Patient/{patient['id']}/_history/1"]


async def test_search_that_finds_nothing_names_only_the_query(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client("xis") as xis:
        response = await xis.get("/Patient?_id=nobody", headers=ids.headers)
    assert response.json()["total"] == 0

    event = await event_of(shared_hub, ids.request_id)
    assert whats(event) == [None]
    assert event["entity"][0]["query"] == b64("_id=nobody")


async def test_history_instance(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client("xis") as xis:
        patient = await _create_patient(xis)
        await xis.put(
            f"/Patient/{patient['id']}",
            json={**patient, "gender": "male"},
            headers={"If-Match": 'W/"1"'},
        )
        response = await xis.get(f"/Patient/{patient['id']}/_history", headers=ids.headers)
    assert response.status_code == 200

    event = await event_of(shared_hub, ids.request_id)
    assert_rest_event(event, ids, interaction="history-instance", action="R")
    assert whats(event) == [
        f"Patient/{patient['id']}/_history/2",
        f"Patient/{patient['id']}/_history/1",
    ]


async def test_capabilities(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client("xis") as xis:
        response = await xis.get("/metadata", headers=ids.headers)
    assert response.status_code == 200
    assert response.json()["resourceType"] == "CapabilityStatement"

    event = await event_of(shared_hub, ids.request_id)
    assert_rest_event(event, ids, interaction="capabilities", action="R")
    assert "entity" not in event


async def test_capabilities_without_a_token_names_no_device(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client() as anonymous:
        response = await anonymous.get("/metadata", headers=ids.headers)
    assert response.status_code == 200

    event = await event_of(shared_hub, ids.request_id)
    assert_rest_event(event, ids, interaction="capabilities", action="R", caller=None)


async def test_without_a_correlation_id_the_extension_is_absent(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new(correlated=False)
    async with shared_hub.client("xis") as xis:
        response = await xis.get("/metadata", headers=ids.headers)
    assert response.status_code == 200

    event = await event_of(shared_hub, ids.request_id)
    assert_rest_event(event, ids, interaction="capabilities", action="R")


async def test_ids_the_hub_makes_are_the_ones_it_echoes_and_audits(shared_hub: HubServer) -> None:
    async with shared_hub.client("xis") as xis:
        response = await xis.get("/metadata")
    made = TraceHeaders(
        request_id=response.headers["X-Request-Id"],
        trace_id=response.headers["X-Trace-Id"],
        correlation_id=None,
    )
    assert made.request_id != made.trace_id

    event = await event_of(shared_hub, made.request_id)
    assert_rest_event(event, made, interaction="capabilities", action="R")


async def test_each_caller_is_named_by_its_own_device(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client("portal") as portal:
        response = await portal.get("/ActivityDefinition?_count=1", headers=ids.headers)
    assert response.status_code == 200

    event = await event_of(shared_hub, ids.request_id)
    assert_rest_event(event, ids, interaction="search-type", action="E", caller="portal")


async def test_the_trail_is_itself_audited(shared_hub: HubServer) -> None:
    """An auditor's search of AuditEvents is an interaction like any other."""
    ids = TraceHeaders.new()
    async with shared_hub.client("auditor") as auditor:
        response = await auditor.get("/AuditEvent?outcome=8&_count=1", headers=ids.headers)
    assert response.status_code == 200

    event = await event_of(shared_hub, ids.request_id)
    assert_rest_event(event, ids, interaction="search-type", action="E", caller="auditor")
    assert event["entity"][0]["query"] == b64("outcome=8&_count=1")
