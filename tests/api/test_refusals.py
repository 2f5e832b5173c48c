"""Requests refused before any FHIR handler runs are audited too."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from hub.access.assertion import make_client_assertion
from hub.access.keys import SigningKeys
from hub.access.tokens import (
    BAD_SIGNATURE,
    EXPIRED,
    MALFORMED,
    NOT_FOR_THIS_DOMAIN,
    issue_access_token,
)
from tests.audit.trail import TraceHeaders, event_of, search_events
from tests.support.hub import HubServer


def subtype(event: dict[str, Any]) -> str:
    [coding] = event["subtype"]
    return str(coding["code"])


async def test_unrouted_requests_under_a_domain_are_audited(hub_server: HubServer) -> None:
    patch, nowhere = TraceHeaders.new(), TraceHeaders.new()
    async with hub_server.client("xis") as xis:
        patched = await xis.patch("/Patient/p1", content=b"[]", headers=patch.headers)
        missing = await xis.get("/Patient/p1/_history/1/extra", headers=nowhere.headers)
    assert patched.status_code == 405
    assert missing.status_code == 404

    patch_event = await event_of(hub_server, patch.request_id)
    assert (subtype(patch_event), patch_event["action"], patch_event["outcome"]) == (
        "patch",
        "U",
        "4",
    )
    assert patch_event["agent"][0]["who"] == {"reference": "Device/xis"}
    assert "PATCH is not supported" in patch_event["outcomeDesc"]

    missing_event = await event_of(hub_server, nowhere.request_id)
    assert (subtype(missing_event), missing_event["outcome"]) == ("read", "4")


async def test_a_malformed_trace_header_is_refused_and_audited(hub_server: HubServer) -> None:
    trace_id = "trace-of-a-bad-request"
    async with hub_server.client() as anonymous:
        refused = await anonymous.get(
            "/Patient", headers={"X-Request-Id": "not valid!", "X-Trace-Id": trace_id}
        )
    assert refused.status_code == 400
    # The caller's malformed ids are not echoed; the hub made new ones for this answer.
    made = refused.headers["X-Request-Id"]
    assert made != "not valid!"
    [event] = await search_events(hub_server, {"requestId": made})
    assert (subtype(event), event["outcome"]) == ("search-type", "4")
    assert "X-Request-Id must be" in event["outcomeDesc"]
    assert event["agent"][0] == {  # nobody authenticated; no `network`, as the reference writes
        "type": event["agent"][0]["type"],
        "requestor": True,
    }


async def test_refusals_outside_a_known_domain_leave_no_event(hub_server: HubServer) -> None:
    before = await search_events(hub_server, {"outcome": "4"})
    async with hub_server.client() as anonymous:
        assert (await anonymous.get(f"{hub_server.url}/nowhere/fhir/Patient")).status_code == 404
        assert (await anonymous.get(f"{hub_server.url}/healthz/extra")).status_code == 404
    after = await search_events(hub_server, {"outcome": "4"})
    # Only the auditor's own searches happened in between, and they succeeded.
    assert len(after) == len(before)


# --- refusals say why (RFC 6750 §3 for a 401; role, type and interaction for a 403) ------


def _hub_signed_token(hub: HubServer, *, audience: str, now: datetime) -> str:
    """An access token signed with the running hub's own key, as its token endpoint would."""
    token, _ = issue_access_token(
        key=SigningKeys.load_or_create(hub.settings).current_key(),
        issuer=f"{hub.url}/test/oauth2",
        audience=audience,
        client_id="xis",
        scopes="system/Patient.rs",
        lifetime=60,
        now=now,
    )
    return token


async def test_a_401_says_why_in_the_challenge_and_on_the_trail(module_hub: HubServer) -> None:
    tokens = {
        EXPIRED: _hub_signed_token(
            module_hub, audience=module_hub.fhir(), now=datetime.now(UTC) - timedelta(hours=1)
        ),
        NOT_FOR_THIS_DOMAIN: module_hub.token("other-xis", "other"),
        MALFORMED: "eyJhbGciOi.not-a-jwt",
        BAD_SIGNATURE: module_hub.token("xis")[:-4] + "AAAA",
    }
    for description, token in tokens.items():
        ids = TraceHeaders.new()
        async with module_hub.client(headers={"Authorization": f"Bearer {token}"}) as client:
            response = await client.get("/Patient", headers=ids.headers)
        assert response.status_code == 401, description
        assert response.headers["WWW-Authenticate"] == (
            f'Bearer realm="koppeltaal", error="invalid_token", error_description="{description}"'
        )
        [issue] = response.json()["issue"]
        assert issue["diagnostics"].endswith(description)
        event = await event_of(module_hub, ids.request_id)
        assert event["outcomeDesc"] == issue["diagnostics"]

    # RFC 6750 §3.1: a request without any credentials gets no error code at all.
    async with module_hub.client() as anonymous:
        bare = await anonymous.get("/Patient")
    assert bare.headers["WWW-Authenticate"] == 'Bearer realm="koppeltaal"'


async def test_a_403_names_the_role_the_interaction_and_the_target(module_hub: HubServer) -> None:
    async with module_hub.client("xis") as xis:
        created = await xis.post("/Practitioner", json={"resourceType": "Practitioner"})
    practitioner = f"Practitioner/{created.json()['id']}"
    pid = practitioner
    refusals = [  # who, how, where; the role, interaction and target the refusal names
        ("portal", "GET", "/Device?_count=1", "Clientportaal", "search-type", "Device"),
        ("admin", "GET", f"/{pid}", "Beheerportaal", "read", pid),
        ("admin", "GET", f"/{pid}/_history", "Beheerportaal", "history-instance", pid),
        ("portal", "PUT", f"/{pid}", "Clientportaal", "update", pid),
        ("portal", "POST", "/Practitioner", "Clientportaal", "create", "Practitioner"),
        ("module", "DELETE", f"/{pid}", "eHealthModule", "delete", pid),
    ]
    for client_id, method, path, role, interaction, target in refusals:
        ids = TraceHeaders.new()
        async with module_hub.client(client_id) as client:
            response = await client.request(
                method,
                path,
                json={"resourceType": "Practitioner", "id": created.json()["id"]},
                headers={"If-Match": 'W/"1"', **ids.headers},
            )
        assert response.status_code == 403, (path, response.text)
        [issue] = response.json()["issue"]
        assert (issue["code"], issue["diagnostics"]) == (
            "forbidden",
            f"Access denied: the role {role!r} does not allow {interaction!r} on {target}",
        )
        event = await event_of(module_hub, ids.request_id)
        assert event["outcomeDesc"] == issue["diagnostics"]


async def test_the_token_endpoint_keeps_one_invalid_client_body_and_audits_why(
    module_hub: HubServer, caplog: pytest.LogCaptureFixture
) -> None:
    xis = module_hub.keys["xis"]
    replayed = module_hub.assertion("xis", jti=f"once-{uuid.uuid4()}")
    async with httpx.AsyncClient() as client:
        first = await client.post(
            module_hub.token_url(),
            data={**module_hub.token_form("xis"), "client_assertion": replayed},
        )
    assert first.status_code == 200
    assertions = {
        "assertion expired": module_hub.assertion(
            "xis", now=datetime.now(UTC) - timedelta(hours=1)
        ),
        "unknown kid": make_client_assertion(
            xis.private_pem, client_id="xis", token_url=module_hub.token_url(), kid="nope"
        ),
        "was used before (replay)": replayed,
        "no client 'ghost'": make_client_assertion(
            xis.private_pem, client_id="ghost", token_url=module_hub.token_url(), kid=xis.kid
        ),
    }
    bodies = set()
    for reason, assertion in assertions.items():
        ids = TraceHeaders.new()
        form = {**module_hub.token_form("xis"), "client_assertion": assertion}
        caplog.clear()
        async with httpx.AsyncClient() as client:
            response = await client.post(module_hub.token_url(), data=form, headers=ids.headers)
        assert response.status_code == 401, reason
        bodies.add(response.content)
        # The reason is in the log and on the trail, never in the answer.
        assert reason not in response.text
        assert any(reason in record.getMessage() for record in caplog.records), reason
        event = await event_of(module_hub, ids.request_id)
        assert event["outcomeDesc"].startswith("invalid_client: client authentication failed (")
        assert reason in event["outcomeDesc"]
        assert event["outcomeDesc"].endswith("; from 127.0.0.1]")
    # RFC 6749 §5.2: one `invalid_client` answer, whatever was wrong with the assertion.
    assert [json.loads(body) for body in bodies] == [
        {"error": "invalid_client", "error_description": "client authentication failed"}
    ]
