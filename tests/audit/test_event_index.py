"""The fast index of the hub's own AuditEvents finds exactly what the general `extract` does.

Searches use the index rows, so a row the fast builder forgot (or made
differently) would hide events from auditors; these tests compare the two
for every kind of event the hub writes.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

import pytest

from hub.audit.events import Entity, login_event, query_entity, rest_event, transmit_event
from hub.audit.index import COVERED_PARAMS, event_index
from hub.fhir.extract import IndexValues, extract
from hub.fhir.search_params import params_for
from hub.fhir.stamp import stamp
from hub.trace import TraceIds

RECORDED = datetime(2025, 3, 1, 12, 0, 0, 123456)
INTERACTIONS = (
    "create", "read", "vread", "update", "delete", "search-type", "history-instance",
    "capabilities",
)  # fmt: skip
ENTITY_SETS: dict[str, list[Entity]] = {
    "none": [],
    "one": [Entity(what="Task/t1/_history/3")],
    "patient": [Entity(what="Patient/p1/_history/1", detail=(("patient-notice", "invite"),))],
    "search": [
        query_entity("Patient", "_id=p1&name:contains=Ä b"),
        Entity(what="Patient/p1/_history/1"),
        Entity(what="Patient/p2/_history/4"),
        Entity(what="Task/t1/_history/1"),
    ],
    "unversioned": [Entity(what="Patient/does-not-exist")],
}


def _rows(values: IndexValues) -> dict[str, set[Any]]:
    return {
        "tokens": set(values.tokens),
        "strings": set(values.strings),
        "references": set(values.references),
        "dates": set(values.dates),
        "uris": set(values.uris),
    }


def _assert_same(event: dict[str, Any]) -> None:
    stored = stamp(event, id="e1", version_id=1, last_updated=RECORDED)
    assert _rows(event_index(stored)) == _rows(extract(stored))


def _rest(interaction: str, status: int, caller: str | None, entities: list[Entity]) -> Any:
    return rest_event(
        interaction=interaction,
        status=status,
        outcome_description="Not allowed; really" if status >= 400 else None,
        caller_device=caller,
        hub_device="koppeltaal-hub",
        site="hub.example",
        trace=TraceIds("r1", "t1", "c1" if caller else None),
        entities=entities,
        recorded=RECORDED,
    )


@pytest.mark.parametrize(
    ("interaction", "status", "caller", "entities"),
    [
        *itertools.product(INTERACTIONS, [200], ["xis"], ["none", "one", "patient"]),
        ("search-type", 200, "portal", "search"),
        ("read", 404, "xis", "unversioned"),
        ("read", 401, None, "none"),
        ("update", 403, "module", "one"),
        ("create", 500, "xis", "none"),
    ],
)
def test_rest_events(interaction: str, status: int, caller: str | None, entities: str) -> None:
    _assert_same(_rest(interaction, status, caller, ENTITY_SETS[entities]))


@pytest.mark.parametrize("success", [True, False])
@pytest.mark.parametrize(
    ("destination", "device", "subscription"),
    [
        ("https://receiver.example/hook", "module", ("s1", "Task?status=ready")),
        ("mailto:patient@example.org", None, None),
    ],
)
def test_transmit_events(
    success: bool, destination: str, device: str | None, subscription: tuple[str, str] | None
) -> None:
    event = transmit_event(
        success=success,
        outcome_description=None if success else "HTTP 503",
        source_device="xis",
        destination_device=device,
        destination=destination,
        resource_version="Patient/p1/_history/2",
        subscription=subscription,
        hub_device="koppeltaal-hub",
        site="hub.example",
        trace=TraceIds("r1", "t1", "c1"),
        recorded=RECORDED,
    )
    _assert_same(event)


def test_every_audit_event_parameter_is_accounted_for() -> None:
    """A search parameter added to the table must be handled here (or ruled out) first."""
    assert set(COVERED_PARAMS) == set(params_for("AuditEvent"))


def test_parameters_it_leaves_out_find_nothing_in_hub_events() -> None:
    event = stamp(
        _rest("search-type", 200, "portal", ENTITY_SETS["search"]),
        id="e1",
        version_id=1,
        last_updated=RECORDED,
    )
    values = extract(event)
    rows = (*values.tokens, *values.strings, *values.references, *values.dates, *values.uris)
    indexed = {row[0] for row in rows}
    assert {name for name, covered in COVERED_PARAMS.items() if not covered} & indexed == set()


@pytest.mark.parametrize("success", [True, False])
def test_login_events(success: bool) -> None:
    event = login_event(
        success=success,
        outcome_description=None if success else "invalid_client: client authentication failed",
        client_device="xis" if success else None,
        hub_device="koppeltaal-hub",
        site="hub.example",
        trace=TraceIds("r1", "t1", None),
        recorded=RECORDED,
    )
    _assert_same(event)
