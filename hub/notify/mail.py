"""The e-mails a patient gets about a notification, and sending them over SMTP.

E-mail is not a safe place for medical information, so the patient only learns THAT
there is a message, never what it says: the composers take an address and a link and
nothing else. They cannot leak a subject or a message text they never receive.

Sending uses the standard library's blocking `smtplib` in a worker thread; a failure
raises `MailError`, which the caller turns into a retry (or, when `permanent`, gives up).
"""

from __future__ import annotations

import asyncio
import enum
import smtplib
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from urllib.parse import unquote, urlsplit

from hub.syntax import is_email_address

_DEFAULT_PORTS = {"smtp": 25, "smtps": 465}


class MailError(Exception):
    """Sending an e-mail failed. `permanent` when the server refused for good (5xx)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


# -- whom to tell, and how ------------------------------------------------------------


class NoticeKind(enum.Enum):
    NEW_MESSAGE = "new-message"  # a registered patient: "you have a new message"
    INVITATION = "invitation"  # not registered, but the XIS gave an address: invite
    NONE = "none"  # nobody to write to


@dataclass(frozen=True)
class PatientNotice:
    kind: NoticeKind
    address: str | None = None


def decide_patient_notice(
    *, registered_email: str | None, contained_email: str | None
) -> PatientNotice:
    """Whom to e-mail about a new notification.

    `registered_email`: the e-mail of the domain's Patient with the recipient's BSN, when
    there is one (the patient is registered). `contained_email`: the e-mail the XIS put
    in the Communication's contained Patient. The registered address wins: it is the one
    the patient chose; the XIS's address is only for inviting someone not yet registered.
    An address that is not a usable e-mail address counts as absent, so the composers
    never refuse what this decides.
    """
    if registered_email and is_email_address(registered_email):
        return PatientNotice(NoticeKind.NEW_MESSAGE, registered_email)
    if contained_email and is_email_address(contained_email):
        return PatientNotice(NoticeKind.INVITATION, contained_email)
    return PatientNotice(NoticeKind.NONE)


# -- composing ------------------------------------------------------------------------

_NEW_MESSAGE_SUBJECT = "Nieuw bericht voor u / New message for you"
_NEW_MESSAGE_TEXT = """\
Beste heer/mevrouw,

Er staat een nieuw bericht van uw zorgverlener voor u klaar. U leest het veilig door in
te loggen op:

{link}

Om uw privacy te beschermen staat de inhoud van het bericht niet in deze e-mail.
Dit is een automatisch verstuurde e-mail; u kunt hier niet op antwoorden.

--

Dear Sir or Madam,

A new message from your healthcare provider is waiting for you. You can read it
securely by logging in at:

{link}

To protect your privacy, this e-mail does not contain the message itself.
This e-mail was sent automatically; please do not reply to it.
"""

# Subjects stay under 70 characters, so "Subject: ..." fits one 78-character line unfolded.
_INVITATION_SUBJECT = "Uitnodiging om u te registreren / Invitation to register"
_INVITATION_TEXT = """\
Beste heer/mevrouw,

Uw zorgverlener heeft u een bericht gestuurd. Om het veilig te kunnen lezen, registreert
u zich eerst via:

{link}

Om uw privacy te beschermen staat de inhoud van het bericht niet in deze e-mail.
Dit is een automatisch verstuurde e-mail; u kunt hier niet op antwoorden.

--

Dear Sir or Madam,

Your healthcare provider has sent you a message. To read it securely, please register
first at:

{link}

To protect your privacy, this e-mail does not contain the message itself.
This e-mail was sent automatically; please do not reply to it.
"""


def compose_new_message_notice(to: str, portal_url: str, sender: str) -> EmailMessage:
    """ "You have a new message" for a registered patient, with a link to the portal."""
    return _compose(to, sender, _NEW_MESSAGE_SUBJECT, _NEW_MESSAGE_TEXT, portal_url)


def compose_invitation(to: str, registration_url: str, sender: str) -> EmailMessage:
    """An invitation to register, for a patient not yet registered."""
    return _compose(to, sender, _INVITATION_SUBJECT, _INVITATION_TEXT, registration_url)


def _compose(to: str, sender: str, subject: str, template: str, link: str) -> EmailMessage:
    if not is_email_address(to):
        raise ValueError("the recipient is not a valid e-mail address")
    if urlsplit(link).scheme not in {"https", "http"} or any(c.isspace() for c in link):
        raise ValueError(f"the link must be an http(s) URL without whitespace: {link!r}")
    message = EmailMessage()
    message["From"] = sender  # the header registry parses it, and refuses line breaks
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain=_domain_of(message))
    # RFC 3834: tells auto-responders (out-of-office) not to answer.
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(template.format(link=link))
    return message


def _domain_of(message: EmailMessage) -> str:
    # make_msgid() would otherwise call socket.getfqdn(), which may wait on DNS.
    addresses: tuple[Address, ...] = message["From"].addresses
    return addresses[0].domain if addresses and addresses[0].domain else "localhost"


# -- sending --------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to deliver: parsed from `smtp://[user:password@]host[:port]`."""

    use_tls: bool  # smtps: TLS from the first byte (implicit TLS, port 465)
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:  # for messages: never shows the password
        return f"{'smtps' if self.use_tls else 'smtp'}://{self.host}:{self.port}"


def parse_smtp_url(smtp_url: str) -> SmtpTarget:
    """Parse `HUB_SMTP_URL`; raises ValueError (without echoing a password) when malformed."""
    parts = urlsplit(smtp_url)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError("the SMTP URL must start with smtp:// or smtps://")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ValueError("the SMTP URL has an invalid port") from None
    if not parts.hostname:
        raise ValueError("the SMTP URL has no host")
    return SmtpTarget(
        use_tls=parts.scheme == "smtps",
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


async def send_mail(
    smtp_url: str,
    message: EmailMessage,
    *,
    # A socket timeout for smtplib, not an asyncio one: cancelling the await cannot stop
    # the worker thread, only the socket timeout can.
    timeout: float,  # noqa: ASYNC109
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Deliver `message` to the SMTP server of `smtp_url`, or raise MailError.

    `smtp://` talks plain SMTP (a relay on the same host or network); `smtps://` uses
    implicit TLS, verified against `ssl_context` (default: the system's trust store).
    User and password in the URL (percent-encoded) log in first. `timeout` bounds each
    network operation, not the whole exchange.
    """
    target = parse_smtp_url(smtp_url)
    # smtplib blocks; a thread keeps the event loop serving requests meanwhile.
    await asyncio.to_thread(_deliver, target, message, timeout, ssl_context)


def _deliver(
    target: SmtpTarget, message: EmailMessage, timeout: float, context: ssl.SSLContext | None
) -> None:
    try:
        client = (
            smtplib.SMTP_SSL(
                target.host,
                target.port,
                timeout=timeout,
                context=context or ssl.create_default_context(),
            )
            if target.use_tls
            else smtplib.SMTP(target.host, target.port, timeout=timeout)
        )
        with client:
            if target.username is not None:
                client.login(target.username, target.password or "")
            refused = client.send_message(message)
    except smtplib.SMTPRecipientsRefused as error:
        codes = [code for code, _ in error.recipients.values()]
        raise MailError(
            f"{target} refused the recipient ({_replies(error.recipients)})",
            permanent=all(code >= 500 for code in codes),
        ) from error
    except smtplib.SMTPResponseException as error:
        raise MailError(
            f"{target} answered {error.smtp_code} {_text(error.smtp_error)}",
            permanent=error.smtp_code >= 500,
        ) from error
    except (smtplib.SMTPException, OSError) as error:
        # OSError covers refused connections, timeouts, DNS and TLS failures.
        raise MailError(f"could not send mail via {target}: {error}") from error
    if refused:  # some, but not all, recipients were refused
        raise MailError(f"{target} refused a recipient ({_replies(refused)})")


def _replies(refused: dict[str, tuple[int, bytes]]) -> str:
    # Servers often echo the address in their reply; keep it out of logs and retry notes.
    return "; ".join(
        f"{code} {_text(reply).replace(address, '<recipient>')}"
        for address, (code, reply) in refused.items()
    )


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
