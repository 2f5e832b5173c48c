"""The e-mails a patient gets about a notification, and sending them over SMTP.

E-mail is not a safe place for medical information, so the patient only learns THAT
there is a message, never what it says: the composers take an address and a link and
nothing else. They cannot leak a subject or a message text they never receive.

Sending uses aiosmtplib on the event loop (plain SMTP, STARTTLS or implicit TLS, with
login from the URL); a failure raises `MailError`, which the caller turns into a retry
(or, when `permanent`, gives up).
"""

from __future__ import annotations

import enum
import functools
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from hub.net.tls import tls_context
from hub.syntax import is_email_address


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


_TEST_SUBJECT = "Testbericht / Test message (Koppeltaal Hub)"
_TEST_TEXT = """\
Dit is een testbericht van de Koppeltaal Hub: e-mail aan patiënten komt aan.

This is a test message from the Koppeltaal Hub: e-mail to patients arrives.

{link}
"""


def compose_test_message(to: str, hub_url: str, sender: str) -> EmailMessage:
    """What `hub mail test` sends: the same headers as a patient notice, no patient."""
    return _compose(to, sender, _TEST_SUBJECT, _TEST_TEXT, hub_url)


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


class Security(enum.Enum):
    """How the connection to the SMTP server is protected."""

    NONE = "none"  # plain SMTP: a relay on the same host or a trusted network
    STARTTLS = "starttls"  # plain connect, then STARTTLS before anything else, or fail
    TLS = "tls"  # TLS from the first byte (implicit TLS, `smtps://`)


# scheme → (protection, default port): RFC 5321 relay, RFC 6409 submission, RFC 8314.
_SCHEMES = {
    "smtp": (Security.NONE, 25),
    "submission": (Security.STARTTLS, 587),
    "smtps": (Security.TLS, 465),
}
_BOOLEANS = {"true": True, "false": False}


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to deliver: parsed from `HUB_SMTP_URL` by `parse_smtp_url`."""

    security: Security
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:  # for messages and logs: never shows the user or password
        if self.security is Security.TLS:
            return f"smtps://{self.host}:{self.port}"
        if self.security is Security.STARTTLS:
            return f"smtp://{self.host}:{self.port}?starttls=true"
        return f"smtp://{self.host}:{self.port}"


def parse_smtp_url(smtp_url: str) -> SmtpTarget:
    """Parse `HUB_SMTP_URL`; raises ValueError (without echoing a password) when malformed.

    `smtp://[user:password@]host[:port]` is plain SMTP (port 25), `?starttls=true`
    requires STARTTLS on it; `submission://` is message submission (port 587) with
    STARTTLS required; `smtps://` is implicit TLS (port 465). User and password are
    percent-encoded. Nothing else is accepted, so a typo never silently sends in clear.
    """
    parts = urlsplit(smtp_url)
    if parts.scheme not in _SCHEMES:
        raise ValueError("the SMTP URL must start with smtp://, submission:// or smtps://")
    security, default_port = _SCHEMES[parts.scheme]
    try:
        port = parts.port or default_port
    except ValueError:
        raise ValueError("the SMTP URL has an invalid port") from None
    if not parts.hostname:
        raise ValueError("the SMTP URL has no host")
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError("the SMTP URL has a path or fragment; give only host, port and ?starttls")
    security = _with_starttls_option(parts.scheme, security, parts.query)
    return SmtpTarget(
        security=security,
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def _with_starttls_option(scheme: str, security: Security, query: str) -> Security:
    options = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(options) - {"starttls"})
    if unknown:
        raise ValueError(f"the SMTP URL has an unknown parameter {unknown[0]!r} (only starttls)")
    if "starttls" not in options:
        return security
    values = options["starttls"]
    if len(values) != 1 or values[0].lower() not in _BOOLEANS:
        raise ValueError("the SMTP URL's starttls must be true or false")
    wanted = _BOOLEANS[values[0].lower()]
    if scheme == "smtp":
        return Security.STARTTLS if wanted else Security.NONE
    if scheme == "submission" and wanted:
        return security
    raise ValueError(
        "submission:// always uses STARTTLS"
        if scheme == "submission"
        else "smtps:// is TLS from the start; starttls does not apply"
    )


@functools.lru_cache(maxsize=4)
def mail_tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """The trust a mail server's certificate is verified against: the hub's (HUB_CA_BUNDLE)."""
    return tls_context(ca_bundle)


async def send_mail(
    smtp_url: str,
    message: EmailMessage,
    *,
    timeout: float,  # noqa: ASYNC109 - aiosmtplib's per-operation timeout
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Deliver `message` to the SMTP server of `smtp_url`, or raise MailError.

    TLS (`smtps://`, or STARTTLS for `submission://` and `smtp://…?starttls=true`) is
    verified against `ssl_context` (default: the system's trust store and certifi's);
    STARTTLS is required there, so a server that does not offer it gets nothing, not
    even the login. Plain `smtp://` never upgrades: a relay on a trusted network.
    User and password in the URL log in first (the password appears in no message).
    `timeout` bounds each network operation, not the whole exchange.
    """
    try:
        target = parse_smtp_url(smtp_url)
    except ValueError as error:  # settings validate the URL at start; retrying cannot help
        raise MailError(f"cannot send mail: {error}", permanent=True) from None
    try:
        refused, _ = await aiosmtplib.send(
            message,
            hostname=target.host,
            port=target.port,
            username=target.username,
            password=target.password if target.username is not None else None,
            use_tls=target.security is Security.TLS,
            start_tls=target.security is Security.STARTTLS,
            tls_context=ssl_context or mail_tls_context(None),
            timeout=timeout,
        )
    except aiosmtplib.SMTPRecipientsRefused as error:
        replies = {
            refusal.recipient: (refusal.code, refusal.message) for refusal in error.recipients
        }
        raise MailError(
            f"{target} refused the recipient ({_replies(replies)})",
            permanent=all(code >= 500 for code, _ in replies.values()),
        ) from None
    except aiosmtplib.SMTPResponseException as error:
        raise MailError(
            f"{target} answered {error.code} {_text(error.message)}",
            permanent=error.code >= 500,
        ) from None
    except (aiosmtplib.SMTPException, OSError) as error:
        # Refused connections, timeouts, DNS and TLS failures, no STARTTLS or AUTH offered.
        raise MailError(f"could not send mail via {target}: {error}") from None
    if refused:  # some, but not all, recipients were refused
        replies = {address: (reply.code, reply.message) for address, reply in refused.items()}
        raise MailError(f"{target} refused a recipient ({_replies(replies)})")


def _replies(refused: dict[str, tuple[int, str]]) -> str:
    # Servers often echo the address in their reply; keep it out of logs and retry notes.
    return "; ".join(
        f"{code} {_text(reply).replace(address, '<recipient>')}"
        for address, (code, reply) in refused.items()
    )


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
