"""Koppeltaal's Subscription rules: every rule, with the element it names."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hub.fhir.outcome import FhirError, Issue, bad_request
from hub.rules.subscription import (
    RESERVED_HEADERS,
    normalise_status,
    validate_subscription,
)
from hub.syntax import parse_channel_header

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
OFFICIAL_EXAMPLE = (
    Path(__file__).parent.parent / "fixtures" / "fhir-r4" / "subscription-example.json"
)


def accept_any(criteria: str) -> None:
    return None


def valid() -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Follow tasks",
        "criteria": "Task?status=completed",
        "end": "2030-01-01T00:00:00Z",
        "channel": {
            "type": "rest-hook",
            "endpoint": "https://module.example/hooks/tasks",
            "header": ["Authorization: Bearer s3cret", "X-Subscription: tasks"],
        },
    }


def issues_of(resource: dict[str, Any], **kwargs: Any) -> list[Issue]:
    return validate_subscription(
        resource, now=NOW, parse_criteria=kwargs.get("parse_criteria", accept_any)
    )


def expressions(resource: dict[str, Any]) -> list[str]:
    return [expression for issue in issues_of(resource) for expression in issue.expression]


def test_a_koppeltaal_subscription_passes() -> None:
    assert issues_of(valid()) == []


def test_the_official_example_is_refused_for_its_payload() -> None:
    example = json.loads(OFFICIAL_EXAMPLE.read_text())
    issues = {issue.expression: issue for issue in issues_of(example)}
    payload = issues[("Subscription.channel.payload",)]
    assert payload.code == "not-supported"
    assert "payload must be absent" in payload.diagnostics
    # Its `end` (2021) lies in the past too; nothing else is wrong with it.
    assert set(issues) == {("Subscription.channel.payload",), ("Subscription.end",)}


def test_every_violation_is_reported_at_once() -> None:
    resource = valid()
    resource["channel"] = {"type": "websocket", "payload": "", "header": ["Host: x"]}
    resource["criteria"] = ""
    resource["end"] = "2020-01-01T00:00:00Z"
    assert expressions(resource) == [
        "Subscription.channel.type",
        "Subscription.channel.endpoint",
        "Subscription.channel.payload",
        "Subscription.channel.header[0]",
        "Subscription.criteria",
        "Subscription.end",
    ]


@pytest.mark.parametrize("channel_type", ["websocket", "email", "message", None])
def test_only_rest_hook(channel_type: str | None) -> None:
    resource = valid()
    resource["channel"]["type"] = channel_type
    [issue] = issues_of(resource)
    assert (issue.code, issue.expression) == ("not-supported", ("Subscription.channel.type",))


def test_channel_is_required() -> None:
    resource = valid()
    del resource["channel"]
    assert expressions(resource) == ["Subscription.channel"]


@pytest.mark.parametrize(
    ("endpoint", "code"),
    [
        (None, "required"),
        ("", "required"),
        ("http://module.example/hooks", "value"),
        ("ftp://module.example/hooks", "value"),
        ("https:///hooks", "value"),
        ("/hooks", "value"),
        ("https://[::1/hooks", "value"),
        (42, "value"),
    ],
)
def test_endpoint_must_be_an_https_url(endpoint: object, code: str) -> None:
    resource = valid()
    if endpoint is None:
        del resource["channel"]["endpoint"]
    else:
        resource["channel"]["endpoint"] = endpoint
    [issue] = issues_of(resource)
    assert (issue.code, issue.expression) == (code, ("Subscription.channel.endpoint",))


def test_an_uppercase_https_scheme_is_https() -> None:
    resource = valid()
    resource["channel"]["endpoint"] = "HTTPS://module.example/hooks"
    assert issues_of(resource) == []


@pytest.mark.parametrize("payload", ["application/fhir+json", "", None])
def test_payload_must_be_absent(payload: str | None) -> None:
    resource = valid()
    resource["channel"]["payload"] = payload
    assert expressions(resource) == ["Subscription.channel.payload"]


@pytest.mark.parametrize("name", sorted(RESERVED_HEADERS))
@pytest.mark.parametrize("case", [str.lower, str.upper, str.title])
def test_headers_the_hub_writes_cannot_be_set(name: str, case: Any) -> None:
    resource = valid()
    resource["channel"]["header"].append(f"{case(name)}: x")
    [issue] = issues_of(resource)
    assert (issue.code, issue.expression) == ("business-rule", ("Subscription.channel.header[2]",))
    assert case(name) in issue.diagnostics


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("Authorization Bearer x", "no ':'"),
        (": value", "not an HTTP token"),
        ("X Key: value", "not an HTTP token"),
        ("X-Key : value", "not an HTTP token"),
        ("X-Kéy: value", "not an HTTP token"),
        ("X-Key: a\r\nX-Injected: b", "control character"),
        ("X-Key: a\nb", "control character"),
        ("X-Key: a\rb", "control character"),
        ("X-Key: a\x00b", "control character"),
        ("X-Key: a\x7fb", "control character"),
        ("X-Key: café", "non-ASCII"),
    ],
)
def test_malformed_header_lines(line: str, complaint: str) -> None:
    resource = valid()
    resource["channel"]["header"] = ["X-Ok: 1", line]
    [issue] = issues_of(resource)
    assert (issue.code, issue.expression) == ("value", ("Subscription.channel.header[1]",))
    assert complaint in issue.diagnostics
    assert "café" not in issue.diagnostics  # values may be secrets: never echoed


def test_header_must_be_a_list_of_strings() -> None:
    resource = valid()
    resource["channel"]["header"] = "X-Key: v"
    assert expressions(resource) == ["Subscription.channel.header"]
    resource["channel"]["header"] = ["X-Key: v", 7]
    assert expressions(resource) == ["Subscription.channel.header[1]"]


@pytest.mark.parametrize(
    ("line", "header"),
    [
        ("X-Key: v", ("X-Key", "v")),
        ("X-Key:v", ("X-Key", "v")),
        ("X-Key:   v w \t", ("X-Key", "v w")),
        ("X-Key: Bearer a:b", ("X-Key", "Bearer a:b")),
        ("X-Key:", ("X-Key", "")),
        ("x-key: V", ("x-key", "V")),
    ],
)
def test_parse_channel_header(line: str, header: tuple[str, str]) -> None:
    assert parse_channel_header(line) == header


def test_criteria_are_required() -> None:
    resource = valid()
    del resource["criteria"]
    [issue] = issues_of(resource)
    assert (issue.code, issue.expression) == ("required", ("Subscription.criteria",))


def test_criteria_the_parser_refuses_become_issues_on_criteria() -> None:
    seen: list[str] = []

    def parse_criteria(criteria: str) -> None:
        seen.append(criteria)
        raise FhirError(
            400,
            [
                Issue("not-supported", "unknown search parameter 'bogus'", ("bogus",)),
                Issue("invalid", "bad date", ()),
            ],
        )

    resource = valid()
    resource["criteria"] = "Task?bogus=1&_lastUpdated=x"
    issues = issues_of(resource, parse_criteria=parse_criteria)
    assert seen == ["Task?bogus=1&_lastUpdated=x"]
    assert issues == [
        Issue("not-supported", "unknown search parameter 'bogus'", ("Subscription.criteria",)),
        Issue("invalid", "bad date", ("Subscription.criteria",)),
    ]


def test_criteria_parsing_is_injected() -> None:
    def refuse(criteria: str) -> None:
        raise bad_request("no such type", "Subscription.criteria")

    resource = valid()
    assert issues_of(resource, parse_criteria=refuse)[0].diagnostics == "no such type"


@pytest.mark.parametrize(
    ("end", "code"),
    [
        ("2025-03-01T11:59:59Z", "business-rule"),
        ("2025-03-01T12:00:00+00:00", "business-rule"),
        ("2025-03-01T13:30:00+02:00", "business-rule"),
        ("2025-03-01", "value"),
        ("yesterday", "value"),
        (20250301, "value"),
    ],
)
def test_end_in_the_past_or_unreadable_is_refused(end: object, code: str) -> None:
    resource = valid()
    resource["end"] = end
    [issue] = issues_of(resource)
    assert (issue.code, issue.expression) == (code, ("Subscription.end",))


def test_end_in_the_future_or_absent_is_fine() -> None:
    resource = valid()
    resource["end"] = "2025-03-01T12:00:01Z"
    assert issues_of(resource) == []
    del resource["end"]
    assert issues_of(resource) == []


# --- normalise_status ---


@pytest.mark.parametrize(
    ("requested", "stored"),
    [("requested", "active"), ("active", "active"), ("off", "off"), ("error", "active")],
)
def test_status_on_create(requested: str, stored: str) -> None:
    resource = valid() | {"status": requested, "error": "client says so"}
    result = normalise_status(resource)
    assert result["status"] == stored
    assert "error" not in result


def test_status_error_on_update_keeps_the_hubs_verdict() -> None:
    current = valid() | {"status": "error", "error": "HTTP 503 from https://module.example/"}
    update = valid() | {"status": "error", "error": "client rewrote this"}
    result = normalise_status(update, current=current)
    assert (result["status"], result["error"]) == ("error", "HTTP 503 from https://module.example/")


@pytest.mark.parametrize("requested", ["active", "requested"])
def test_asking_for_active_on_update_clears_the_error(requested: str) -> None:
    current = valid() | {"status": "error", "error": "HTTP 503"}
    result = normalise_status(valid() | {"status": requested}, current=current)
    assert result["status"] == "active"
    assert "error" not in result


def test_status_error_on_update_of_a_healthy_subscription_is_active() -> None:
    current = valid() | {"status": "active"}
    result = normalise_status(valid() | {"status": "error", "error": "x"}, current=current)
    assert (result["status"], "error" in result) == ("active", False)


def test_normalise_status_leaves_its_input_alone() -> None:
    resource = valid() | {"error": "x"}
    before = copy.deepcopy(resource)
    normalise_status(resource)
    assert resource == before
