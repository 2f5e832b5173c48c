"""CPU per notification POST for candidate HTTP clients: `python -m bench.outbound`.

Why: the delivery target is 1,000 notifications/s from one process, database work
included, so the POST itself must cost well under 0.2 ms of CPU. This measures what
one keep-alive HTTPS POST (an empty body with the hub's notification headers, to a
local receiver) costs the client process, for:

- `httpx (before)`: httpx over httpcore on hub.net's guarded backend, as
  `post_notification` sent notifications before `hub.net.webhooks`;
- `httpcore`: httpcore's connection pool used directly;
- `aiohttp`: if importable (it is not a dependency of the hub; install it into a
  scratch directory and put that on PYTHONPATH to include it);
- `hub.net`: `OutboundClient.post_notification` as the hub runs it (asyncio
  protocol, httptools parser, the destination guard, DeliveryResult);
- `floor`: an asyncio protocol that writes a fixed request and counts fixed answers,
  without parsing anything: what TLS and the event loop cost by themselves.

The receiver runs in a child process (so its CPU is not counted) and answers every
request with `200` and no body. The machine is noisy, so candidates take turns:
each round runs every candidate once (A B C ... A B C ...), and the table shows
each round's CPU µs per POST and their median. CPU is `time.process_time()` of
this process over the timed POSTs (the connections are warm: keep-alive cost only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import ipaddress
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import trustme

from hub.net.tls import tls_context
from hub.notify.webhook import notification_headers
from hub.settings import Settings

Post = Callable[[], Awaitable[int]]
Candidate = Callable[[str, Path], AbstractAsyncContextManager[Post]]

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
HEADERS = notification_headers(
    channel_headers=["Authorization: Bearer 0123456789abcdef0123456789abcdef"],
    request_id="f3a0c1de-5b7e-4a36-9d0e-2b1c4e6f8a90",
    correlation_id="0b7d2c6e-1f4a-4e3b-8c5d-9a6f1e2d3c4b",
    trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
)


# --- the receiver (child process) -------------------------------------------------------


class _Answering(asyncio.Protocol):
    """Answers each request head (bodies are empty) with a fixed 200."""

    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        count = self._buffer.count(b"\r\n\r\n")
        if count and self._transport is not None:
            self._buffer = self._buffer[self._buffer.rindex(b"\r\n\r\n") + 4 :]
            self._transport.write(ANSWER * count)


async def _receive(directory: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Answering, "127.0.0.1", 0, ssl=context)
    print(server.sockets[0].getsockname()[1], flush=True)
    # Until the parent closes our stdin.
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


@contextlib.contextmanager
def receiver(directory: Path, loop_name: str) -> Any:
    """A receiver process; yields its URL once it listens."""
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "bench.outbound", "--serve", str(directory), "--loop", loop_name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        yield f"https://127.0.0.1:{port}/hooks/notify?sub=1"
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


# --- the candidates -----------------------------------------------------------------------


def _settings(bundle: Path) -> Settings:
    return Settings(ca_bundle=bundle, webhook_allow_networks=(ipaddress.ip_network("127.0.0.0/8"),))


@asynccontextmanager
async def httpx_before(url: str, bundle: Path) -> AsyncIterator[Post]:
    import httpx

    from hub.addresses import system_resolver
    from hub.net.httpx_transport import guarded_client

    settings = _settings(bundle)
    client = guarded_client(
        tls_context(bundle),
        allow_networks=settings.webhook_allow_networks,
        resolver=system_resolver,
        timeout=httpx.Timeout(15.0, connect=5.0),
    )

    async def post() -> int:
        # What post_notification did: a bare Request, streamed, the body drained.
        request = httpx.Request("POST", url, headers=HEADERS, content=b"")
        async with asyncio.timeout(15.0):
            response = await client.send(request, stream=True)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response.status_code

    async with client:
        yield post


@asynccontextmanager
async def httpcore_direct(url: str, bundle: Path) -> AsyncIterator[Post]:
    import httpcore

    pool = httpcore.AsyncConnectionPool(
        ssl_context=tls_context(bundle), max_connections=100, max_keepalive_connections=20
    )
    headers = [(name.encode(), value.encode()) for name, value in HEADERS]

    async def post() -> int:
        response = await pool.request("POST", url, headers=headers, content=b"")
        return response.status

    async with pool:
        yield post


@asynccontextmanager
async def aiohttp_session(url: str, bundle: Path) -> AsyncIterator[Post]:
    aiohttp: Any = importlib.import_module("aiohttp")  # not a dependency: no types

    connector = aiohttp.TCPConnector(ssl=tls_context(bundle), limit=100)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def post() -> int:
            async with session.post(
                url,
                headers=HEADERS,
                data=b"",
                allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            ) as response:
                await response.read()
                return int(response.status)

        yield post


@asynccontextmanager
async def hub_net(url: str, bundle: Path) -> AsyncIterator[Post]:
    from hub.net import OutboundClient

    async with OutboundClient(_settings(bundle)) as client:

        async def post() -> int:
            result = await client.post_notification(url, HEADERS)
            assert result.status is not None, result.error
            return result.status

        yield post


class _Fixed(asyncio.Protocol):
    """The floor: one fixed request out, one fixed-size answer in, nothing parsed."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.pending = len(ANSWER)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.pending -= len(data)
        if self.pending <= 0 and self.waiter is not None:
            self.pending += len(ANSWER)
            self.waiter.set_result(None)


@asynccontextmanager
async def floor(url: str, bundle: Path) -> AsyncIterator[Post]:
    loop = asyncio.get_running_loop()
    port = int(url.split(":")[2].split("/")[0])
    head = (
        b"POST /hooks/notify?sub=1 HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{port}\r\n".encode()
        + "".join(f"{name}: {value}\r\n" for name, value in HEADERS).encode()
        + b"\r\n"
    )
    idle: list[_Fixed] = []
    context = tls_context(bundle)

    async def post() -> int:
        if idle:
            connection = idle.pop()
        else:
            _, connection = await loop.create_connection(
                _Fixed, "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
            )
        assert connection.transport is not None
        connection.waiter = loop.create_future()
        connection.transport.write(head)
        await connection.waiter
        idle.append(connection)
        return 200

    try:
        yield post
    finally:
        for connection in idle:
            if connection.transport is not None:
                connection.transport.abort()
        await asyncio.sleep(0)


CANDIDATES: dict[str, tuple[str | None, Candidate]] = {
    "httpx (before)": ("httpx", httpx_before),
    "httpcore": ("httpcore", httpcore_direct),
    "aiohttp": ("aiohttp", aiohttp_session),
    "hub.net": (None, hub_net),
    "floor": (None, floor),
}


# --- measuring ----------------------------------------------------------------------------


@dataclass
class Measured:
    cpu_us: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)


async def _run(post: Post, count: int, concurrency: int) -> None:
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            status = await post()
            assert status == 200, status

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(
    url: str, bundle: Path, names: list[str], *, posts: int, rounds: int, concurrency: int
) -> dict[str, Measured]:
    results = {name: Measured() for name in names}
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(CANDIDATES[name][1](url, bundle))
            for name in names
        }
        for _ in range(rounds):
            for name in names:
                post = clients[name]
                await _run(post, 20 * concurrency, concurrency)  # warm: connections open
                cpu, wall = time.process_time(), time.perf_counter()
                await _run(post, posts, concurrency)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                results[name].cpu_us.append(cpu / posts * 1e6)
                results[name].rates.append(posts / wall)
    return results


def table(results: dict[str, Measured], skipped: dict[str, str]) -> str:
    rounds = max((len(m.cpu_us) for m in results.values()), default=0)
    header = ["candidate", *(f"round {i + 1}" for i in range(rounds)), "median µs", "POSTs/s"]
    rows = [header]
    for name, measured in results.items():
        rows.append(
            [
                name,
                *(f"{value:.0f}" for value in measured.cpu_us),
                f"{statistics.median(measured.cpu_us):.0f}",
                f"{statistics.median(measured.rates):,.0f}",
            ]
        )
    for name, reason in skipped.items():
        rows.append([name, *([""] * rounds), reason, ""])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _install_loop(name: str) -> None:
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--posts", type=int, default=4000, help="timed POSTs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="POSTs in flight")
    parser.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="uvloop: as `hub serve`"
    )
    parser.add_argument("--only", nargs="*", choices=sorted(CANDIDATES), help="candidates")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _install_loop(args.loop)
    if args.serve is not None:
        asyncio.run(_receive(args.serve))
        return 0
    names, skipped = [], {}
    for name in args.only or list(CANDIDATES):
        module = CANDIDATES[name][0]
        if module is not None and importlib.util.find_spec(module) is None:
            skipped[name] = f"skipped: {module} not importable"
        else:
            names.append(name)
    with tempfile.TemporaryDirectory() as directory, receiver(Path(directory), args.loop) as url:
        bundle = Path(directory) / "ca.pem"
        results = asyncio.run(
            measure(
                url,
                bundle,
                names,
                posts=args.posts,
                rounds=args.rounds,
                concurrency=args.concurrency,
            )
        )
    print(
        f"CPU per keep-alive HTTPS POST, client process only ({args.loop}, "
        f"{args.concurrency} in flight, {args.posts} POSTs per round, {os.cpu_count()} CPUs)"
    )
    print(table(results, skipped))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
