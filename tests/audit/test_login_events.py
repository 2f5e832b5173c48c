"""Token requests are audited too: granted and refused, before the answer leaves.

Beyond the Koppeltaal facts (which audit FHIR interactions): a refused client
authentication is what an auditor looks for first.
"""

from __future__ import annotations

from typing import Any

import httpx

from hub.access.assertion import make_client_assertion
from tests.audit.trail import DCM, HUB_DEVICE, TraceHeaders, event_of, search_events
from tests.support.hub import HubServer


async def _token_request(hub: HubServer, assertion: str, ids: TraceHeaders) -> httpx.Response:
    form = {**hub.token_form("xis", "test"), "client_assertion": assertion}
    async with httpx.AsyncClient() as client:
        return await client.post(hub.token_url(), data=form, headers=ids.headers)


def _agents(event: dict[str, Any]) -> list[tuple[str | None, str | None]]:
    return [
        (agent.get("who", {}).get("reference"), agent.get("network", {}).get("address"))
        for agent in event["agent"]
    ]


async def test_a_granted_token_is_a_login_of_the_client(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    response = await _token_request(shared_hub, shared_hub.assertion("xis"), ids)
    assert response.status_code == 200, response.text

    event = await event_of(shared_hub, ids.request_id)
    assert event["type"] == {"system": DCM, "code": "110114", "display": "User Authentication"}
    assert event["subtype"] == [{"system": DCM, "code": "110122", "display": "Login"}]
    assert (event["action"], event["outcome"]) == ("E", "0")
    assert "outcomeDesc" not in event
    # As the reference writes it: no `network` on the requesting application's agent.
    assert _agents(event) == [("Device/xis", None), (HUB_DEVICE, None)]
    assert event["source"]["observer"] == {"reference": HUB_DEVICE}


async def test_a_refused_assertion_is_audited_with_the_claim_but_no_agent(
    shared_hub: HubServer,
) -> None:
    ids = TraceHeaders.new()
    # Signed by xis's key, but claiming to be the admin app: admin has no key of that kid.
    xis = shared_hub.keys["xis"]
    forged = make_client_assertion(
        xis.private_pem, client_id="admin", token_url=shared_hub.token_url(), kid=xis.kid
    )
    response = await _token_request(shared_hub, forged, ids)
    assert response.status_code == 401

    event = await event_of(shared_hub, ids.request_id)
    assert (event["type"]["code"], event["outcome"]) == ("110114", "4")
    # The client hears the single RFC 6749 `invalid_client`; the trail keeps the reason.
    assert response.json() == {
        "error": "invalid_client",
        "error_description": "client authentication failed",
    }
    assert event["outcomeDesc"] == (
        f"invalid_client: client authentication failed (admin: unknown kid {xis.kid!r})"
        " [assertion claims client_id 'admin'; from 127.0.0.1]"
    )
    # The claim is unproven: nobody is named as the agent; the address is in the text.
    assert _agents(event) == [(None, None), (HUB_DEVICE, None)]
    failed = await search_events(shared_hub, {"type": f"{DCM}|110114", "outcome": "4"})
    assert ids.request_id in {
        next(e["valueId"] for e in found["extension"] if e["url"].endswith("/request-id"))
        for found in failed
    }
