"""The portal application: webhook receiver, notification worker and patient pages.

On start it subscribes to its criteria with a fresh shared secret in `channel.header`.
A notification is checked against that secret, recorded, queued, and answered 204 at
once; a worker then records the `receive` AuditEvent and fetches what is new with the
notification's trace (X-Correlation-Id = its X-Request-Id, the same X-Trace-Id), one
notification at a time.

With push configured (`PortalConfig.push`), a patient's inbox offers to notify this
device of new messages: the page subscribes through the browser's push service and
hands the portal the subscription; for each new melding the worker fetched, every
subscription of its patient gets a Web Push message (examples/portal/push.py), in a
task of its own, so a slow push service holds up neither the worker nor the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import secrets
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from examples.portal import web
from examples.portal.hub_client import HubClient, Trace
from examples.portal.push import PushConfig, PushOutcome, PushSender, new_message
from examples.portal.push_store import InvalidSubscription, PushSubscription, parse_subscription
from examples.receive_audit import receive_event
from hub.rules.bsn import BSN_SYSTEM, is_valid_bsn
from hub.rules.notification import patient_bsn

log = logging.getLogger("portal")

NOTIFY_PATH = "/koppeltaal/notify"
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# A write's lastUpdated is stamped before it commits, so a slow transaction can appear
# after a later one has been seen. Searching this far back from the newest version seen
# (and skipping versions already known) catches such late arrivals.
_LATE_COMMIT_MARGIN = timedelta(seconds=60)
# A PushSubscription's JSON is a few hundred bytes; anything far larger is not one.
_MAX_SUBSCRIPTION_BYTES = 8192
# The opt-in script and the service worker: small files, read once.
_SCRIPTS = {
    name: (Path(__file__).resolve().parent / "static" / name).read_bytes()
    for name in ("push.js", "sw.js")
}


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
    push: PushConfig | None = None  # None: no push notifications, no scripts in the pages

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
    receive_event: str | None = None  # the id of the `receive` AuditEvent recorded
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
        # The VAPID key is made here on the first start (and kept in the state directory).
        self.push = PushSender.open(config.push) if config.push is not None else None
        self._pushes: list[PushOutcome] = []
        self._push_tasks: set[asyncio.Task[None]] = set()
        push_routes = [
            Route("/push/public-key", self.push_public_key),
            Route("/push.js", self.push_script),
            Route("/sw.js", self.service_worker),
            Route("/patients/{bsn}/push-subscriptions", self.subscribe, methods=["POST"]),
        ]
        self.app = Starlette(
            routes=[
                Route(NOTIFY_PATH, self.notified, methods=["POST"]),
                Route("/", self.home),
                Route("/inbox", self.find_inbox),
                Route("/register", self.register),
                Route("/patients/{bsn}", self.inbox),
                Route("/patients/{bsn}/messages/{id}/attachments/{index:int}", self.download),
                *(push_routes if self.push is not None else ()),
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

    @property
    def pushes(self) -> list[PushOutcome]:
        with self._changed:
            return list(self._pushes)

    def wait_for_pushes(self, count: int, timeout: float = 60.0) -> list[PushOutcome]:
        """Block until `count` pushes are done (delivered, removed or given up)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._pushes) >= count, timeout):
                raise TimeoutError(f"the portal did not finish {count} pushes in time")
            return list(self._pushes)

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
            for task in (worker, *self._push_tasks):
                task.cancel()
            for task in (worker, *self._push_tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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

    async def _audit_receipt(self, notification: Notification) -> None:
        """Record the notification's `receive` AuditEvent, as Koppeltaal asks of a receiver.

        A refusal is logged and the fetch goes on: the patient's message matters more.
        """
        request_id = notification.request_id or str(uuid.uuid4())
        event = receive_event(
            client_id=self.config.client_id,
            endpoint=self.config.endpoint,
            criteria=self.config.criteria,
            subscription_id=self.subscription_id,
            request_id=request_id,
            correlation_id=notification.correlation_id,
            trace_id=notification.trace_id or request_id,
            received=notification.received_at,
        )
        trace = Trace(trace_id=notification.trace_id, correlation_id=notification.request_id)
        response = await self.hub.request("POST", "AuditEvent", json=event, trace=trace)
        if response.status_code == 201:
            notification.receive_event = str(response.json()["id"])
        else:
            log.warning("the hub refused the receive AuditEvent (%s)", response.status_code)

    async def _fetch_new(self, notification: Notification) -> None:
        await self._audit_receipt(notification)
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
            seen_before = resource["id"] in self._known
            if self._known.get(resource["id"]) != version:
                self._known[resource["id"]] = version
                notification.fetched.append(f"{resource_type}/{resource['id']}/_history/{version}")
                if not seen_before:  # a new message; a new version of one is not
                    await self._push_new_message(resource)
            updated = datetime.fromisoformat(resource["meta"]["lastUpdated"])
            self._watermark = max(self._watermark, updated - _LATE_COMMIT_MARGIN)
        notification.fetch_request_ids.extend(trace.sent)

    # -- push notifications -----------------------------------------------------------

    async def _push_new_message(self, resource: dict[str, Any]) -> None:
        """Tell every device of the message's patient; each push runs as a task of its own."""
        bsn = patient_bsn(resource)
        if self.push is None or bsn is None:
            return
        try:
            subscriptions = await asyncio.to_thread(self.push.store.of_patient, bsn)
        except Exception:  # the inbox still shows the message; the e-mail still went out
            log.exception("reading the push subscriptions failed")
            return
        for subscription in subscriptions:
            task = asyncio.create_task(
                self._push_one(self.push, bsn, subscription), name="portal-push"
            )
            self._push_tasks.add(task)
            task.add_done_callback(self._push_tasks.discard)

    async def _push_one(self, push: PushSender, bsn: str, subscription: PushSubscription) -> None:
        try:
            outcome = await push.deliver(bsn, subscription, new_message(bsn))
        except Exception:  # a bug, not a push service's answer: log it, keep the portal up
            log.exception("pushing to a subscription failed")
            return
        log.info("push %s after %d attempt(s)", outcome.result, outcome.attempts)
        with self._changed:
            self._pushes.append(outcome)
            self._changed.notify_all()

    async def push_public_key(self, request: Request) -> Response:
        assert self.push is not None
        return JSONResponse({"publicKey": self.push.public_key}, headers=web.API_HEADERS)

    async def push_script(self, request: Request) -> Response:
        return _script("push.js")

    async def service_worker(self, request: Request) -> Response:
        return _script("sw.js")

    async def subscribe(self, request: Request) -> Response:
        """Keep the browser's push subscription for this inbox's patient (the page's JSON)."""
        assert self.push is not None
        bsn = request.path_params["bsn"]
        if not is_valid_bsn(bsn):
            return _problem(404, "There is no inbox for that BSN.")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _problem(415, "Send the subscription as application/json.")
        body = b""
        async for chunk in request.stream():  # bounded: never more than the limit in memory
            body += chunk
            if len(body) > _MAX_SUBSCRIPTION_BYTES:
                return _problem(413, f"A subscription is at most {_MAX_SUBSCRIPTION_BYTES} bytes.")
        try:
            document = json.loads(body)
        except ValueError:  # not UTF-8, or not JSON
            return _problem(400, "The body is not JSON.")
        try:
            subscription = parse_subscription(document, push_hosts=self.push.config.push_hosts)
        except InvalidSubscription as exc:
            return _problem(400, f"Not a push subscription: {exc}.")
        await asyncio.to_thread(self.push.store.save, bsn, subscription)
        return JSONResponse({"stored": True}, status_code=201, headers=web.API_HEADERS)

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
        if self.push is None:
            return _html(web.inbox_page(bsn, communications))
        page = web.inbox_page(bsn, communications, push=True)
        return HTMLResponse(page, headers=web.PUSH_PAGE_HEADERS)

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


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=web.API_HEADERS)


def _script(name: str) -> Response:
    return Response(
        _SCRIPTS[name], media_type="text/javascript; charset=utf-8", headers=web.SCRIPT_HEADERS
    )
