"""What the hub says about itself, checked against what it does.

`GET /metadata` (CapabilityStatement), SMART discovery, the JWKS, and the health
endpoints; all public.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from joserfc import jwt
from joserfc.jwk import KeySet

from hub.fhir.bindings import token_codes
from hub.fhir.search_params import SUPPORTED_TYPES, params_for
from tests.api.common import (
    APPS,
    FHIR_JSON,
    ROLES,
    SAMPLES,
    entries,
    may_create,
    origins,
    outcome,
)
from tests.support.hub import HubServer
from tests.support.schema import problems as schema_problems

# One hub per backend for the module (`module_hub`): keep the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_capabilities")

# A syntactically valid value for each search parameter type.
VALUES = {"token": "x", "string": "x", "date": "2020", "reference": "x", "uri": "http://x"}


async def test_capability_statement_matches_the_server(module_hub: HubServer) -> None:
    async with httpx.AsyncClient(base_url=module_hub.fhir()) as anonymous:
        response = await anonymous.get("/metadata")  # public: no token
        as_json = await anonymous.get("/metadata", headers={"Accept": "application/json"})
        unsupported = await anonymous.get("/metadata", params={"_format": "xml"})
    assert response.status_code == 200
    assert response.headers["content-type"] == f"{FHIR_JSON}; charset=utf-8"
    assert as_json.headers["content-type"] == "application/json; charset=utf-8"
    outcome(unsupported, 406)
    statement = response.json()
    CapabilityStatement.model_validate(statement)  # a valid R4 CapabilityStatement
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["kind"] == "instance"
    assert statement["implementationGuide"] == ["http://koppeltaal.nl/fhir/ImplementationGuide"]
    assert set(statement["format"]) == {FHIR_JSON, "application/json"}
    [rest] = statement["rest"]
    assert rest["mode"] == "server"
    [smart] = rest["security"]["extension"]
    assert smart["extension"] == [{"url": "token", "valueUri": module_hub.token_url()}]
    listed = {resource["type"]: resource for resource in rest["resource"]}

    # Only what some role of the loaded matrix may do: a type no role may touch
    # (Organization) is left out, and so is each interaction no role may perform.
    assert set(listed) == {rtype for rtype in SUPPORTED_TYPES if matrix_actions(rtype)}
    assert "Organization" not in listed
    for rtype, resource in listed.items():
        actions = matrix_actions(rtype)
        expected = {code for code, action in INTERACTION_ACTIONS.items() if action in actions}
        assert {i["code"] for i in resource["interaction"]} == expected, rtype
        operations = {op["name"] for op in resource.get("operation", [])}
        assert operations <= {"status", "resend", "chain-head"}, rtype
    # No role deletes a Task or changes a Communication or an AuditEvent (authz_matrix.yaml).
    assert "delete" not in {i["code"] for i in listed["Task"]["interaction"]}
    for rtype in ("Communication", "AuditEvent"):
        assert {i["code"] for i in listed[rtype]["interaction"]} == {
            "read", "vread", "create", "search-type", "history-instance"
        }  # fmt: skip

    async with httpx.AsyncClient(base_url=module_hub.fhir()) as client:
        for rtype in SUPPORTED_TYPES:
            interactions = {i["code"] for i in listed.get(rtype, {}).get("interaction", [])}
            unlisted = [probe for probe in UNLISTED_PROBES if probe[0] not in interactions]
            creator = next((app for app in APPS if may_create(app, rtype)), None)
            resource_id = "x"
            if unlisted and creator is not None:  # probe an existing resource, not a 404
                sample = SAMPLES[rtype](creator)
                creator_headers = {"Authorization": f"Bearer {module_hub.token(creator)}"}
                created = await client.post(f"/{rtype}", json=sample, headers=creator_headers)
                assert created.status_code == 201, created.text
                resource_id = created.json()["id"]
            # An interaction the statement leaves out is refused to every test app.
            for code, method, path in unlisted:
                for app in APPS:
                    headers = {"Authorization": f"Bearer {module_hub.token(app)}"}
                    body = SAMPLES[rtype](app) | {"id": resource_id} if method != "DELETE" else None
                    url = path.format(rtype, resource_id)
                    refused = await client.request(method, url, headers=headers, json=body)
                    # Nobody can create one (Organization): none exists to change either.
                    nothing = creator is None and method in ("PUT", "DELETE")
                    allowed = (403, 404, 405) if nothing else (403, 405)
                    assert refused.status_code in allowed, (rtype, code, app, refused.text)
        for rtype, resource in listed.items():
            reader = next((app for app in APPS if origins(app, rtype, "read")), None)
            if reader is None:
                continue  # a role outside the test apps reads it
            # Every listed parameter, at once, in a strict search: none is refused.
            params = {
                p["name"]: sample_value(rtype, p["name"], p["type"])
                for p in resource["searchParam"]
            }
            assert "_id" in params
            assert "resource-origin" in params
            headers = {
                "Authorization": f"Bearer {module_hub.token(reader)}",
                "Prefer": "handling=strict",
            }
            searched = await client.get(f"/{rtype}", params=params, headers=headers)
            assert searched.status_code == 200, (rtype, searched.text)
            assert entries(searched.json(), "outcome") == []  # nothing was ignored
        # A type the statement does not list is not served.
        headers = {"Authorization": f"Bearer {module_hub.token('admin')}"}
        assert (await client.get("/Observation", headers=headers)).status_code == 404
    assert "Observation" not in listed
    assert {"Patient", "Task", "AuditEvent", "Subscription", "Communication"} <= set(listed)
    assert schema_problems(statement) == []  # the official R4 JSON schema, explicitly


def matrix_actions(rtype: str) -> set[str]:
    """What at least one role of authz_matrix.yaml may do with `rtype` (search follows read)."""
    actions: set[str] = set()
    for types in ROLES.values():
        rights = (types or {}).get(rtype) or {}
        actions.update(action for action, value in rights.items() if value not in (None, False))
    return actions


# The matrix action each interaction needs.
INTERACTION_ACTIONS = {
    "read": "read", "vread": "read", "search-type": "read", "history-instance": "read",
    "create": "create", "update": "update", "delete": "delete",
}  # fmt: skip
# A request per interaction that may be left out, tried when it is.
UNLISTED_PROBES = (
    ("create", "POST", "/{}"),
    ("delete", "DELETE", "/{}/{}"),
    ("update", "PUT", "/{}/{}"),
    ("search-type", "GET", "/{}"),
)


def sample_value(rtype: str, code: str, kind: str) -> str:
    """A valid value of the parameter: a code of its required binding where it has one."""
    bound = token_codes(params_for(rtype)[code].expression) if kind == "token" else None
    return bound.codes[0] if bound is not None else VALUES[kind]


async def test_smart_discovery_and_jwks(module_hub: HubServer) -> None:
    async with httpx.AsyncClient(base_url=module_hub.url) as anonymous:
        discovery = await anonymous.get("/test/fhir/.well-known/smart-configuration")
        jwks = await anonymous.get("/test/oauth2/jwks")
        elsewhere = await anonymous.get("/nowhere/fhir/.well-known/smart-configuration")
    assert discovery.status_code == 200
    config: dict[str, Any] = discovery.json()
    assert config["token_endpoint"] == module_hub.token_url()
    assert config["jwks_uri"] == f"{module_hub.url}/test/oauth2/jwks"
    assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert "client_credentials" in config["grant_types_supported"]
    assert {"client-confidential-asymmetric", "permission-v2"} <= set(config["capabilities"])
    assert elsewhere.status_code == 404

    published = jwks.json()
    assert published["keys"]
    for key in published["keys"]:
        assert key["kid"]
        assert key["kty"] in ("RSA", "EC")
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key), "private parts published"
    # Clients verify the access token with the published keys (RS512, kid in the header).
    token = jwt.decode(
        module_hub.token("module"), KeySet.import_key_set(published), algorithms=["RS512"]
    )
    assert token.header["kid"] in {key["kid"] for key in published["keys"]}
    claims = token.claims
    assert claims["iss"] == config["issuer"]
    assert claims["aud"] == module_hub.fhir()
    assert claims["azp"] == "module"
    assert "sub" not in claims
    assert claims["jti"]
    assert time.time() < claims["exp"] <= time.time() + module_hub.settings.access_token_lifetime
    # SMART v2 system scopes from the role: GRANTED as a resource-origin list, ALL bare.
    scopes = claims["scope"].split()
    granted = "Device/module,Device/portal,Device/practitioner-portal"
    assert f"system/Task.crus?resource-origin={granted}" in scopes
    assert "system/Endpoint.crus" in scopes
    assert "system/CareTeam.rs" in scopes
    assert not any(scope.startswith("system/Device.") for scope in scopes)


async def test_health(module_hub: HubServer) -> None:
    async with httpx.AsyncClient(base_url=module_hub.url) as anonymous:
        live = await anonymous.get("/healthz", headers={"X-Request-Id": "probe-1"})
        ready = await anonymous.get("/readyz")
    assert live.status_code == 200
    assert live.json() == {"status": "ok"}
    assert live.headers["x-request-id"] == "probe-1"
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    backend = "sqlite" if module_hub.settings.is_sqlite else "postgresql"
    assert body["database"] == backend
    assert body["revision"]
