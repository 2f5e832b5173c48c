"""httpx over httpcore on a guarded network backend: the path of the rare requests.

JWKS fetches (`OutboundClient.fetch_json`) go through here; notifications take the
leaner `hub.net.webhooks`. The guard sits in the network backend underneath
httpcore's connection pool rather than in front of the client, for two reasons:

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
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Sequence
from typing import Any

import httpcore
import httpx

from hub.addresses import Resolver, resolve_public
from hub.settings import IPNetwork


class GuardedBackend(httpcore.AsyncNetworkBackend):
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


class GuardedTransport(httpx.AsyncBaseTransport):
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


def guarded_client(
    ssl_context: ssl.SSLContext,
    *,
    allow_networks: Sequence[IPNetwork],
    resolver: Resolver,
    timeout: httpx.Timeout,
) -> httpx.AsyncClient:
    """An httpx client whose every connection passes the destination guard."""
    return httpx.AsyncClient(
        transport=GuardedTransport(ssl_context, GuardedBackend(allow_networks, resolver)),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )
