"""The demo patient portal, driven for real: a running hub, the portal on HTTPS, a browser.

The XIS sends a notification; the hub notifies the portal over verified TLS; the
portal fetches what is new under the notification's trace, and shows the patient the
message (escaped) with its attachment to download under a safe name.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.portal.app import Portal, PortalConfig
from examples.portal.hub_client import HubClient
from examples.portal.server import (
    Certificate,
    listening_socket,
    local_certificate,
    running_portal,
)
from examples.portal.web import content_disposition, safe_filename
from tests.rules.samples import PDF_BYTES
from tests.support.hub import AppKeys, HubServer, hub_settings, running_hub, write_apps_file
from tests.support.notifications import audit_events, notification

BSN = "123456782"
HOSTILE_TOPIC = "Uitslag <img src=x onerror=alert(1)>"
# Markup the hub lets through (its rules refuse paths, control characters and executable
# types: `test_download_names_are_safe` shows the portal copes with those too).
HOSTILE_TITLE = "Uitslag <script>.pdf"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return local_certificate(tmp_path_factory.mktemp("portal-tls"), "127.0.0.1", "localhost")


@pytest.fixture
def hub(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], certificate: Certificate
) -> Iterator[HubServer]:
    """A hub that trusts the portal's local CA."""
    apps_file = write_apps_file(tmp_path / "apps.yaml", app_keys)
    settings = hub_settings(tmp_path, database_url, apps_file, ca_bundle=certificate.ca_bundle)
    with running_hub(settings, app_keys) as server:
        yield server


def portal_config(hub: HubServer, certificate: Certificate, port: int) -> PortalConfig:
    keys = hub.keys["portal"]
    return PortalConfig(
        fhir_base=hub.fhir(),
        client_id="portal",
        private_key=keys.private_pem,
        kid=keys.kid,
        public_url=f"https://127.0.0.1:{port}",
        certfile=certificate.certfile,
        keyfile=certificate.keyfile,
    )


def browser(certificate: Certificate, port: int) -> httpx.AsyncClient:
    assert certificate.ca_bundle is not None
    trust = ssl.create_default_context(cafile=str(certificate.ca_bundle))
    return httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=trust)


async def test_a_notification_reaches_the_patients_inbox(
    hub: HubServer, certificate: Certificate
) -> None:
    sent = notification(bsn=BSN)
    sent["topic"]["text"] = HOSTILE_TOPIC
    sent["payload"][1]["contentAttachment"]["title"] = HOSTILE_TITLE
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    portal = Portal(portal_config(hub, certificate, port))
    with running_portal(portal, sock):
        async with hub.client("xis") as xis:
            created = await xis.post(
                "/Communication",
                json=sent,
                headers={"X-Request-Id": "xis-write-1", "X-Trace-Id": "trace-portal-1"},
            )
        assert created.status_code == 201, created.text
        id = created.json()["id"]
        [handled] = await asyncio.to_thread(portal.wait_for_fetches, 1)

        async with browser(certificate, port) as patient:
            inbox = await patient.get(f"/patients/{BSN}")
            link = f"/patients/{BSN}/messages/{id}/attachments/1"
            download = await patient.get(link)
            elsewhere = await patient.get(f"/patients/111222333/messages/{id}/attachments/1")
            dotted = await patient.get(f"/patients/{BSN}/messages/%2E%2E/attachments/1")
            empty = await patient.get("/patients/111222333")
            found = await patient.get("/inbox", params={"bsn": BSN})
            invalid = await patient.get("/inbox", params={"bsn": "123456789"})
            impostor = await patient.post(
                "/koppeltaal/notify", headers={"Authorization": "Bearer guessed"}
            )
        [transmit] = await audit_events(hub, type="transmit", correlationId="xis-write-1")
        [receive] = await audit_events(hub, type="receive", traceId="trace-portal-1")
        follow_ups = await audit_events(hub, correlationId=handled.request_id or "-")

    # The notification, and the fetch that followed from it under the same trace.
    assert handled.error is None
    assert handled.correlation_id == "xis-write-1"
    assert handled.trace_id == "trace-portal-1"
    assert handled.fetched == [f"Communication/{id}/_history/1"]
    assert ("content-length", "0") in handled.headers
    assert handled.request_id == _extension(transmit, "request-id")
    # The portal recorded the notification's receipt: its ids, the portal alone as agent.
    assert receive["id"] == handled.receive_event
    assert receive["type"]["code"] == "receive"
    assert _extension(receive, "request-id") == handled.request_id
    assert _extension(receive, "correlation-id") == "xis-write-1"
    assert [agent["who"] for agent in receive["agent"]] == [{"reference": "Device/portal"}]
    assert (
        receive["agent"][0]["network"]["address"] == f"https://127.0.0.1:{port}/koppeltaal/notify"
    )
    assert receive["entity"][0]["what"] == {"reference": f"Subscription/{portal.subscription_id}"}
    # Posting it was a request caused by the notification, like the searches after it.
    [posted] = [e for e in follow_ups if e["subtype"][0]["code"] == "create"]
    assert posted["entity"][0]["what"]["reference"].startswith(f"AuditEvent/{receive['id']}/")
    follow_ups.remove(posted)
    assert sorted(_extension(e, "request-id") for e in follow_ups) == sorted(
        handled.fetch_request_ids
    )
    for event in follow_ups:
        assert event["subtype"][0]["code"] == "search-type"
        assert event["agent"][0]["who"]["reference"] == "Device/portal"
        assert _extension(event, "trace-id") == "trace-portal-1"

    # The inbox: the XIS's text is shown as text, never as markup.
    assert inbox.status_code == 200
    assert inbox.headers["content-type"].startswith("text/html")
    assert "script-src" not in inbox.headers["content-security-policy"]  # none at all
    assert "Uitslag &lt;img src=x onerror=alert(1)&gt;" in inbox.text
    assert "<img" not in inbox.text and "<script" not in inbox.text
    assert sent["payload"][0]["contentString"] in inbox.text
    assert f'href="{link}"' in inbox.text

    assert download.status_code == 200
    assert download.content == PDF_BYTES
    assert download.headers["content-type"] == "application/pdf"
    assert download.headers["content-disposition"] == (
        "attachment; filename=\"Uitslag _script_.pdf\"; filename*=UTF-8''Uitslag%20_script_.pdf"
    )
    assert download.headers["x-content-type-options"] == "nosniff"

    assert elsewhere.status_code == 404  # not through another patient's inbox
    assert dotted.status_code == 404
    assert "no messages" in empty.text
    assert (found.status_code, found.headers["location"]) == (303, f"/patients/{BSN}")
    assert invalid.status_code == 400
    assert impostor.status_code == 401
    assert len(portal.notifications) == 1


async def test_a_restarted_portal_keeps_one_subscription_with_its_new_secret(
    hub: HubServer,
) -> None:
    keys = hub.keys["portal"]
    endpoint = "https://127.0.0.1:8443/koppeltaal/notify"
    client = HubClient(hub.fhir(), client_id="portal", private_key=keys.private_pem, kid=keys.kid)
    try:
        first = await client.ensure_subscription(
            endpoint=endpoint, criteria="Communication?category=melding", header="A: 1", reason="x"
        )
        again = await client.ensure_subscription(
            endpoint=endpoint, criteria="Communication?category=melding", header="A: 2", reason="x"
        )
    finally:
        await client.aclose()
    async with hub.client("portal") as portal:
        bundle = (await portal.get("/Subscription")).json()
    [subscription] = [entry["resource"] for entry in bundle["entry"]]

    assert first == again == subscription["id"]
    assert subscription["meta"]["versionId"] == "2"
    assert subscription["channel"]["header"] == ["A: 2"]
    assert subscription["status"] == "active"


@pytest.mark.parametrize(
    ("title", "content_type", "expected"),
    [
        ("lab-results.pdf", "application/pdf", "lab-results.pdf"),
        ("../../etc/passwd", "application/pdf", "passwd.pdf"),
        ("C:\\Users\\x\\report.exe", "application/pdf", "report.exe.pdf"),
        ("foto.JPEG", "image/jpeg", "foto.JPEG"),
        ("a\r\nContent-Type: text.png", "image/png", "a__Content-Type_ text.png"),
        (".bashrc", "application/pdf", "bashrc.pdf"),
        ("nul.pdf", "application/pdf", "_nul.pdf"),
        ("report.pdf. . ", "application/pdf", "report.pdf"),
        ("", "image/png", "attachment.png"),
        (None, "application/octet-stream", "attachment"),
    ],
)
def test_download_names_are_safe(title: Any, content_type: str, expected: str) -> None:
    assert safe_filename(title, content_type) == expected


def test_long_names_keep_their_extension() -> None:
    assert safe_filename("x" * 300 + ".pdf", "application/pdf") == "x" * 96 + ".pdf"
    assert safe_filename("x" * 300 + ".exe", "application/msword") == "x" * 96 + ".doc"


def test_the_disposition_header_carries_unicode_names_exactly() -> None:
    assert content_disposition("Überweisung 2024.pdf") == (
        'attachment; filename="Uberweisung 2024.pdf"; '
        "filename*=UTF-8''%C3%9Cberweisung%202024.pdf"
    )


def _extension(event: dict[str, Any], name: str) -> str:
    url = f"http://koppeltaal.nl/fhir/StructureDefinition/{name}"
    return next(str(e["valueId"]) for e in event["extension"] if e["url"] == url)
