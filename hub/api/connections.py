"""The HTTP connection guard: slow, oversized and too many connections are cut off early.

uvicorn bounds the idle time between requests (`timeout_keep_alive`), but not how long a
request's headers or body may take to arrive, how large its headers may grow, or how many
connections one address may hold: a few hundred connections that trickle a byte every few
seconds would tie up the process. `GuardedHttpToolsProtocol` is uvicorn's httptools
protocol with those bounds (README "HTTP surface"):

- the request line and headers must arrive within `header_timeout` seconds of the
  connection or of the request's first byte, and hold at most `max_header_bytes`;
- the body must arrive within `body_timeout` seconds of the headers;
- one client address holds at most `per_address` connections at once (0: no limit).

A refused connection gets a short OperationOutcome (408, 429 or 431) and is closed, before
any application code runs, so no AuditEvent is written: an attacker cannot fill the trail
this way. Behind a reverse proxy every connection comes from the proxy's address; set
`HUB_CONNECTIONS_PER_ADDRESS=0` there and let the proxy limit its clients.

The limits reach the protocol through the lifespan state (`STATE_KEY`), which uvicorn
hands to every connection; without it (an app built elsewhere) the protocol is uvicorn's.
The subclass relies on uvicorn's parser callbacks, so the lock file pins uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hub.fhir.outcome import Issue, operation_outcome
from hub.settings import Settings

log = logging.getLogger("hub.api.connections")

STATE_KEY = "hub.connections"


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 32 * 1024
    per_address: int = 128

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_header_bytes=settings.max_header_bytes,
            per_address=settings.connections_per_address,
        )


@dataclass
class ConnectionGuard:
    """The limits, and the connections each address holds now (one per server process)."""

    limits: ConnectionLimits
    open: Counter[str] = field(default_factory=Counter)

    def admit(self, address: str | None) -> bool:
        """Count a new connection from `address`; False (uncounted) when it is one too many."""
        if address is None:
            return True
        if 0 < self.limits.per_address <= self.open[address]:
            return False
        self.open[address] += 1
        return True

    def release(self, address: str | None) -> None:
        if address is None:
            return
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]


_REASONS = {
    408: b"Request Timeout",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
}


def refusal(status: int, code: str, diagnostics: str) -> bytes:
    """A complete HTTP/1.1 response: an OperationOutcome, and the connection closes."""
    body = json.dumps(operation_outcome([Issue(code, diagnostics)])).encode()
    head = (
        b"HTTP/1.1 %d %s\r\n"
        b"content-type: application/fhir+json; charset=utf-8\r\n"
        b"content-length: %d\r\n"
        b"connection: close\r\n" % (status, _REASONS[status], len(body))
    )
    if status == 429:
        head += b"retry-after: 1\r\n"
    return head + b"\r\n" + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body deadlines and a per-address cap."""

    _guard: ConnectionGuard | None = None
    _address: str | None = None
    _deadline: asyncio.TimerHandle | None = None
    _header_bytes: int = 0
    _in_body: bool = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.app_state.get(STATE_KEY)
        if not isinstance(guard, ConnectionGuard):
            return
        address = self.client[0] if self.client else None
        if not guard.admit(address):
            log.info("refused a connection from %s: over %d", address, guard.limits.per_address)
            self._refuse(
                429,
                "throttled",
                f"Too many connections from this address (at most {guard.limits.per_address})",
            )
            return
        self._guard, self._address = guard, address
        self._start_deadline(guard.limits.header_timeout, self._headers_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        if self._guard is not None:
            self._guard.release(self._address)
            self._guard = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused: nothing more is read
        super().data_received(data)

    # --- parser callbacks: once the connection is refused, the rest of its bytes (already
    # handed to the parser) start nothing --------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._guard is not None and self._deadline is None:
            self._start_deadline(self._guard.limits.header_timeout, self._headers_too_slow)

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_deadline()
        if self.transport.is_closing():
            return
        super().on_headers_complete()
        if self._guard is not None:
            self._in_body = True
            self._start_deadline(self._guard.limits.body_timeout, self._body_too_slow)

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._in_body:
            self._in_body = False
            self._stop_deadline()
        if not self.transport.is_closing():
            super().on_message_complete()

    # --- limits --------------------------------------------------------------------------

    def _count_header_bytes(self, size: int) -> None:
        if self._guard is None:
            return
        self._header_bytes += size
        limit = self._guard.limits.max_header_bytes
        if self._header_bytes > limit:
            self._refuse(431, "too-costly", f"The request line and headers exceed {limit} bytes")

    def _headers_too_slow(self) -> None:
        self._deadline = None
        seconds = self._guard.limits.header_timeout if self._guard else 0
        self._refuse(408, "timeout", f"The request headers did not arrive within {seconds:g} s")

    def _body_too_slow(self) -> None:
        self._deadline = None
        cycle: Any = self.cycle
        seconds = self._guard.limits.body_timeout if self._guard else 0
        if cycle is not None and cycle.response_started:
            # Answered without its body (a 413 by Content-Length, say): just stop listening.
            self.transport.close()
            return
        if cycle is not None:
            # The application sees the client gone; its own answer is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        self._refuse(408, "timeout", f"The request body did not arrive within {seconds:g} s")

    def _refuse(self, status: int, code: str, diagnostics: str) -> None:
        self._stop_deadline()
        if not self.transport.is_closing():
            self.transport.write(refusal(status, code, diagnostics))
            self.transport.close()

    def _start_deadline(self, seconds: float, expired: Any) -> None:
        self._stop_deadline()
        self._deadline = self.loop.call_later(seconds, expired)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
