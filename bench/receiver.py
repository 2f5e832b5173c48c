"""A webhook receiver for the notification-latency phase: HTTPS on loopback, answers 200.

It notes when each notification arrives, by its X-Correlation-Id (the
X-Request-Id of the write that caused it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import trustme

from bench.load import now


class Receiver:
    def __init__(self, directory: Path) -> None:
        self._ca = trustme.CA()
        self.ca_bundle = directory / "bench-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_bundle))
        self.arrivals: dict[str, float] = {}
        self._arrived = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1").configure_cert(context)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.transport.abort()  # the hub keeps connections alive
            await self._server.wait_closed()

    async def wait_for(self, correlation_ids: set[str]) -> None:
        async with self._arrived:
            await self._arrived.wait_for(lambda: correlation_ids <= self.arrivals.keys())

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
                async with self._arrived:
                    self.arrivals.setdefault(headers.get("x-correlation-id", ""), arrived)
                    self._arrived.notify_all()
        self._writers.discard(writer)
        writer.close()
