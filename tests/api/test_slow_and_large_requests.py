"""Slow and large requests (README "HTTP surface"): each attack performed on a real hub.

Trickled headers and bodies are cut off with 408, oversized headers with 431, one address
holds a bounded number of connections (429), a body declared too large is refused before
it is sent, and a 9 MB resource is worked on while other requests are still answered. A
body with thousands of faults is answered with a bounded OperationOutcome, and neither it
nor its AuditEvent echoes the body. The guard is below the database, so SQLite serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.fhir.outcome import MAX_ISSUES
from tests.support.hub import AppKeys, HubServer, hub_settings, running_hub, write_apps_file
from tests.support.notifications import audit_events

HEADER_TIMEOUT = 0.5
BODY_TIMEOUT = 0.5
PER_ADDRESS = 6


@pytest.fixture(scope="module")
def guarded_hub(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path, app_keys: dict[str, AppKeys]
) -> Iterator[HubServer]:
    directory = tmp_path_factory.mktemp("guarded")
    shutil.copyfile(sqlite_template, directory / "hub.db")
    settings = hub_settings(
        directory,
        f"sqlite+aiosqlite:///{directory / 'hub.db'}",
        write_apps_file(directory / "apps.yaml", app_keys),
        header_timeout=HEADER_TIMEOUT,
        body_timeout=BODY_TIMEOUT,
        max_header_bytes=8 * 1024,
        connections_per_address=PER_ADDRESS,
    )
    with running_hub(settings, app_keys) as hub:
        yield hub


class RawConnection:
    """A plain TCP connection that sends exactly the bytes a test gives it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, hub: HubServer) -> RawConnection:
        host, port = hub.url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout: float = 10) -> tuple[int, dict[str, str], dict[str, Any]]:
        """The response (status, headers, JSON body), read until the hub closes."""
        raw = await asyncio.wait_for(self.reader.read(), timeout)  # read() = until EOF
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        return int(status_line.split()[1]), headers, json.loads(body) if body else {}

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@asynccontextmanager
async def raw_connections(hub: HubServer, count: int = 1) -> AsyncIterator[list[RawConnection]]:
    """`count` raw connections to `hub`, closed on exit."""
    connections: list[RawConnection] = []
    try:
        for _ in range(count):
            connections.append(await RawConnection.open(hub))
        yield connections
    finally:
        for connection in connections:
            await connection.close()


async def test_headers_that_trickle_are_cut_off_with_408(guarded_hub: HubServer) -> None:
    async with raw_connections(guarded_hub) as [slow]:
        started = time.monotonic()
        await slow.send(b"GET /healthz HTTP/1.1\r\nHost: hub\r\nX-Slow: a")
        for _ in range(3):  # a byte now and then is not enough
            await asyncio.sleep(HEADER_TIMEOUT / 3)
            await slow.send(b"a")
        status, headers, outcome = await slow.answer()
    assert status == 408
    assert headers["connection"] == "close"
    assert "headers did not arrive" in outcome["issue"][0]["diagnostics"]
    assert time.monotonic() - started < HEADER_TIMEOUT * 6


async def test_a_connection_that_sends_nothing_is_closed(guarded_hub: HubServer) -> None:
    async with raw_connections(guarded_hub) as [idle]:
        status, _, _ = await idle.answer()
    assert status == 408


async def test_a_body_that_trickles_is_cut_off_and_nothing_is_stored(
    guarded_hub: HubServer,
) -> None:
    token = guarded_hub.token("xis")
    family = f"Trickle{time.monotonic_ns()}"
    body = json.dumps({"resourceType": "Patient", "name": [{"family": family}]}).encode()
    async with raw_connections(guarded_hub) as [slow]:
        await slow.send(
            b"POST /test/fhir/Patient HTTP/1.1\r\nHost: hub\r\n"
            b"Content-Type: application/fhir+json\r\nX-Request-Id: trickled-body\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:10]
        )
        status, _, outcome = await slow.answer()
    assert status == 408
    assert "body did not arrive" in outcome["issue"][0]["diagnostics"]
    async with guarded_hub.client("xis") as xis:
        found = (await xis.get("/Patient", params={"family": family})).json()
    assert found["total"] == 0
    # The authenticated caller's attempt is on the trail, without its body.
    [event] = await audit_events(guarded_hub, requestId="trickled-body")
    assert event["outcome"] != "0"
    assert "incomplete" in json.dumps(event) or "ended after 10 bytes" in json.dumps(event)


async def test_oversized_headers_get_431(guarded_hub: HubServer) -> None:
    async with raw_connections(guarded_hub) as [connection]:
        await connection.send(
            b"GET /healthz HTTP/1.1\r\nHost: hub\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
        )
        status, _, outcome = await connection.answer()
    assert status == 431
    assert "8192 bytes" in outcome["issue"][0]["diagnostics"]


async def test_one_address_holds_a_bounded_number_of_connections(guarded_hub: HubServer) -> None:
    async with raw_connections(guarded_hub, PER_ADDRESS + 1) as [*_, extra]:
        status, headers, outcome = await extra.answer()
    assert status == 429
    assert headers["retry-after"] == "1"
    assert f"at most {PER_ADDRESS}" in outcome["issue"][0]["diagnostics"]
    # Their places are given back as they close.
    async with httpx.AsyncClient(base_url=guarded_hub.url) as client:

        async def healthy() -> int:
            return (await client.get("/healthz")).status_code

        for _ in range(50):
            if await healthy() == 200:
                break
            await asyncio.sleep(0.05)
        assert await healthy() == 200


async def test_many_slow_connections_do_not_lock_out_other_clients(
    guarded_hub: HubServer,
) -> None:
    # Slow clients from elsewhere are bounded by the header deadline; from one address
    # by the connection cap. Either way the next client is served at once.
    async with raw_connections(guarded_hub, PER_ADDRESS - 1) as slow:
        for connection in slow:
            await connection.send(b"GET /healthz HTTP/1.1\r\n")
        async with httpx.AsyncClient(base_url=guarded_hub.url, timeout=5) as client:
            assert (await client.get("/healthz")).status_code == 200
        statuses = [(await connection.answer())[0] for connection in slow]
    assert statuses == [408] * len(slow)


async def test_a_body_declared_too_large_is_refused_before_it_is_sent(
    guarded_hub: HubServer,
) -> None:
    token = guarded_hub.token("xis")
    declared = guarded_hub.settings.max_body_bytes + 1
    async with raw_connections(guarded_hub) as [connection]:
        await connection.send(
            b"POST /test/fhir/Patient HTTP/1.1\r\nHost: hub\r\n"
            b"Content-Type: application/fhir+json\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % declared
        )
        # Not a byte of the body was sent: the answer comes all the same. (The connection
        # then closes at the body deadline: `answer` reads until it does.)
        status, _, outcome = await connection.answer()
    assert status == 413
    assert "exceeds the limit" in outcome["issue"][0]["diagnostics"]


async def test_a_large_body_does_not_stall_other_requests(guarded_hub: HubServer) -> None:
    # About 9 MB: seconds of parsing, checking and indexing, which once stalled everything.
    names = [{"family": "x" * 50, "given": ["y" * 40]} for _ in range(80_000)]
    body = json.dumps({"resourceType": "Patient", "name": names}).encode()
    answered_meanwhile = 0
    done = asyncio.Event()

    async def probe() -> None:
        nonlocal answered_meanwhile
        async with httpx.AsyncClient(base_url=guarded_hub.url, timeout=30) as client:
            while not done.is_set():
                if (await client.get("/healthz")).status_code == 200 and not done.is_set():
                    answered_meanwhile += 1
                await asyncio.sleep(0.02)

    async with guarded_hub.client("xis") as xis:
        prober = asyncio.create_task(probe())
        response = await xis.post(
            "/Patient",
            content=body,
            headers={"Content-Type": "application/fhir+json", "Prefer": "return=minimal"},
            timeout=120,
        )
        done.set()
        await prober
    assert response.status_code == 201, response.text[:500]
    # The probe went on being answered while the body was worked on (on the loop it got
    # no answer at all for the seconds the work took).
    assert answered_meanwhile >= 5


async def test_a_body_with_thousands_of_faults_gets_a_bounded_answer(
    guarded_hub: HubServer,
) -> None:
    faults = {"resourceType": "Patient", "name": [{"family": 5} for _ in range(20_000)]}
    long_name = {"resourceType": "Patient", "x" * 100_000: 1}
    async with guarded_hub.client("xis") as xis:
        many = await xis.post("/Patient", json=faults, headers={"X-Request-Id": "many-faults"})
        long = await xis.post("/Patient", json=long_name, headers={"X-Request-Id": "long-name"})
    assert many.status_code == 400
    issues = many.json()["issue"]
    assert len(issues) == MAX_ISSUES + 1
    assert issues[-1]["diagnostics"].startswith(f"{20_000 - MAX_ISSUES:,} more issues")
    assert len(many.content) < 50_000
    assert long.status_code == 400
    assert len(long.content) < 5_000
    assert "characters)" in long.text  # the name is cut, and the text says how long it was
    for request_id in ("many-faults", "long-name"):
        [event] = await audit_events(guarded_hub, requestId=request_id)
        assert len(json.dumps(event)) < 10_000


async def test_the_guard_holds_over_tls(
    tmp_path: Path, sqlite_template: Path, app_keys: dict[str, AppKeys]
) -> None:
    """The deadlines work on a TLS transport too (the transport is the TLS one)."""
    pytest.importorskip("trustme")
    import trustme
    import uvicorn

    from hub.api.connections import GuardedHttpToolsProtocol
    from hub.app import create_app
    from tests.support.hub import free_socket

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    shutil.copyfile(sqlite_template, tmp_path / "hub.db")
    settings = hub_settings(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}",
        write_apps_file(tmp_path / "apps.yaml", app_keys),
        header_timeout=HEADER_TIMEOUT,
    )
    with cert.private_key_and_cert_chain_pem.tempfile() as pem:
        sock = free_socket()
        config = uvicorn.Config(
            create_app(settings),
            log_level="warning",
            http=GuardedHttpToolsProtocol,
            ssl_keyfile=pem,
            ssl_certfile=pem,
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                await asyncio.sleep(0.02)
            context = ssl.create_default_context()
            ca.configure_trust(context)
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", sock.getsockname()[1], ssl=context, server_hostname="127.0.0.1"
            )
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n")
            raw = await asyncio.wait_for(reader.read(), 10)
            assert raw.startswith(b"HTTP/1.1 408 ")
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
        finally:
            server.should_exit = True
            await serving
            sock.close()
