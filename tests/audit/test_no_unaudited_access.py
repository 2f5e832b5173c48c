"""No unaudited access: nothing is written or served unless its AuditEvent is stored.

The failures are real: the tests break the hub's database underneath it with
plain SQL (a row in the way of the next chain link, a table that goes missing),
the way a full disk or a broken migration would, and look at what is left.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from tests.audit.database import sql, verify
from tests.audit.trail import TraceHeaders, event_of, outcome_text, search_events, whats
from tests.support.hub import HubServer


@asynccontextmanager
async def chain_blocked(hub: HubServer, domain: str = "test") -> AsyncIterator[None]:
    """Every AuditEvent of `domain` fails to store while inside: its next link is taken."""
    url = hub.settings.database_url
    head = await sql(url, "SELECT seq FROM audit_chain_heads WHERE domain = :d", {"d": domain})
    blocker = {"d": domain, "seq": (head[0][0] if head else 0) + 1}
    await sql(
        url,
        "INSERT INTO audit_chain (domain, seq, resource_pk, digest) VALUES (:d, :seq, 0, 'x')",
        blocker,
    )
    try:
        yield
    finally:
        await sql(url, "DELETE FROM audit_chain WHERE domain = :d AND seq = :seq", blocker)


@asynccontextmanager
async def subscription_generations_missing(hub: HubServer) -> AsyncIterator[None]:
    """Writes fail halfway (after the resource is inserted); the audit store still works."""
    url = hub.settings.database_url
    await sql(url, "ALTER TABLE subscription_generations RENAME TO subscription_generations_gone")
    try:
        yield
    finally:
        await sql(
            url, "ALTER TABLE subscription_generations_gone RENAME TO subscription_generations"
        )


def _marked_patient() -> tuple[dict[str, Any], str]:
    marker = f"marker-{uuid.uuid4()}"
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:test", "value": marker}]}
    return patient, f"urn:test|{marker}"


async def _patients(xis: httpx.AsyncClient, identifier: str) -> int:
    response = await xis.get("/Patient", params={"identifier": identifier})
    assert response.status_code == 200
    total: int = response.json()["total"]
    return total


async def test_a_write_and_its_audit_event_are_stored_together(hub_server: HubServer) -> None:
    patient, identifier = _marked_patient()
    ids = TraceHeaders.new()
    async with hub_server.client("xis") as xis:
        response = await xis.post("/Patient", json=patient, headers=ids.headers)
        assert response.status_code == 201
        assert await _patients(xis, identifier) == 1
    event = await event_of(hub_server, ids.request_id)
    assert whats(event) == [f"Patient/{response.json()['id']}/_history/1"]


async def test_a_write_whose_audit_event_cannot_be_stored_is_not_made(
    hub_server: HubServer,
) -> None:
    patient, identifier = _marked_patient()
    ids = TraceHeaders.new()
    async with hub_server.client("xis") as xis:
        async with chain_blocked(hub_server):
            response = await xis.post("/Patient", json=patient, headers=ids.headers)
        assert response.status_code == 500
        assert response.json()["resourceType"] == "OperationOutcome"
        assert await _patients(xis, identifier) == 0
    # Neither the success event (rolled back with the write) nor a failure event
    # (that could not be stored either) exists, and the chain has no gap.
    assert await search_events(hub_server, {"requestId": ids.request_id}) == []
    assert verify(hub_server).exit_code == 0


async def test_a_write_failing_halfway_leaves_no_resource_and_a_failure_event(
    hub_server: HubServer,
) -> None:
    patient, identifier = _marked_patient()
    ids = TraceHeaders.new()
    async with hub_server.client("xis") as xis:
        async with subscription_generations_missing(hub_server):
            response = await xis.post("/Patient", json=patient, headers=ids.headers)
        assert response.status_code == 500
        assert await _patients(xis, identifier) == 0

    # The one event of the request: the serious failure (8), not a success.
    event = await event_of(hub_server, ids.request_id)
    assert event["subtype"][0]["code"] == "create"
    assert event["outcome"] == "8"
    assert event["outcomeDesc"] == outcome_text(response.json())
    assert verify(hub_server).exit_code == 0


async def test_a_read_whose_audit_event_cannot_be_stored_fails(hub_server: HubServer) -> None:
    patient, identifier = _marked_patient()
    read_ids, search_ids = TraceHeaders.new(), TraceHeaders.new()
    async with hub_server.client("xis") as xis:
        created = (await xis.post("/Patient", json=patient)).json()
        async with chain_blocked(hub_server):
            read = await xis.get(f"/Patient/{created['id']}", headers=read_ids.headers)
            searched = await xis.get(
                "/Patient", params={"identifier": identifier}, headers=search_ids.headers
            )
        # Served once the trail accepts events again, and audited.
        again = await xis.get(f"/Patient/{created['id']}")
    for refused in (read, searched):
        assert refused.status_code == 500
        assert refused.json()["resourceType"] == "OperationOutcome"
        assert created["id"] not in refused.text
    assert again.status_code == 200
    assert await search_events(hub_server, {"requestId": read_ids.request_id}) == []
    assert await search_events(hub_server, {"requestId": search_ids.request_id}) == []
    assert await event_of(hub_server, again.headers["X-Request-Id"])
    assert verify(hub_server).exit_code == 0


async def test_a_refusal_whose_audit_event_cannot_be_stored_fails(hub_server: HubServer) -> None:
    async with hub_server.client() as anonymous, chain_blocked(hub_server):
        response = await anonymous.get("/Patient/someone")
    assert response.status_code == 500
