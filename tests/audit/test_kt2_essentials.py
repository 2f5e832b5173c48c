"""The KT2 essentials an application's own AuditEvent must carry (hub.rules.audit_event)."""

from __future__ import annotations

from typing import Any

import pytest

from hub.rules.audit_event import check_kt2_essentials

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
