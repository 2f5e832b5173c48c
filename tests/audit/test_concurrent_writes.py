"""Fifty writes at once over HTTP: each answered for itself, each audited (both backends).

On SQLite concurrent writes are committed in groups, each write in its own
savepoint; on PostgreSQL each in its own transaction. Either way a write that
loses an `If-Match` race gets its 412 alone, and every other write of the burst
is stored and audited with the status it was answered.
"""

from __future__ import annotations

import asyncio

import httpx

from tests.audit.trail import TraceHeaders, event_of
from tests.support.hub import HubServer


async def test_a_burst_of_fifty_writes_with_an_if_match_race(shared_hub: HubServer) -> None:
    async with shared_hub.client("xis") as xis:
        target = await xis.post("/Patient", json={"resourceType": "Patient", "gender": "male"})
        assert target.status_code == 201
        target_id = target.json()["id"]
        traces = [TraceHeaders.new() for _ in range(50)]

        def write(number: int) -> asyncio.Task[httpx.Response]:
            headers = traces[number].headers
            if number < 2:  # two updates of one version: exactly one may win
                body = {"resourceType": "Patient", "id": target_id, "gender": "female"}
                request = xis.put(
                    f"/Patient/{target_id}", json=body, headers={**headers, "If-Match": 'W/"1"'}
                )
            else:
                request = xis.post("/Patient", json={"resourceType": "Patient"}, headers=headers)
            return asyncio.ensure_future(request)

        responses = await asyncio.gather(*(write(number) for number in range(50)))
        statuses = [response.status_code for response in responses]
        assert sorted(statuses[:2]) == [200, 412]
        assert statuses[2:] == [201] * 48
        current = await xis.get(f"/Patient/{target_id}")
        assert current.json()["meta"]["versionId"] == "2"
        for response in responses[2:]:
            created = await xis.get(response.headers["Location"].split("/fhir")[1])
            assert created.status_code == 200

    # Every write has its own AuditEvent, with the outcome it was answered.
    for trace, status in zip(traces, statuses, strict=True):
        event = await event_of(shared_hub, trace.request_id)
        assert event["outcome"] == ("0" if status < 400 else "4")
