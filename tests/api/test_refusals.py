"""Requests refused before any FHIR handler runs are audited too."""

from __future__ import annotations

from typing import Any

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
    assert "who" not in event["agent"][0]  # nobody authenticated
    assert event["agent"][0]["network"]["address"] == "127.0.0.1"


async def test_refusals_outside_a_known_domain_leave_no_event(hub_server: HubServer) -> None:
    before = await search_events(hub_server, {"outcome": "4"})
    async with hub_server.client() as anonymous:
        assert (await anonymous.get(f"{hub_server.url}/nowhere/fhir/Patient")).status_code == 404
        assert (await anonymous.get(f"{hub_server.url}/healthz/extra")).status_code == 404
    after = await search_events(hub_server, {"outcome": "4"})
    # Only the auditor's own searches happened in between, and they succeeded.
    assert len(after) == len(before)
