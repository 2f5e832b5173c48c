"""Refused requests are audited too: outcome 4, and the OperationOutcome's text in outcomeDesc."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import httpx
import pytest

from tests.audit.test_rest_events import assert_rest_event
from tests.audit.trail import TraceHeaders, event_of, outcome_text, search_events, whats
from tests.support.hub import HubServer


def assert_refused(
    event: Any,
    response: httpx.Response,
    ids: TraceHeaders,
    *,
    interaction: str,
    action: str,
    caller: str | None,
) -> None:
    assert_rest_event(
        event, ids, interaction=interaction, action=action, outcome="4", caller=caller
    )
    assert response.json()["resourceType"] == "OperationOutcome"
    assert event["outcomeDesc"] == outcome_text(response.json())


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-token", "Basic eGlzOnNlY3JldA=="],
    ids=["no-token", "bad-token", "wrong-scheme"],
)
async def test_401_records_no_device(shared_hub: HubServer, authorization: str | None) -> None:
    ids = TraceHeaders.new()
    headers = ids.headers
    if authorization is not None:
        headers["Authorization"] = authorization
    async with shared_hub.client() as anonymous:
        response = await anonymous.get("/Patient/someone", headers=headers)
    assert response.status_code == 401

    event = await event_of(shared_hub, ids.request_id)
    assert_refused(event, response, ids, interaction="read", action="R", caller=None)
    # What was tried is on record, although the interaction never ran.
    assert [entity["what"]["reference"] for entity in event["entity"]] == ["Patient/someone"]


async def test_a_token_of_another_domain_is_refused_and_audited_here(
    shared_hub: HubServer,
) -> None:
    ids = TraceHeaders.new()
    foreign = shared_hub.token("other-xis", "other")
    async with shared_hub.client() as anonymous:
        response = await anonymous.get(
            "/Patient?_count=1", headers={"Authorization": f"Bearer {foreign}", **ids.headers}
        )
    assert response.status_code == 401

    event = await event_of(shared_hub, ids.request_id)
    assert_refused(event, response, ids, interaction="search-type", action="E", caller=None)
    [query] = event["entity"]
    assert base64.b64decode(query["query"]) == b"_count=1"
    assert query["role"]["code"] == "24"
    elsewhere = await search_events(
        shared_hub, {"requestId": ids.request_id}, domain="other", auditor="other-xis"
    )
    assert elsewhere == []


async def test_403(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client("portal") as portal:
        response = await portal.post(
            "/Patient", json={"resourceType": "Patient"}, headers=ids.headers
        )
    assert response.status_code == 403

    event = await event_of(shared_hub, ids.request_id)
    assert_refused(event, response, ids, interaction="create", action="C", caller="portal")
    assert event["outcomeDesc"] == (
        "Access denied: the role 'Clientportaal' does not allow 'create' on Patient"
    )


async def test_403_on_a_resource_names_it(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client("xis") as xis, shared_hub.client("module") as module:
        created = await xis.post("/Practitioner", json={"resourceType": "Practitioner"})
        practitioner_id = created.json()["id"]
        response = await module.delete(f"/Practitioner/{practitioner_id}", headers=ids.headers)
    assert response.status_code == 403

    event = await event_of(shared_hub, ids.request_id)
    assert_refused(event, response, ids, interaction="delete", action="D", caller="module")
    # A delete event names no `what`; the resource asked for is in a detail, and the
    # refusal names the role, the interaction and the resource.
    assert whats(event) == [None]
    assert event["entity"][0]["detail"] == [
        {"type": "reference", "valueString": f"Practitioner/{practitioner_id}"}
    ]
    assert event["outcomeDesc"] == (
        f"Access denied: the role 'eHealthModule' does not allow 'delete' on "
        f"Practitioner/{practitioner_id}"
    )


async def test_404_unknown_id(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client("xis") as xis:
        response = await xis.get("/Patient/does-not-exist", headers=ids.headers)
    assert response.status_code == 404

    event = await event_of(shared_hub, ids.request_id)
    assert_refused(event, response, ids, interaction="read", action="R", caller="xis")
    assert whats(event) == ["Patient/does-not-exist"]


async def test_404_unsupported_type(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client("xis") as xis:
        response = await xis.get("/Observation?code=x", headers=ids.headers)
    assert response.status_code == 404

    event = await event_of(shared_hub, ids.request_id)
    assert_refused(event, response, ids, interaction="search-type", action="E", caller="xis")


async def test_410_deleted(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client("xis") as xis:
        created = await xis.post("/Practitioner", json={"resourceType": "Practitioner"})
        practitioner_id = created.json()["id"]
        await xis.delete(f"/Practitioner/{practitioner_id}")
        response = await xis.get(f"/Practitioner/{practitioner_id}", headers=ids.headers)
    assert response.status_code == 410

    event = await event_of(shared_hub, ids.request_id)
    assert_refused(event, response, ids, interaction="read", action="R", caller="xis")


async def test_412_version_conflict(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client("xis") as xis:
        created = (await xis.post("/Patient", json={"resourceType": "Patient"})).json()
        response = await xis.put(
            f"/Patient/{created['id']}",
            json=created,
            headers={"If-Match": 'W/"7"', **ids.headers},
        )
    assert response.status_code == 412

    event = await event_of(shared_hub, ids.request_id)
    assert_refused(event, response, ids, interaction="update", action="U", caller="xis")


async def test_400_bad_search(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client("xis") as xis:
        response = await xis.get("/Patient?birthdate=yesterday", headers=ids.headers)
    assert response.status_code == 400

    event = await event_of(shared_hub, ids.request_id)
    assert_refused(event, response, ids, interaction="search-type", action="E", caller="xis")


async def test_422_business_rule(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    patient = {
        "resourceType": "Patient",
        "extension": [
            {
                "url": "http://koppeltaal.nl/fhir/StructureDefinition/resource-origin",
                "valueReference": {"reference": "Device/portal"},
            }
        ],
    }
    async with shared_hub.client("xis") as xis:
        response = await xis.post("/Patient", json=patient, headers=ids.headers)
    assert response.status_code == 422

    event = await event_of(shared_hub, ids.request_id)
    assert_refused(event, response, ids, interaction="create", action="C", caller="xis")


@pytest.mark.parametrize("client_id", ["auditor", "xis", "admin", None])
@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_405_update_or_delete_of_an_audit_event(
    shared_hub: HubServer, client_id: str | None, method: str
) -> None:
    """AuditEvents are append-only for every application (without a token: 401); audited."""
    ids = TraceHeaders.new()
    async with shared_hub.client("xis") as xis:
        read = await xis.get("/metadata", headers={"X-Request-Id": f"target-{ids.request_id}"})
    assert read.status_code == 200
    target = await event_of(shared_hub, f"target-{ids.request_id}")

    async with shared_hub.client(client_id) as client:
        response = await client.request(
            method,
            f"/AuditEvent/{target['id']}",
            json={**target, "outcome": "8"},
            headers={"If-Match": 'W/"1"', **ids.headers},
        )
    if client_id is None:
        assert response.status_code == 401
    else:
        assert response.status_code == 405
        assert response.headers["Allow"] == "GET, POST"

    event = await event_of(shared_hub, ids.request_id)
    interaction, action = ("update", "U") if method == "PUT" else ("delete", "D")
    assert_refused(event, response, ids, interaction=interaction, action=action, caller=client_id)
    # A delete event names no `what` (Koppeltaal: a deleted resource cannot be referenced).
    assert whats(event) == [f"AuditEvent/{target['id']}" if method == "PUT" else None]

    async with shared_hub.client("auditor") as auditor:
        after = await auditor.get(f"/AuditEvent/{target['id']}")
    assert after.status_code == 200
    assert after.json() == target


async def test_a_refused_search_by_post_names_its_form_too(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    form = "birthdate=yesterday"
    async with shared_hub.client("xis") as xis:
        response = await xis.post(
            "/Patient/_search?_count=5",
            content=form,
            headers={**ids.headers, "Content-Type": "application/x-www-form-urlencoded"},
        )
    assert response.status_code == 400

    event = await event_of(shared_hub, ids.request_id)
    assert_refused(event, response, ids, interaction="search-type", action="E", caller="xis")
    expected = base64.b64encode(f"_count=5&{form}".encode()).decode()
    assert [entity["query"] for entity in event["entity"]] == [expected]


async def test_an_attacker_sized_query_is_audited_cut_to_a_few_kb(shared_hub: HubServer) -> None:
    """A refused search stores a few kB of its query and the digest of the whole, not 20 kB.

    (A request line over HUB_MAX_HEADER_BYTES, 32 kB, never reaches the application: 431.)
    """
    ids = TraceHeaders.new()
    query = "name=" + "x" * 20_000
    async with shared_hub.client() as anonymous:
        response = await anonymous.get(f"/Patient?{query}", headers=ids.headers)
    assert response.status_code == 401

    event = await event_of(shared_hub, ids.request_id)
    [entity] = event["entity"]
    assert len(base64.b64decode(entity["query"])) <= 2048
    assert base64.b64decode(entity["query"]).decode() == query[:2048]
    digest = hashlib.sha256(query.encode()).hexdigest()
    assert {"type": "truncated-query", "valueString": f"SHA-256 {digest} of 20005 bytes"} in (
        entity["detail"]
    )
