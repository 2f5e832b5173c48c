"""What an application's own AuditEvent must carry, and may not claim (hub.rules.audit_event)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from hub.audit.events import login_event, rest_event, transmit_event
from hub.interactions.effects import HUB_EVENT_TYPES
from hub.rules.audit_event import MAX_POSTED_EVENT_BYTES, check_kt2_essentials, check_posted_by
from hub.trace import TraceIds

COMPLETE: dict[str, Any] = {
    "resourceType": "AuditEvent",
    "type": {"system": "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle", "code": "x"},
    "recorded": "2025-03-01T12:00:00Z",
    "agent": [
        {"who": {"reference": "Device/koppeltaal-hub"}, "requestor": False},
        {"who": {"reference": "Device/module"}, "requestor": True},
    ],
    "source": {"observer": {"reference": "Device/module"}},
    "entity": [{"what": {"reference": "Task/1/_history/2"}}],
}


def _expressions(event: dict[str, Any]) -> list[str]:
    return [expression for issue in check_kt2_essentials(event) for expression in issue.expression]


def test_a_complete_event_passes() -> None:
    assert check_kt2_essentials(COMPLETE) == []


def test_a_query_entity_names_what_it_is_about() -> None:
    assert _expressions({**COMPLETE, "entity": [{"query": "X2lkPTE="}]}) == []


@pytest.mark.parametrize(
    ("change", "expression"),
    [
        ({"type": {"system": "s"}}, "AuditEvent.type"),
        ({"type": "receive"}, "AuditEvent.type"),
        ({"recorded": ""}, "AuditEvent.recorded"),
        ({"agent": [{"who": {"reference": "Patient/1"}}]}, "AuditEvent.agent"),
        ({"agent": [{"who": {"display": "an app"}}]}, "AuditEvent.agent"),
        ({"agent": {"who": {"reference": "Device/x"}}}, "AuditEvent.agent"),
        ({"agent": [{"who": {"reference": 7}}]}, "AuditEvent.agent"),
        ({"source": {"site": "x"}}, "AuditEvent.source.observer"),
        ({"source": "Device/module"}, "AuditEvent.source.observer"),
        ({"entity": [{"type": {"code": "2"}}]}, "AuditEvent.entity"),
        ({"entity": "Task/1"}, "AuditEvent.entity"),
    ],
)
def test_each_missing_or_misshapen_essential_is_named(
    change: dict[str, Any], expression: str
) -> None:
    assert _expressions({**COMPLETE, **change}) == [expression]


def test_everything_missing_is_named_in_order() -> None:
    assert _expressions({"resourceType": "AuditEvent"}) == [
        "AuditEvent.type",
        "AuditEvent.recorded",
        "AuditEvent.agent",
        "AuditEvent.source.observer",
        "AuditEvent.entity",
    ]


# --- check_posted_by: a posted event speaks for its poster alone -------------------------

MODULE = "Device/module"


def _refused(event: dict[str, Any], **kwargs: Any) -> list[str]:
    issues = check_posted_by(event, MODULE, reserved_types=HUB_EVENT_TYPES, **kwargs)
    return [expression for issue in issues for expression in issue.expression]


def test_the_posters_own_event_passes() -> None:
    assert _refused(COMPLETE) == []


def test_every_kind_of_event_the_hub_writes_is_reserved() -> None:
    """Built by the hub's own builders: a builder's new type fails here until it is reserved."""
    now = datetime(2026, 1, 1)
    trace = TraceIds.new()
    common: dict[str, Any] = {"hub_device": "koppeltaal-hub", "site": "s", "trace": trace}
    events = [
        rest_event(
            interaction="read", status=200, outcome_description=None, caller_device="m",
            entities=[], recorded=now, **common,
        ),
        transmit_event(
            success=True, outcome_description=None, source_device="m", destination_device="p",
            destination="https://x/", resource_version="Task/1/_history/1",
            subscription=("s1", "Task?status=ready"), recorded=now, **common,
        ),
        login_event(
            success=True, outcome_description=None, client_device="m",
            recorded=now, **common,
        ),
    ]  # fmt: skip
    written = {(event["type"]["system"], event["type"]["code"]) for event in events}
    assert written == HUB_EVENT_TYPES


@pytest.mark.parametrize(
    ("change", "expressions"),
    [
        (
            {"agent": [{"who": {"reference": "Device/koppeltaal-hub"}, "requestor": True}]},
            ["AuditEvent.agent[0].who"],
        ),
        (
            {
                "agent": [
                    {"who": {"reference": "Device/module"}, "requestor": True},
                    {"who": {"reference": "Device/xis"}, "requestor": True},
                ]
            },
            ["AuditEvent.agent[1].who"],
        ),
        (
            {"agent": [{"who": {"identifier": {"value": "module"}}, "requestor": True}]},
            ["AuditEvent.agent[0].who"],
        ),
        (
            {"agent": [{"who": {"reference": "Device/module"}, "requestor": False}]},
            ["AuditEvent.agent"],
        ),
        (
            {"source": {"observer": {"reference": "Device/koppeltaal-hub"}}},
            ["AuditEvent.source.observer"],
        ),
        ({"source": {"observer": {"display": "module"}}}, ["AuditEvent.source.observer"]),
        ({"type": {"code": "rest"}}, ["AuditEvent.type"]),
        (
            {"type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114"}},
            ["AuditEvent.type"],
        ),
    ],
)
def test_each_impersonation_is_named(change: dict[str, Any], expressions: list[str]) -> None:
    assert _refused({**COMPLETE, **change}) == expressions


def test_a_reserved_code_of_another_system_is_not_the_hubs() -> None:
    assert _refused({**COMPLETE, "type": {"system": "urn:example", "code": "rest"}}) == []


def test_the_size_cap_counts_compact_json() -> None:
    event = {**COMPLETE, "entity": [{"what": {"reference": "Task/1"}, "description": ""}]}
    base = len(json.dumps(event, separators=(",", ":")).encode())
    event["entity"][0]["description"] = "é" * ((MAX_POSTED_EVENT_BYTES - base) // 2)
    assert _refused(event) == []
    event["entity"][0]["description"] += "éé"
    assert _refused(event) == ["AuditEvent"]
