"""Koppeltaal's rules for a Subscription (TOP-KT-006), checked on create and update.

Pure: the endpoint's network checks (registered prefixes, resolved addresses) are
`hub.net.check_url`, and criteria parsing is injected, so this module needs
neither the network nor the query parser. Every violation is reported at once, each
with the FHIRPath of the element, and the caller answers 422.

`channel.header` values are often shared secrets, so diagnostics name a header but
never echo its value: they end up in AuditEvent.outcomeDesc.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from hub.fhir.outcome import FhirError, Issue
from hub.syntax import parse_channel_header

_ROOT = "Subscription"

# Headers the hub itself writes (the request framing and the trace headers), and the
# hop-by-hop headers that would change how the connection behaves.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "proxy-connection",
        "x-request-id",
        "x-correlation-id",
        "x-trace-id",
    }
)


def validate_subscription(
    resource: Mapping[str, Any],
    *,
    now: datetime,
    parse_criteria: Callable[[str], Any],
) -> list[Issue]:
    """Every way `resource` breaks the Subscription rules; empty when it complies.

    `now` must be timezone-aware. `parse_criteria` raises `FhirError` for criteria
    the hub cannot evaluate.
    """
    channel = resource.get("channel")
    return [
        *_check_channel(channel if isinstance(channel, Mapping) else None),
        *_check_criteria(resource.get("criteria"), parse_criteria),
        *_check_end(resource.get("end"), now),
    ]


def normalise_status(
    resource: Mapping[str, Any], *, current: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The resource as stored: the hub, not the client, owns `status` and `error`.

    A client asks for `requested` or `active` and gets `active`; `off` stays `off`.
    A client-supplied `error` element is always dropped. `status = error` is the
    hub's verdict: on create it becomes `active`; on update (`current` is the stored
    version) it is kept, with the stored `error`, only while the stored version is in
    error itself, so a client that writes back what it read does not clear the
    verdict, and one that asks for `active` resets it.
    """
    stored = copy.deepcopy(dict(resource))
    stored.pop("error", None)
    requested = stored.get("status")
    if requested == "off":
        return stored
    if requested == "error" and current is not None and current.get("status") == "error":
        if "error" in current:
            stored["error"] = current["error"]
        return stored
    stored["status"] = "active"
    return stored


def _issue(code: str, diagnostics: str, element: str) -> Issue:
    return Issue(code, diagnostics, (f"{_ROOT}.{element}",))


def _check_channel(channel: Mapping[str, Any] | None) -> Iterator[Issue]:
    if channel is None:
        yield _issue("required", "channel is required", "channel")
        return
    if channel.get("type") != "rest-hook":
        yield _issue(
            "not-supported",
            f"channel.type must be 'rest-hook', not {channel.get('type')!r}",
            "channel.type",
        )
    yield from _check_endpoint(channel.get("endpoint"))
    if "payload" in channel:
        yield _issue(
            "not-supported",
            "channel.payload must be absent: notifications carry no body, the"
            " receiver searches with its criteria",
            "channel.payload",
        )
    headers = channel.get("header", [])
    if not isinstance(headers, list):
        yield _issue("structure", "channel.header must be a list of strings", "channel.header")
        return
    for index, line in enumerate(headers):
        yield from _check_header(line, f"channel.header[{index}]")


def _check_endpoint(endpoint: object) -> Iterator[Issue]:
    if endpoint is None or endpoint == "":
        yield _issue("required", "channel.endpoint is required", "channel.endpoint")
        return
    if not isinstance(endpoint, str):
        yield _issue("value", "channel.endpoint must be a URL string", "channel.endpoint")
        return
    try:
        parts = urlsplit(endpoint)
        has_host = bool(parts.hostname)
    except ValueError:
        parts, has_host = None, False
    if parts is None or parts.scheme.lower() != "https" or not has_host:
        yield _issue("value", "channel.endpoint must be an absolute https URL", "channel.endpoint")


def _check_header(line: object, element: str) -> Iterator[Issue]:
    if not isinstance(line, str):
        yield _issue("value", f"{element} must be a string", element)
        return
    try:
        name, _ = parse_channel_header(line)
    except ValueError as exc:
        yield _issue("value", f"{element} {exc}", element)
        return
    if name.lower() in RESERVED_HEADERS:
        yield _issue(
            "business-rule",
            f"{element} may not set {name}: the hub writes that header itself",
            element,
        )


def _check_criteria(criteria: object, parse_criteria: Callable[[str], Any]) -> Iterator[Issue]:
    if criteria is None or criteria == "":
        yield _issue("required", "criteria is required", "criteria")
        return
    if not isinstance(criteria, str):
        yield _issue("value", "criteria must be a search URL string", "criteria")
        return
    try:
        parse_criteria(criteria)
    except FhirError as error:
        for issue in error.issues:
            yield _issue(issue.code, issue.diagnostics, "criteria")


def _check_end(end: object, now: datetime) -> Iterator[Issue]:
    if end is None:
        return
    try:
        moment = datetime.fromisoformat(end) if isinstance(end, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        yield _issue("value", "end must be an instant with a time zone", "end")
    elif moment <= now:
        yield _issue("business-rule", f"end {end} is in the past", "end")
