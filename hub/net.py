"""Outbound HTTP: the one module of the hub that imports httpx.

Webhook endpoints and `jwks_uri`s are URLs chosen by applications, so every
connection the hub opens to them goes through a destination guard: the host name
is resolved, every address checked (public, or inside
`HUB_WEBHOOK_ALLOW_NETWORKS`), and the socket is connected to exactly the address
that was checked. The guard sits in the network backend underneath httpcore's
connection pool rather than in front of the client, for two reasons:

- DNS rebinding: a name that resolves to a public address when checked and to
  127.0.0.1 a moment later gains nothing, because there is no "later": the
  resolution that is checked is the one connected to.
- TLS identity: the pool keys connections by host name, so SNI, certificate host
  name verification and the Host header all use the URL's host, and a connection
  verified for one name is never reused for another name on the same address
  (which rewriting URLs to IP addresses plus the `sni_hostname` extension would
  allow).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
import httpcore
import httpx

from hub.addresses import (
    Resolver,
    UnsafeDestination,
    resolve_public,
    system_resolver,
)
from hub.settings import IPNetwork, Settings, SettingsError

__all__ = [
    "DeliveryResult",
    "OutboundClient",
    "OutboundError",
    "Resolver",
    "UnsafeDestination",
    "check_url",
    "endpoint_within",
    "redacted",
    "resolve_public",
]

MAX_JSON_BYTES = 1024 * 1024
# A receiver's answer body is read (so the connection can be reused) but not kept.
_MAX_DISCARDED_BODY = 64 * 1024


class OutboundError(Exception):
    """A `fetch_json` or `post_form` request that produced no usable answer."""


# --- URL checks ----------------------------------------------------------------------


def redacted(url: str) -> str:
    """`url` without user info, query or fragment, which may carry secrets.

    Error texts mention URLs and end up in Subscription.error and AuditEvents.
    """
    base = url.split("#", 1)[0].split("?", 1)[0]
    scheme, separator, rest = base.partition("://")
    if not separator:
        return base
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def _parse_https(url: str) -> httpx.URL:
    """The URL, if it is an absolute https URL with a host and without credentials."""
    shown = repr(redacted(url))
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UnsafeDestination(f"{shown} is not a valid URL: {exc}") from exc
    if parsed.scheme != "https":
        raise UnsafeDestination(f"{shown} is not an https URL")
    if parsed.userinfo:
        raise UnsafeDestination(f"{shown} must not contain a user name or password")
    if not parsed.host:
        raise UnsafeDestination(f"{shown} has no host")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise UnsafeDestination(f"{shown} is not a valid URL: port out of range")
    return parsed


def _comparable_path(path: str) -> str:
    """A decoded path with dot segments resolved, as a lenient server would see it."""
    segments: list[str] = []
    parts = path.replace("\\", "/").split("/")
    for part in parts[1:]:
        if part == "..":
            if segments:
                segments.pop()
        elif part != ".":
            segments.append(part)
    if parts[-1] in (".", ".."):
        segments.append("")
    return "/" + "/".join(segments)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.raw_host.decode("ascii").rstrip("."), url.port


def endpoint_within(url: str, prefix: str) -> bool:
    """Whether `url` lies under the registered endpoint `prefix`.

    Scheme, host and port must be equal (so `https://a.example.evil.com/` is not
    under `https://a.example`). Paths are compared after percent-decoding and
    resolving dot segments. A prefix path ending in `/` admits everything below it;
    one that does not admits itself and everything below `<path>/`, never a
    sibling: `https://a.example/hooks` admits `/hooks` and `/hooks/x` but not
    `/hooks-evil`. Query strings are not compared.
    """
    try:
        candidate, allowed = httpx.URL(url), httpx.URL(prefix)
    except (httpx.InvalidURL, TypeError):
        return False
    if _origin(candidate) != _origin(allowed):
        return False
    path, base = _comparable_path(candidate.path), _comparable_path(allowed.path)
    if base.endswith("/"):
        return path.startswith(base)
    return path == base or path.startswith(base + "/")


async def check_url(
    url: str,
    *,
    allow_networks: Sequence[IPNetwork],
    allowed_prefixes: Sequence[str],
    resolver: Resolver = system_resolver,
) -> None:
    """Refuse (`UnsafeDestination`) a webhook URL at Subscription create/update time.

    https only, no credentials, within one of the app's registered endpoint prefixes
    when it has any, and resolving to allowed addresses now. The same address check
    runs again on every connection, so passing here grants nothing later.
    """
    parsed = _parse_https(url)
    if allowed_prefixes and not any(endpoint_within(url, p) for p in allowed_prefixes):
        raise UnsafeDestination(
            f"{redacted(url)!r} is not within the application's registered endpoints"
        )
    host = parsed.raw_host.decode("ascii")
    try:
        await resolve_public(
            host, parsed.port or 443, allow_networks=allow_networks, resolver=resolver
        )
    except OSError as exc:
        raise UnsafeDestination(f"{host} does not resolve ({exc})") from exc


# --- the guarded transport -----------------------------------------------------------


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """Verify against the system trust store, certifi's, and the operator's extra CAs.

    certifi covers hosts whose system store is empty or absent (slim containers).
    """
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=certifi.where())
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            # A start-up error an operator can act on, not a traceback.
            raise SettingsError(
                f"HUB_CA_BUNDLE: {ca_bundle} holds no usable CA certificates ({exc})"
            ) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses that pass the guard, and only to those."""

    def __init__(self, allow_networks: Sequence[IPNetwork], resolver: Resolver) -> None:
        self._allow_networks = tuple(allow_networks)
        self._resolver = resolver
        self._sockets = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await resolve_public(
                    host, port, allow_networks=self._allow_networks, resolver=self._resolver
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"could not resolve {host}") from exc
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self._sockets.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
        assert failure is not None  # resolve_public never answers an empty list
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not a webhook destination")

    async def sleep(self, seconds: float) -> None:
        await self._sockets.sleep(seconds)


_HTTPCORE_TO_HTTPX: dict[type[Exception], type[httpx.HTTPError]] = {
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
}


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    """Re-raise httpcore's exceptions as httpx's, as httpx's own transport does."""
    try:
        yield
    except Exception as exc:
        for kind in type(exc).__mro__:
            mapped = _HTTPCORE_TO_HTTPX.get(kind)
            if mapped is not None:
                raise mapped(str(exc)) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class _GuardedTransport(httpx.AsyncBaseTransport):
    """httpx's transport contract over a connection pool on the guarded backend.

    httpx's own transport does not accept a network backend; otherwise this is what
    `httpx.AsyncHTTPTransport` does (HTTP/1.1, no proxies: a proxy would resolve the
    name itself and defeat the guard).
    """

    def __init__(self, ssl_context: ssl.SSLContext, backend: httpcore.AsyncNetworkBackend) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


# --- the client ----------------------------------------------------------------------


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


def _causes(exc: BaseException) -> Iterator[BaseException]:
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


class OutboundClient:
    """The hub's one HTTP client: created in the app lifespan, closed at shutdown."""

    def __init__(self, settings: Settings, *, resolver: Resolver = system_resolver) -> None:
        self._connect_timeout = settings.webhook_connect_timeout
        self._total_timeout = settings.webhook_timeout
        self._ssl_context = tls_context(settings.ca_bundle)
        self._timeout = httpx.Timeout(self._total_timeout, connect=self._connect_timeout)
        backend = _GuardedBackend(settings.webhook_allow_networks, resolver)
        self._client = httpx.AsyncClient(
            transport=_GuardedTransport(self._ssl_context, backend),
            timeout=self._timeout,
            follow_redirects=False,
            trust_env=False,
        )

    async def __aenter__(self) -> OutboundClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post_notification(
        self, url: str, headers: Sequence[tuple[str, str]]
    ) -> DeliveryResult:
        """POST an empty body with exactly `headers` (plus Host); never raises for failures.

        The request is built directly rather than through the client so that httpx
        adds none of its default headers (User-Agent, Accept, ...): the receiver
        sees the notification request (docs/architecture.md §4) and nothing else.
        """
        started = time.monotonic()
        try:
            _parse_https(url)
            request = httpx.Request("POST", url, headers=list(headers), content=b"")
            async with asyncio.timeout(self._total_timeout):
                response = await self._client.send(request, stream=True)
        except (
            UnsafeDestination,
            httpx.HTTPError,
            httpx.InvalidURL,
            TimeoutError,
            UnicodeEncodeError,
        ) as exc:
            return DeliveryResult(url, time.monotonic() - started, error=self._describe(exc))
        elapsed = time.monotonic() - started
        try:
            await self._discard_body(response, deadline=started + self._total_timeout)
        finally:
            await response.aclose()
        return DeliveryResult(
            url,
            elapsed,
            status=response.status_code,
            retry_after=response.headers.get("retry-after"),
        )

    async def fetch_json(self, url: str, *, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
        """GET a JSON object (a JWKS) from an https URL, through the destination guard."""
        try:
            _parse_https(url)
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

    async def _discard_body(self, response: httpx.Response, *, deadline: float) -> None:
        """Read a small answer so the connection can be reused; its content is ignored."""
        with contextlib.suppress(httpx.HTTPError, TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await _read_capped(response, _MAX_DISCARDED_BODY)

    def _describe(self, exc: BaseException) -> str:
        """A short, human sentence for Subscription.error and AuditEvent.outcomeDesc."""
        if isinstance(exc, UnsafeDestination):
            return f"unsafe destination: {exc}"
        if isinstance(exc, httpx.ConnectTimeout):
            return f"connect timeout after {self._connect_timeout:g} s"
        if isinstance(exc, TimeoutError | httpx.TimeoutException):
            return f"timeout after {self._total_timeout:g} s"
        for cause in _causes(exc):
            if isinstance(cause, ssl.SSLCertVerificationError):
                return f"TLS certificate verify failed: {cause.verify_message}"
            if isinstance(cause, ssl.SSLError):
                return f"TLS error: {cause.reason or cause}"
            if isinstance(cause, ConnectionRefusedError):
                return "connection refused"
            if isinstance(cause, ConnectionResetError):
                return "connection reset"
        return str(exc) or type(exc).__name__


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
