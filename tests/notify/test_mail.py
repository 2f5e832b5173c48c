from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from hub.notify.mail import (
    MailError,
    NoticeKind,
    PatientNotice,
    Security,
    compose_invitation,
    compose_new_message_notice,
    decide_patient_notice,
    mail_tls_context,
    parse_smtp_url,
    send_mail,
)
from tests.rules.samples import example_communication

SENDER = "Koppeltaal Hub <noreply@hub.example.nl>"
PORTAL = "https://portal.example.nl/berichten"
REGISTRATION = "https://portal.example.nl/registreren?via=mail"
PATIENT = "jan.janssen@example.com"


class Mailbox:
    """An aiosmtpd handler that keeps what it receives and refuses `unknown@` users."""

    def __init__(self) -> None:
        self.received: list[Envelope] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("unknown@"):
            return f"550 5.1.1 <{address}>: no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(envelope)
        return "250 Message accepted for delivery"

    def only_message(self) -> tuple[list[str], EmailMessage]:
        assert len(self.received) == 1
        envelope = self.received[0]
        assert isinstance(envelope.original_content, bytes)
        message = message_from_bytes(envelope.original_content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        return envelope.rcpt_tos, message


@asynccontextmanager
async def smtp_server(
    ssl_context: ssl.SSLContext | None = None, **smtp_options: Any
) -> AsyncIterator[tuple[Mailbox, int]]:
    """A real SMTP server on 127.0.0.1 and a free port, served by the test's own loop."""
    mailbox = Mailbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(mailbox, hostname="localhost", loop=loop, **smtp_options),
        "127.0.0.1",
        0,
        ssl=ssl_context,
    )
    try:
        yield mailbox, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, so nobody else takes it, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- composing ------------------------------------------------------------------------


def test_the_composers_cannot_receive_medical_content() -> None:
    assert list(inspect.signature(compose_new_message_notice).parameters) == [
        "to",
        "portal_url",
        "sender",
    ]
    assert list(inspect.signature(compose_invitation).parameters) == [
        "to",
        "registration_url",
        "sender",
    ]


@pytest.mark.parametrize(
    "to", ["jan@example.com\r\nBcc: everyone@example.com", "Jan <jan@example.com>", "jan", ""]
)
def test_compose_refuses_anything_but_a_plain_address(to: str) -> None:
    with pytest.raises(ValueError, match="e-mail address"):
        compose_new_message_notice(to, PORTAL, SENDER)


@pytest.mark.parametrize("link", ["javascript:alert(1)", "https://x.nl/a b", "portal.example.nl"])
def test_compose_refuses_a_link_that_is_no_web_address(link: str) -> None:
    with pytest.raises(ValueError, match="http"):
        compose_invitation(PATIENT, link, SENDER)


def test_the_message_is_marked_automatic_and_ids_use_the_senders_domain() -> None:
    message = compose_new_message_notice(PATIENT, PORTAL, SENDER)
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"].endswith("@hub.example.nl>")
    assert message["Date"]


# -- sending --------------------------------------------------------------------------


async def test_a_registered_patient_gets_the_notice_with_the_portal_link() -> None:
    communication = example_communication()
    topic = communication["topic"]["text"]
    text = communication["payload"][0]["contentString"]
    async with smtp_server() as (mailbox, port):
        message = compose_new_message_notice(PATIENT, PORTAL, SENDER)
        await send_mail(f"smtp://127.0.0.1:{port}", message, timeout=5)
    recipients, received = mailbox.only_message()
    assert recipients == [PATIENT]
    assert received["To"] == PATIENT
    assert received["Subject"] == "Nieuw bericht voor u / New message for you"
    body = received.get_body(("plain",))
    assert body is not None
    content = body.get_content()
    assert PORTAL in content
    assert "Dear Sir or Madam" in content
    assert "Beste heer/mevrouw" in content
    raw = mailbox.received[0].original_content
    assert isinstance(raw, bytes)
    for secret in (topic, text, "lab", "results"):
        assert secret.lower().encode() not in raw.lower()


async def test_an_unregistered_patient_gets_the_invitation_with_the_registration_link() -> None:
    communication = example_communication()
    async with smtp_server() as (mailbox, port):
        message = compose_invitation(PATIENT, REGISTRATION, SENDER)
        await send_mail(f"smtp://127.0.0.1:{port}", message, timeout=5)
    recipients, received = mailbox.only_message()
    assert recipients == [PATIENT]
    assert received["Subject"].startswith("Uitnodiging")
    assert "Invitation to register" in received["Subject"]
    body = received.get_body(("plain",))
    assert body is not None
    content = body.get_content()
    assert REGISTRATION in content
    assert PORTAL + "\n" not in content
    assert communication["topic"]["text"] not in content
    assert communication["payload"][0]["contentString"] not in content


async def test_a_refused_connection_raises_mail_error(closed_port: int) -> None:
    message = compose_new_message_notice(PATIENT, PORTAL, SENDER)
    with pytest.raises(MailError, match=f"smtp://127.0.0.1:{closed_port}") as caught:
        await send_mail(f"smtp://127.0.0.1:{closed_port}", message, timeout=5)
    assert not caught.value.permanent


async def test_a_rejected_recipient_raises_a_permanent_mail_error() -> None:
    address = "unknown@example.com"
    async with smtp_server() as (mailbox, port):
        message = compose_new_message_notice(address, PORTAL, SENDER)
        with pytest.raises(MailError, match="refused the recipient") as caught:
            await send_mail(f"smtp://127.0.0.1:{port}", message, timeout=5)
    assert caught.value.permanent
    assert "550" in str(caught.value)
    assert address not in str(caught.value)  # no personal data in retry notes and logs
    assert mailbox.received == []


async def test_smtps_with_login_from_the_url() -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        # handled=False: let aiosmtpd answer 535 itself on failure.
        return AuthResult(success=data.password == b"p@ss:word", handled=False)

    async with smtp_server(
        server_context,
        authenticator=authenticator,
        # aiosmtpd only recognises STARTTLS as TLS; this connection is TLS from the start.
        auth_require_tls=False,
    ) as (mailbox, port):
        message = compose_new_message_notice(PATIENT, PORTAL, SENDER)
        url = f"smtps://hub%40example.nl:p%40ss%3Aword@127.0.0.1:{port}"
        await send_mail(url, message, timeout=5, ssl_context=client_context)
        with pytest.raises(MailError, match="535") as caught:
            await send_mail(
                url.replace("word", "wrong"), message, timeout=5, ssl_context=client_context
            )
    assert caught.value.permanent
    assert "p@ss" not in str(caught.value)
    assert logins[0] == (b"hub@example.nl", b"p@ss:word")
    recipients, _ = mailbox.only_message()
    assert recipients == [PATIENT]


async def test_smtps_refuses_an_untrusted_certificate() -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(server_context)
    async with smtp_server(server_context) as (mailbox, port):
        message = compose_new_message_notice(PATIENT, PORTAL, SENDER)
        with pytest.raises(MailError, match="CERTIFICATE_VERIFY_FAILED"):
            await send_mail(f"smtps://127.0.0.1:{port}", message, timeout=5)
    assert mailbox.received == []


class Logins:
    """An aiosmtpd authenticator that records every login and accepts one password."""

    def __init__(self, password: bytes) -> None:
        self.password = password
        self.seen: list[tuple[bytes, bytes]] = []

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.seen.append((data.login, data.password))
        return AuthResult(success=data.password == self.password, handled=False)


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def client_tls(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return context


@pytest.mark.parametrize(
    "scheme", ["smtp://{auth}127.0.0.1:{port}?starttls=true", "submission://{auth}127.0.0.1:{port}"]
)
async def test_starttls_then_login_from_the_url(
    scheme: str,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    logins = Logins(b"p@ss:word")
    caplog.set_level(logging.DEBUG)
    # The server insists on STARTTLS before anything, and on TLS before AUTH (its default).
    async with smtp_server(tls_context=server_tls, require_starttls=True, authenticator=logins) as (
        mailbox,
        port,
    ):
        message = compose_new_message_notice(PATIENT, PORTAL, SENDER)
        url = scheme.format(auth="hub%40example.nl:p%40ss%3Aword@", port=port)
        await send_mail(url, message, timeout=5, ssl_context=client_tls)
        with pytest.raises(MailError, match="535") as caught:
            await send_mail(
                url.replace("word", "wrong"), message, timeout=5, ssl_context=client_tls
            )
    assert logins.seen[0] == (b"hub@example.nl", b"p@ss:word")
    recipients, received = mailbox.only_message()
    assert recipients == [PATIENT]
    assert received["Subject"] == "Nieuw bericht voor u / New message for you"
    assert caught.value.permanent
    for secret in ("p@ss", "p%40ss", "pass"):
        assert secret not in str(caught.value)
        assert secret not in caplog.text


async def test_starttls_required_sends_nothing_to_a_server_without_it() -> None:
    """No STARTTLS offered: no login and no message in clear, and a retry later."""
    logins = Logins(b"secret")
    async with smtp_server(authenticator=logins, auth_require_tls=False) as (mailbox, port):
        message = compose_new_message_notice(PATIENT, PORTAL, SENDER)
        with pytest.raises(MailError, match="STARTTLS") as caught:
            await send_mail(f"submission://user:secret@127.0.0.1:{port}", message, timeout=5)
    assert not caught.value.permanent
    assert logins.seen == []
    assert mailbox.received == []


async def test_starttls_refuses_an_untrusted_certificate(server_tls: ssl.SSLContext) -> None:
    async with smtp_server(tls_context=server_tls, require_starttls=True) as (mailbox, port):
        message = compose_new_message_notice(PATIENT, PORTAL, SENDER)
        with pytest.raises(MailError, match="CERTIFICATE_VERIFY_FAILED"):
            # The default trust (system and certifi) does not know the test's CA.
            await send_mail(f"smtp://127.0.0.1:{port}?starttls=true", message, timeout=5)
    assert mailbox.received == []


async def test_plain_smtp_stays_plain_when_the_server_offers_starttls(
    server_tls: ssl.SSLContext,
) -> None:
    """`smtp://` is a relay on a trusted network: no surprise upgrade to unverifiable TLS."""
    async with smtp_server(tls_context=server_tls) as (mailbox, port):
        message = compose_new_message_notice(PATIENT, PORTAL, SENDER)
        await send_mail(f"smtp://127.0.0.1:{port}", message, timeout=5)
    recipients, _ = mailbox.only_message()
    assert recipients == [PATIENT]


async def test_the_hubs_ca_bundle_is_trusted_for_mail(
    authority: trustme.CA, server_tls: ssl.SSLContext, tmp_path: Path
) -> None:
    """The trust the delivery worker uses: system, certifi and HUB_CA_BUNDLE."""
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    assert mail_tls_context(bundle) is mail_tls_context(bundle)  # made once, not per mail
    async with smtp_server(tls_context=server_tls, require_starttls=True) as (mailbox, port):
        message = compose_new_message_notice(PATIENT, PORTAL, SENDER)
        url = f"smtp://127.0.0.1:{port}?starttls=true"
        await send_mail(url, message, timeout=5, ssl_context=mail_tls_context(bundle))
        with pytest.raises(MailError, match="CERTIFICATE_VERIFY_FAILED"):
            await send_mail(url, message, timeout=5, ssl_context=mail_tls_context(None))
    assert len(mailbox.received) == 1


# -- the SMTP URL ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "security", "port"),
    [
        ("smtp://mail.example.nl", Security.NONE, 25),
        ("smtps://mail.example.nl", Security.TLS, 465),
        ("smtp://mail.example.nl:2525", Security.NONE, 2525),
        ("submission://mail.example.nl", Security.STARTTLS, 587),
        ("submission://mail.example.nl:2587/", Security.STARTTLS, 2587),
        ("smtp://mail.example.nl?starttls=true", Security.STARTTLS, 25),
        ("smtp://mail.example.nl:587?starttls=TRUE", Security.STARTTLS, 587),
        ("smtp://mail.example.nl?starttls=false", Security.NONE, 25),
        ("submission://mail.example.nl?starttls=true", Security.STARTTLS, 587),
    ],
)
def test_smtp_urls_and_their_default_ports(url: str, security: Security, port: int) -> None:
    target = parse_smtp_url(url)
    assert (target.security, target.host, target.port) == (security, "mail.example.nl", port)
    assert target.username is None


def test_the_target_never_shows_its_password() -> None:
    target = parse_smtp_url("submission://user:secret@mail.example.nl")
    assert (target.username, target.password) == ("user", "secret")
    assert str(target) == "smtp://mail.example.nl:587?starttls=true"
    assert "secret" not in repr(target)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://mail.example.nl", "must start with"),
        ("smtp://", "no host"),
        ("smtp://mail.example.nl:port", "invalid port"),
        ("mail.example.nl", "must start with"),
        ("smtp://mail.example.nl?starttls=yes", "true or false"),
        ("smtp://mail.example.nl?starttls=true&starttls=false", "true or false"),
        ("smtp://mail.example.nl?tls=true", "unknown parameter 'tls'"),
        ("submission://mail.example.nl?starttls=false", "always uses STARTTLS"),
        ("smtps://mail.example.nl?starttls=true", "does not apply"),
        ("smtp://mail.example.nl/inbox", "path"),
    ],
)
def test_malformed_smtp_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"SMTP URL.*{message}|{message}"):
        parse_smtp_url(url)


async def test_a_malformed_url_is_a_permanent_mail_error_not_a_crash() -> None:
    message = compose_new_message_notice(PATIENT, PORTAL, SENDER)
    with pytest.raises(MailError, match="unknown parameter") as caught:
        await send_mail("smtp://127.0.0.1:1?tls=1", message, timeout=5)
    assert caught.value.permanent


# -- whom to tell ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registered", "contained", "expected"),
    [
        (
            "reg@example.com",
            "xis@example.com",
            PatientNotice(NoticeKind.NEW_MESSAGE, "reg@example.com"),
        ),
        ("reg@example.com", None, PatientNotice(NoticeKind.NEW_MESSAGE, "reg@example.com")),
        (None, "xis@example.com", PatientNotice(NoticeKind.INVITATION, "xis@example.com")),
        ("", "xis@example.com", PatientNotice(NoticeKind.INVITATION, "xis@example.com")),
        (
            "not an address",
            "xis@example.com",
            PatientNotice(NoticeKind.INVITATION, "xis@example.com"),
        ),
        (None, None, PatientNotice(NoticeKind.NONE)),
        (None, "not an address", PatientNotice(NoticeKind.NONE)),
    ],
)
def test_decide_patient_notice(
    registered: str | None, contained: str | None, expected: PatientNotice
) -> None:
    assert decide_patient_notice(registered_email=registered, contained_email=contained) == expected
