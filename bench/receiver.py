"""The webhook receiver: HTTPS on loopback, answers 200 to every notification.

It notes when each notification arrives, by its X-Correlation-Id (the
X-Request-Id of the write that caused it): the first and the last arrival, and
how many, since one write may notify many Subscriptions.

It listens on several ports, each a separate endpoint: the hub sends at most
`HUB_ENDPOINT_CONCURRENCY` requests at a time to one scheme+host+port, so
Subscriptions of many applications (many endpoints) are what lets deliveries
run at the hub's full `HUB_DELIVERY_CONCURRENCY`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import Counter
from pathlib import Path

import trustme

from bench.load import now


class Receiver:
    def __init__(self, directory: Path, *, ports: int = 1) -> None:
        self._ca = trustme.CA()
        self.ca_bundle = directory / "bench-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_bundle))
        self.arrivals: dict[str, float] = {}  # first arrival per correlation id
        self.last: dict[str, float] = {}  # latest arrival per correlation id
        self.counts: Counter[str] = Counter()
        self.total = 0
        self._arrived = asyncio.Condition()
        self._servers: list[asyncio.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._wanted_ports = ports
        self.ports: list[int] = []

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def urls(self) -> list[str]:
        """One webhook URL per port: distinct endpoints to the hub."""
        return [f"https://127.0.0.1:{port}/hook" for port in self.ports]

    async def start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1").configure_cert(context)
        for _ in range(self._wanted_ports):
            server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
            self._servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for writer in self._writers:
            writer.transport.abort()  # the hub keeps connections alive
        for server in self._servers:
            await server.wait_closed()

    async def wait_for(self, correlation_ids: set[str]) -> None:
        async with self._arrived:
            await self._arrived.wait_for(lambda: correlation_ids <= self.arrivals.keys())

    async def wait_for_count(self, correlation_id: str, count: int) -> None:
        """Until `count` notifications caused by one write have arrived."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: self.counts[correlation_id] >= count)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ssl.SSLError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                arrived = now()
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get("content-length", "0")))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                correlation_id = headers.get("x-correlation-id", "")
                async with self._arrived:
                    self.arrivals.setdefault(correlation_id, arrived)
                    self.last[correlation_id] = arrived
                    self.counts[correlation_id] += 1
                    self.total += 1
                    self._arrived.notify_all()
        self._writers.discard(writer)
        writer.close()
