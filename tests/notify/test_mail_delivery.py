"""Patient e-mail end to end: a real hub, a real SMTP server on loopback, both databases.

The XIS posts a notification; in the write's transaction the hub decides whom to write
(a registered patient gets the "new message" notice, an unregistered one with an
address the invitation, nobody else anything), records that decision on the create's
AuditEvent, and queues the mail; the delivery worker sends it, audits every attempt
with a `transmit` AuditEvent, and retries like a webhook while the mail server is down.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from examples.mailcatcher import MailCatcher
from tests.support.hub import AppKeys
from tests.support.notifications import (
    BSN,
    CONTAINED_EMAIL,
    INVITATION_SUBJECT,
    NEW_MESSAGE_SUBJECT,
    OTHER_BSN,
    PORTAL_URL,
    REGISTERED_EMAIL,
    REGISTRATION_URL,
    assert_no_medical_content,
    audit_events,
    created_event,
    email_rows,
    extension,
    mail_hub,
    matrix_where_the_xis_updates_communications,
    notification,
    patient_notice,
    post,
    registered_patient,
    settled_transmits,
    transmits,
)
from tests.support.waiting import eventually


@pytest.fixture
def catcher() -> Iterator[MailCatcher]:
    with MailCatcher() as started:
        yield started


# -- whom the hub writes to ------------------------------------------------------------


async def test_a_registered_patient_gets_the_notice_with_the_portal_link(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], catcher: MailCatcher
) -> None:
    communication = notification(email=CONTAINED_EMAIL)
    with mail_hub(tmp_path, database_url, app_keys, smtp_url=catcher.url) as hub:
        await post(hub, "xis", "/Patient", registered_patient(BSN, REGISTERED_EMAIL))
        request_id = await post(hub, "xis", "/Communication", communication)
        [mail] = await asyncio.to_thread(catcher.wait_for, 1)
        [transmit] = await settled_transmits(hub, request_id)
        created = await created_event(hub, request_id)

    # The address the patient registered wins over the one the XIS sent along.
    assert mail.recipients == (REGISTERED_EMAIL,)
    assert mail.message["To"] == REGISTERED_EMAIL
    assert mail.message["Subject"] == NEW_MESSAGE_SUBJECT
    assert f"\n{PORTAL_URL}\n" in mail.text
    assert REGISTRATION_URL not in mail.text
    assert_no_medical_content(mail, communication)
    assert patient_notice(created) == "new-message"

    what = created["entity"][0]["what"]["reference"]
    assert what.startswith("Communication/") and what.endswith("/_history/1")
    assert transmit["type"]["code"] == "transmit"
    assert transmit["outcome"] == "0"
    assert transmit["entity"][0]["what"]["reference"] == what
    assert transmit["agent"][0]["who"]["reference"] == "Device/xis"
    assert transmit["agent"][1]["network"]["address"] == f"mailto:{REGISTERED_EMAIL}"
    assert extension(transmit, "trace-id") == extension(created, "trace-id")
    assert extension(transmit, "request-id") != request_id


async def test_an_address_the_patient_no_longer_uses_is_passed_over(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], catcher: MailCatcher
) -> None:
    patient = registered_patient(BSN, "old-address@example.nl")
    patient["telecom"][0]["use"] = "old"
    patient["telecom"].append({"system": "email", "value": REGISTERED_EMAIL, "use": "home"})
    with mail_hub(tmp_path, database_url, app_keys, smtp_url=catcher.url) as hub:
        await post(hub, "xis", "/Patient", patient)
        await post(hub, "xis", "/Communication", notification())
        [mail] = await asyncio.to_thread(catcher.wait_for, 1)
    assert mail.recipients == (REGISTERED_EMAIL,)


async def test_an_unregistered_patient_with_an_address_gets_the_invitation(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], catcher: MailCatcher
) -> None:
    communication = notification(bsn=BSN, email=CONTAINED_EMAIL)
    with mail_hub(tmp_path, database_url, app_keys, smtp_url=catcher.url) as hub:
        # Registered patients with another BSN, or without an address, change nothing.
        await post(hub, "xis", "/Patient", registered_patient(OTHER_BSN, REGISTERED_EMAIL))
        await post(hub, "xis", "/Patient", registered_patient(BSN, None))
        request_id = await post(hub, "xis", "/Communication", communication)
        [mail] = await asyncio.to_thread(catcher.wait_for, 1)
        [transmit] = await settled_transmits(hub, request_id)
        created = await created_event(hub, request_id)

    assert mail.recipients == (CONTAINED_EMAIL,)
    assert mail.message["Subject"] == INVITATION_SUBJECT
    assert f"\n{REGISTRATION_URL}\n" in mail.text
    assert PORTAL_URL not in mail.text
    assert_no_medical_content(mail, communication)
    assert patient_notice(created) == "invitation"
    assert transmit["agent"][1]["network"]["address"] == f"mailto:{CONTAINED_EMAIL}"


async def test_without_any_address_nothing_is_sent_and_the_decision_is_recorded(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], catcher: MailCatcher
) -> None:
    with mail_hub(tmp_path, database_url, app_keys, smtp_url=catcher.url) as hub:
        silent = await post(hub, "xis", "/Communication", notification(email=None))
        # A second notification that does mail: once it has arrived and is audited, the
        # first would have been too, had it queued anything.
        mailed = await post(hub, "xis", "/Communication", notification(bsn=OTHER_BSN))
        await asyncio.to_thread(catcher.wait_for, 1)
        await settled_transmits(hub, mailed)
        assert await transmits(hub, silent) == []
        decision = patient_notice(await created_event(hub, silent))

    assert decision.startswith("none")
    assert "no e-mail address" in decision
    assert [mail.recipients for mail in catcher.messages] == [(CONTAINED_EMAIL,)]
    assert await email_rows(database_url) == []  # the delivered one is gone, none other


async def test_with_mail_off_nothing_is_queued(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys]
) -> None:
    with mail_hub(tmp_path, database_url, app_keys, smtp_url=None) as hub:
        await post(hub, "xis", "/Patient", registered_patient(BSN, REGISTERED_EMAIL))
        request_id = await post(hub, "xis", "/Communication", notification())
        # The outbox row would have been written in the create's transaction.
        rows = await email_rows(database_url)
        assert await transmits(hub, request_id) == []
        decision = patient_notice(await created_event(hub, request_id))

    assert rows == []
    assert decision == "new-message (not sent: e-mail is off, HUB_SMTP_URL is unset)"


async def test_an_update_does_not_mail_the_patient_again(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], catcher: MailCatcher
) -> None:
    matrix = matrix_where_the_xis_updates_communications(tmp_path)
    with mail_hub(
        tmp_path, database_url, app_keys, smtp_url=catcher.url, authz_matrix=matrix
    ) as hub:
        communication = notification()
        async with hub.client("xis") as xis:
            created = await xis.post("/Communication", json=communication)
            assert created.status_code == 201, created.text
            stored = created.json()
            stored["payload"][0]["contentString"] = "A corrected message."
            updated = await xis.put(
                f"/Communication/{stored['id']}",
                json=stored,
                headers={"If-Match": 'W/"1"', "X-Request-Id": "update-1"},
            )
        assert updated.status_code == 200, updated.text
        await asyncio.to_thread(catcher.wait_for, 1)
        assert await transmits(hub, "update-1") == []
        [update_event] = await audit_events(hub, requestId="update-1")

    assert updated.json()["meta"]["versionId"] == "2"
    assert len(catcher.messages) == 1
    assert "detail" not in update_event["entity"][0]


# -- when the mail server is down ------------------------------------------------------


async def test_a_mail_server_that_is_down_is_retried_until_it_takes_the_mail(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys]
) -> None:
    # Bound but not listening: connections are refused, and nobody else takes the port.
    reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserved.bind(("127.0.0.1", 0))
    smtp_url = f"smtp://127.0.0.1:{reserved.getsockname()[1]}"
    with mail_hub(
        tmp_path, database_url, app_keys, smtp_url=smtp_url, retry_base_seconds=0.5
    ) as hub:
        request_id = await post(hub, "xis", "/Communication", notification())

        async def failed_once() -> list[dict[str, Any]] | None:
            return await transmits(hub, request_id) or None

        [first, *_] = await eventually(failed_once)
        [pending] = await email_rows(database_url)
        with MailCatcher(sock=reserved) as catcher:
            [mail] = await asyncio.to_thread(catcher.wait_for, 1)
            attempts = await settled_transmits(hub, request_id)
        rows_after = await email_rows(database_url)

    assert first["outcome"] == "4"
    assert f"could not send mail via {smtp_url}" in first["outcomeDesc"]
    assert pending.attempts >= 1 and pending.state == "pending"
    assert pending.last_error is not None and smtp_url in pending.last_error
    assert mail.recipients == (CONTAINED_EMAIL,)
    # One transmit AuditEvent per attempt: the failures, then the one success.
    *failures, success = attempts
    assert failures and all(event["outcome"] == "4" for event in failures)
    assert success["outcome"] == "0"
    assert len({extension(event, "request-id") for event in attempts}) == len(attempts)
    assert len({extension(event, "trace-id") for event in attempts}) == 1
    assert rows_after == []


# -- a mail server that insists on STARTTLS and a login ---------------------------------


async def test_submission_with_starttls_and_login_trusts_the_hubs_ca_bundle(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys]
) -> None:
    """`submission://user:password@host:port`: STARTTLS first, verified against
    HUB_CA_BUNDLE, then AUTH; the password shows up in no AuditEvent and no row."""
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_tls)
    bundle = tmp_path / "mail-ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"s3cret/pw", handled=False)

    with MailCatcher(
        tls_context=server_tls, require_starttls=True, authenticator=authenticator
    ) as catcher:
        smtp_url = f"submission://hub:s3cret%2Fpw@127.0.0.1:{catcher.port}"
        with mail_hub(tmp_path, database_url, app_keys, smtp_url=smtp_url, ca_bundle=bundle) as hub:
            request_id = await post(hub, "xis", "/Communication", notification())
            [mail] = await asyncio.to_thread(catcher.wait_for, 1)
            [transmit] = await settled_transmits(hub, request_id)

    assert logins == [(b"hub", b"s3cret/pw")]
    assert mail.recipients == (CONTAINED_EMAIL,)
    assert mail.message["Subject"] == INVITATION_SUBJECT
    assert transmit["outcome"] == "0"
    assert "s3cret" not in json.dumps(transmit)
