"""The portal application: webhook receiver, notification worker and patient pages.

On start it subscribes to its criteria with a fresh shared secret in `channel.header`.
A notification is checked against that secret, recorded, queued, and answered 204 at
once; a worker then fetches what is new with the notification's trace (X-Correlation-Id
= its X-Request-Id, the same X-Trace-Id), one notification at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import secrets
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from examples.portal import web
from examples.portal.hub_client import HubClient, Trace
from hub.rules.bsn import BSN_SYSTEM, is_valid_bsn
from hub.rules.notification import patient_bsn

log = logging.getLogger("portal")

NOTIFY_PATH = "/koppeltaal/notify"
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# A write's lastUpdated is stamped before it commits, so a slow transaction can appear
# after a later one has been seen. Searching this far back from the newest version seen
# (and skipping versions already known) catches such late arrivals.
_LATE_COMMIT_MARGIN = timedelta(seconds=60)


@dataclass(frozen=True)
class PortalConfig:
    fhir_base: str  # the hub's FHIR base of the portal's domain
    client_id: str
    private_key: bytes
    kid: str
    public_url: str  # how the hub reaches this portal: https://host:port
    certfile: Path
    keyfile: Path
    criteria: str = "Communication?category=melding"
    hub_verify: Any = True  # httpx `verify` for an https hub

    @property
    def endpoint(self) -> str:
        return f"{self.public_url.rstrip('/')}{NOTIFY_PATH}"


@dataclass
class Notification:
    """One notification the hub sent, and what the portal fetched because of it."""

    received_at: datetime
    headers: list[tuple[str, str]]  # as received, the shared secret masked
    request_id: str | None
    correlation_id: str | None
    trace_id: str | None
    fetch_request_ids: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)  # new `Communication/<id>/_history/<v>`
    error: str | None = None
    done: bool = False


class Portal:
    def __init__(self, config: PortalConfig) -> None:
        self.config = config
        self.secret = secrets.token_urlsafe(32)
        self.subscription_id: str | None = None
        self.hub = HubClient(
            config.fhir_base,
            client_id=config.client_id,
            private_key=config.private_key,
            kid=config.kid,
            verify=config.hub_verify,
        )
        # The demo and tests read these from other threads.
        self._changed = threading.Condition()
        self._notifications: list[Notification] = []
        self._known: dict[str, str] = {}  # Communication id -> newest versionId seen
        self._watermark: datetime | None = None
        self._queue: asyncio.Queue[Notification] | None = None
        self.app = Starlette(
            routes=[
                Route(NOTIFY_PATH, self.notified, methods=["POST"]),
                Route("/", self.home),
                Route("/inbox", self.find_inbox),
                Route("/register", self.register),
                Route("/patients/{bsn}", self.inbox),
                Route("/patients/{bsn}/messages/{id}/attachments/{index:int}", self.download),
            ],
            lifespan=self._lifespan,
        )

    @property
    def notifications(self) -> list[Notification]:
        with self._changed:
            return list(self._notifications)

    def wait_for_fetches(self, count: int, timeout: float = 60.0) -> list[Notification]:
        """Block until `count` notifications are fully handled; TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: sum(n.done for n in self._notifications) >= count, timeout
            ):
                raise TimeoutError(f"the portal did not handle {count} notifications in time")
            return list(self._notifications)

    # -- start and stop ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self._queue = asyncio.Queue()
        # Only what changes from now on is "new"; older messages show in the inbox anyway.
        self._watermark = datetime.now(UTC) - _LATE_COMMIT_MARGIN
        self.subscription_id = await self.hub.ensure_subscription(
            endpoint=self.config.endpoint,
            criteria=self.config.criteria,
            header=f"Authorization: Bearer {self.secret}",
            reason="The demo patient portal shows patients their notifications",
        )
        log.info("subscribed (Subscription/%s)", self.subscription_id)
        worker = asyncio.create_task(self._work(), name="portal-fetch")
        try:
            yield
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            await self.hub.aclose()

    # -- notifications ----------------------------------------------------------------

    async def notified(self, request: Request) -> Response:
        expected = f"Bearer {self.secret}".encode()
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return Response(status_code=401)
        headers = [
            (name, "Bearer ***" if name.lower() == "authorization" else value)
            for name, value in request.headers.items()
        ]
        notification = Notification(
            received_at=datetime.now(UTC),
            headers=headers,
            request_id=request.headers.get("x-request-id"),
            correlation_id=request.headers.get("x-correlation-id"),
            trace_id=request.headers.get("x-trace-id"),
        )
        with self._changed:
            self._notifications.append(notification)
        assert self._queue is not None
        self._queue.put_nowait(notification)
        # The hub would keep the connection idle in its pool, and asyncio waits up to 30 s
        # for a TLS peer's close_notify when a server closes, so the portal could not
        # stop promptly. Notifications are rare enough to afford a handshake each.
        return Response(status_code=204, headers={"Connection": "close"})

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            notification = await self._queue.get()
            try:
                await self._fetch_new(notification)
            except Exception as exc:  # the next notification tries again
                log.exception("fetching after a notification failed")
                notification.error = str(exc)
            with self._changed:
                notification.done = True
                self._changed.notify_all()

    async def _fetch_new(self, notification: Notification) -> None:
        resource_type, _, query = self.config.criteria.partition("?")
        assert self._watermark is not None
        params = [
            *parse_qsl(query),
            ("_lastUpdated", f"ge{self._watermark.isoformat()}"),
            ("_sort", "_lastUpdated"),
        ]
        trace = Trace(trace_id=notification.trace_id, correlation_id=notification.request_id)
        found = await self.hub.search(resource_type, params, trace=trace)
        for resource in found:
            version = str(resource["meta"]["versionId"])
            if self._known.get(resource["id"]) != version:
                self._known[resource["id"]] = version
                notification.fetched.append(f"{resource_type}/{resource['id']}/_history/{version}")
            updated = datetime.fromisoformat(resource["meta"]["lastUpdated"])
            self._watermark = max(self._watermark, updated - _LATE_COMMIT_MARGIN)
        notification.fetch_request_ids.extend(trace.sent)

    # -- pages ------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return _html(web.home_page())

    async def register(self, request: Request) -> Response:
        return _html(web.registration_page())

    async def find_inbox(self, request: Request) -> Response:
        bsn = request.query_params.get("bsn", "").strip()
        if not is_valid_bsn(bsn):
            return _html(web.home_page("That is not a valid BSN (nine digits)."), 400)
        return RedirectResponse(f"/patients/{quote(bsn)}", status_code=303)

    async def inbox(self, request: Request) -> Response:
        bsn = request.path_params["bsn"]
        if not is_valid_bsn(bsn):
            return _html(web.home_page("That is not a valid BSN (nine digits)."), 404)
        communications = await self.hub.search(
            "Communication",
            [("patient-identifier", f"{BSN_SYSTEM}|{bsn}"), ("_sort", "-_lastUpdated")],
            trace=Trace(),
        )
        return _html(web.inbox_page(bsn, communications))

    async def download(self, request: Request) -> Response:
        bsn, id = request.path_params["bsn"], request.path_params["id"]
        # Checked before it becomes part of a hub URL: no "..", "?" or "%2F" gets through.
        if not _FHIR_ID.fullmatch(id) or set(id) == {"."}:
            return _html(web.page("Not found", "<p>There is no such attachment.</p>"), 404)
        communication = await self.hub.read("Communication", id, trace=Trace())
        # Only through the inbox it belongs to (the demo's stand-in for a login).
        if communication is None or patient_bsn(communication) != bsn:
            return _html(web.page("Not found", "<p>There is no such attachment.</p>"), 404)
        found = web.attachment_of(communication, request.path_params["index"])
        if found is None:
            return _html(web.page("Not found", "<p>There is no such attachment.</p>"), 404)
        data, content_type, filename = found
        headers = {
            **web.SECURITY_HEADERS,
            "Content-Disposition": web.content_disposition(filename),
        }
        return Response(data, media_type=content_type, headers=headers)


def _html(content: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(content, status_code=status, headers=web.SECURITY_HEADERS)
