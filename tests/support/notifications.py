"""Patient-notification test helpers: sample Communications, a mail hub, audit queries."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from examples.mailcatcher import CaughtMail
from hub.rules.bsn import BSN_SYSTEM
from hub.store.db import Database
from hub.store.outbox import Entry, entries
from tests.rules.samples import example_communication
from tests.support.hub import MATRIX, AppKeys, HubServer, hub_settings, running_hub, write_apps_file
from tests.support.waiting import eventually

PORTAL_URL = "https://portal.example.nl/berichten"
REGISTRATION_URL = "https://portal.example.nl/registreren"
BSN = "123456782"  # the contract's example BSN
OTHER_BSN = "111222333"  # passes the eleven-test too
CONTAINED_EMAIL = "jan.janssen@example.com"  # the contract's example address
REGISTERED_EMAIL = "jan@portal-account.example.nl"
NEW_MESSAGE_SUBJECT = "Nieuw bericht voor u / New message for you"
INVITATION_SUBJECT = "Uitnodiging om u te registreren / Invitation to register"


# -- building blocks -------------------------------------------------------------------


def notification(*, bsn: str = BSN, email: str | None = CONTAINED_EMAIL) -> dict[str, Any]:
    """The contract's example notification for `bsn`, with `email` in the contained Patient."""
    communication = example_communication()
    patient = communication["contained"][0]
    patient["identifier"][0]["value"] = bsn
    if email is None:
        del patient["telecom"]
    else:
        patient["telecom"][0]["value"] = email
    return communication


def registered_patient(bsn: str, email: str | None) -> dict[str, Any]:
    """The patient as the XIS registers it in the domain: the BSN and, maybe, an e-mail."""
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": BSN_SYSTEM, "value": bsn}],
    }
    if email is not None:
        patient["telecom"] = [{"system": "email", "value": email}]
    return patient


def matrix_where_the_xis_updates_communications(directory: Path) -> Path:
    """The shipped matrix, plus U(OWN) on Communication for the XIS (it has none)."""
    document = yaml.safe_load(MATRIX.read_text(encoding="utf-8"))
    document["roles"]["Zorgondersteuning"]["Communication"]["update"] = "own"
    path = directory / "authz_matrix.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@contextmanager
def mail_hub(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], **overrides: Any
) -> Iterator[HubServer]:
    apps_file = write_apps_file(tmp_path / "apps.yaml", app_keys)
    settings = hub_settings(
        tmp_path,
        database_url,
        apps_file,
        portal_url=PORTAL_URL,
        registration_url=REGISTRATION_URL,
        **overrides,
    )
    with running_hub(settings, app_keys) as hub:
        yield hub


async def post(hub: HubServer, client_id: str, path: str, resource: dict[str, Any]) -> str:
    """POST as `client_id` with a request id of our own; returns that request id."""
    request_id = f"{client_id}-{time.monotonic_ns()}"
    async with hub.client(client_id) as client:
        response = await client.post(path, json=resource, headers={"X-Request-Id": request_id})
    assert response.status_code == 201, response.text
    return request_id


async def audit_events(hub: HubServer, **params: str) -> list[dict[str, Any]]:
    async with hub.client("auditor") as auditor:
        response = await auditor.get("/AuditEvent", params={**params, "_count": "100"})
    assert response.status_code == 200, response.text
    return [entry["resource"] for entry in response.json().get("entry", [])]


async def created_event(hub: HubServer, request_id: str) -> dict[str, Any]:
    """The REST AuditEvent of the write with `request_id` (written in its transaction)."""
    [event] = await audit_events(hub, requestId=request_id, subtype="create")
    return event


def patient_notice(event: dict[str, Any]) -> str:
    [entity] = event["entity"]
    details = {detail["type"]: detail["valueString"] for detail in entity.get("detail", [])}
    return str(details["patient-notice"])


async def transmits(hub: HubServer, request_id: str) -> list[dict[str, Any]]:
    """The `transmit` AuditEvents of the deliveries the write with `request_id` caused."""
    events = await audit_events(hub, correlationId=request_id, type="transmit")
    return sorted(events, key=lambda event: str(event["recorded"]))


async def settled_transmits(hub: HubServer, request_id: str) -> list[dict[str, Any]]:
    """The transmit events once one of them succeeded."""

    async def probe() -> list[dict[str, Any]] | None:
        events = await transmits(hub, request_id)
        return events if any(event["outcome"] == "0" for event in events) else None

    return await eventually(probe)


async def email_rows(database_url: str) -> list[Entry]:
    """The e-mail rows of the delivery queue, oldest first."""
    database = Database(database_url, pool_size=1)
    try:
        return [row for row in await database.read(entries()) if row.channel == "email"]
    finally:
        await database.dispose()


def extension(event: dict[str, Any], name: str) -> str:
    url = f"http://koppeltaal.nl/fhir/StructureDefinition/{name}"
    return next(str(e["valueId"]) for e in event["extension"] if e["url"] == url)


def assert_no_medical_content(mail: CaughtMail, communication: dict[str, Any]) -> None:
    """Neither the subject, the message, the file name nor the BSN is in the e-mail."""
    attachment = communication["payload"][1]["contentAttachment"]
    secrets = (
        communication["topic"]["text"],
        communication["payload"][0]["contentString"],
        attachment["title"],
        attachment["data"][:40],
        communication["contained"][0]["identifier"][0]["value"],
    )
    for secret in secrets:
        assert secret.lower().encode() not in mail.raw.lower(), secret
    assert not mail.message.is_multipart()  # no attachment travels with it
