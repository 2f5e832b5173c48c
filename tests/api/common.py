"""What the end-to-end API tests share: minimal valid resources and response checks."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

from tests.rules.samples import example_communication
from tests.support.hub import MATRIX, TEST_APPS, TEST_GRANTS

FIXTURES = Path(__file__).parents[1] / "fixtures" / "fhir-r4"
RESOURCE_ORIGIN = "http://koppeltaal.nl/fhir/StructureDefinition/resource-origin"
CLIENT_ID_SYSTEM = "http://vzvz.nl/fhir/NamingSystem/koppeltaal-client-id"
FHIR_JSON = "application/fhir+json"
# A webhook that is never called: Subscriptions made by the tests match nothing.
QUIET_ENDPOINT = "https://127.0.0.1:9/hook"


def fixture(name: str) -> dict[str, Any]:
    """An official FHIR R4 example, exactly as published."""
    document: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return document


def audit_event(device: str) -> dict[str, Any]:
    """An application's own KT2 AuditEvent (a `receive` of a notification)."""
    return {
        "resourceType": "AuditEvent",
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle",
            "code": "receive",
        },
        "action": "E",
        "recorded": "2025-03-01T12:00:00+01:00",
        "outcome": "0",
        "agent": [{"who": {"reference": f"Device/{device}"}, "requestor": True}],
        "source": {"observer": {"reference": f"Device/{device}"}},
        "entity": [{"what": {"reference": "Subscription/1"}}],
    }


def subscription(device: str) -> dict[str, Any]:
    """A Subscription whose criteria every role that may subscribe can read, matching nothing."""
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": f"test subscription of {device}",
        "criteria": "Patient?identifier=urn:test:never|none",
        "channel": {"type": "rest-hook", "endpoint": QUIET_ENDPOINT},
    }


def _plain(resource: dict[str, Any]) -> Callable[[str], dict[str, Any]]:
    return lambda _device: dict(resource)


# A minimal valid resource of every type the hub serves, made for the Device that posts it.
SAMPLES: Mapping[str, Callable[[str], dict[str, Any]]] = {
    "ActivityDefinition": _plain(
        {"resourceType": "ActivityDefinition", "status": "active", "title": "Module"}
    ),
    "AuditEvent": audit_event,
    "CareTeam": _plain({"resourceType": "CareTeam", "status": "active", "name": "Team"}),
    "Communication": lambda _device: example_communication(),
    "Device": _plain({"resourceType": "Device", "status": "active"}),
    "Endpoint": _plain(
        {
            "resourceType": "Endpoint",
            "status": "active",
            "connectionType": {
                "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                "code": "hl7-fhir-rest",
            },
            "payloadType": [{"text": "FHIR"}],
            "address": "https://module.example/fhir",
        }
    ),
    "Organization": _plain({"resourceType": "Organization", "name": "Care provider"}),
    "Patient": _plain({"resourceType": "Patient", "gender": "female"}),
    "Practitioner": _plain({"resourceType": "Practitioner", "name": [{"family": "Jansen"}]}),
    "RelatedPerson": _plain(
        {"resourceType": "RelatedPerson", "patient": {"reference": "Patient/p1"}}
    ),
    "Subscription": subscription,
    "Task": _plain({"resourceType": "Task", "status": "requested", "intent": "order"}),
}


def origin_of(resource: Mapping[str, Any]) -> str | None:
    """The Device id in the resource-origin extension, if any."""
    for extension in resource.get("extension", ()):
        if extension.get("url") == RESOURCE_ORIGIN:
            reference: str = extension["valueReference"]["reference"]
            return reference.removeprefix("Device/")
    return None


def outcome(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert `status` with an OperationOutcome body (FHIR JSON); return the outcome."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON), response.headers
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"], body
    for issue in body["issue"]:
        assert issue["severity"] in ("fatal", "error", "warning", "information"), issue
        assert issue["code"], issue
    return body


def expressions(body: Mapping[str, Any]) -> list[str]:
    return [expression for issue in body["issue"] for expression in issue.get("expression", ())]


def entries(bundle: Mapping[str, Any], mode: str = "match") -> list[dict[str, Any]]:
    """The resources of a searchset Bundle's entries of one search mode."""
    return [
        entry["resource"]
        for entry in bundle.get("entry", ())
        if entry.get("search", {}).get("mode") == mode
    ]


def ids(bundle: Mapping[str, Any]) -> list[str]:
    return [resource["id"] for resource in entries(bundle)]


def link(bundle: Mapping[str, Any], relation: str) -> str | None:
    return next((li["url"] for li in bundle.get("link", ()) if li["relation"] == relation), None)


# --- the authorisation matrix, read independently of the hub's own loader -----------------

ROLES: dict[str, dict[str, dict[str, Any]]] = yaml.safe_load(MATRIX.read_text())["roles"]
APPS = sorted(TEST_APPS)
Action = Literal["read", "update", "delete"]


def rights(client_id: str, rtype: str) -> dict[str, Any]:
    return ROLES[TEST_APPS[client_id]].get(rtype) or {}


def may_create(client_id: str, rtype: str) -> bool:
    return rights(client_id, rtype).get("create") is True


def origins(client_id: str, rtype: str, action: Action) -> frozenset[str]:
    """The test apps whose `rtype` resources `client_id` may `action`, per authz_matrix.yaml."""
    scope = rights(client_id, rtype).get(action)
    if scope is None:
        return frozenset()
    if scope == "all":
        return frozenset(APPS)
    if scope == "own":
        return frozenset({client_id})
    assert scope == "granted", scope
    return frozenset(TEST_GRANTS.get(client_id, {}).get(rtype, ()))
