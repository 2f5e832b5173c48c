"""The Spreekuur.nl notification contract through the real API: POST /Communication as the XIS.

Every rule at its boundary (the last value accepted, the first refused), several
violations reported together in one 400 OperationOutcome with each element's
`expression` (those the FHIR R4 structure refuses too, each named once), the contract's
own example accepted and FHIR's example refused; a refused request leaves nothing behind
but its AuditEvent, on create and on update alike. A notification reaches one patient:
two contained Patients sharing the recipient's id are refused, not filed under both BSNs.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from examples.mailcatcher import MailCatcher
from hub.rules import filetypes
from hub.rules.bsn import BSN_SYSTEM
from hub.store import outbox
from hub.store.db import Database
from hub.store.resources import RESOURCES, VERSIONS
from hub.store.sql import Work, execute
from tests.api.common import entries, expressions, fixture, origin_of, outcome
from tests.rules.samples import (
    EXE_BYTES,
    JPEG_BYTES,
    OLE2_BYTES,
    PDF_BYTES,
    attachment,
    b64,
    docx_bytes,
    example_communication,
    png_bytes,
    wrapped,
    xlsx_bytes,
)
from tests.support.https_receiver import HttpsReceiver, LocalCA
from tests.support.hub import AppKeys, HubServer, hub_settings, running_hub, write_apps_file
from tests.support.notifications import (
    audit_events,
    matrix_where_the_xis_updates_communications,
    settled_transmits,
)

Change = Callable[[dict[str, Any]], None]

BSN = "123456782"  # the contract's example patient
OTHER_BSN = "111222333"
PRACTITIONER = {"resourceType": "Practitioner", "id": "x"}


def changed(*changes: Change) -> dict[str, Any]:
    """The contract's example notification with `changes` applied."""
    communication = example_communication()
    for change in changes:
        change(communication)
    return communication


def topic(characters: int, char: str = "x") -> Change:
    def apply(c: dict[str, Any]) -> None:
        c["topic"]["text"] = char * characters

    return apply


def message(characters: int, char: str = "x") -> Change:
    def apply(c: dict[str, Any]) -> None:
        c["payload"][0]["contentString"] = char * characters

    return apply


def attachments(*entries: dict[str, Any]) -> Change:
    """Replace the example's attachment with `entries` (after the message text)."""

    def apply(c: dict[str, Any]) -> None:
        c["payload"][1:] = list(entries)

    return apply


def in_attachment(**fields: str | None) -> Change:
    """Set (or, with None, remove) fields of the example's attachment."""

    def apply(c: dict[str, Any]) -> None:
        file = c["payload"][1]["contentAttachment"]
        for name, value in fields.items():
            if value is None:
                del file[name]
            else:
                file[name] = value

    return apply


def setting(path: str, value: Any) -> Change:
    """Set the element at a dotted path (`contained.0.telecom`); None removes it."""

    def apply(c: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = c
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        key: Any = int(last) if last.isdigit() else last
        if value is None:
            del node[key]
        else:
            node[key] = value

    return apply


def second_patient(c: dict[str, Any]) -> None:
    """A second contained Patient (with a valid BSN of its own), a recipient too."""
    c["contained"].append(
        {
            "resourceType": "Patient",
            "id": "other",
            "identifier": [{"system": BSN_SYSTEM, "value": "111222333"}],
        }
    )
    c["recipient"].append({"reference": "#other"})


def also_contained(*resources: dict[str, Any]) -> Change:
    """Contain `resources` after the example's Patient."""

    def apply(c: dict[str, Any]) -> None:
        c["contained"] += copy.deepcopy(list(resources))

    return apply


def patient_sharing_the_recipients_id(c: dict[str, Any]) -> None:
    """The attack: a second contained Patient (another valid BSN) under the recipient's id."""
    c["contained"][0]["id"] = "p"
    c["recipient"] = [{"reference": "#p"}]
    c["contained"].append(
        {
            "resourceType": "Patient",
            "id": "p",
            "identifier": [{"system": BSN_SYSTEM, "value": OTHER_BSN}],
        }
    )


FIVE_FILES = (
    attachment(PDF_BYTES, "application/pdf", "a.pdf"),
    attachment(JPEG_BYTES, "image/jpeg", "b.jpg"),
    attachment(png_bytes(), "image/png", "c.png"),
    attachment(docx_bytes(), filetypes.DOCX, "d.docx"),
    attachment(xlsx_bytes(), filetypes.XLSX, "e.xlsx"),
)
DATA = "Communication.payload[1].contentAttachment.data"

ACCEPTED: dict[str, list[Change]] = {
    "topic of 500 characters": [topic(500)],
    "topic of 500 two-byte characters": [topic(500, "é")],
    "message of 1 character": [message(1)],
    "message of 10,000 characters": [message(10_000)],
    "message of 10,000 three-byte characters": [message(10_000, "€")],
    "5 attachments of every kind": [attachments(*FIVE_FILES)],
    "Word and Excel 97-2003 files": [
        attachments(
            attachment(OLE2_BYTES, "application/msword", "d.doc"),
            attachment(OLE2_BYTES, "application/vnd.ms-excel", "e.xls"),
        )
    ],
    "no attachment": [attachments()],
    "no e-mail address": [setting("contained.0.telecom", None)],
    # FHIR R4 base64Binary is (\s*([0-9a-zA-Z\+/=]){4}\s*)+: whitespace between groups of 4.
    "base64 with a line break": [
        in_attachment(data=b64(PDF_BYTES)[:8] + "\n" + b64(PDF_BYTES)[8:])
    ],
    "base64 in MIME lines of 76": [
        in_attachment(data=wrapped(b64(PDF_BYTES * 4), 76, "\r\n") + "\r\n")
    ],
    "the patient named by two recipient entries": [
        lambda c: c["recipient"].append({"reference": "#9876543210"})
    ],
}

REFUSED: dict[str, tuple[list[Change], list[str]]] = {
    "topic of 501 characters": ([topic(501)], ["Communication.topic.text"]),
    "no topic": ([setting("topic", None)], ["Communication.topic.text"]),
    "empty message": ([message(0)], ["Communication.payload[0].contentString"]),
    "message of 10,001 characters": (
        [message(10_001)],
        ["Communication.payload[0].contentString"],
    ),
    "no message text": ([setting("payload.0", None)], ["Communication.payload"]),
    "6 attachments": (
        [attachments(*FIVE_FILES, attachment(PDF_BYTES, "application/pdf", "f.pdf"))],
        ["Communication.payload"],
    ),
    "an executable declared as PDF": ([in_attachment(data=b64(EXE_BYTES))], [DATA]),
    "a PNG declared as JPEG": (
        [in_attachment(data=b64(png_bytes()), contentType="image/jpeg")],
        [DATA],
    ),
    "a content type not allowed": (
        [in_attachment(contentType="text/html")],
        ["Communication.payload[1].contentAttachment.contentType"],
    ),
    "base64 broken inside a group of four": (
        [in_attachment(data=b64(PDF_BYTES)[:7] + "\n" + b64(PDF_BYTES)[7:])],
        [DATA],
    ),
    "attachment without data": ([in_attachment(data=None)], [DATA]),
    "attachment without content type": (
        [in_attachment(contentType=None)],
        ["Communication.payload[1].contentAttachment.contentType"],
    ),
    "attachment without title": (
        [in_attachment(title=None)],
        ["Communication.payload[1].contentAttachment.title"],
    ),
    "no category": ([setting("category", None)], ["Communication.category"]),
    "a category that is no melding": (
        [setting("category.0.coding.0.code", "chat")],
        ["Communication.category"],
    ),
    "status not completed": ([setting("status", "in-progress")], ["Communication.status"]),
    "recipient not the contained Patient": (
        [setting("recipient.0.reference", "Patient/9876543210")],
        ["Communication.recipient[0].reference"],
    ),
    "no contained Patient": (
        [setting("contained", None)],
        ["Communication.recipient[0].reference", "Communication.contained"],
    ),
    "a BSN failing the eleven-test": (
        [setting("contained.0.identifier.0.value", "123456789")],
        ["Communication.contained[0].identifier[0].value"],
    ),
    "no BSN": (
        [setting("contained.0.identifier.0.system", "urn:oid:2.16.840.1.113883.2.4.6.3.x")],
        ["Communication.contained[0].identifier"],
    ),
    "an e-mail that is no address": (
        [setting("contained.0.telecom.0.value", "jan at example")],
        ["Communication.contained[0].telecom[0].value"],
    ),
    "recipients that are two patients": ([second_patient], ["Communication.recipient"]),
    "two patients sharing the recipient's id": (
        [patient_sharing_the_recipients_id],
        ["Communication.contained[1].id", "Communication.recipient[0].reference"],
    ),
    "two contained resources sharing an id": (
        [also_contained(PRACTITIONER, {**PRACTITIONER, "resourceType": "Organization"})],
        ["Communication.contained[2].id"],
    ),
    "recipient to an id no contained resource has": (
        [setting("recipient.0.reference", "#nobody")],
        ["Communication.recipient[0].reference"],
    ),
    "recipient to a contained Practitioner": (
        [also_contained(PRACTITIONER), setting("recipient.0.reference", "#x")],
        ["Communication.recipient[0].reference"],
    ),
}

# Violations the FHIR R4 structure refuses too (a missing status, an empty string, an
# empty array, a value of the wrong JSON type), with violations of the contract alone:
# one 400 names every element once, in the contract's words.
REFUSED_WITH_THE_STRUCTURE: dict[str, tuple[list[Change], list[str]]] = {
    "no category, a topic of 501 characters, an empty message": (
        [setting("category", None), topic(501), message(0)],
        [
            "Communication.category",
            "Communication.topic.text",
            "Communication.payload[0].contentString",
        ],
    ),
    "no status, an empty message, 6 attachments": (
        [
            setting("status", None),
            message(0),
            attachments(*FIVE_FILES, attachment(PDF_BYTES, "application/pdf", "f.pdf")),
        ],
        ["Communication.status", "Communication.payload", "Communication.payload[0].contentString"],
    ),
    "an empty payload, no category, a topic of 501 characters": (
        [setting("payload", []), setting("category", None), topic(501)],
        ["Communication.payload", "Communication.category", "Communication.topic.text"],
    ),
    "a BSN that is a number, an e-mail that is no address, status not completed": (
        [
            setting("contained.0.identifier.0.value", 123456782),
            setting("contained.0.telecom.0.value", "jan at example"),
            setting("status", "in-progress"),
        ],
        [
            "Communication.contained[0].identifier[0].value",
            "Communication.contained[0].telecom[0].value",
            "Communication.status",
        ],
    ),
    "a payload that is no array, no recipient": (
        [setting("payload", {"contentString": "Hello"}), setting("recipient", None)],
        ["Communication.payload", "Communication.recipient"],
    ),
    "narrative that is a string (structure only), an executable declared as PDF": (
        [setting("text", "Lab results"), in_attachment(data=b64(EXE_BYTES))],
        ["Communication.text", DATA],
    ),
}


async def post_as_xis(hub: HubServer, resource: dict[str, Any]) -> Any:
    async with hub.client("xis") as xis:
        return await xis.post("/Communication", json=resource)


# -- one rule at a time, at its boundaries (one hub per backend for all of them) -------


@pytest.mark.parametrize("changes", ACCEPTED.values(), ids=ACCEPTED.keys())
async def test_accepted_at_the_boundary(module_hub: HubServer, changes: list[Change]) -> None:
    communication = changed(*changes)
    response = await post_as_xis(module_hub, communication)
    assert response.status_code == 201, response.text
    assert response.json()["payload"] == communication["payload"]


@pytest.mark.parametrize(("changes", "where"), REFUSED.values(), ids=REFUSED.keys())
async def test_refused_at_the_boundary(
    module_hub: HubServer, changes: list[Change], where: list[str]
) -> None:
    body = outcome(await post_as_xis(module_hub, changed(*changes)), 400)
    assert sorted(expressions(body)) == sorted(where)
    assert all(issue["severity"] == "error" for issue in body["issue"])


async def test_every_violation_is_listed_at_once(module_hub: HubServer) -> None:
    communication = changed(
        setting("category", None),
        topic(501),
        message(10_001),
        attachments(*FIVE_FILES, attachment(EXE_BYTES, "application/pdf", "invoice.pdf")),
        setting("contained.0.identifier.0.value", "123456789"),
    )
    body = outcome(await post_as_xis(module_hub, communication), 400)
    assert sorted(expressions(body)) == sorted(
        [
            "Communication.category",
            "Communication.topic.text",
            "Communication.payload",
            "Communication.payload[0].contentString",
            "Communication.payload[6].contentAttachment.data",
            "Communication.contained[0].identifier[0].value",
        ]
    )
    # The diagnostics say what is wrong without repeating the patient's data.
    text = str(body)
    assert "123456789" not in text and "xxxxxxxxxx" not in text


@pytest.mark.parametrize(
    ("changes", "where"),
    REFUSED_WITH_THE_STRUCTURE.values(),
    ids=REFUSED_WITH_THE_STRUCTURE.keys(),
)
async def test_structure_and_contract_violations_are_listed_together(
    module_hub: HubServer, changes: list[Change], where: list[str]
) -> None:
    request_id = f"structure-and-contract-{uuid.uuid4().hex}"
    async with module_hub.client("xis") as xis:
        response = await xis.post(
            "/Communication", json=changed(*changes), headers={"X-Request-Id": request_id}
        )
    body = outcome(response, 400)
    assert sorted(expressions(body)) == sorted(where)  # each element once
    [event] = await audit_events(module_hub, requestId=request_id)
    assert event["outcome"] == "4"
    assert "entity" not in event  # nothing was written


async def test_a_structure_violation_is_said_in_the_contracts_words(
    module_hub: HubServer,
) -> None:
    communication = changed(setting("status", None), message(0), setting("payload.1", None))
    body = outcome(await post_as_xis(module_hub, communication), 400)
    said = {issue["expression"][0]: issue["diagnostics"] for issue in body["issue"]}
    assert set(said) == {"Communication.status", "Communication.payload[0].contentString"}
    assert "it must be 'completed'" in said["Communication.status"]
    assert "message text (contentString) is empty" in said["Communication.payload[0].contentString"]


async def test_the_contracts_example_is_accepted_with_an_id_of_the_hubs(
    module_hub: HubServer,
) -> None:
    communication = example_communication()
    communication["id"] = "chosen-by-the-xis"
    response = await post_as_xis(module_hub, communication)

    assert response.status_code == 201, response.text
    stored = response.json()
    assert stored["id"] not in ("", "chosen-by-the-xis")
    assert response.headers["location"].endswith(f"/Communication/{stored['id']}/_history/1")
    assert origin_of(stored) == "xis"
    assert stored["category"][0]["coding"][0]["code"] == "melding"
    assert stored["contained"][0]["identifier"][0]["value"] == "123456782"
    async with module_hub.client("xis") as xis:
        read = await xis.get(f"/Communication/{stored['id']}")
    assert read.status_code == 200
    assert read.json()["payload"] == communication["payload"]


async def test_the_fhir_example_communication_is_refused_naming_what_is_missing(
    module_hub: HubServer,
) -> None:
    body = outcome(await post_as_xis(module_hub, fixture("communication-example.json")), 400)
    assert sorted(expressions(body)) == sorted(
        [
            "Communication.category",  # "Alert", not "melding"
            "Communication.topic.text",
            "Communication.payload[1].contentReference",
            "Communication.recipient[0].reference",  # a Practitioner, not the patient
            "Communication.contained",  # no patient with a BSN
        ]
    )


async def test_the_xis_may_not_change_a_notification_it_sent(module_hub: HubServer) -> None:
    created = await post_as_xis(module_hub, example_communication())
    stored = created.json()
    async with module_hub.client("xis") as xis:
        response = await xis.put(
            f"/Communication/{stored['id']}", json=stored, headers={"If-Match": 'W/"1"'}
        )
    outcome(response, 403)


# -- a refused request leaves no trace but its AuditEvent -------------------------------


def _counts() -> Work[tuple[int, int]]:
    stored = yield from execute(
        select(func.count())
        .select_from(VERSIONS.join(RESOURCES, VERSIONS.c.resource_pk == RESOURCES.c.pk))
        .where(RESOURCES.c.rtype == "Communication")
    )
    queued = yield from outbox.entries()
    return int(stored.scalar()), len(queued)


async def counts(database_url: str) -> tuple[int, int]:
    """(Communication versions stored, outbox rows of any kind)."""
    database = Database(database_url, pool_size=1)
    try:
        return await database.read(_counts())
    finally:
        await database.dispose()


async def test_a_refused_notification_leaves_nothing_but_its_audit_event(
    tmp_path: Path,
    database_url: str,
    app_keys: dict[str, AppKeys],
    https_receiver: HttpsReceiver,
    local_ca: LocalCA,
) -> None:
    apps_file = write_apps_file(tmp_path / "apps.yaml", app_keys)
    with MailCatcher() as catcher:
        settings = hub_settings(
            tmp_path, database_url, apps_file, smtp_url=catcher.url, ca_bundle=local_ca.bundle
        )
        with running_hub(settings, app_keys) as hub:
            async with hub.client("portal") as portal:
                subscribed = await portal.post(
                    "/Subscription",
                    json={
                        "resourceType": "Subscription",
                        "status": "requested",
                        "reason": "the portal shows notifications",
                        "criteria": "Communication?category=melding",
                        "channel": {"type": "rest-hook", "endpoint": https_receiver.url()},
                    },
                )
                assert subscribed.status_code == 201, subscribed.text

            refused = changed(topic(501))
            async with hub.client("xis") as xis:
                response = await xis.post(
                    "/Communication", json=refused, headers={"X-Request-Id": "refused-1"}
                )
            outcome(response, 400)
            after_refusal = await counts(database_url)
            [event] = await audit_events(hub, requestId="refused-1")

            # The same request, made valid, goes all the way: webhook and e-mail.
            async with hub.client("xis") as xis:
                accepted = await xis.post(
                    "/Communication", json=changed(), headers={"X-Request-Id": "accepted-1"}
                )
            assert accepted.status_code == 201, accepted.text
            await https_receiver.wait_for_async(1, timeout=60)
            await asyncio.to_thread(catcher.wait_for, 1)
            transmitted = await settled_transmits(hub, "accepted-1")

    assert after_refusal == (0, 0)
    assert event["subtype"][0]["code"] == "create"
    assert event["outcome"] == "4"
    assert "topic.text" in event["outcomeDesc"]
    assert "entity" not in event
    assert len(https_receiver.requests) == 1
    assert len(catcher.messages) == 1
    assert {e["outcome"] for e in transmitted} == {"0"}


async def test_an_update_is_held_to_the_contract_and_a_refused_one_changes_nothing(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys]
) -> None:
    apps_file = write_apps_file(tmp_path / "apps.yaml", app_keys)
    matrix = matrix_where_the_xis_updates_communications(tmp_path)
    settings = hub_settings(tmp_path, database_url, apps_file, authz_matrix=matrix)
    with running_hub(settings, app_keys) as hub:
        async with hub.client("xis") as xis:
            created = await xis.post("/Communication", json=example_communication())
            assert created.status_code == 201, created.text
            stored = created.json()
            broken = copy.deepcopy(stored)
            broken["topic"]["text"] = "x" * 501
            del broken["category"]
            path = f"/Communication/{stored['id']}"
            response = await xis.put(
                path, json=broken, headers={"If-Match": 'W/"1"', "X-Request-Id": "bad-put"}
            )
            current = await xis.get(path)
            history = await xis.get(f"{path}/_history")
            stored["payload"][0]["contentString"] = "A corrected message."
            fixed = await xis.put(path, json=stored, headers={"If-Match": 'W/"1"'})
        [event] = await audit_events(hub, requestId="bad-put")

    body = outcome(response, 400)
    assert sorted(expressions(body)) == ["Communication.category", "Communication.topic.text"]
    assert current.json() == created.json()
    assert [e["resource"]["meta"]["versionId"] for e in history.json()["entry"]] == ["1"]
    assert (event["subtype"][0]["code"], event["outcome"]) == ("update", "4")
    assert fixed.status_code == 200, fixed.text
    assert fixed.json()["meta"]["versionId"] == "2"


async def test_structure_and_contract_violations_store_nothing_on_create_or_update(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys]
) -> None:
    apps_file = write_apps_file(tmp_path / "apps.yaml", app_keys)
    matrix = matrix_where_the_xis_updates_communications(tmp_path)
    settings = hub_settings(tmp_path, database_url, apps_file, authz_matrix=matrix)
    with running_hub(settings, app_keys) as hub:
        async with hub.client("xis") as xis:
            refused = await xis.post(
                "/Communication",
                json=changed(setting("status", None), message(0), setting("category", None)),
                headers={"X-Request-Id": "bad-post"},
            )
            after_refused_create = await counts(database_url)
            created = await xis.post("/Communication", json=example_communication())
            assert created.status_code == 201, created.text
            after_create = await counts(database_url)
            stored = created.json()
            broken = copy.deepcopy(stored)
            del broken["status"]
            broken["payload"][0]["contentString"] = ""
            broken["contained"][0]["identifier"][0]["value"] = 123456782
            broken["topic"]["text"] = "x" * 501
            path = f"/Communication/{stored['id']}"
            updated = await xis.put(
                path, json=broken, headers={"If-Match": 'W/"1"', "X-Request-Id": "bad-put"}
            )
            after_refused_update = await counts(database_url)
            current = await xis.get(path)
            history = await xis.get(f"{path}/_history")
        [post_event] = await audit_events(hub, requestId="bad-post")
        [put_event] = await audit_events(hub, requestId="bad-put")

    assert sorted(expressions(outcome(refused, 400))) == [
        "Communication.category",
        "Communication.payload[0].contentString",
        "Communication.status",
    ]
    assert after_refused_create == (0, 0)
    assert sorted(expressions(outcome(updated, 400))) == [
        "Communication.contained[0].identifier[0].value",
        "Communication.payload[0].contentString",
        "Communication.status",
        "Communication.topic.text",
    ]
    assert after_refused_update == after_create
    assert current.json() == stored
    assert [e["resource"]["meta"]["versionId"] for e in history.json()["entry"]] == ["1"]
    assert [(e["subtype"][0]["code"], e["outcome"]) for e in (post_event, put_event)] == [
        ("create", "4"),
        ("update", "4"),
    ]
    assert "entity" not in post_event


# -- a notification reaches one patient: no second patient through a shared id ---------


async def found_under(hub: HubServer, bsn: str) -> list[str]:
    """The ids of the Communications a portal finds under `bsn` (`patient-identifier`)."""
    async with hub.client("portal") as portal:
        response = await portal.get(
            "/Communication", params={"patient-identifier": f"{BSN_SYSTEM}|{bsn}"}
        )
    assert response.status_code == 200, response.text
    return [resource["id"] for resource in entries(response.json())]


async def test_two_patients_sharing_one_id_are_refused_and_stored_under_no_bsn(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys]
) -> None:
    """Two contained Patients with one id, recipient `#p`: before, it was found under both BSNs."""
    apps_file = write_apps_file(tmp_path / "apps.yaml", app_keys)
    matrix = matrix_where_the_xis_updates_communications(tmp_path)
    settings = hub_settings(tmp_path, database_url, apps_file, authz_matrix=matrix)
    with running_hub(settings, app_keys) as hub:
        async with hub.client("xis") as xis:
            refused = await xis.post(
                "/Communication",
                json=changed(patient_sharing_the_recipients_id),
                headers={"X-Request-Id": "shared-id-post"},
            )
            after_refused_create = await counts(database_url)
            found_after_refusal = (await found_under(hub, BSN), await found_under(hub, OTHER_BSN))

            # The same attack on an update of a stored notification changes nothing either.
            created = await xis.post("/Communication", json=example_communication())
            assert created.status_code == 201, created.text
            after_create = await counts(database_url)
            stored = created.json()
            path = f"/Communication/{stored['id']}"
            attack = copy.deepcopy(stored)
            patient_sharing_the_recipients_id(attack)
            updated = await xis.put(
                path, json=attack, headers={"If-Match": 'W/"1"', "X-Request-Id": "shared-id-put"}
            )
            after_refused_update = await counts(database_url)
            current = await xis.get(path)
        found = (await found_under(hub, BSN), await found_under(hub, OTHER_BSN))
        [post_event] = await audit_events(hub, requestId="shared-id-post")
        [put_event] = await audit_events(hub, requestId="shared-id-put")

    where = ["Communication.contained[1].id", "Communication.recipient[0].reference"]
    assert sorted(expressions(outcome(refused, 400))) == where
    assert sorted(expressions(outcome(updated, 400))) == where
    assert after_refused_create == (0, 0)  # no version, no outbox row: only the AuditEvent
    assert found_after_refusal == ([], [])
    assert after_refused_update == after_create
    assert current.json() == stored
    assert found == ([stored["id"]], [])  # the stored one under its own patient's BSN only
    assert [(e["subtype"][0]["code"], e["outcome"]) for e in (post_event, put_event)] == [
        ("create", "4"),
        ("update", "4"),
    ]
    assert "entity" not in post_event
    assert "an id of its own" in post_event["outcomeDesc"]
    assert OTHER_BSN not in str(post_event) and OTHER_BSN not in str(put_event)
