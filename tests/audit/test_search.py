"""Auditors search the trail: every AuditEvent search parameter, newest first.

Each test writes a small trail of its own under one X-Trace-Id and searches
within it (`traceId=<its trace>` plus the parameter under test), so the
expected answer is exact even though the hub is shared.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from tests.audit.trail import TraceHeaders, event_of, search_events
from tests.support.hub import HubServer


@dataclass(frozen=True)
class Trail:
    """The requests of one test, oldest first, by name → X-Request-Id."""

    trace_id: str
    correlation_id: str
    patient_id: str
    requests: dict[str, str]

    def names(self, events: Sequence[Any]) -> list[str]:
        """The request names of `events`, in the order given."""
        by_request = {request_id: name for name, request_id in self.requests.items()}
        return [by_request[_request_id(event)] for event in events]


def _request_id(event: Any) -> str:
    [value] = [e["valueId"] for e in event["extension"] if e["url"].endswith("/request-id")]
    return str(value)


async def _trail(hub: HubServer) -> Trail:
    """create, read, search, capabilities, a 404 and a 403, all under one trace."""
    trace_id = f"trace-{uuid.uuid4()}"
    correlation_id = f"cause-{uuid.uuid4()}"
    requests: dict[str, str] = {}

    def ids(name: str, *, correlated: bool = False) -> dict[str, str]:
        request = TraceHeaders.new(trace_id=trace_id)
        requests[name] = request.request_id
        headers = {"X-Request-Id": request.request_id, "X-Trace-Id": trace_id}
        if correlated:
            headers["X-Correlation-Id"] = correlation_id
        return headers

    async with hub.client("xis") as xis, hub.client("portal") as portal:
        created = await xis.post(
            "/Patient", json={"resourceType": "Patient"}, headers=ids("create")
        )
        patient_id = created.json()["id"]
        await xis.get(f"/Patient/{patient_id}", headers=ids("read", correlated=True))
        await xis.get(f"/Patient?_id={patient_id}", headers=ids("search", correlated=True))
        await xis.get("/metadata", headers=ids("capabilities"))
        await xis.get("/Patient/not-there", headers=ids("not-found"))
        await portal.post("/Patient", json={"resourceType": "Patient"}, headers=ids("forbidden"))
    return Trail(trace_id, correlation_id, patient_id, requests)


@pytest.fixture
async def trail(shared_hub: HubServer) -> Trail:
    return await _trail(shared_hub)


NEWEST_FIRST = ["forbidden", "not-found", "capabilities", "search", "read", "create"]


async def found(hub: HubServer, trail: Trail, *params: tuple[str, str]) -> list[str]:
    events = await search_events(hub, [("traceId", trail.trace_id), *params])
    return trail.names(events)


async def test_trace_id_finds_the_whole_trail_newest_first(
    shared_hub: HubServer, trail: Trail
) -> None:
    assert await found(shared_hub, trail) == NEWEST_FIRST


async def test_request_id_and_correlation_id(shared_hub: HubServer, trail: Trail) -> None:
    by_request = await search_events(shared_hub, {"requestId": trail.requests["read"]})
    assert trail.names(by_request) == ["read"]
    by_cause = await search_events(shared_hub, {"correlationId": trail.correlation_id})
    assert trail.names(by_cause) == ["search", "read"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([("type", "rest")], NEWEST_FIRST),
        ([("type", "http://terminology.hl7.org/CodeSystem/audit-event-type|rest")], NEWEST_FIRST),
        ([("type", "transmit")], []),
        ([("subtype", "read")], ["not-found", "read"]),
        ([("subtype", "http://hl7.org/fhir/restful-interaction|create")], ["forbidden", "create"]),
        ([("subtype", "read,search-type")], ["not-found", "search", "read"]),
        ([("action", "C")], ["forbidden", "create"]),
        ([("action", "R")], ["not-found", "capabilities", "read"]),
        ([("action", "E")], ["search"]),
        ([("outcome", "0")], ["capabilities", "search", "read", "create"]),
        ([("outcome", "4")], ["forbidden", "not-found"]),
        ([("outcome", "4"), ("action", "C")], ["forbidden"]),
        ([("agent", "Device/portal")], ["forbidden"]),
        ([("agent", "Device/xis")], NEWEST_FIRST[1:]),
        ([("agent", "Device/koppeltaal-hub")], NEWEST_FIRST),
        ([("entity", "Patient/not-there")], ["not-found"]),
        ([("entity-role", "24")], ["search"]),
        ([("entity-role", "http://terminology.hl7.org/CodeSystem/object-role|24")], ["search"]),
        # The query entity of the search is typed too (the searched type).
        ([("entity-type", "Patient")], ["not-found", "search", "read", "create"]),
        (
            [("entity-type", "http://hl7.org/fhir/resource-types|Patient")],
            ["not-found", "search", "read", "create"],
        ),
        ([("entity-type", "2")], []),
        ([("source", "Device/koppeltaal-hub")], NEWEST_FIRST),
        ([("source", "Device/xis")], []),
        ([("site", "test-site")], NEWEST_FIRST),
        ([("site", "elsewhere")], []),
        # The requesting application's agent carries no `network` (as the reference writes).
        ([("address", "127.0.0.1")], []),
        ([("address", "10.")], []),
        ([("resource-origin", "Device/koppeltaal-hub")], NEWEST_FIRST),
        ([("resource-origin", "Device/xis")], []),
        ([("_sort", "date")], NEWEST_FIRST[::-1]),
        ([("_sort", "-date")], NEWEST_FIRST),
    ],
    ids=lambda value: "&".join(f"{p[0]}={p[1]}" for p in value if isinstance(p, tuple)) or "=",
)
async def test_search_parameter(
    shared_hub: HubServer, trail: Trail, params: list[tuple[str, str]], expected: list[str]
) -> None:
    assert await found(shared_hub, trail, *params) == expected


async def test_entity_finds_every_event_that_touched_a_resource(
    shared_hub: HubServer, trail: Trail
) -> None:
    """Written, read, and returned by a search: all under the resource's own reference."""
    touched = await found(shared_hub, trail, ("entity", f"Patient/{trail.patient_id}"))
    assert touched == ["search", "read", "create"]


async def test_date_prefixes(shared_hub: HubServer, trail: Trail) -> None:
    read = await event_of(shared_hub, trail.requests["read"])
    search = await event_of(shared_hub, trail.requests["search"])
    # Sequential requests are recorded at distinct microseconds, in order.
    assert read["recorded"] < search["recorded"]
    at_read, at_search = read["recorded"], search["recorded"]

    assert await found(shared_hub, trail, ("date", f"eq{at_read}")) == ["read"]
    assert await found(shared_hub, trail, ("date", at_read)) == ["read"]
    assert await found(shared_hub, trail, ("date", f"le{at_read}")) == ["read", "create"]
    assert await found(shared_hub, trail, ("date", f"lt{at_read}")) == ["create"]
    assert await found(shared_hub, trail, ("date", f"ge{at_search}")) == NEWEST_FIRST[:4]
    assert await found(shared_hub, trail, ("date", f"gt{at_search}")) == NEWEST_FIRST[:3]
    between = await found(shared_hub, trail, ("date", f"ge{at_read}"), ("date", f"le{at_search}"))
    assert between == ["search", "read"]
    day = at_read[:10]
    assert await found(shared_hub, trail, ("date", day)) == NEWEST_FIRST
    assert await found(shared_hub, trail, ("date", f"lt{day}")) == []


async def test_paging_keeps_newest_first(shared_hub: HubServer, trail: Trail) -> None:
    pages: list[str] = []
    async with shared_hub.client("auditor") as auditor:
        url: str | None = f"/AuditEvent?traceId={trail.trace_id}&_count=4"
        while url is not None:
            response = await auditor.get(url)
            assert response.status_code == 200
            bundle = response.json()
            assert bundle["total"] == len(NEWEST_FIRST)
            pages.append(",".join(trail.names([e["resource"] for e in bundle["entry"]])))
            url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    assert pages == [",".join(NEWEST_FIRST[:4]), ",".join(NEWEST_FIRST[4:])]


@pytest.mark.parametrize("client_id", ["portal", "module", "practitioner-portal"])
async def test_roles_without_read_rights_cannot_search_the_trail(
    shared_hub: HubServer, client_id: str
) -> None:
    async with shared_hub.client(client_id) as client:
        response = await client.get("/AuditEvent?_count=1")
    assert response.status_code == 403


async def test_the_trail_of_one_domain_is_invisible_in_another(
    shared_hub: HubServer, trail: Trail
) -> None:
    elsewhere = await search_events(
        shared_hub, {"traceId": trail.trace_id}, domain="other", auditor="other-xis"
    )
    assert elsewhere == []
