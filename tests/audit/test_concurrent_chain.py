"""One chain, whatever the concurrency: many requests at once, from several hub processes.

Every request's AuditEvent must get exactly one link, the links must be one
unbroken sequence, and `hub audit verify` must find the trail intact.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest

from tests.audit.database import sql, verify
from tests.audit.trail import TraceHeaders, search_events
from tests.support.hub import HubServer, free_socket

pytestmark = pytest.mark.slow


@contextmanager
def second_hub_process(hub: HubServer) -> Iterator[HubServer]:
    """`hub serve` as its own process on the same database, keys and applications."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    settings = hub.settings
    env = {
        **os.environ,
        "HUB_DATABASE_URL": settings.database_url,
        "HUB_APPS": str(settings.apps_file),
        "HUB_AUTHZ_MATRIX": str(settings.authz_matrix),
        "HUB_KEYS_DIR": str(settings.keys_dir),
        "HUB_PUBLIC_URL": url,
        "HUB_SITE": settings.site,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
    )
    try:
        for _ in range(600):
            assert process.poll() is None, "the second hub exited"
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield HubServer(url, replace(settings, public_url=url), hub.keys)
    finally:
        process.terminate()
        process.wait(timeout=30)


async def _load(hub: HubServer, trace_id: str, rounds: int, *, at_once: int = 8) -> int:
    """Writes, reads, searches, refusals and app events, `at_once` in flight; how many events.

    `at_once` stays below the hub's connection pool: on a shared PostgreSQL
    server the test should not run other tests out of connections.
    """
    headers = {"X-Trace-Id": trace_id}
    gate = asyncio.Semaphore(at_once)

    async def send(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> Any:
        async with gate:
            return await client.request(method, url, headers=headers, **kwargs)

    patient = {"resourceType": "Patient"}
    event = {
        "resourceType": "AuditEvent",
        "type": {"code": "receive"},
        "recorded": "2025-03-01T12:00:00Z",
        "agent": [{"who": {"reference": "Device/module"}, "requestor": True}],
        "source": {"observer": {"reference": "Device/module"}},
        "entity": [{"what": {"reference": "Task/1"}}],
    }
    async with hub.client("xis") as xis, hub.client("module") as module:
        created = await asyncio.gather(
            *(send(xis, "POST", "/Patient", json=patient) for _ in range(rounds))
        )
        assert {response.status_code for response in created} == {201}
        ids = [response.json()["id"] for response in created]
        responses = await asyncio.gather(
            *(send(xis, "GET", f"/Patient/{patient_id}") for patient_id in ids),
            *(send(xis, "GET", "/Patient", params={"_id": patient_id}) for patient_id in ids),
            *(send(module, "GET", "/Patient/nobody") for _ in ids),
            *(send(module, "POST", "/AuditEvent", json=event) for _ in ids),
        )
    statuses = sorted({response.status_code for response in responses})
    assert statuses == [200, 201, 404], statuses
    # One AuditEvent per request, plus the app's own event for each POST.
    return len(created) + len(responses) + rounds


async def _assert_one_chain(hub: HubServer, expected_events: int) -> None:
    url = hub.settings.database_url
    [(events,)] = await sql(
        url, "SELECT count(*) FROM resources WHERE domain = 'test' AND rtype = 'AuditEvent'"
    )
    [(links, first, last)] = await sql(
        url, "SELECT count(*), min(seq), max(seq) FROM audit_chain WHERE domain = 'test'"
    )
    [(head,)] = await sql(url, "SELECT seq FROM audit_chain_heads WHERE domain = 'test'")
    # Plus the token requests the clients made, each audited as a login.
    [(logins,)] = await sql(
        url,
        "SELECT count(*) FROM resources WHERE domain = 'test' AND rtype = 'AuditEvent'"
        """ AND content LIKE '%"code":"110114","display":"User Authentication"%'""",
    )
    assert logins >= 2  # one xis and one module token at least
    assert events == links == head == last == expected_events + logins
    assert first == 1
    verdict = verify(hub)
    assert verdict.exit_code == 0, verdict


async def test_many_requests_at_once_make_one_chain(hub_server: HubServer) -> None:
    trace = TraceHeaders.new()
    made = await _load(hub_server, trace.trace_id, rounds=25)
    await _assert_one_chain(hub_server, made)
    trail = await search_events(hub_server, {"traceId": trace.trace_id})
    assert len(trail) == made - 25  # the apps' own events carry no trace id


async def test_two_hub_processes_writing_at_once_make_one_chain(hub_server: HubServer) -> None:
    trace = TraceHeaders.new()
    with second_hub_process(hub_server) as second:
        made = await asyncio.gather(
            _load(hub_server, trace.trace_id, rounds=15),
            _load(second, trace.trace_id, rounds=15),
        )
    await _assert_one_chain(hub_server, sum(made))
