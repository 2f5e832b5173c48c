"""Wire syntax that the business rules and the delivery mechanics share.

A Subscription's `channel.header` lines are checked when it is written
(`hub.rules.subscription`) and turned into request headers when a notification
is sent (`hub.notify.webhook`); an e-mail address is checked in a patient
notification (`hub.rules.notification`) and again before a mail is composed
(`hub.notify.mail`). One definition each, below both.
"""

from __future__ import annotations

import re

# RFC 7230 §3.2.6: a header name is a token of these characters.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Visible ASCII, space and tab. Stricter than RFC 7230's obs-text: HTTP has no agreed
# encoding for other bytes, and CR, LF and NUL would split or end the header.
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")
_OWS = " \t"

# A pragmatic, ASCII-only address: we send mail to it, and neither an internationalised
# address (which needs SMTPUTF8 end to end) nor anything with whitespace or line breaks
# (header injection) belongs there.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+", re.ASCII)
_MAX_EMAIL_LENGTH = 254  # RFC 5321: a forward-path of 256 octets including "<" and ">"
_MAX_LOCAL_PART_LENGTH = 64


def parse_channel_header(line: str) -> tuple[str, str]:
    """Split a `channel.header` line into the header name and value it stands for.

    The name is everything before the first `:` and must be an RFC 7230 token (so
    no whitespace before the colon). The value is the rest with surrounding spaces
    and tabs removed, as HTTP itself ignores them: `Name: value`, `Name:value` and
    `Name:  value ` all mean `("Name", "value")`, and the wire always carries
    `Name: value`. An empty value is allowed. Raises ValueError for a malformed line.
    """
    name, colon, raw_value = line.partition(":")
    if not colon:
        raise ValueError("is not a 'Name: value' line (no ':')")
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"header name {name!r} is not an HTTP token")
    if not _FIELD_VALUE.fullmatch(raw_value):
        raise ValueError(
            f"value of header {name!r} contains a control character (such as CR, LF or NUL)"
            " or a non-ASCII character"
        )
    return name, raw_value.strip(_OWS)


def is_email_address(value: str) -> bool:
    """True for a plain ASCII `local@domain.tld` address that we are willing to mail."""
    local_part, _, _ = value.partition("@")
    return (
        len(value) <= _MAX_EMAIL_LENGTH
        and len(local_part) <= _MAX_LOCAL_PART_LENGTH
        and _EMAIL_ADDRESS.fullmatch(value) is not None
    )
