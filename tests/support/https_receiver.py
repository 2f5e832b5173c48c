"""A real HTTPS server on loopback that records every request byte for byte.

For tests of anything the hub sends: webhooks, JWKS fetches, end-to-end runs.
It runs its own event loop in a background thread, so it serves sync and async
tests alike and never depends on the test's loop. It speaks just enough HTTP/1.1
(keep-alive, Content-Length and chunked bodies) and keeps the request head exactly
as received, so tests can assert header names, case and order on the wire.

Use it through the fixtures (add `pytest_plugins = ["tests.support.https_receiver"]`
to a test module or the root conftest):

    async def test_x(https_receiver: HttpsReceiver, local_ca: LocalCA) -> None:
        https_receiver.reply(503, retry_after="120")
        ... send to https_receiver.url("/hook"), trusting local_ca.bundle ...
        [request] = https_receiver.requests
        assert request.header("X-Trace-Id") == "t1"
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import trustme

__all__ = [
    "HttpsReceiver",
    "LocalCA",
    "ReceivedRequest",
    "Reply",
    "https_receiver",
    "local_ca",
]


class LocalCA:
    """A throwaway certificate authority; `bundle` is its PEM for `HUB_CA_BUNDLE`."""

    def __init__(self, directory: Path) -> None:
        self._ca = trustme.CA()
        self.bundle = directory / "local-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.bundle))

    def server_context(self, *hostnames: str) -> ssl.SSLContext:
        """A server TLS context with a certificate for `hostnames`, issued by this CA."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert(*hostnames).configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts this CA only."""
        context = ssl.create_default_context()
        self._ca.configure_trust(context)
        return context


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    target: str
    head: bytes
    """The request line and header block exactly as received, blank line included."""
    headers: list[tuple[str, str]]
    """Names with the sender's case, in the sender's order."""
    body: bytes
    server_name: str | None
    """The host name the client sent in TLS SNI."""

    def header(self, name: str) -> str | None:
        """The first value of `name` (case-insensitive), or None."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    delay: float = 0.0
    """Seconds to wait before answering (the request is recorded at once)."""


@dataclass
class _State:
    requests: list[ReceivedRequest] = field(default_factory=list)
    connections: int = 0
    replies: deque[Reply] = field(default_factory=deque)
    default: Reply = field(default_factory=Reply)


class HttpsReceiver:
    """An HTTPS server on `host`, with a certificate for `hostnames`, on a free port."""

    def __init__(
        self,
        ca: LocalCA,
        *,
        hostnames: Sequence[str] = ("localhost", "127.0.0.1"),
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = 0
        self._ssl = ca.server_context(*hostnames)
        self._ssl.sni_callback = self._remember_server_name
        self._server_names: dict[int, str | None] = {}
        self._state = _State()
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._released: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # --- lifecycle ---

    def start(self) -> HttpsReceiver:
        self._thread = threading.Thread(target=self._run, name="https-receiver", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or not self.port:
            raise RuntimeError("HTTPS receiver did not start") from self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            if self._thread.is_alive():
                raise RuntimeError("HTTPS receiver did not stop within 10 s")

    def __enter__(self) -> HttpsReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- what tests use ---

    def url(self, path: str = "/hook", *, host: str | None = None) -> str:
        """The URL of `path` here; `host` replaces the address (for name-based tests)."""
        return f"https://{host or self.host}:{self.port}{path}"

    def reply(
        self,
        status: int = 200,
        *,
        delay: float = 0.0,
        retry_after: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        """Answer every request from now on like this (after any queued replies)."""
        extra = [("Retry-After", retry_after)] if retry_after is not None else []
        with self._changed:
            self._state.default = Reply(status, (*headers, *extra), body, delay)

    def queue(self, *replies: Reply) -> None:
        """Answer the next requests with these, in order, then with the default."""
        with self._changed:
            self._state.replies.extend(replies)

    def hold(self) -> None:
        """Keep every answer back (requests are still recorded) until `release()`."""
        self._in_loop(self._hold)

    def release(self) -> None:
        self._in_loop(self._release)

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._changed:
            return list(self._state.requests)

    @property
    def connections(self) -> int:
        """How many connections completed the TLS handshake."""
        with self._changed:
            return self._state.connections

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedRequest]:
        """Block until `count` requests arrived; fail the test after `timeout` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._state.requests) >= count, timeout):
                pytest.fail(
                    f"expected {count} requests within {timeout} s, got {len(self._state.requests)}"
                )
            return list(self._state.requests)

    async def wait_for_async(self, count: int, timeout: float = 5.0) -> list[ReceivedRequest]:
        """`wait_for` without blocking the caller's event loop."""
        return await asyncio.to_thread(self.wait_for, count, timeout)

    # --- the server ---

    def _remember_server_name(
        self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        self._server_names[id(ssl_object)] = server_name

    def _in_loop(self, action: Callable[[], None]) -> None:
        """Run `action` in the server's loop and wait for it, so it is in force on return."""
        assert self._loop is not None

        async def run() -> None:
            action()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(5)

    def _hold(self) -> None:
        self._released = asyncio.Event()

    def _release(self) -> None:
        if self._released is not None:
            self._released.set()
            self._released = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start(); a thread has no caller
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections[task] = writer
            try:
                await self._connection(reader, writer)
            finally:
                del connections[task]
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

        server = await asyncio.start_server(tracked, self.host, 0, ssl=self._ssl)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            # Clients may hold keep-alive connections open; a graceful TLS close would
            # wait for them, so cut the connections instead.
            for task, writer in list(connections.items()):
                writer.transport.abort()
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        server_name = self._server_names.pop(id(ssl_object), None)
        with self._changed:
            self._state.connections += 1
        while True:
            try:
                request = await self._read_request(reader, server_name)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                return
            if request is None:
                return
            with self._changed:
                self._state.requests.append(request)
                reply = (
                    self._state.replies.popleft() if self._state.replies else self._state.default
                )
                self._changed.notify_all()
            if self._released is not None:
                await self._released.wait()
            if reply.delay:
                await asyncio.sleep(reply.delay)
            try:
                writer.write(_response_bytes(reply))
                await writer.drain()
            except OSError:
                return
            if (request.header("Connection") or "").lower() == "close":
                return

    @staticmethod
    async def _read_request(
        reader: asyncio.StreamReader, server_name: str | None
    ) -> ReceivedRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return None  # the client closed an idle keep-alive connection
        request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers: list[tuple[str, str]] = []
        for line in lines:
            name, _, value = line.partition(":")
            headers.append((name, value.strip(" \t")))
        fields = {name.lower(): value for name, value in headers}
        if fields.get("transfer-encoding", "").lower() == "chunked":
            body = await _read_chunked(reader)
        else:
            body = await reader.readexactly(int(fields.get("content-length", "0")))
        return ReceivedRequest(method, target, head, headers, body, server_name)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailer fields
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _response_bytes(reply: Reply) -> bytes:
    try:
        phrase = http.HTTPStatus(reply.status).phrase
    except ValueError:
        phrase = ""
    lines = [f"HTTP/1.1 {reply.status} {phrase}"]
    lines += [f"{name}: {value}" for name, value in reply.headers]
    if reply.status not in (204, 304) and reply.status >= 200:
        lines.append(f"Content-Length: {len(reply.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body


@pytest.fixture(scope="session")
def local_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return LocalCA(tmp_path_factory.mktemp("local-ca"))


@pytest.fixture
def https_receiver(local_ca: LocalCA) -> Iterator[HttpsReceiver]:
    """A started receiver with a certificate for `localhost` and `127.0.0.1`."""
    with HttpsReceiver(local_ca) as receiver:
        yield receiver
