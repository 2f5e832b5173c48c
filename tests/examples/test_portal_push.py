"""The portal's push notifications, for real: a hub, the portal, a push service, a browser.

The XIS sends a melding; the hub notifies the portal; the portal fetches it and pushes
"you have a new message" to each device its patient subscribed. A local HTTPS push
service (tests/support/push_service.py) checks each push as a push service would (the
VAPID token) and opens it as the browser would (RFC 8291, with the subscription's
private key), so the tests see exactly what reached the device.

The browser test drives the inbox page in headless Chromium up to the stored
subscription, then hands the service worker a push through DevTools. What it cannot
exercise, and why: Chromium's `PushManager.subscribe` must reach its vendor's push
service (FCM), which is not reachable here (and not at all from a Playwright context,
which is off the record), so the test replaces that one call with a subscription whose
keys it made; and `clients.openWindow` needs a real click on a real notification, so
the click test covers the path where a tab of the portal is already open.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import ssl
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from playwright.async_api import Page

from examples.portal.app import Portal, PortalConfig
from examples.portal.push import (
    NEW_MESSAGE_BODY,
    NEW_MESSAGE_TITLE,
    PushConfig,
    PushOutcome,
    PushResult,
    PushSender,
    load_or_create_vapid_key,
    new_message,
)
from examples.portal.push_store import (
    KNOWN_PUSH_SERVICES,
    InvalidSubscription,
    PushSubscription,
    SubscriptionStore,
    parse_subscription,
)
from examples.portal.server import Certificate, listening_socket, local_certificate, running_portal
from tests.support.browser import headless_browser
from tests.support.https_receiver import LocalCA
from tests.support.hub import AppKeys, HubServer, hub_settings, running_hub, write_apps_file
from tests.support.notifications import NEW_MESSAGE_SUBJECT, notification
from tests.support.push_service import PushServiceStandIn, Reply, Subscriber, b64url
from tests.support.waiting import eventually

# Each test its own patients (all pass the eleven-test), so the shared portal's pushes
# for one test never count for another.
BSN = "123456782"
OTHER_BSN = "111222333"
GONE_BSNS = {404: "100000009", 410: "100000010"}
RETRIED_BSN = "100000022"
GIVEN_UP_BSN = "100000034"
REFUSED_BSN = "100000046"
BROWSER_BSN = "100000058"
SUBJECT = "mailto:portal-operator@example.com"
ATTEMPTS = 3


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return local_certificate(tmp_path_factory.mktemp("portal-tls"), "127.0.0.1", "localhost")


@pytest.fixture(scope="module")
def hub(
    tmp_path_factory: pytest.TempPathFactory,
    module_database_url: str,
    app_keys: dict[str, AppKeys],
    certificate: Certificate,
) -> Iterator[HubServer]:
    """One hub per module and backend, trusting the portal's local CA."""
    directory = tmp_path_factory.mktemp("push-hub")
    apps_file = write_apps_file(directory / "apps.yaml", app_keys)
    settings = hub_settings(
        directory, module_database_url, apps_file, ca_bundle=certificate.ca_bundle
    )
    with running_hub(settings, app_keys) as server:
        yield server


@pytest.fixture(scope="module")
def push_service(local_ca: LocalCA) -> Iterator[PushServiceStandIn]:
    with PushServiceStandIn(local_ca) as service:
        yield service


@pytest.fixture(scope="module")
def push_config(
    tmp_path_factory: pytest.TempPathFactory, local_ca: LocalCA, module_database_url: str
) -> PushConfig:
    """The portal's push settings: a state directory per backend's run of the module."""
    return PushConfig(
        state_dir=tmp_path_factory.mktemp("portal-state"),
        subject=SUBJECT,
        push_hosts=("127.0.0.1",),  # the stand-in; real push services are not reachable
        ca_bundle=local_ca.bundle,
        attempts=ATTEMPTS,
        backoff=0.05,
    )


@pytest.fixture(scope="module")
def portal(
    hub: HubServer,
    certificate: Certificate,
    push_config: PushConfig,
    push_service: PushServiceStandIn,
) -> Iterator[Portal]:
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    keys = hub.keys["portal"]
    config = PortalConfig(
        fhir_base=hub.fhir(),
        client_id="portal",
        private_key=keys.private_pem,
        kid=keys.kid,
        public_url=f"https://127.0.0.1:{port}",
        certfile=certificate.certfile,
        keyfile=certificate.keyfile,
        push=push_config,
    )
    with running_portal(Portal(config), sock) as running:
        yield running


def patient_browser(portal: Portal, certificate: Certificate) -> httpx.AsyncClient:
    """An HTTP client on the portal's pages, as the patient's browser (without scripts)."""
    assert certificate.ca_bundle is not None
    trust = ssl.create_default_context(cafile=str(certificate.ca_bundle))
    return httpx.AsyncClient(base_url=portal.config.public_url, verify=trust, timeout=15)


async def subscribe(
    portal: Portal, certificate: Certificate, bsn: str, subscription: dict[str, Any]
) -> httpx.Response:
    async with patient_browser(portal, certificate) as page:
        return await page.post(f"/patients/{bsn}/push-subscriptions", json=subscription)


async def send_melding(hub: HubServer, bsn: str) -> dict[str, Any]:
    sent = notification(bsn=bsn)
    async with hub.client("xis") as xis:
        created = await xis.post("/Communication", json=sent)
    assert created.status_code == 201, created.text
    return sent


async def pushes_of(portal: Portal, bsn: str, count: int) -> list[PushOutcome]:
    """The finished pushes to `bsn`'s devices, once there are `count`."""
    deadline = time.monotonic() + 30
    while True:
        done = [outcome for outcome in portal.pushes if outcome.bsn == bsn]
        if len(done) >= count:
            return done
        assert time.monotonic() < deadline, f"{len(done)} of {count} pushes to {bsn} done"
        await asyncio.sleep(0.05)


def stored(config: PushConfig, bsn: str) -> list[str]:
    """The endpoints kept for `bsn`, read from the file by a store of its own."""
    return [s.endpoint for s in SubscriptionStore(config.subscriptions_file).of_patient(bsn)]


# -- the push -------------------------------------------------------------------------


async def test_a_new_melding_is_pushed_to_each_device_of_its_patient_without_its_content(
    hub: HubServer,
    portal: Portal,
    certificate: Certificate,
    push_service: PushServiceStandIn,
    push_config: PushConfig,
) -> None:
    phone, laptop, someone_else = Subscriber(), Subscriber(), Subscriber()
    endpoints = [push_service.endpoint() for _ in range(3)]
    for bsn, device, endpoint in [
        (BSN, phone, endpoints[0]),
        (BSN, laptop, endpoints[1]),
        (OTHER_BSN, someone_else, endpoints[2]),
    ]:
        response = await subscribe(portal, certificate, bsn, device.subscription(endpoint))
        assert response.status_code == 201, response.text
    async with patient_browser(portal, certificate) as page:
        public_key = (await page.get("/push/public-key")).json()["publicKey"]

    sent = await send_melding(hub, BSN)
    outcomes = await pushes_of(portal, BSN, 2)

    assert {(o.endpoint, o.result, o.attempts, o.status) for o in outcomes} == {
        (endpoints[0], PushResult.DELIVERED, 1, 201),
        (endpoints[1], PushResult.DELIVERED, 1, 201),
    }, [o.error for o in outcomes]
    for device, endpoint in [(phone, endpoints[0]), (laptop, endpoints[1])]:
        [request] = push_service.requests_to(endpoint)
        push = push_service.open(request, device)
        # Signed by the portal's key (the one the page subscribed with), for this service.
        assert push.vapid.public_key == public_key
        assert push.vapid.aud == push_service.origin
        assert push.vapid.sub == SUBJECT
        assert request.header("Urgency") == "normal"
        assert request.header("Topic") == "new-message"
        assert request.header("TTL") == str(24 * 3600)
        # What the e-mail says, and where to read it: nothing of the message itself.
        assert push.message == {
            "title": NEW_MESSAGE_SUBJECT,
            "body": NEW_MESSAGE_BODY,
            "url": f"/patients/{BSN}",
        }
        text = push.plaintext.decode("utf-8")
        assert sent["topic"]["text"] not in text
        assert sent["payload"][0]["contentString"] not in text
        assert sent["payload"][1]["contentAttachment"]["title"] not in text
        # The push service sees only ciphertext.
        assert b"nieuw bericht" not in request.body.lower()
    assert push_service.requests_to(endpoints[2]) == []  # another patient's device
    assert NEW_MESSAGE_TITLE == NEW_MESSAGE_SUBJECT  # the same words as the hub's e-mail

    # Kept on disk: a portal starting again finds the subscriptions and the same key.
    assert sorted(stored(push_config, BSN)) == sorted(endpoints[:2])
    assert PushSender.open(push_config).public_key == public_key


@pytest.mark.parametrize("status", sorted(GONE_BSNS))
async def test_a_subscription_the_push_service_calls_gone_is_removed(
    status: int,
    hub: HubServer,
    portal: Portal,
    certificate: Certificate,
    push_service: PushServiceStandIn,
    push_config: PushConfig,
) -> None:
    bsn, device, endpoint = GONE_BSNS[status], Subscriber(), push_service.endpoint()
    response = await subscribe(portal, certificate, bsn, device.subscription(endpoint))
    assert response.status_code == 201, response.text
    assert stored(push_config, bsn) == [endpoint]

    push_service.queue(Reply(status))
    await send_melding(hub, bsn)
    [outcome] = await pushes_of(portal, bsn, 1)

    assert (outcome.result, outcome.attempts, outcome.status) == (PushResult.REMOVED, 1, status)
    [request] = push_service.requests_to(endpoint)  # not retried
    assert push_service.open(request, device).message["url"] == f"/patients/{bsn}"
    assert stored(push_config, bsn) == []


async def test_other_failures_are_retried_with_backoff_a_bounded_number_of_times(
    hub: HubServer,
    portal: Portal,
    certificate: Certificate,
    push_service: PushServiceStandIn,
    push_config: PushConfig,
) -> None:
    device = Subscriber()
    retried, given_up = push_service.endpoint(), push_service.endpoint()
    for bsn, endpoint in [(RETRIED_BSN, retried), (GIVEN_UP_BSN, given_up)]:
        response = await subscribe(portal, certificate, bsn, device.subscription(endpoint))
        assert response.status_code == 201, response.text

    push_service.queue(Reply(503), Reply(500))  # then 201
    await send_melding(hub, RETRIED_BSN)
    [delivered] = await pushes_of(portal, RETRIED_BSN, 1)
    push_service.queue(*[Reply(503, headers=[("Retry-After", "0")])] * ATTEMPTS)
    await send_melding(hub, GIVEN_UP_BSN)
    [failed] = await pushes_of(portal, GIVEN_UP_BSN, 1)

    assert (delivered.result, delivered.attempts, delivered.status) == (
        PushResult.DELIVERED,
        3,
        201,
    )
    attempts = push_service.requests_to(retried)
    assert len(attempts) == 3
    # Each attempt is a new, complete push: same message, freshly encrypted.
    opened = [push_service.open(request, device) for request in attempts]
    assert {push.plaintext for push in opened} == {opened[0].plaintext}
    assert len({request.body for request in attempts}) == 3
    assert (failed.result, failed.attempts, failed.status) == (PushResult.FAILED, ATTEMPTS, 503)
    assert len(push_service.requests_to(given_up)) == ATTEMPTS
    # A failure that is not "gone" keeps the subscription.
    assert stored(push_config, RETRIED_BSN) == [retried]
    assert stored(push_config, GIVEN_UP_BSN) == [given_up]


async def test_the_backoff_grows_and_honours_retry_after(
    tmp_path: Path, local_ca: LocalCA, push_service: PushServiceStandIn
) -> None:
    config = PushConfig(
        state_dir=tmp_path,
        subject=SUBJECT,
        push_hosts=("127.0.0.1",),
        ca_bundle=local_ca.bundle,
        attempts=3,
        backoff=0.2,
    )
    sender = PushSender.open(config)
    device, endpoint = Subscriber(), push_service.endpoint()
    subscription = PushSubscription(endpoint, device.p256dh, b64url(device.auth_secret))

    push_service.queue(Reply(500), Reply(500))
    started = time.monotonic()
    outcome = await sender.deliver(BSN, subscription, new_message(BSN))
    backed_off = time.monotonic() - started
    push_service.queue(Reply(429, headers=[("Retry-After", "1")]))
    started = time.monotonic()
    told = await sender.deliver(BSN, subscription, new_message(BSN))
    waited = time.monotonic() - started

    assert (outcome.result, outcome.attempts) == (PushResult.DELIVERED, 3)
    assert backed_off >= 0.2 + 0.4  # 0.2 s, then twice that
    assert (told.result, told.attempts) == (PushResult.DELIVERED, 2)
    assert waited >= 1.0  # Retry-After: 1 outweighs the 0.2 s backoff


# -- the subscription -----------------------------------------------------------------


def _valid() -> dict[str, Any]:
    return Subscriber().subscription("https://127.0.0.1:9/push/abc")


def _with(**changes: Any) -> dict[str, Any]:
    subscription = _valid()
    for key, value in changes.items():
        if key in ("p256dh", "auth"):
            subscription["keys"][key] = value
        else:
            subscription[key] = value
    return subscription


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([1, 2], "the body must be a JSON object"),
        (_with(endpoint=None), "endpoint: a string is required"),
        (_with(endpoint="http://127.0.0.1:9/push"), "endpoint: an https URL"),
        (_with(endpoint="https://u:p@127.0.0.1/x"), "without user information"),
        (_with(endpoint="https://10.0.0.7/push"), "10.0.0.7 is not a known push service"),
        (_with(endpoint="https://evil-127.0.0.1/push"), "is not a known push service"),
        (_with(endpoint="https://127.0.0.1:x/push"), "endpoint: not a URL"),
        (_with(endpoint="https://127.0.0.1/p#x"), "no whitespace or fragment"),
        (_with(endpoint="https://127.0.0.1/" + "p" * 2048), "longer than 2048"),
        (_with(keys=None), "keys: an object with p256dh and auth"),
        (_with(p256dh="!!"), "keys.p256dh: not base64url"),
        (_with(p256dh=b64url(b"\x04" + bytes(64))), "not an uncompressed P-256 public key"),
        (_with(auth=b64url(bytes(8))), "keys.auth: the auth secret has 16 bytes"),
        (_with(auth=3), "keys.auth: a base64url string is required"),
    ],
)
def test_a_subscription_is_checked_before_it_is_kept(body: Any, problem: str) -> None:
    with pytest.raises(InvalidSubscription, match=re.escape(problem)):
        parse_subscription(body, push_hosts=("127.0.0.1",))


def test_known_push_services_and_their_subdomains_are_accepted_by_default() -> None:
    subscriber = Subscriber()
    for endpoint in [
        "https://fcm.googleapis.com/fcm/send/abc",
        "https://web.push.apple.com/QGx",
        "https://wns2-am3p.notify.windows.com/w/?token=x",
        "https://updates.push.services.mozilla.com/wpush/v2/gAAA",
    ]:
        parsed = parse_subscription(
            subscriber.subscription(endpoint), push_hosts=KNOWN_PUSH_SERVICES
        )
        assert parsed.info() == {
            "endpoint": endpoint,
            "keys": {"p256dh": subscriber.p256dh, "auth": b64url(subscriber.auth_secret)},
        }
    with pytest.raises(InvalidSubscription, match="not a known push service"):
        parse_subscription(
            subscriber.subscription("https://127.0.0.1/x"), push_hosts=KNOWN_PUSH_SERVICES
        )


async def test_the_portal_refuses_what_is_not_a_subscription_and_keeps_nothing(
    portal: Portal, certificate: Certificate, push_config: PushConfig
) -> None:
    path = f"/patients/{REFUSED_BSN}/push-subscriptions"
    async with patient_browser(portal, certificate) as page:
        not_json = await page.post(
            path, content=b"{not json", headers={"Content-Type": "application/json"}
        )
        not_one = await page.post(path, json=_with(auth=b64url(bytes(8))))
        no_patient = await page.post("/patients/123456789/push-subscriptions", json=_valid())
        as_form = await page.post(path, data={"endpoint": "https://x"})
        huge = await page.post(path, json={**_valid(), "x": "y" * 9000})

    assert (not_json.status_code, not_json.json()) == (400, {"detail": "The body is not JSON."})
    assert (not_one.status_code, not_one.json()["detail"]) == (
        400,
        "Not a push subscription: keys.auth: the auth secret has 16 bytes.",
    )
    assert (no_patient.status_code, as_form.status_code, huge.status_code) == (404, 415, 413)
    assert stored(push_config, REFUSED_BSN) == []


def test_the_vapid_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "vapid-private-key.pem"
    made = load_or_create_vapid_key(path)
    again = load_or_create_vapid_key(path)

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert made.public_pem() == again.public_pem()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_a_subject_push_services_would_refuse_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="VAPID subject"):
        PushSender.open(PushConfig(state_dir=tmp_path, subject="portal operator"))


# -- the page and the service worker in a real browser --------------------------------


def spki_pin(certfile: Path) -> str:
    """The certificate's key as Chromium's --ignore-certificate-errors-spki-list wants it.

    A service worker may only be registered from a page whose certificate the browser
    trusts (ignoring errors is not enough); pinning the portal's test certificate makes
    exactly that one trusted.
    """
    leaf = x509.load_pem_x509_certificate(certfile.read_bytes())
    spki = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return base64.b64encode(digest.finalize()).decode("ascii")


# Replaces only PushManager.subscribe (see the module's docstring): it hands the page a
# subscription whose private key the test holds, and notes what the page asked for.
_SUBSCRIBE_STAND_IN = """
(() => {
  const subscription = %s;
  PushManager.prototype.subscribe = async function (options) {
    const key = new Uint8Array(options.applicationServerKey);
    document.documentElement.dataset.subscribedWith = JSON.stringify({
      userVisibleOnly: options.userVisibleOnly,
      key: btoa(String.fromCharCode(...key)).replace(/[+]/g, "-").replace(/[/]/g, "_")
        .replace(/=+$/, ""),
    });
    return { endpoint: subscription.endpoint, options, toJSON: () => subscription };
  };
})();
"""


async def test_the_inbox_page_subscribes_and_the_service_worker_shows_the_push(
    hub: HubServer,
    portal: Portal,
    certificate: Certificate,
    push_service: PushServiceStandIn,
    push_config: PushConfig,
) -> None:
    origin = portal.config.public_url
    inbox = f"{origin}/patients/{BROWSER_BSN}"
    device, endpoint = Subscriber(), push_service.endpoint()
    async with patient_browser(portal, certificate) as page:
        public_key = (await page.get("/push/public-key")).json()["publicKey"]
        html = await page.get(f"/patients/{BROWSER_BSN}")
        worker_script = await page.get("/sw.js")

    async with headless_browser(
        f"--ignore-certificate-errors-spki-list={spki_pin(certificate.certfile)}"
    ) as browser:
        context = await browser.new_context()
        await context.grant_permissions(["notifications"], origin=origin)
        await context.add_init_script(
            _SUBSCRIBE_STAND_IN % json.dumps(device.subscription(endpoint))
        )
        tab = await context.new_page()
        await tab.goto(inbox)
        await tab.click("#push-opt-in")
        await tab.wait_for_selector("#push-opt-in[data-state]", timeout=15_000)
        state = await tab.get_attribute("#push-opt-in", "data-state")
        status = await tab.text_content("#push-status")
        asked = json.loads(await tab.get_attribute("html", "data-subscribed-with") or "{}")
        worker = await tab.evaluate(
            "navigator.serviceWorker.getRegistration().then("
            "r => r && r.active && [r.active.scriptURL, r.scope])"
        )
        controlled = await tab.evaluate("navigator.serviceWorker.controller !== null")
        kept = stored(push_config, BROWSER_BSN)

        # The whole way from the XIS to the device, but for the push service's last hop:
        await send_melding(hub, BROWSER_BSN)
        await pushes_of(portal, BROWSER_BSN, 1)
        [request] = push_service.requests_to(endpoint)
        plaintext = push_service.open(request, device).plaintext
        # ... which DevTools makes, as the browser would, with the decrypted message.
        devtools = await context.new_cdp_session(tab)
        registrations: list[str] = []
        devtools.on(
            "ServiceWorker.workerRegistrationUpdated",
            lambda event: registrations.extend(
                r["registrationId"]
                for r in event["registrations"]
                if r["scopeURL"] == f"{origin}/" and not r["isDeleted"]
            ),
        )
        await devtools.send("ServiceWorker.enable")
        [registration] = await eventually(_now(registrations), what="the registration")
        showing = _notifications(tab)

        async def delivered() -> list[list[Any]]:
            # A push that reaches the worker while it is still starting can be lost, as
            # a push service would retry, so may the test: the tag keeps one on screen.
            await devtools.send(
                "ServiceWorker.deliverPushMessage",
                {
                    "origin": f"{origin}/",
                    "registrationId": registration,
                    "data": plaintext.decode(),
                },
            )
            await asyncio.sleep(0.5)
            return await showing()

        shown = await eventually(delivered, what="the notification")

        # A click on it shows the inbox in the portal's open tab.
        await tab.goto(f"{origin}/")
        [service_worker] = context.service_workers
        await service_worker.evaluate(
            "self.registration.getNotifications().then(([shown]) => self.dispatchEvent("
            "new NotificationEvent('notificationclick', {notification: shown})))"
        )
        await tab.wait_for_url(inbox, timeout=10_000)
        await context.close()

    assert html.headers["content-security-policy"].startswith(
        "default-src 'none'; script-src 'self';"
    )
    assert "unsafe-inline" not in html.headers["content-security-policy"].split("style-src")[0]
    assert worker_script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert state == "subscribed", status
    assert status is not None and status.startswith("Done")
    assert asked == {"userVisibleOnly": True, "key": public_key}
    assert worker == [f"{origin}/sw.js", f"{origin}/"]
    assert controlled
    assert kept == [endpoint]
    assert shown == [[NEW_MESSAGE_TITLE, NEW_MESSAGE_BODY, "new-message", {"url": inbox}]]


def _now(found: list[str]) -> Callable[[], Awaitable[list[str]]]:
    async def probe() -> list[str]:
        return list(found)

    return probe


def _notifications(tab: Page) -> Callable[[], Awaitable[list[list[Any]]]]:
    """The service worker's shown notifications (showing one is asynchronous)."""

    async def probe() -> list[list[Any]]:
        shown: list[list[Any]] = await tab.evaluate(
            "navigator.serviceWorker.ready.then(r => r.getNotifications()).then("
            "shown => shown.map(n => [n.title, n.body, n.tag, n.data]))"
        )
        return shown

    return probe
