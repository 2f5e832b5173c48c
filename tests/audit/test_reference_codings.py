"""AuditEvent codings exactly as the Koppeltaal reference implementation writes them.

The rules (docs/architecture.md, "AuditEvent codings"): a `subtype` display equal to its
code; every entity typed by `http://hl7.org/fhir/resource-types` (code and display = the
resource type), a search's query entity as the searched type; object-role displays
`Query` and `Subscriber`; a delete without `entity.what`; no `network` on the requesting
application's agent (DCM 110153). `reference_problems` checks one event against all of
them, so the same check runs over the builders' output and over a real hub's trail.

Events written before these codings stay as they were: the chain covers the stored
JSON, and `hub audit verify` keeps passing over a trail that holds both.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pytest

from hub.audit.events import (
    ACTIONS,
    Entity,
    login_event,
    query_entity,
    rest_event,
    transmit_event,
)
from hub.audit.store import prepare as prepare_event
from hub.runtime import utcnow
from hub.store.audit import append_events
from hub.store.db import Database
from hub.trace import TraceIds
from tests.audit.database import verify
from tests.audit.trail import (
    DCM,
    OBJECT_ROLE,
    RESOURCE_TYPES,
    RESTFUL_INTERACTION,
    TraceHeaders,
    event_of,
    search_events,
)
from tests.support.hub import HubServer

RECORDED = datetime(2026, 1, 1, 12, 0, 0)
COMMON: dict[str, Any] = {
    "hub_device": "koppeltaal-hub",
    "site": "hub.example",
    "trace": TraceIds("r1", "t1", None),
    "recorded": RECORDED,
}
ROLE_DISPLAYS = {"24": "Query", "9": "Subscriber"}


def _resource_type(reference: str) -> str:
    return reference.partition("/")[0]


def reference_problems(event: Mapping[str, Any]) -> list[str]:
    """Where `event` differs from the reference implementation's codings (empty: nowhere)."""
    problems: list[str] = []
    subtypes = event.get("subtype") or []
    for subtype in subtypes:
        if subtype.get("system") == RESTFUL_INTERACTION and subtype.get("display") != subtype.get(
            "code"
        ):
            problems.append(f"subtype {subtype} has no display equal to its code")
    deleting = any(s.get("code") == "delete" for s in subtypes)
    searched = any(s.get("code") == "search-type" for s in subtypes)
    for entity in event.get("entity") or []:
        what = (entity.get("what") or {}).get("reference")
        if what is None and "query" not in entity and not deleting:
            continue  # an operation's own entity (no resource): nothing to type
        kind = entity.get("type") or {}
        if kind.get("system") != RESOURCE_TYPES or kind.get("code") != kind.get("display"):
            problems.append(f"entity {entity} is not typed by {RESOURCE_TYPES}")
        if what is not None and kind.get("code") != _resource_type(what):
            problems.append(f"entity {what} is typed {kind.get('code')}")
        if deleting and what is not None:
            problems.append(f"a delete names {what}")
        role = entity.get("role")
        if role is not None and (
            role.get("system") != OBJECT_ROLE or role.get("display") != ROLE_DISPLAYS[role["code"]]
        ):
            problems.append(f"entity role {role} lacks its display")
        if searched and entity.get("query") is not None and (role or {}).get("code") != "24":
            problems.append("a search's query entity is not object-role 24")
    for agent in event.get("agent") or []:
        codes = {(c.get("system"), c.get("code")) for c in agent["type"]["coding"]}
        if (DCM, "110153") in codes and "network" in agent:
            problems.append(f"the requesting agent {agent} has a network")
    return problems


# --- the builders ------------------------------------------------------------------------


@pytest.mark.parametrize("interaction", sorted(ACTIONS))
def test_every_subtype_displays_its_code(interaction: str) -> None:
    event = rest_event(
        interaction=interaction,
        status=200,
        outcome_description=None,
        caller_device="xis",
        entities=[],
        **COMMON,
    )
    assert event["subtype"] == [
        {"system": RESTFUL_INTERACTION, "code": interaction, "display": interaction}
    ]
    assert reference_problems(event) == []


def test_a_search_types_its_query_as_the_searched_type_and_every_match_as_its_own() -> None:
    event = rest_event(
        interaction="search-type",
        status=200,
        outcome_description=None,
        caller_device="xis",
        entities=[
            query_entity("Task", "status=ready&_include=Task:owner"),
            Entity(what="Task/t1/_history/2"),
            Entity(what="Patient/p1/_history/1"),
        ],
        **COMMON,
    )
    query, task, patient = event["entity"]
    assert query == {
        "type": {"system": RESOURCE_TYPES, "code": "Task", "display": "Task"},
        "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
        "query": base64.b64encode(b"status=ready&_include=Task:owner").decode(),
    }
    assert task["type"] == {"system": RESOURCE_TYPES, "code": "Task", "display": "Task"}
    assert patient["type"] == {"system": RESOURCE_TYPES, "code": "Patient", "display": "Patient"}
    assert reference_problems(event) == []


def test_a_delete_carries_the_type_but_no_what() -> None:
    event = rest_event(
        interaction="delete",
        status=200,
        outcome_description=None,
        caller_device="xis",
        entities=[Entity(what="Task/t1/_history/3")],
        **COMMON,
    )
    assert event["entity"] == [
        {
            "type": {"system": RESOURCE_TYPES, "code": "Task", "display": "Task"},
            "detail": [{"type": "reference", "valueString": "Task/t1/_history/3"}],
        }
    ]
    assert reference_problems(event) == []


def test_a_type_the_hub_does_not_serve_gets_no_invented_code() -> None:
    """A refused request for `Foo/1` names what was asked, but `Foo` is no resource type."""
    event = rest_event(
        interaction="read",
        status=404,
        outcome_description="Resource type 'Foo' is not supported by this server",
        caller_device="xis",
        entities=[Entity(what="Foo/1")],
        **COMMON,
    )
    assert event["entity"] == [{"what": {"reference": "Foo/1"}}]


@pytest.mark.parametrize("subscription", [("s1", "Task?status=ready"), None])
def test_the_transmit_subscriber_entity_and_only_the_destination_has_a_network(
    subscription: tuple[str, str] | None,
) -> None:
    event = transmit_event(
        success=True,
        outcome_description=None,
        source_device="xis",
        destination_device="module",
        destination="https://module.example/hook",
        resource_version="Task/t1/_history/1",
        subscription=subscription,
        **COMMON,
    )
    source, destination = event["agent"]
    assert "network" not in source
    assert destination["network"] == {"address": "https://module.example/hook", "type": "5"}
    changed, *subscriber = event["entity"]
    assert changed["type"] == {"system": RESOURCE_TYPES, "code": "Task", "display": "Task"}
    if subscription is not None:
        assert subscriber == [
            {
                "what": {"reference": "Subscription/s1"},
                "type": {
                    "system": RESOURCE_TYPES,
                    "code": "Subscription",
                    "display": "Subscription",
                },
                "role": {"system": OBJECT_ROLE, "code": "9", "display": "Subscriber"},
                "query": base64.b64encode(b"Task?status=ready").decode(),
            }
        ]
    assert reference_problems(event) == []


@pytest.mark.parametrize("success", [True, False])
def test_a_login_names_no_network_either(success: bool) -> None:
    event = login_event(
        success=success,
        outcome_description=None if success else "invalid_client: client authentication failed",
        client_device="xis" if success else None,
        **COMMON,
    )
    assert all("network" not in agent for agent in event["agent"])
    assert reference_problems(event) == []


def test_the_checker_catches_the_old_codings() -> None:
    """The check above is no formality: it refuses the codings the hub wrote before."""
    problems = reference_problems(OLD_STYLE_EVENT)
    assert [problem.split(" ")[0:2] for problem in problems] == [
        ["subtype", "{'system':"],  # no display
        ["entity", "{'what':"],  # not typed by resource-types
        ["entity", "Patient/old/_history/1"],  # typed `2`, not Patient
        ["the", "requesting"],  # the caller's address as `network`
    ]


# --- a real hub's trail ------------------------------------------------------------------

# An AuditEvent exactly as the hub stored them before these codings: DICOM object type
# `2` on the entity, a bare subtype code, the caller's address on its agent.
OLD_STYLE_EVENT: dict[str, Any] = {
    "resourceType": "AuditEvent",
    "meta": {"profile": ["http://koppeltaal.nl/fhir/StructureDefinition/KT2AuditEvent"]},
    "extension": [
        {"url": "http://koppeltaal.nl/fhir/StructureDefinition/trace-id", "valueId": "old-trace"},
        {"url": "http://koppeltaal.nl/fhir/StructureDefinition/request-id", "valueId": "old-req"},
    ],
    "type": {
        "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
        "code": "rest",
        "display": "RESTful Operation",
    },
    "subtype": [{"system": RESTFUL_INTERACTION, "code": "read"}],
    "action": "R",
    "recorded": "2026-01-01T12:00:00.000Z",
    "outcome": "0",
    "agent": [
        {
            "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
            "who": {"reference": "Device/xis"},
            "requestor": True,
            "network": {"address": "127.0.0.1", "type": "2"},
        },
        {
            "type": {
                "coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]
            },
            "who": {"reference": "Device/koppeltaal-hub"},
            "requestor": False,
        },
    ],
    "source": {"site": "test-site", "observer": {"reference": "Device/koppeltaal-hub"}},
    "entity": [
        {
            "what": {"reference": "Patient/old/_history/1"},
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "2",
                "display": "System Object",
            },
        }
    ],
}


async def _append_as_stored_before(hub: HubServer, event: Mapping[str, Any]) -> None:
    """Chain `event` into the hub's trail as the hub itself did: same key, same store."""
    database = Database(hub.settings.database_url, pool_size=1)
    try:
        prepared = prepare_event("test", dict(event), utcnow())
        await database.write(append_events([prepared], hub.runtime.chain_key))
    finally:
        await database.dispose()


async def test_old_events_keep_verifying_beside_the_new_codings(hub_server: HubServer) -> None:
    await _append_as_stored_before(hub_server, OLD_STYLE_EVENT)
    trace = TraceHeaders.new()
    ids = {
        name: TraceHeaders.new(trace_id=trace.trace_id)
        for name in ("create", "search", "delete", "refused")
    }
    async with hub_server.client("xis") as xis, hub_server.client("module") as module:
        created = await xis.post(
            "/Practitioner", json={"resourceType": "Practitioner"}, headers=ids["create"].headers
        )
        practitioner = f"Practitioner/{created.json()['id']}"
        searched = await xis.get(
            f"/Practitioner?_id={created.json()['id']}", headers=ids["search"].headers
        )
        refused = await module.delete(f"/{practitioner}", headers=ids["refused"].headers)
        deleted = await xis.delete(f"/{practitioner}", headers=ids["delete"].headers)
    assert (created.status_code, searched.status_code) == (201, 200)
    assert (refused.status_code, deleted.status_code) == (403, 200)

    # The old event reads back exactly as it was stored; the new ones use the new codings.
    [old] = await search_events(hub_server, {"requestId": "old-req"})
    assert {key: old[key] for key in OLD_STYLE_EVENT if key != "meta"} == {
        key: value for key, value in OLD_STYLE_EVENT.items() if key != "meta"
    }
    new = await search_events(hub_server, {"traceId": trace.trace_id})
    assert len(new) == 4
    assert [reference_problems(event) for event in new] == [[]] * 4
    search = await event_of(hub_server, ids["search"].request_id)
    assert search["entity"][0]["type"]["code"] == "Practitioner"
    delete = await event_of(hub_server, ids["delete"].request_id)
    assert "what" not in delete["entity"][0]

    verdict = verify(hub_server)
    assert verdict.exit_code == 0, verdict
    assert "intact" in verdict.stdout


async def test_every_event_of_a_busy_trail_follows_the_reference(shared_hub: HubServer) -> None:
    """Successes and refusals of every interaction, authenticated or not: none deviates."""
    trace = TraceHeaders.new()
    headers = {"X-Trace-Id": trace.trace_id}
    async with (
        shared_hub.client("xis") as xis,
        shared_hub.client("portal") as portal,
        shared_hub.client() as anonymous,
    ):
        created = await xis.post("/Patient", json={"resourceType": "Patient"}, headers=headers)
        patient = created.json()
        path = f"/Patient/{patient['id']}"
        await xis.get(path, headers=headers)
        await xis.put(path, json=patient, headers={"If-Match": 'W/"1"', **headers})
        await xis.get(f"{path}/_history/1", headers=headers)
        await xis.get(f"{path}/_history", headers=headers)
        await xis.get(f"/Patient?_id={patient['id']}", headers=headers)
        await xis.post(
            "/Patient/_search",
            content=f"_id={patient['id']}",
            headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
        )
        await xis.get("/metadata", headers=headers)
        await portal.post("/Patient", json={"resourceType": "Patient"}, headers=headers)
        await portal.delete(path, headers=headers)
        await anonymous.get("/Task?status=ready", headers=headers)
        await xis.get("/Patient/nobody", headers=headers)
        await xis.delete(path, headers=headers)
    events = await search_events(shared_hub, {"traceId": trace.trace_id})
    assert len(events) == 13
    assert {event["subtype"][0]["code"] for event in events} == {
        "create", "read", "update", "vread", "history-instance", "search-type", "capabilities",
        "delete",
    }  # fmt: skip
    assert {event["outcome"] for event in events} == {"0", "4"}
    assert {problem for event in events for problem in reference_problems(event)} == set()
