"""The notification request, and concurrency limits per endpoint and per app.

The request is the one README.md ("Subscriptions") shows; docs/architecture.md §4 says
where it sits in the delivery path.

Sending is hub.net's job; this module decides what is sent and how many requests
one receiver gets at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from hub.syntax import parse_channel_header

K = TypeVar("K", bound=Hashable)

CONTENT_TYPE = "application/fhir+json; fhirVersion=4.0; charset=utf-8"


def notification_headers(
    *,
    channel_headers: Sequence[str],
    request_id: str,
    correlation_id: str,
    trace_id: str,
) -> list[tuple[str, str]]:
    """The headers of one notification, in the order they go on the wire.

    `channel_headers` are the Subscription's `channel.header` lines; each is split
    at its first `:` as `hub.syntax.parse_channel_header` defines, and a
    line the rules would refuse raises ValueError rather than being sent mangled.
    The body is always empty, hence `Content-Length: 0`.
    """
    headers = [("Content-Type", CONTENT_TYPE), ("Content-Length", "0")]
    headers.extend(parse_channel_header(line) for line in channel_headers)
    headers += [
        ("X-Request-Id", request_id),
        ("X-Correlation-Id", correlation_id),
        ("X-Trace-Id", trace_id),
    ]
    return headers


def endpoint_key(url: str) -> tuple[str, str, int]:
    """Scheme, host and port: the unit a receiver's capacity is measured in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").rstrip("."), port


@dataclass
class _Gate:
    semaphore: asyncio.Semaphore
    users: int = 0


class KeyedLimiter(Generic[K]):
    """At most `per_key` holders of a slot per key at a time.

    Gates exist only while in use, so the table does not grow with every key ever seen.
    """

    def __init__(self, per_key: int) -> None:
        if per_key < 1:
            raise ValueError(f"per_key must be at least 1, got {per_key}")
        self._per_key = per_key
        self._gates: dict[K, _Gate] = {}

    @asynccontextmanager
    async def slot(self, key: K) -> AsyncIterator[None]:
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate(asyncio.Semaphore(self._per_key))
        gate.users += 1
        try:
            async with gate.semaphore:
                yield
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[key]

    def busy(self, key: K) -> bool:
        """Whether a holder of `key` would have to wait for a slot."""
        return self.in_use(key) >= self._per_key

    def in_use(self, key: K) -> int:
        """How many hold or wait for a slot of `key`."""
        gate = self._gates.get(key)
        return 0 if gate is None else gate.users


class EndpointLimiter:
    """At most `per_endpoint` requests in flight to one scheme+host+port at a time.

    A receiver that is slow or dead then ties up only its own slots, and the
    deliveries to every other receiver proceed.
    """

    def __init__(self, per_endpoint: int) -> None:
        if per_endpoint < 1:
            raise ValueError(f"per_endpoint must be at least 1, got {per_endpoint}")
        self._gates: KeyedLimiter[tuple[str, str, int]] = KeyedLimiter(per_endpoint)

    def slot(self, url: str) -> AbstractAsyncContextManager[None]:
        return self._gates.slot(endpoint_key(url))

    def busy(self, url: str) -> bool:
        """Whether a request to `url`'s endpoint would have to wait for a slot."""
        return self._gates.busy(endpoint_key(url))

    def in_use(self, url: str) -> int:
        """How many requests to `url`'s endpoint hold or wait for a slot."""
        return self._gates.in_use(endpoint_key(url))
