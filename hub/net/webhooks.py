"""The notification POST: a lean HTTP/1.1 client on asyncio, for exactly one request shape.

Why not httpx: every notification is the same small request (an empty-body POST with
a handful of headers) answered by a status line, and at the delivery target of
1,000 notifications/s one process has well under a millisecond of CPU per
notification for everything, database work included. httpx over httpcore spends
about 0.6 ms of CPU per keep-alive POST on request and response objects, header
normalisation, anyio streams and h11's pure-Python parser, httpcore alone about
0.45 ms and aiohttp about 0.08 ms; this client, an `asyncio.Protocol` on the event
loop's own TLS transport with the answer parsed by httptools (llhttp, in C), about
0.02 ms on uvloop (0.035 ms on asyncio's own loop), of which TLS and the loop take
half (`python -m bench.outbound` measures them all).

What it does, and why each rule holds:

- The destination guard. The URL's host name is resolved with
  `hub.addresses.resolve_public`, which checks every answer, and the socket is
  connected to exactly a checked address (`loop.sock_connect` on a socket made here;
  the event loop never resolves anything). A name that rebinds to 127.0.0.1 after
  the check gains nothing: the resolution that was checked is the one connected to.
- TLS identity. SNI and the certificate's host name check use the URL's host name
  (`server_hostname`), never the address; connections are pooled by host name and
  port, so a connection verified for one name never carries a request for another
  name on the same address.
- The request is `POST <path> HTTP/1.1`, `Host`, then exactly the caller's headers in
  the caller's order, and no body. Header names must be tokens and values free of
  CR, LF, NUL and other control characters; anything else is refused before a byte
  is sent, never escaped or passed on.
- The answer: only the status and `Retry-After` matter. 1xx interim answers are
  skipped; a body (Content-Length, chunked, or delimited by the close) is read and
  discarded up to 64 kB so the connection can be reused. Redirects are just a
  status. Anything doubtful (a larger body, bytes after the answer or between
  requests, a parse error, `Connection: close`, an HTTP/1.0 answer without
  keep-alive, a timeout) closes the connection instead of returning it to the pool.
- Timeouts: the connect timeout covers resolving, TCP and the TLS handshake; the
  total timeout covers the whole attempt, pool wait and connect included.
- Reuse: at most `MAX_IDLE_PER_ENDPOINT` idle connections per endpoint, at most
  `MAX_CONNECTIONS` open in all; an idle connection expires after
  `KEEPALIVE_EXPIRY` seconds. The protocol learns at once when a server closes an
  idle connection, and such a connection is never taken from the pool; if a request
  on a reused connection still meets a close before a single byte of an answer (the
  server closed it as the request went out), it is sent once more on a fresh
  connection: nothing was answered, so nothing can have been acted on twice by an
  answer we lost. Once any answer byte has arrived it is never resent.
- Cancellation propagates; the connection of a cancelled request is closed, never
  pooled.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import httptools

from hub.addresses import IPAddress, Resolver, UnsafeDestination, resolve_public
from hub.net.urls import parse_https
from hub.settings import IPNetwork

MAX_DISCARDED_BODY = 64 * 1024
"""Answer body bytes read (and dropped) to keep a connection; beyond that it is closed."""
MAX_ANSWER_HEAD = 64 * 1024
"""Status line and header bytes accepted before the answer counts as broken."""
KEEPALIVE_EXPIRY = 5.0
MAX_IDLE_PER_ENDPOINT = 8
MAX_CONNECTIONS = 100
_MAX_TARGETS = 4096
"""Parsed URLs kept: Subscriptions repeat their endpoints, and parsing costs more than
the rest of a request; the table is simply emptied when full."""

# RFC 9110 token characters; names are checked joined by "\n", which no token contains
# (a name holding one is caught by counting them).
_HEADER_NAME = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_NAMES = re.compile(f"{_HEADER_NAME}(?:\n{_HEADER_NAME})*")
# Control characters but HTAB; values are checked joined by "\t", which values may hold.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class DeliveryFailure(Exception):
    """No status arrived. The message is the short text for Subscription.error."""


class _Unanswered(Exception):
    """The connection ended before one byte of an answer arrived."""

    def __init__(self, cause: BaseException | None) -> None:
        text = failure_text(cause) if cause is not None else None
        super().__init__(text or "the server closed the connection without answering")


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and everything it was raised from, exception groups included."""
    pending, seen = [exc], set[int]()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)


def failure_text(exc: BaseException) -> str | None:
    """The short text for a TLS, refused or reset failure in `exc`'s chain, if it is one."""
    for cause in causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate verify failed: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {cause.reason or cause}"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
    return None


def _os_failure(exc: BaseException) -> DeliveryFailure:
    return DeliveryFailure(failure_text(exc) or str(exc) or type(exc).__name__)


@dataclass(frozen=True, slots=True)
class _Target:
    """What a URL comes to on the wire: the pool key, where to connect, the request line."""

    key: tuple[str, int]
    host: str
    port: int
    prefix: bytes
    """`POST <path> HTTP/1.1` and the Host header, CRLF-terminated."""


def _target(url: str) -> _Target:
    try:
        parsed = parse_https(url)
    except UnsafeDestination as exc:
        raise DeliveryFailure(f"unsafe destination: {exc}") from exc
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or 443
    prefix = b"POST " + parsed.raw_path + b" HTTP/1.1\r\nHost: " + parsed.netloc + b"\r\n"
    return _Target((host, port), host, port, prefix)


def header_block(headers: Sequence[tuple[str, str]]) -> bytes:
    """The header lines and the blank line that ends the request head.

    Checked as a whole (one regular expression over all names, one over all values)
    because this runs for every notification; the culprit is looked for only when
    something is wrong. `Host` is the client's to write, so a given one is refused
    rather than sent twice.
    """
    if not headers:
        return b"\r\n"
    names = "\n".join([name for name, _ in headers])
    if (
        _NAMES.fullmatch(names) is None
        or names.count("\n") != len(headers) - 1  # a name with "\n" inside
        or "\nhost\n" in f"\n{names.lower()}\n"
    ):
        for name, _ in headers:
            if not re.fullmatch(_HEADER_NAME, name):
                raise DeliveryFailure(f"header name {name[:40]!r} is not an HTTP token")
        raise DeliveryFailure("the Host header is the client's own, not a given one")
    if _CONTROL.search("\t".join([value for _, value in headers])):
        name = next(name for name, value in headers if _CONTROL.search(value))
        raise DeliveryFailure(
            f"the value of header {name} contains CR, LF, NUL or another control character"
        )
    text = "".join([f"{name}: {value}\r\n" for name, value in headers])
    try:
        return text.encode("ascii") + b"\r\n"
    except UnicodeEncodeError:
        for _, value in headers:
            try:
                value.encode("ascii")
            except UnicodeEncodeError as exc:
                raise DeliveryFailure(str(exc)) from exc
        raise  # unreachable: the names are tokens and some value failed above


class _Connection(asyncio.Protocol):
    """One keep-alive HTTPS connection: at most one request at a time, pooled in between.

    The state of the request in flight lives in plain attributes the parser callbacks
    set; `_waiter` resolves once the answer is complete, the connection ended, or the
    deadline passed. Every way out that is not a clean, complete, keep-alive answer
    closes the connection (`abort`), which also takes it out of the pool's accounts.
    """

    __slots__ = (
        "_answered",
        "_body",
        "_complete",
        "_extra",
        "_head",
        "_keep_alive",
        "_loop",
        "_parser",
        "_pool",
        "_timer",
        "_waiter",
        "holds_capacity",
        "idle",
        "idle_since",
        "key",
        "open",
        "retry_after",
        "status",
        "transport",
    )

    def __init__(self, pool: WebhookClient, key: tuple[str, int]) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.idle = False
        self.idle_since = 0.0
        self.holds_capacity = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.status = 0
        """The final status code; 0 until the final answer's head is complete."""
        self.retry_after: bytes | None = None
        self._answered = False
        self._complete = False
        self._extra = False
        self._keep_alive = False
        self._head = 0
        self._body = 0

    # --- used by the pool ---

    @property
    def reusable(self) -> bool:
        return self.open and self._complete and self._keep_alive and not self._extra

    def send(self, head: bytes, deadline: float) -> asyncio.Future[None]:
        """Write the request; the future resolves when the answer is in (or raises)."""
        transport = self.transport
        if not self.open or transport is None or transport.is_closing():
            raise _Unanswered(None)
        self.status = self._head = self._body = 0
        self.retry_after = None
        self._answered = self._complete = self._extra = self._keep_alive = False
        waiter = self._waiter = self._loop.create_future()
        transport.write(head)
        self._timer = self._loop.call_at(deadline, self._time_out)
        return waiter

    def end_request(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiter = None

    def abort(self) -> None:
        """Close at once (no TLS close_notify exchange) and leave the pool's accounts."""
        self.open = False
        self._retire()
        if self.transport is not None:
            self.transport.abort()

    def _retire(self) -> None:
        if self.idle:
            self._pool._forget_idle(self)
        if self.holds_capacity:
            self.holds_capacity = False
            self._pool._release(self)

    def _time_out(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self.status:
                waiter.set_result(None)  # the status stands; the body was too slow
            else:
                waiter.set_exception(DeliveryFailure(self._pool.timeout_text))
        self.abort()

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not isinstance: uvloop's transports do not derive from asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        self.open = True

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.abort()  # bytes nobody asked for: the stream can no longer be trusted
            return
        self._answered = True
        if not self.status:
            self._head += len(data)
            if self._head > MAX_ANSWER_HEAD:
                waiter.set_exception(DeliveryFailure("answer head larger than 64 kB"))
                self.abort()
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._end_broken(waiter, "answer switched protocols")  # a 101: status stands
            return
        except httptools.HttpParserError as exc:
            self._end_broken(waiter, f"invalid HTTP answer: {exc}")
            return
        if self._body > MAX_DISCARDED_BODY:
            self._end_broken(waiter, "")  # the status is known: a body starts after it
        elif self._complete:
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._retire()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self.status:
                waiter.set_result(None)  # a body delimited (or cut short) by the close
            elif not self._answered:
                waiter.set_exception(_Unanswered(exc))
            else:
                text = failure_text(exc) if exc else None
                waiter.set_exception(
                    DeliveryFailure(text or "the connection closed in the middle of the answer")
                )

    def _end_broken(self, waiter: asyncio.Future[None], text: str) -> None:
        if not waiter.done():
            if self.status:
                waiter.set_result(None)
            else:
                waiter.set_exception(DeliveryFailure(text))
        self.abort()

    # --- httptools callbacks (only those defined are called) ---

    def on_message_begin(self) -> None:
        if self.status:
            self._extra = True  # a second answer to one request
        else:
            self.retry_after = None  # forget an interim answer's headers

    def on_header(self, name: bytes, value: bytes) -> None:
        if (
            not self.status
            and len(name) == 11
            and name.lower() == b"retry-after"
            and self.retry_after is None
        ):
            self.retry_after = value

    def on_headers_complete(self) -> None:
        if self.status:
            return
        code = self._parser.get_status_code()
        if code >= 200 or code == 101:
            self.status = code
            self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body += len(body)

    def on_message_complete(self) -> None:
        if self.status:
            self._complete = True


class WebhookClient:
    """POSTs notifications over pooled, guarded HTTPS connections; see the module text."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        allow_networks: Sequence[IPNetwork],
        resolver: Resolver,
        connect_timeout: float,
        total_timeout: float,
        max_idle_per_endpoint: int = MAX_IDLE_PER_ENDPOINT,
        max_connections: int = MAX_CONNECTIONS,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
    ) -> None:
        self._ssl = ssl_context
        self._allow_networks = tuple(allow_networks)
        self._resolver = resolver
        self._connect_timeout = connect_timeout
        self._total_timeout = total_timeout
        self._max_idle_per_endpoint = max_idle_per_endpoint
        self._keepalive_expiry = keepalive_expiry
        self.timeout_text = f"timeout after {total_timeout:g} s"
        self._connect_timeout_text = f"connect timeout after {connect_timeout:g} s"
        self._capacity = asyncio.Semaphore(max_connections)
        """One unit per open connection, idle or in use."""
        self._waiting = 0
        """Requests waiting for room for a new connection."""
        self._targets: dict[str, _Target] = {}
        self._open: set[_Connection] = set()
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._idle_order: dict[_Connection, None] = {}
        """Every idle connection, oldest first (for expiry and eviction)."""
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections open now, in use or idle (for tests and monitoring)."""
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return len(self._idle_order)

    async def post(self, url: str, headers: Sequence[tuple[str, str]]) -> tuple[int, str | None]:
        """Send the notification; answer the status and Retry-After, or raise DeliveryFailure."""
        if self._closed:
            raise RuntimeError("the outbound client is closed")
        target = self._targets.get(url)
        if target is None:
            target = _target(url)
            if len(self._targets) >= _MAX_TARGETS:
                self._targets.clear()
            self._targets[url] = target
        head = target.prefix + header_block(headers)
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + self._total_timeout
        reuse = True
        while True:
            connection = self._take_idle(target.key, now) if reuse else None
            fresh = connection is None
            if connection is None:
                connection = await self._connect(target, loop, deadline, take_idle=reuse)
                if connection is None:
                    now = loop.time()
                    continue  # while it waited for room, a connection came free: reuse it
            try:
                return await self._exchange(connection, head, deadline)
            except _Unanswered as exc:
                if fresh:
                    raise DeliveryFailure(str(exc)) from exc
                # The server closed it as the request went out: once more, on a fresh one.
                reuse = False

    async def aclose(self) -> None:
        """Close every connection, idle or in use; the client takes no more requests."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self._open):
            connection.abort()
        # Let the transports run their close callbacks (which close the sockets) while
        # the loop is certainly still running.
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    # --- one exchange ---

    async def _exchange(
        self, connection: _Connection, head: bytes, deadline: float
    ) -> tuple[int, str | None]:
        try:
            await connection.send(head, deadline)
        except BaseException:
            connection.abort()  # also on cancellation: a half-used connection is never pooled
            raise
        finally:
            connection.end_request()
        status, raw = connection.status, connection.retry_after
        if connection.reusable and not self._closed:
            self._keep(connection)
        else:
            connection.abort()
        return status, None if raw is None else _header_text(raw)

    # --- the pool ---

    def _take_idle(self, key: tuple[str, int], now: float) -> _Connection | None:
        stack = self._idle.get(key)
        while stack:
            connection = stack.pop()
            del self._idle_order[connection]
            connection.idle = False
            if now - connection.idle_since < self._keepalive_expiry and connection.open:
                if not stack:
                    del self._idle[key]
                return connection
            connection.abort()
        self._idle.pop(key, None)
        return None

    def _keep(self, connection: _Connection) -> None:
        stack = self._idle.get(connection.key)
        if self._waiting or (stack is not None and len(stack) >= self._max_idle_per_endpoint):
            # A request waits for room, or the endpoint has idle connections enough:
            # closing this one makes room (the waiter may still find an idle one).
            connection.abort()
            return
        if stack is None:
            stack = self._idle[connection.key] = []
        loop = connection._loop
        connection.idle = True
        connection.idle_since = loop.time()
        stack.append(connection)
        self._idle_order[connection] = None
        if self._sweeper is None:
            self._sweeper = loop.call_at(
                connection.idle_since + self._keepalive_expiry, self._sweep, loop
            )

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the idle connections that expired; runs once per expiry period at most."""
        self._sweeper = None
        now = loop.time()
        while self._idle_order:
            oldest = next(iter(self._idle_order))
            if now - oldest.idle_since < self._keepalive_expiry:
                self._sweeper = loop.call_at(
                    oldest.idle_since + self._keepalive_expiry, self._sweep, loop
                )
                return
            oldest.abort()

    def _forget_idle(self, connection: _Connection) -> None:
        connection.idle = False
        self._idle_order.pop(connection, None)
        stack = self._idle.get(connection.key)
        if stack is not None and connection in stack:
            stack.remove(connection)
            if not stack:
                del self._idle[connection.key]

    def _release(self, connection: _Connection) -> None:
        self._open.discard(connection)
        self._capacity.release()

    # --- new connections ---

    async def _connect(
        self,
        target: _Target,
        loop: asyncio.AbstractEventLoop,
        deadline: float,
        *,
        take_idle: bool,
    ) -> _Connection | None:
        """A new connection, once there is room for one; None if, while this waited for
        room (and `take_idle`), an idle connection to the same endpoint came free."""
        if self._closed:
            raise DeliveryFailure("the outbound client closed while the notification was sent")
        if self._capacity.locked() and self._idle_order:
            next(iter(self._idle_order)).abort()  # make room: the least recently used
        if self._capacity.locked():
            self._waiting += 1
            try:
                async with asyncio.timeout_at(deadline):
                    await self._capacity.acquire()
            except TimeoutError:
                raise DeliveryFailure(self.timeout_text) from None
            finally:
                self._waiting -= 1
            if take_idle and target.key in self._idle:
                self._capacity.release()
                return None
        else:
            await self._capacity.acquire()
        try:
            connection = await self._open_connection(target, loop, deadline)
        except BaseException:
            self._capacity.release()
            raise
        connection.holds_capacity = True
        self._open.add(connection)
        return connection

    async def _open_connection(
        self, target: _Target, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> _Connection:
        connect_deadline = loop.time() + self._connect_timeout
        timeout_text = self._connect_timeout_text
        if connect_deadline > deadline:
            connect_deadline, timeout_text = deadline, self.timeout_text
        try:
            async with asyncio.timeout_at(connect_deadline):
                try:
                    addresses = await resolve_public(
                        target.host,
                        target.port,
                        allow_networks=self._allow_networks,
                        resolver=self._resolver,
                    )
                except UnsafeDestination as exc:
                    raise DeliveryFailure(f"unsafe destination: {exc}") from exc
                except OSError as exc:
                    raise DeliveryFailure(f"could not resolve {target.host}") from exc
                sock = await _tcp_connect(loop, addresses, target.port)
                # From here the transport owns the socket and closes it on failure.
                try:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self, target.key),
                        sock=sock,
                        ssl=self._ssl,
                        server_hostname=target.host,
                    )
                except (ssl.SSLError, OSError) as exc:
                    raise _os_failure(exc) from exc
        except TimeoutError as exc:
            raise DeliveryFailure(timeout_text) from exc
        return connection


async def _tcp_connect(
    loop: asyncio.AbstractEventLoop, addresses: Sequence[IPAddress], port: int
) -> socket.socket:
    """A socket connected to the first of `addresses` that accepts; exactly those."""
    failure: OSError | None = None
    for address in addresses:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, (str(address), port))
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    assert failure is not None  # resolve_public never answers an empty list
    raise _os_failure(failure) from failure


def _header_text(raw: bytes) -> str:
    """A header value as httpx decoded it: ASCII, else UTF-8, else Latin-1."""
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")
