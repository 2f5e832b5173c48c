"""The official FHIR R4 examples (tests/fixtures/fhir-r4, unchanged) against the real hub.

A valid example goes in and comes back as sent, plus only what the server sets.
An example that breaks a Koppeltaal rule is refused with the rule's status, and
goes through once just that rule is met; nothing else of it is lost.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome

from tests.api.common import (
    RESOURCE_ORIGIN,
    entries,
    expressions,
    fixture,
    ids,
    link,
    outcome,
)
from tests.support.hub import HubServer

# One hub per backend for the module (`module_hub`): keep the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_examples")


def without_server_fields(resource: dict[str, Any], origin: str) -> dict[str, Any]:
    """`resource` minus what the hub sets: id, versionId, lastUpdated and resource-origin."""
    stripped = copy.deepcopy(resource)
    del stripped["id"]
    meta = stripped.pop("meta")
    assert meta.pop("versionId")
    assert meta.pop("lastUpdated")
    if meta:
        stripped["meta"] = meta
    origin_extension = {"url": RESOURCE_ORIGIN, "valueReference": {"reference": f"Device/{origin}"}}
    extensions = stripped.pop("extension")
    assert extensions[-1] == origin_extension
    if extensions[:-1]:
        stripped["extension"] = extensions[:-1]
    return stripped


def as_posted(example: dict[str, Any]) -> dict[str, Any]:
    posted = copy.deepcopy(example)
    del posted["id"]  # ignored on create anyway; compared without it
    return posted


async def test_patient_example_round_trips(module_hub: HubServer) -> None:
    example = fixture("patient-example.json")
    async with module_hub.client("xis") as xis:
        created = await xis.post("/Patient", json=example)
        assert created.status_code == 201, created.text
        patient = created.json()
        read = (await xis.get(f"/Patient/{patient['id']}")).json()
        found = await xis.get(
            "/Patient", params={"identifier": "urn:oid:1.2.36.146.595.217.0.1|12345"}
        )
        updated = await xis.put(
            f"/Patient/{patient['id']}", json=read, headers={"If-Match": 'W/"1"'}
        )
    assert patient["id"] != example["id"]
    assert read == patient
    assert without_server_fields(read, "xis") == as_posted(example)
    assert patient["id"] in ids(found.json())
    # Sending back what was read changes nothing but the version.
    assert updated.status_code == 200
    assert without_server_fields(updated.json(), "xis") == as_posted(example)
    assert updated.json()["meta"]["versionId"] == "2"


@pytest.mark.parametrize("name", ["auditevent-example.json", "auditevent-example-error.json"])
async def test_audit_event_examples(module_hub: HubServer, name: str) -> None:
    """The examples lack what a KT2AuditEvent needs (a Device agent, an observer): 422.

    With those added, and put right where they would speak for someone else (another
    requesting agent, or a `rest` event: the hub's own kind), they are stored and read
    back as sent.
    """
    example = fixture(name)
    kt2 = as_posted(example)
    for agent in kt2["agent"]:
        agent["requestor"] = False
    kt2["agent"].append({"who": {"reference": "Device/xis"}, "requestor": True})
    kt2["source"]["observer"] = {"reference": "Device/xis"}
    if kt2["type"].get("code") == "rest":
        kt2["type"] = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110100"}
    async with module_hub.client("xis") as xis:
        refused = outcome(await xis.post("/AuditEvent", json=example), 422)
        created = await xis.post("/AuditEvent", json=kt2)
        assert created.status_code == 201, created.text
        read = (await xis.get(f"/AuditEvent/{created.json()['id']}")).json()
    assert set(expressions(refused)) == {"AuditEvent.agent", "AuditEvent.source.observer"}
    assert without_server_fields(read, "xis") == kt2


async def test_search_bundle_matches_the_example_bundle(module_hub: HubServer) -> None:
    """A search with an ignored parameter answers like bundle-search-warning.json."""
    example = fixture("bundle-search-warning.json")
    Bundle.model_validate(example)
    async with module_hub.client("xis") as xis:
        response = await xis.get(
            "/Patient", params={"identifier": "urn:test:none|123456", "patient.identifier": "x"}
        )
        posted = await xis.post("/Bundle", json=example)
    assert response.status_code == 200
    bundle = response.json()
    Bundle.model_validate(bundle)
    assert bundle["type"] == example["type"] == "searchset"
    assert bundle["total"] == example["total"] == 0
    assert (link(bundle, "self") or "").startswith(f"{module_hub.fhir()}/Patient?")
    [warning] = entries(bundle, "outcome")
    [example_warning] = entries(example, "outcome")
    assert warning["resourceType"] == example_warning["resourceType"]
    assert [i["severity"] for i in warning["issue"]] == ["warning"]
    # A Bundle is not a resource the hub stores.
    outcome(posted, 404)


async def test_operation_outcomes_are_shaped_like_the_example(module_hub: HubServer) -> None:
    example = fixture("operationoutcome-example.json")
    OperationOutcome.model_validate(example)
    [example_issue] = example["issue"]
    async with module_hub.client("xis") as xis:
        answers = [
            await xis.post("/Patient", json={"resourceType": "Patient", "gender": 12}),
            await xis.get("/Patient/unknown"),
            await xis.post("/OperationOutcome", json=example),
        ]
    for response in answers:
        body = outcome(response, response.status_code)
        assert response.status_code in (400, 404)
        OperationOutcome.model_validate(body)
        for issue in body["issue"]:
            # The hub uses the example's elements, never others.
            assert set(issue) <= set(example_issue)
    assert expressions(answers[0].json()) == ["Patient.gender"]


@pytest.mark.parametrize("name", ["subscription-example.json", "subscription-example-error.json"])
async def test_subscription_examples(module_hub: HubServer, name: str) -> None:
    """Koppeltaal refuses channel.payload (and an end in the past, and a type it does not serve)."""
    example = fixture(name)
    secret = "secret-token-abc-123"
    assert any(secret in header for header in example["channel"]["header"])
    fixed = as_posted(example)
    del fixed["channel"]["payload"]
    fixed["end"] = (datetime.now(UTC) + timedelta(days=30)).isoformat(timespec="seconds")
    fixed["criteria"] = "Patient?identifier=http://loinc.org|1975-2"
    fixed["channel"]["endpoint"] = "https://127.0.0.1:9/customers/mount-auburn-miu/on-result"
    async with module_hub.client("xis") as xis:
        refused = await xis.post("/Subscription", json=example)
        created = await xis.post("/Subscription", json=fixed)
        assert created.status_code == 201, created.text
        read = (await xis.get(f"/Subscription/{created.json()['id']}")).json()
    body = outcome(refused, 422)
    assert {"Subscription.channel.payload", "Subscription.end", "Subscription.criteria"} <= set(
        expressions(body)
    )
    # channel.header values are shared secrets: never echoed in an error.
    assert secret not in refused.text
    stored = without_server_fields(read, "xis")
    # The hub owns status and error: a client asks, the hub decides.
    assert stored.pop("status") == "active"
    fixed.pop("status")
    fixed.pop("error", None)
    assert stored == fixed
