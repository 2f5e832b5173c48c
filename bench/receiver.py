"""The webhook receiver: HTTPS on loopback, answers 200 to every notification.

It notes when each notification arrives, by its X-Correlation-Id (the
X-Request-Id of the write that caused it): the first and the last arrival, and
how many, since one write may notify many Subscriptions.

It listens on several ports, each a separate endpoint: the hub sends at most
`HUB_ENDPOINT_CONCURRENCY` requests at a time to one scheme+host+port, so
Subscriptions of many applications (many endpoints) are what lets deliveries
run at the hub's full `HUB_DELIVERY_CONCURRENCY`.

With `hang=True` it reads each notification and never answers: a hub started
with `HUB_DELIVERY_CONCURRENCY=1` and a long `HUB_WEBHOOK_TIMEOUT` then has its
one delivery place taken by the first notification and delivers nothing more,
so its writes can be measured with matching Subscriptions and no delivery work
(`bench.writes`). That needs nothing from the hub beyond its settings, so it
holds delivery the same way in any version of the hub.
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
    def __init__(self, directory: Path, *, ports: int = 1, hang: bool = False) -> None:
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
        self._hang = hang
        self._released = False

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

    def release(self) -> None:
        """Hang mode: drop the notifications held, and from now on every new connection.

        For stopping a hub: its shutdown waits for the delivery in flight, which
        would otherwise wait out the whole webhook timeout.
        """
        self._released = True
        for writer in list(self._writers):
            writer.transport.abort()

    def hold(self) -> None:
        """Hang mode: hold notifications again (for the next hub)."""
        self._released = False

    async def wait_for(self, correlation_ids: set[str]) -> None:
        async with self._arrived:
            await self._arrived.wait_for(lambda: correlation_ids <= self.arrivals.keys())

    async def wait_for_count(self, correlation_id: str, count: int) -> None:
        """Until `count` notifications caused by one write have arrived."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: self.counts[correlation_id] >= count)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._released:
            writer.transport.abort()
            return
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
                if not self._hang:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                correlation_id = headers.get("x-correlation-id", "")
                async with self._arrived:
                    self.arrivals.setdefault(correlation_id, arrived)
                    self.last[correlation_id] = arrived
                    self.counts[correlation_id] += 1
                    self.total += 1
                    self._arrived.notify_all()
                if self._hang:
                    # No answer: read (nothing more comes) until the hub gives up or we abort.
                    while await reader.read(65536):
                        pass
                    break
        self._writers.discard(writer)
        writer.close()
