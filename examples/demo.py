"""`make demo`: a patient notification end to end, on this machine.

It starts, on loopback and in a temporary directory that is removed afterwards:

1. an SMTP catcher (aiosmtpd) that keeps the e-mails the hub sends;
2. the hub (`hub serve` on --hub-port, default a free one: SQLite, the demo apps of
   examples/apps.yaml with the portal's port as their registered endpoint), told to
   trust the portal's local CA (HUB_CA_BUNDLE), to notify loopback addresses
   (HUB_WEBHOOK_ALLOW_NETWORKS) and to mail through the catcher (HUB_SMTP_URL);
3. a push service stand-in (examples/portal/push_catcher.py): HTTPS on loopback, in
   place of the browser vendor's push service, which an offline demo cannot reach;
4. the demo patient portal (examples/portal as `portal-demo`) on
   https://127.0.0.1:<--portal-port, default 8443>, which subscribes to
   `Communication?category=melding`, records a `receive` AuditEvent for each
   notification, and pushes to its patients' devices through the stand-in.

Then the patient allows notifications in her inbox (the demo plays her browser: it
makes the browser's push keys and hands the portal the subscription, as the page's
script does), the demo XIS (`epd-demo`) registers her and sends her a notification
with an attachment, and the demo prints what happened: the webhook notification the
portal got and what it fetched, the e-mail the catcher got, the push the portal sent
her browser, the patient's inbox, and the trace chain of AuditEvents as the auditor
(`auditor-demo`) finds them by X-Trace-Id.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import yaml

from examples.mailcatcher import CaughtMail, MailCatcher
from examples.portal.app import Notification, Portal, PortalConfig
from examples.portal.push import PushConfig, PushResult
from examples.portal.push_catcher import CaughtPush, DemoBrowser, PushCatcher, VapidToken
from examples.portal.server import Certificate, listening_socket, local_certificate, running_portal
from hub.access.assertion import CLIENT_ASSERTION_TYPE, make_client_assertion
from hub.rules.bsn import BSN_SYSTEM

EXAMPLES = Path(__file__).resolve().parent
REPOSITORY = EXAMPLES.parent
KEYS = EXAMPLES / "keys"
DOMAIN = "demo"
# examples/apps.yaml registers this port for the demo apps' webhooks (the default here).
PORTAL_PORT = 8443
BSN = "123456782"
PATIENT_EMAIL = "jan.janssen@example.com"
# A one-page PDF is more than the demo needs: the hub checks the signature and no more.
LAB_REPORT = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<<>>\n%%EOF\n"
KT = "http://koppeltaal.nl/fhir/StructureDefinition"


class DemoFailed(Exception):
    """Something did not happen as it should; the message says what."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--hub-port",
        type=int,
        default=0,
        help="the port of the demo's hub on 127.0.0.1 (default: a free one)",
    )
    parser.add_argument(
        "--portal-port",
        type=int,
        default=PORTAL_PORT,
        help=f"the port of the demo portal on 127.0.0.1 ({PORTAL_PORT}); the demo's hub "
        "registers it as the demo apps' webhook endpoint",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hub-demo-") as temporary, ExitStack() as stack:
        directory = Path(temporary)
        try:
            portal_socket = stack.enter_context(listening_socket("127.0.0.1", args.portal_port))
        except OSError as exc:
            print(
                f"demo: cannot listen on 127.0.0.1:{args.portal_port} for the portal ({exc}); "
                "free that port, or choose another with --portal-port",
                file=sys.stderr,
            )
            return 1
        portal_url = f"https://127.0.0.1:{portal_socket.getsockname()[1]}"
        try:
            certificate = local_certificate(directory / "portal-tls", "127.0.0.1", "localhost")
            catcher = stack.enter_context(MailCatcher())
            push_service = stack.enter_context(PushCatcher(directory / "push-tls"))
            hub = HubOptions(directory, args.hub_port, portal_url, certificate, catcher.url)
            hub_url = stack.enter_context(hub_process(hub))
            portal = Portal(
                portal_config(hub_url, portal_url, certificate, directory, push_service)
            )
            stack.enter_context(running_portal(portal, portal_socket))
            run(hub_url, portal, catcher, push_service, certificate)
        except (DemoFailed, RuntimeError, TimeoutError, httpx.HTTPError) as exc:
            print(f"\ndemo: FAILED: {exc}\n{_tail(directory / 'hub.log')}", file=sys.stderr)
            return 1
    print("\nDone. Everything ran on this machine and has been cleaned up.")
    return 0


def run(
    hub_url: str,
    portal: Portal,
    catcher: MailCatcher,
    push_service: PushCatcher,
    certificate: Certificate,
) -> None:
    fhir = f"{hub_url}/{DOMAIN}/fhir"
    print("== Koppeltaal Hub demo ==")
    print(f"hub     {hub_url}  (SQLite in a temporary directory)")
    portal_url = portal.config.public_url
    print(
        f"portal  {portal_url}/  (portal-demo, Subscription/{portal.subscription_id}: "
        f"{portal.config.criteria})"
    )
    print(f"mail    {catcher.url}  (a local SMTP catcher)")
    print(f"push    {push_service.origin}  (a local stand-in for the browser's push service)")

    browser = DemoBrowser()
    allow_notifications(portal_url, browser, push_service, certificate)
    print(
        f"\n1. The patient opens her inbox ({portal_url}/patients/{BSN}) and allows "
        "notifications:\n   her browser subscribes at its push service and the portal keeps "
        "the subscription"
    )
    with httpx.Client(base_url=fhir, timeout=15) as http:
        xis = {"Authorization": f"Bearer {token(http, hub_url, 'epd-demo')}"}
        patient = created(http.post("/Patient", json=registered_patient(), headers=xis))
        print(
            f"2. The XIS (epd-demo) registers the patient with BSN {BSN} and e-mail "
            f"{PATIENT_EMAIL}: Patient/{patient['id']}"
        )
        trace_id, request_id = f"demo-{uuid.uuid4().hex[:12]}", f"epd-{uuid.uuid4().hex[:12]}"
        communication = created(
            http.post(
                "/Communication",
                json=notification(),
                headers={**xis, "X-Request-Id": request_id, "X-Trace-Id": trace_id},
            )
        )
        print(
            f"3. The XIS sends a notification: POST Communication -> 201 "
            f"Communication/{communication['id']}"
        )
        print(f"   X-Request-Id: {request_id}\n   X-Trace-Id:   {trace_id}")

        [handled] = portal.wait_for_fetches(1, timeout=60)
        print_notification(handled)
        [mail] = catcher.wait_for(1, timeout=60)
        print_mail(mail)
        [outcome] = portal.wait_for_pushes(1, timeout=60)
        if outcome.result is not PushResult.DELIVERED:
            raise DemoFailed(f"the push was not delivered: {outcome}")
        [push] = push_service.wait_for(1, timeout=10)
        print_push(portal_url, push, browser, push_service)
        print_inbox(portal_url, certificate)
        auditor = {"Authorization": f"Bearer {token(http, hub_url, 'auditor-demo')}"}
        events = trace_chain(http, auditor, trace_id, handled)
        print(f"\n== The trace chain (auditor-demo: GET AuditEvent?traceId={trace_id}) ==")
        for line in render_chain(events):
            print(line)


# -- the hub and the portal ------------------------------------------------------------


@dataclass(frozen=True)
class HubOptions:
    """What the demo's hub is started with."""

    directory: Path  # its database, keys, apps file and log
    port: int  # 0: a free one
    portal_url: str  # https://127.0.0.1:<port> of the demo portal
    certificate: Certificate  # the portal's, whose CA the hub trusts
    smtp_url: str


def demo_apps_file(directory: Path, portal_url: str) -> Path:
    """examples/apps.yaml with the portal's address as every app's registered endpoint.

    The hub compares scheme, host and port of a webhook with the registered prefixes,
    so a portal on another port than the shipped file's needs its own copy.
    """
    apps = yaml.safe_load((EXAMPLES / "apps.yaml").read_text(encoding="utf-8"))
    host_and_port = portal_url.removeprefix("https://")
    _, _, port = host_and_port.partition(":")
    for domain in apps["domains"]:
        for app in domain["apps"]:
            if "endpoints" in app:
                app["endpoints"] = [f"https://127.0.0.1:{port}/", f"https://localhost:{port}/"]
    path = directory / "apps.yaml"
    path.write_text(yaml.safe_dump(apps, sort_keys=False), encoding="utf-8")
    return path


@contextmanager
def hub_process(options: HubOptions) -> Iterator[str]:
    """`hub serve` on a loopback port, configured the way an operator would."""
    port = options.port
    if port == 0:
        with socket.socket() as probe:  # a free port; the hub binds it a moment later
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    directory = options.directory
    environment = {
        **os.environ,
        "HUB_DATABASE_URL": f"sqlite+aiosqlite:///{directory / 'hub.db'}",
        "HUB_PUBLIC_URL": url,
        "HUB_APPS": str(demo_apps_file(directory, options.portal_url)),
        "HUB_AUTHZ_MATRIX": str(REPOSITORY / "authz_matrix.yaml"),
        "HUB_KEYS_DIR": str(directory / "keys"),
        "HUB_CA_BUNDLE": str(options.certificate.ca_bundle),
        "HUB_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
        "HUB_SMTP_URL": options.smtp_url,
        "HUB_PORTAL_URL": f"{options.portal_url}/",
        "HUB_REGISTRATION_URL": f"{options.portal_url}/register",
    }
    serve = f"serve --host 127.0.0.1 --port {port} --log-level warning"
    command = [sys.executable, "-m", "hub.cli", *serve.split()]
    with (directory / "hub.log").open("wb") as log:
        # A fixed command: this interpreter running the hub, nothing from outside.
        process = subprocess.Popen(  # noqa: S603
            command, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            _wait_until_ready(url, process)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoFailed(f"the hub exited with status {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.1)
    raise DemoFailed("the hub did not become ready within 60 s")


def portal_config(
    hub_url: str,
    portal_url: str,
    certificate: Certificate,
    directory: Path,
    push_service: PushCatcher,
) -> PortalConfig:
    return PortalConfig(
        fhir_base=f"{hub_url}/{DOMAIN}/fhir",
        client_id="portal-demo",
        private_key=(KEYS / "portal-demo.pem").read_bytes(),
        kid="portal-demo-1",
        public_url=portal_url,
        certfile=certificate.certfile,
        keyfile=certificate.keyfile,
        push=PushConfig(
            state_dir=directory / "portal-state",  # its VAPID key is made here
            subject="mailto:portal-demo@example.com",
            push_hosts=("127.0.0.1",),  # the stand-in
            ca_bundle=push_service.ca_bundle,
        ),
    )


def allow_notifications(
    portal_url: str, browser: DemoBrowser, push_service: PushCatcher, certificate: Certificate
) -> None:
    """What the inbox page's script does once the patient allowed notifications."""
    trust = ssl.create_default_context(cafile=str(certificate.ca_bundle))
    with httpx.Client(base_url=portal_url, verify=trust, timeout=15) as page:
        # The page subscribes with the portal's VAPID public key (applicationServerKey).
        page.get("/push/public-key").raise_for_status()
        subscription = browser.subscription(push_service.endpoint())
        stored = page.post(f"/patients/{BSN}/push-subscriptions", json=subscription)
    if stored.status_code != 201:
        raise DemoFailed(f"the portal did not keep the subscription: {stored.text}")


def token(http: httpx.Client, hub_url: str, client_id: str) -> str:
    """An access token for a demo app, with its (published, demo-only) private key."""
    token_url = f"{hub_url}/{DOMAIN}/oauth2/token"
    assertion = make_client_assertion(
        (KEYS / f"{client_id}.pem").read_bytes(),
        client_id=client_id,
        token_url=token_url,
        kid=f"{client_id}-1",
    )
    response = http.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )
    if response.status_code != 200:
        raise DemoFailed(f"no token for {client_id}: {response.text}")
    return str(response.json()["access_token"])


def created(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 201:
        raise DemoFailed(f"{response.request.url} answered {response.status_code}: {response.text}")
    body: dict[str, Any] = response.json()
    return body


def registered_patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": BSN_SYSTEM, "value": BSN}],
        "name": [{"family": "Janssen", "given": ["Jan"]}],
        "telecom": [{"system": "email", "value": PATIENT_EMAIL}],
    }


def notification() -> dict[str, Any]:
    """A notification as the Spreekuur.nl contract describes it."""
    return {
        "resourceType": "Communication",
        "status": "completed",
        "category": [
            {"coding": [{"system": "nl.spreekuur.communication-category", "code": "melding"}]}
        ],
        "topic": {"text": "Lab results available"},
        "payload": [
            {"contentString": "Your lab results are available. Everything looks fine."},
            {
                "contentAttachment": {
                    "contentType": "application/pdf",
                    "data": base64.b64encode(LAB_REPORT).decode("ascii"),
                    "title": "lab-results.pdf",
                }
            },
        ],
        "recipient": [{"reference": "#patient"}],
        "contained": [
            {
                "resourceType": "Patient",
                "id": "patient",
                "identifier": [{"system": BSN_SYSTEM, "value": BSN}],
            }
        ],
    }


# -- what happened ---------------------------------------------------------------------


def print_notification(handled: Notification) -> None:
    print("\n== The webhook notification the portal got ==")
    print("POST /koppeltaal/notify")
    for name, value in handled.headers:
        print(f"  {name}: {value}")
    if handled.error is not None:
        raise DemoFailed(f"the portal could not fetch what is new: {handled.error}")
    print(
        f"The portal answered 204 at once, then searched with X-Correlation-Id "
        f"{handled.request_id} and X-Trace-Id {handled.trace_id}; new: "
        f"{', '.join(handled.fetched) or 'nothing'}"
    )


def print_mail(mail: CaughtMail) -> None:
    print("\n== The e-mail the catcher got ==")
    message = mail.message
    for name in ("From", "To", "Subject"):
        print(f"{name}: {message[name]}")
    print()
    print("\n".join(f"  {line}" for line in mail.text.strip().splitlines()))


def print_push(
    portal_url: str, push: CaughtPush, browser: DemoBrowser, push_service: PushCatcher
) -> None:
    print("\n== The push the portal sent the patient's browser ==")
    print(f"POST {push_service.origin}{push.path}  (the push service stand-in answered 201)")
    for name in ("TTL", "Urgency", "Topic", "Content-Encoding"):
        print(f"  {name}: {push.header(name)}")
    token = VapidToken.read(push.header("Authorization") or "")
    print(
        f"  Authorization: vapid t=<JWT signed with the portal's VAPID key: "
        f"aud {token.claims['aud']}, sub {token.claims['sub']}>, k={token.public_key[:16]}…"
    )
    print(f"  body: {len(push.body)} bytes, encrypted to the browser's key (RFC 8291)")
    message = browser.open(push)
    print("The browser decrypts it; the portal's service worker shows:")
    print(f"  {message['title']}\n  {message['body']}")
    print(f"  (a click opens {portal_url}{message['url']})")


def print_inbox(portal_url: str, certificate: Certificate) -> None:
    trust = ssl.create_default_context(cafile=str(certificate.ca_bundle))
    url = f"{portal_url}/patients/{BSN}"
    response = httpx.get(url, verify=trust, timeout=15)
    if response.status_code != 200:
        raise DemoFailed(f"the inbox page answered {response.status_code}")
    subject = notification()["topic"]["text"]
    if subject not in response.text:
        raise DemoFailed("the inbox page does not show the notification")
    print(f"\n== The patient's inbox: {url} ==")
    print(
        f"{response.text.count('<article>')} message(s): {subject!r}, with "
        f"{response.text.count(' download>')} attachment(s) to download"
    )


def trace_chain(
    http: httpx.Client, auditor: dict[str, str], trace_id: str, handled: Notification
) -> list[dict[str, Any]]:
    """The trace's AuditEvents, once the create, both transmits, the receipt and the fetch
    are in."""
    deadline = time.monotonic() + 60
    while True:
        response = http.get(
            "/AuditEvent", params={"traceId": trace_id, "_count": "100"}, headers=auditor
        )
        response.raise_for_status()
        events = [entry["resource"] for entry in response.json().get("entry", [])]
        transmits = [e for e in events if e["type"]["code"] == "transmit"]
        received = [e for e in events if e["type"]["code"] == "receive"]
        fetched = [e for e in events if _extension(e, "correlation-id") == handled.request_id]
        if len(transmits) >= 2 and received and fetched:
            return sorted(events, key=lambda event: str(event["recorded"]))
        if time.monotonic() > deadline:
            raise DemoFailed(f"the trace chain is incomplete: {len(events)} AuditEvents")
        time.sleep(0.2)


def render_chain(events: list[dict[str, Any]]) -> list[str]:
    """Each event under the one whose X-Request-Id is its X-Correlation-Id.

    A receiver's `receive` event carries the X-Request-Id of the notification it records,
    the same as the hub's `transmit`: it is shown first under that transmit.
    """
    receipts: dict[str | None, list[dict[str, Any]]] = {}
    for event in events:
        if event["type"]["code"] == "receive":
            receipts.setdefault(_extension(event, "request-id"), []).append(event)
    others = [event for event in events if event["type"]["code"] != "receive"]
    by_request = {_extension(event, "request-id"): event for event in others}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for request_id, received in receipts.items():  # a receipt whose transmit is not here
        if request_id not in by_request:
            children.setdefault(None, []).extend(received)
    for event in others:
        parent = _extension(event, "correlation-id")
        children.setdefault(parent if parent in by_request else None, []).append(event)
    lines: list[str] = []

    def walk(event: dict[str, Any], depth: int) -> None:
        prefix = "  " + "   " * (depth - 1) + "└─ " if depth else "  "
        lines.append(f"{prefix}{_describe(event)}")
        if event["type"]["code"] == "receive":
            return  # its X-Request-Id is the transmit's: the children are the transmit's
        request_id = _extension(event, "request-id")
        for child in [*receipts.get(request_id, ()), *children.get(request_id, ())]:
            walk(child, depth + 1)

    for root in children.get(None, []):
        walk(root, 0)
    return lines


def _describe(event: dict[str, Any]) -> str:
    request_id = _extension(event, "request-id")
    outcome = "ok" if event.get("outcome") == "0" else f"outcome {event.get('outcome')}"
    if event["type"]["code"] == "transmit":
        address = event["agent"][1]["network"]["address"]
        kind = "e-mail" if address.startswith("mailto:") else "webhook"
        return f"transmit {kind} to {address}  [{outcome}]  X-Request-Id {request_id}"
    if event["type"]["code"] == "receive":
        who = event["agent"][0].get("who", {}).get("reference", "?")
        return f"receive, recorded by {who}  [{outcome}]  AuditEvent/{event['id']}"
    interaction = event.get("subtype", [{}])[0].get("code", "?")
    who = event["agent"][0].get("who", {}).get("reference", "?")
    entity = (event.get("entity") or [{}])[0]
    if "query" in entity:
        what = "?" + unquote(base64.b64decode(entity["query"]).decode("utf-8", "replace"))
    else:
        what = entity.get("what", {}).get("reference", "")
    facts = "".join(f"  ({d['type']}: {d['valueString']})" for d in entity.get("detail", ()))
    return f"{interaction} {what} by {who}  [{outcome}]  X-Request-Id {request_id}{facts}"


def _extension(event: dict[str, Any], name: str) -> str | None:
    for extension in event.get("extension", ()):
        if extension["url"] == f"{KT}/{name}":
            return str(extension["valueId"])
    return None


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return "hub log (last lines):\n" + "\n".join(text)


if __name__ == "__main__":
    sys.exit(main())
