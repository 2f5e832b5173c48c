"""`OutboundClient`: the hub's one HTTP client, created in the app lifespan.

Notifications go through `hub.net.webhooks` (lean, and on the hot path of
delivery); JWKS fetches and the `hub token` command's form POST, which are rare,
through httpx (`hub.net.httpx_transport`). Both paths pass the same destination
guard and verify TLS against the same trust (`hub.net.tls`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from hub.addresses import Resolver, UnsafeDestination, system_resolver
from hub.net.httpx_transport import guarded_client
from hub.net.tls import tls_context
from hub.net.urls import parse_https, redacted
from hub.net.webhooks import DeliveryFailure, WebhookClient, failure_text
from hub.settings import Settings

MAX_JSON_BYTES = 1024 * 1024


class OutboundError(Exception):
    """A `fetch_json` or `post_form` request that produced no usable answer."""


@dataclass(frozen=True)
class DeliveryResult:
    """What happened to one notification POST: a status, or an error, never both."""

    url: str
    elapsed: float
    """Seconds from the start of the attempt to its outcome."""
    status: int | None = None
    retry_after: str | None = None
    """The receiver's `Retry-After` header, verbatim (see hub.notify.retry)."""
    error: str | None = None
    """Why no status arrived: connection, TLS, timeout or unsafe destination."""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class OutboundClient:
    """The hub's one HTTP client: created in the app lifespan, closed at shutdown."""

    def __init__(self, settings: Settings, *, resolver: Resolver = system_resolver) -> None:
        self._connect_timeout = settings.webhook_connect_timeout
        self._total_timeout = settings.webhook_timeout
        self._ssl_context = tls_context(settings.ca_bundle)
        self._timeout = httpx.Timeout(self._total_timeout, connect=self._connect_timeout)
        self._client = guarded_client(
            self._ssl_context,
            allow_networks=settings.webhook_allow_networks,
            resolver=resolver,
            timeout=self._timeout,
        )
        self._webhooks = WebhookClient(
            self._ssl_context,
            allow_networks=settings.webhook_allow_networks,
            resolver=resolver,
            connect_timeout=self._connect_timeout,
            total_timeout=self._total_timeout,
        )

    async def __aenter__(self) -> OutboundClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        try:
            await self._webhooks.aclose()
        finally:
            await self._client.aclose()

    @property
    def webhooks(self) -> WebhookClient:
        """The notification connection pool (tests look at its connections)."""
        return self._webhooks

    async def post_notification(
        self, url: str, headers: Sequence[tuple[str, str]]
    ) -> DeliveryResult:
        """POST an empty body with exactly `headers` (plus Host); never raises for failures.

        The receiver sees the notification request (docs/architecture.md §4) and
        nothing else: no User-Agent, Accept or Connection header of a library's own.
        A failure is an `error` text; cancellation still propagates.
        """
        started = time.monotonic()
        try:
            status, retry_after = await self._webhooks.post(url, headers)
        except DeliveryFailure as exc:
            return DeliveryResult(url, time.monotonic() - started, error=str(exc))
        return DeliveryResult(
            url, time.monotonic() - started, status=status, retry_after=retry_after
        )

    async def fetch_json(self, url: str, *, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
        """GET a JSON object (a JWKS) from an https URL, through the destination guard."""
        try:
            parse_https(url)
            async with asyncio.timeout(self._total_timeout):
                request = httpx.Request("GET", url, headers=[("Accept", "application/json")])
                response = await self._client.send(request, stream=True)
                try:
                    body = await _read_capped(response, max_bytes)
                finally:
                    await response.aclose()
        except (UnsafeDestination, httpx.HTTPError, httpx.InvalidURL, TimeoutError) as exc:
            raise OutboundError(f"{redacted(url)}: {self._describe(exc)}") from exc
        if response.status_code != 200:
            raise OutboundError(f"HTTP {response.status_code} from {redacted(url)}")
        if body is None:
            raise OutboundError(f"{redacted(url)}: answer larger than {max_bytes} bytes")
        return _json_object(body, url)

    async def post_form(self, url: str, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """POST a form (the `hub token` command) and answer the status and JSON object.

        No destination guard: the operator typed this URL on the command line, often
        the hub itself on 127.0.0.1, so there is no untrusted input to guard against.
        Plain http is allowed for the same reason. A short-lived client, because the
        command makes one request.
        """
        try:
            async with httpx.AsyncClient(
                verify=self._ssl_context,
                timeout=self._timeout,
                follow_redirects=False,
                trust_env=False,
            ) as client:
                response = await client.post(url, data=dict(form))
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise OutboundError(f"{redacted(url)}: {self._describe(exc)}") from exc
        return response.status_code, _json_object(response.content, url)

    def _describe(self, exc: BaseException) -> str:
        """A short, human sentence for an httpx failure, worded as the webhook path does."""
        if isinstance(exc, UnsafeDestination):
            return f"unsafe destination: {exc}"
        if isinstance(exc, httpx.ConnectTimeout):
            return f"connect timeout after {self._connect_timeout:g} s"
        if isinstance(exc, TimeoutError | httpx.TimeoutException):
            return f"timeout after {self._total_timeout:g} s"
        return failure_text(exc) or str(exc) or type(exc).__name__


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes | None:
    """The body, or None (having stopped reading) once it is larger than `max_bytes`."""
    chunks: list[bytes] = []
    size = 0
    async for part in response.aiter_bytes():
        size += len(part)
        if size > max_bytes:
            return None
        chunks.append(part)
    return b"".join(chunks)


def _json_object(body: bytes, url: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise OutboundError(f"{redacted(url)}: answer is not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise OutboundError(f"{redacted(url)}: answer is not a JSON object")
    return document
