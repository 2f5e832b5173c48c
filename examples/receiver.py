"""A Koppeltaal receiving application: it subscribes, is notified, and fetches.

This is the other side of the hub's notifications (TOP-KT-006, TOP-KT-011), as small
as it can be while doing everything Koppeltaal asks of a receiver:

1. It serves HTTPS: with the certificate and key given on the command line, or, for a
   demo, with a certificate from a throwaway local CA made at start (trustme). The CA
   is written to a file; give it to the hub as HUB_CA_BUNDLE.
2. It gets its access token with its private key (SMART backend services: a signed
   client assertion, RFC 7523) and renews it before it expires.
3. With --subscribe it creates its Subscription: `criteria`, its own endpoint, and the
   channel headers given with --header (which it then insists on: a shared secret).
4. A notification is answered 202 at once, with no body, and handled afterwards: the
   receiver records its `receive` AuditEvent (iso-21089-lifecycle, with the trace ids
   of the notification) and searches with its criteria, each request carrying
   X-Correlation-Id = the notification's X-Request-Id and the same X-Trace-Id.
5. It prints what it got, and only what is new: notifications may come more than once
   (at-least-once delivery), so it remembers the resource versions it has seen.

    python -m examples.receiver --hub http://127.0.0.1:8080 --subscribe \\
        --client-id portal-demo --criteria 'Task?status=completed' --port 8443

The hub only notifies an endpoint within the app's registered endpoints: for the demo
apps of examples/apps.yaml, https://127.0.0.1:8443/ and https://localhost:8443/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import ssl
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from examples import receive_audit
from hub.access.assertion import CLIENT_ASSERTION_TYPE, make_client_assertion

EXAMPLES = Path(__file__).resolve().parent

log = logging.getLogger("receiver")


@dataclass(frozen=True)
class Config:
    hub: str  # the hub's base URL, e.g. http://127.0.0.1:8080
    domain: str
    client_id: str
    private_key: bytes  # PEM
    kid: str
    criteria: str
    endpoint: str  # where the hub is to POST: this receiver's public URL
    headers: tuple[str, ...] = ()  # channel.header lines
    subscribe: bool = False
    hub_verify: ssl.SSLContext | bool = True  # how to trust the hub's TLS

    @property
    def fhir_base(self) -> str:
        return f"{self.hub.rstrip('/')}/{self.domain}/fhir"

    @property
    def token_url(self) -> str:
        return f"{self.hub.rstrip('/')}/{self.domain}/oauth2/token"


@dataclass(frozen=True)
class Notification:
    """The trace ids a notification brought; the request itself has no body."""

    request_id: str
    correlation_id: str
    trace_id: str
    received: datetime


def trace_headers(notification: Notification) -> dict[str, str]:
    """The trace headers of a request this notification caused (TOP-KT-011)."""
    return {
        "X-Request-Id": str(uuid.uuid4()),
        "X-Correlation-Id": notification.request_id,
        "X-Trace-Id": notification.trace_id,
    }


class HubClient:
    """Access tokens from the private key, and FHIR requests with them."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._http = httpx.AsyncClient(verify=config.hub_verify, timeout=30)
        self._token: str | None = None
        self._expires = 0.0

    async def aclose(self) -> None:
        await self._http.aclose()

    async def token(self) -> str:
        if self._token is None or time.monotonic() > self._expires - 30:
            config = self.config
            assertion = make_client_assertion(
                config.private_key,
                client_id=config.client_id,
                token_url=config.token_url,
                kid=config.kid,
            )
            response = await self._http.post(
                config.token_url,
                data={
                    "grant_type": "client_credentials",
                    "client_assertion_type": CLIENT_ASSERTION_TYPE,
                    "client_assertion": assertion,
                },
            )
            response.raise_for_status()
            answer = response.json()
            self._token = str(answer["access_token"])
            self._expires = time.monotonic() + float(answer.get("expires_in", 300))
        return self._token

    async def fhir(
        self,
        method: str,
        path_or_url: str,
        *,
        headers: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
    ) -> httpx.Response:
        url = path_or_url
        if not url.startswith(("http://", "https://")):
            url = f"{self.config.fhir_base}/{path_or_url.lstrip('/')}"
        return await self._http.request(
            method,
            url,
            json=json,
            headers={
                "Authorization": f"Bearer {await self.token()}",
                "Accept": "application/fhir+json",
                **(headers or {}),
            },
        )


def subscription(config: Config) -> dict[str, Any]:
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": config.endpoint}
    if config.headers:
        channel["header"] = list(config.headers)
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": f"{config.client_id} wants to know: {config.criteria}",
        "criteria": config.criteria,
        "channel": channel,
    }


def receive_event(
    config: Config, notification: Notification, subscription_id: str | None
) -> dict[str, Any]:
    """The KT2AuditEvent of a notification received: iso-21089-lifecycle `receive`."""
    return receive_audit.receive_event(
        client_id=config.client_id,
        endpoint=config.endpoint,
        criteria=config.criteria,
        subscription_id=subscription_id,
        request_id=notification.request_id,
        correlation_id=notification.correlation_id,
        trace_id=notification.trace_id,
        received=notification.received,
    )


class SubscriptionRefused(Exception):
    """The hub answered the Subscription with an error; the message says why."""


@dataclass
class Receiver:
    config: Config
    out: Callable[[str], None] = field(default=lambda line: print(line, flush=True))
    subscription_id: str | None = None
    seen: set[str] = field(default_factory=set)  # Type/id/_history/n already fetched
    _hub: HubClient | None = None
    _queue: asyncio.Queue[Notification] = field(default_factory=asyncio.Queue)
    _worker: asyncio.Task[None] | None = None

    @property
    def hub(self) -> HubClient:
        assert self._hub is not None, "the receiver is not started"
        return self._hub

    async def start(self) -> None:
        self._hub = HubClient(self.config)
        if self.config.subscribe:
            await self._subscribe()
        self._worker = asyncio.create_task(self._work(), name="receiver-worker")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        await self.hub.aclose()

    async def _subscribe(self) -> None:
        response = await self.hub.fhir("POST", "/Subscription", json=subscription(self.config))
        if response.status_code != 201:
            hint = ""
            if "registered endpoints" in response.text:
                hint = (
                    f"\n{self.config.endpoint} is not among {self.config.client_id}'s registered "
                    "endpoints (examples/apps.yaml registers https://127.0.0.1:8443/ for the "
                    "demo apps): use --port 8443, or add your port there (the hub reloads "
                    "the file within HUB_HOUSEKEEPING_SECONDS)"
                )
            raise SubscriptionRefused(f"the hub refused the Subscription:\n{response.text}{hint}")
        self.subscription_id = response.json()["id"]
        self.out(f"subscribed: Subscription/{self.subscription_id} {self.config.criteria}")

    def authentic(self, request: Request) -> bool:
        """Every channel header this receiver subscribed with must come along (a secret)."""
        for line in self.config.headers:
            name, _, value = line.partition(":")
            if request.headers.get(name.strip()) != value.strip():
                return False
        return True

    async def notified(self, request: Request) -> Response:
        """Answer at once; the work happens after the answer (the hub must not wait)."""
        if not self.authentic(request):
            return Response(status_code=401)
        await request.body()  # always empty; read so the connection can be reused
        request_id = request.headers.get("x-request-id") or str(uuid.uuid4())
        self._queue.put_nowait(
            Notification(
                request_id=request_id,
                correlation_id=request.headers.get("x-correlation-id", ""),
                trace_id=request.headers.get("x-trace-id") or request_id,
                received=datetime.now(UTC),
            )
        )
        return Response(status_code=202)

    async def _work(self) -> None:
        while True:
            notification = await self._queue.get()
            try:
                await self.handle(notification)
            except Exception:
                # The next notification triggers a new search: nothing is lost for good.
                log.exception("handling notification %s failed", notification.request_id)

    async def handle(self, notification: Notification) -> list[str]:
        """Audit the receipt, then search with the criteria; the new versions found."""
        self.out(
            f"notified: X-Request-Id {notification.request_id}, X-Trace-Id "
            f"{notification.trace_id}, caused by {notification.correlation_id or '-'}"
        )
        event = receive_event(self.config, notification, self.subscription_id)
        audited = await self.hub.fhir(
            "POST", "/AuditEvent", headers=trace_headers(notification), json=event
        )
        if audited.status_code != 201:
            self.out(f"  receive AuditEvent refused ({audited.status_code}): {audited.text}")
        fresh: list[str] = []
        url: str | None = self.config.criteria
        while url is not None:
            page = await self.hub.fhir("GET", url, headers=trace_headers(notification))
            page.raise_for_status()
            bundle = page.json()
            for entry in bundle.get("entry", ()):
                resource = entry["resource"]
                version = (
                    f"{resource['resourceType']}/{resource['id']}"
                    f"/_history/{resource['meta']['versionId']}"
                )
                if version not in self.seen:
                    self.seen.add(version)
                    fresh.append(version)
            links = {link["relation"]: link["url"] for link in bundle.get("link", ())}
            url = links.get("next")
        for version in fresh:
            self.out(f"  new: {version}")
        if not fresh:
            self.out("  nothing new (seen before)")
        return fresh


def create_app(receiver: Receiver, path: str) -> Starlette:
    """The notification endpoint; the caller starts and stops `receiver` around serving."""
    return Starlette(routes=[Route(path, receiver.notified, methods=["POST"])])


async def serve(receiver: Receiver, server: uvicorn.Server, sock: socket.socket) -> int:
    """Subscribe (on the listening socket), then serve until stopped; 1 if refused."""
    try:
        await receiver.start()
    except SubscriptionRefused as refused:
        print(f"receiver: {refused}", file=sys.stderr)
        await receiver.stop()
        return 1
    try:
        await server.serve(sockets=[sock])
    finally:
        await receiver.stop()
    return 0


# --- TLS and the command line ---------------------------------------------------------------


def local_certificate(directory: Path, hostnames: Sequence[str]) -> tuple[Path, Path, Path]:
    """(certificate, key, CA) from a throwaway CA (trustme): for demos only.

    Made once and reused from `directory`, so that a hub told to trust the CA
    (HUB_CA_BUNDLE) keeps trusting the receiver across restarts.
    """
    cert, key, ca = (directory / f"receiver-{n}.pem" for n in ("cert", "key", "ca"))
    if cert.exists() and key.exists() and ca.exists():
        return cert, key, ca
    try:
        import trustme
    except ImportError:  # pragma: no cover - trustme is a development dependency
        raise SystemExit("receiver: give --cert and --cert-key, or install trustme") from None
    directory.mkdir(parents=True, exist_ok=True)
    authority = trustme.CA(organization_name="Koppeltaal demo receiver CA")
    issued = authority.issue_cert(*hostnames)
    issued.cert_chain_pems[0].write_to_path(str(cert))
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(issued.private_key_pem.bytes())
    authority.cert_pem.write_to_path(str(ca))
    return cert, key, ca


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.receiver", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--hub", default="http://127.0.0.1:8080", help="the hub's base URL")
    parser.add_argument("--hub-ca", type=Path, help="CA bundle to trust the hub's TLS")
    parser.add_argument("--domain", default="demo", help="the hub's domain (demo)")
    parser.add_argument(
        "--client-id", default="portal-demo", help="the receiving app's client_id (portal-demo)"
    )
    parser.add_argument("--key", type=Path, help="private key PEM (examples/keys/<id>.pem)")
    parser.add_argument("--kid", help="key id (default: <client-id>-1)")
    parser.add_argument(
        "--criteria", default="Task?status=completed", help="what to subscribe to and search"
    )
    parser.add_argument("--subscribe", action="store_true", help="create the Subscription")
    parser.add_argument("--header", action="append", default=[], help="a channel.header line")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=8443,
        help="port to listen on (8443: examples/apps.yaml registers it for the demo apps)",
    )
    parser.add_argument("--path", default="/notify", help="the notification path (/notify)")
    parser.add_argument(
        "--endpoint", help="the URL the hub calls (default: https://host:port/path)"
    )
    parser.add_argument("--cert", type=Path, help="TLS certificate chain (PEM)")
    parser.add_argument("--cert-key", type=Path, help="the certificate's private key (PEM)")
    parser.add_argument(
        "--ca-out", type=Path, default=Path("var/receiver"), help="where a demo CA is written"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    key_file = args.key or EXAMPLES / "keys" / f"{args.client_id}.pem"
    if args.cert and args.cert_key:
        cert, cert_key = args.cert, args.cert_key
    else:
        cert, cert_key, ca = local_certificate(args.ca_out, [args.host, "localhost"])
        print(f"demo TLS certificate from a local CA: start the hub with HUB_CA_BUNDLE={ca}")
    config = Config(
        hub=args.hub,
        domain=args.domain,
        client_id=args.client_id,
        private_key=key_file.read_bytes(),
        kid=args.kid or f"{args.client_id}-1",
        criteria=args.criteria,
        endpoint=args.endpoint or f"https://{args.host}:{args.port}{args.path}",
        headers=tuple(args.header),
        subscribe=args.subscribe,
        hub_verify=ssl.create_default_context(cafile=str(args.hub_ca)) if args.hub_ca else True,
    )
    # Listening before subscribing: a notification sent the moment the Subscription
    # exists waits in the socket's backlog instead of being refused.
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    print(f"receiving on {config.endpoint} as {config.client_id}", flush=True)
    receiver = Receiver(config)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(receiver, args.path),
            ssl_certfile=str(cert),
            ssl_keyfile=str(cert_key),
            log_level="warning",
            server_header=False,
            # The hub keeps idle TLS connections open; do not wait long for them to go.
            timeout_graceful_shutdown=3,
        )
    )
    return asyncio.run(serve(receiver, server, sock))


if __name__ == "__main__":
    sys.exit(main())
