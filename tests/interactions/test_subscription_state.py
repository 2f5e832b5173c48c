"""Delivery state and resend without HTTP (both backends): what `$status` reads, what
`$resend`'s parameters may be, and `hub deliveries retry`'s audited retry.

The operations over HTTP, with their access rules, are in
tests/api/test_subscription_operations.py.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from fhir.resources.R4B.parameters import Parameters

from hub.audit.events import transmit_event
from hub.audit.store import prepare as prepare_event
from hub.audit.verify import verify_domain
from hub.fhir import jsonio
from hub.fhir.origin import with_origin
from hub.fhir.outcome import FhirError
from hub.fhir.query import parse_search
from hub.interactions.subscription_state import (
    DeliveryState,
    LastAttempt,
    NotRetried,
    delivery_state,
    overview,
    resend_target,
    retry_as_operator,
)
from hub.runtime import HUB_DEVICE, utcnow
from hub.store import outbox, resources
from hub.store.audit import append_events
from hub.store.db import Database
from hub.store.delivery_state import Queue
from hub.store.search import search
from hub.trace import TraceIds

DOMAIN = "test"
KEY = b"k" * 32
ENDPOINT = "https://receiver.example/hook"


def _transmit(success: bool, description: str | None, trace_id: str) -> dict[str, Any]:
    return transmit_event(
        success=success,
        outcome_description=description,
        source_device="xis",
        destination_device="xis",
        destination=ENDPOINT,
        resource_version="Patient/p1/_history/1",
        subscription=("s1", "Patient"),
        hub_device=HUB_DEVICE,
        site="test-site",
        trace=TraceIds.new(trace_id=trace_id),
        recorded=utcnow(),
    )


@pytest.mark.parametrize(
    ("success", "description", "http_status"),
    [
        (False, f"HTTP 503 from {ENDPOINT}", 503),
        (False, "connection refused", None),
        (True, None, None),
    ],
)
def test_the_last_attempt_is_read_from_its_transmit_event(
    success: bool, description: str | None, http_status: int | None
) -> None:
    attempt = LastAttempt.from_event(_transmit(success, description, "t1"))
    assert attempt is not None
    assert (attempt.success, attempt.http_status, attempt.error) == (
        success,
        http_status,
        description,
    )
    assert (attempt.endpoint, attempt.trace_id) == (ENDPOINT, "t1")
    assert abs(attempt.time - utcnow()) < timedelta(seconds=5)


def _subscription(id_: str, status: str = "active", **elements: Any) -> resources.NewVersion:
    resource = {
        "resourceType": "Subscription",
        "status": status,
        "reason": "test",
        "criteria": "Patient",
        "channel": {"type": "rest-hook", "endpoint": ENDPOINT},
        **elements,
    }
    return resources.prepare(
        DOMAIN,
        with_origin(resource, "xis"),
        id=id_,
        version_id=1,
        now=utcnow(),
        origin="xis",
        method="POST",
    )


async def _store(database: Database, *versions: resources.NewVersion) -> None:
    await database.write(resources.insert_new(list(versions)))


async def _wait_in_outbox(database: Database, subscription_id: str, resource_id: str) -> None:
    """A notification that failed once and waits an hour for its next attempt."""
    trigger = outbox.Trigger(
        DOMAIN, "Patient", resource_id, 1, "xis", "xis", "req", "trace", utcnow()
    )
    await database.write(outbox.enqueue_webhooks(trigger, [subscription_id]))
    [row] = [
        r
        for r in await database.write(
            outbox.claim(owner="w", now=utcnow(), lease=timedelta(seconds=60), limit=100)
        )
        if r.resource_id == resource_id
    ]
    await database.write(
        outbox.reschedule(
            row,
            owner="w",
            next_attempt_at=utcnow() + timedelta(hours=1),
            error="HTTP 503",
            now=utcnow(),
        )
    )


async def test_the_state_counts_delivered_and_pending_and_names_the_newest_attempt(
    database: Database,
) -> None:
    await _store(database, _subscription("s1", "error", error=f"HTTP 503 from {ENDPOINT}"))
    events = [
        _transmit(True, None, "first"),
        _transmit(True, None, "second"),
        _transmit(False, f"HTTP 503 from {ENDPOINT}", "third"),
    ]
    await database.write(
        append_events([prepare_event(DOMAIN, event, utcnow()) for event in events], KEY)
    )
    await _wait_in_outbox(database, "s1", "p1")
    row = await database.read(resources.current(DOMAIN, "Subscription", "s1"))
    assert row is not None
    state = await database.read(delivery_state(DOMAIN, row, now=utcnow()))
    assert (state.status, state.error) == ("error", f"HTTP 503 from {ENDPOINT}")
    assert state.delivered == 2  # the successful attempts only
    assert state.queue.pending == 1
    assert state.last_attempt is not None
    assert (state.last_attempt.trace_id, state.last_attempt.http_status) == ("third", 503)
    parameters = state.parameters()
    Parameters.model_validate(parameters)
    by_name = {p["name"]: p for p in parameters["parameter"]}
    assert by_name["events-since-subscription-start"]["valueString"] == "3"
    assert by_name["error"]["valueCodeableConcept"] == {"text": f"HTTP 503 from {ENDPOINT}"}
    assert by_name["type"]["valueCode"] == "query-status"


def test_a_state_without_attempts_leaves_out_what_it_does_not_know() -> None:
    state = DeliveryState("s1", 1, "active", None, Queue(DOMAIN, "rest-hook", "s1"), 0, None)
    parameters = state.parameters()
    Parameters.model_validate(parameters)
    assert [p["name"] for p in parameters["parameter"]] == [
        "subscription",
        "status",
        "type",
        "events-since-subscription-start",
        "pending",
        "in-flight",
        "gave-up",
    ]


def _parameters(*items: dict[str, Any]) -> bytes:
    return json.dumps({"resourceType": "Parameters", "parameter": list(items)}).encode()


@pytest.mark.parametrize(
    ("body", "query", "expected"),
    [
        (b"", [], None),
        (b"  ", [("_format", "json")], None),
        (b"", [("resource", "Patient/p1")], "Patient/p1"),
        (_parameters({"name": "resource", "valueString": "Task/t-1.2"}), [], "Task/t-1.2"),
        (
            _parameters({"name": "resource", "valueReference": {"reference": "Patient/p1"}}),
            [],
            "Patient/p1",
        ),
        (json.dumps({"resourceType": "Parameters"}).encode(), [], None),
    ],
)
def test_resend_takes_one_resource_from_the_url_or_the_body(
    body: bytes, query: list[tuple[str, str]], expected: str | None
) -> None:
    assert resend_target(body, query) == expected


@pytest.mark.parametrize(
    ("body", "query", "where"),
    [
        (b"", [("resource", "Patient/p1"), ("resource", "Patient/p2")], "resource"),
        (
            _parameters({"name": "resource", "valueString": "Patient/p2"}),
            [("resource", "Patient/p1")],
            "Parameters.parameter[0]",
        ),
        (b"", [("resource", "Patient/p1/_history/1")], "resource"),
        (b"", [("resource", "Unknown/p1")], "resource"),
        (b"", [("resource", "Patient/" + "x" * 65)], "resource"),
        (b"", [("since", "2020")], "since"),
        (b"{", [], None),
        (json.dumps({"resourceType": "Parameters", "parameter": {}}).encode(), [], None),
        (
            json.dumps({"resourceType": "Parameters", "parameter": ["resource"]}).encode(),
            [],
            "Parameters.parameter[0].name",
        ),
    ],
)
def test_anything_else_given_to_resend_is_refused(
    body: bytes, query: list[tuple[str, str]], where: str | None
) -> None:
    with pytest.raises(FhirError) as refused:
        resend_target(body, query)
    assert refused.value.status == 400
    if where is not None:
        assert refused.value.issues[0].expression == (where,)


async def _operation_events(database: Database) -> list[dict[str, Any]]:
    query = parse_search("AuditEvent", [("subtype", "operation")])
    page = await database.read(
        search(domain=DOMAIN, query=query, allowed_origins=None, page_size=50)
    )
    return [jsonio.loads(row.content) for row in page.rows]


async def test_the_operator_retry_is_audited_and_refuses_what_cannot_be_delivered(
    database: Database,
) -> None:
    await _store(database, _subscription("s1"), _subscription("s2"), _subscription("off", "off"))
    await _wait_in_outbox(database, "s1", "p1")
    await _wait_in_outbox(database, "s2", "p2")
    common: dict[str, Any] = {"domain": DOMAIN, "operator": "ops@host", "site": "test-site"}

    listed = await database.read(overview(domain=DOMAIN, subscription_id=None, now=utcnow()))
    assert [(item.queue.subscription_id, item.status, item.queue.pending) for item in listed] == [
        ("s1", "active", 1),
        ("s2", "active", 1),
    ]
    assert await retry_as_operator(database, KEY, subscription_id="s1", **common) == 1
    waiting = {row.subscription_id: row for row in await database.read(outbox.entries())}
    assert waiting["s1"].next_attempt_at <= utcnow()
    assert waiting["s2"].next_attempt_at > utcnow() + timedelta(minutes=30)
    assert await retry_as_operator(database, KEY, subscription_id=None, **common) == 1

    for refused in ("off", "no-such"):
        with pytest.raises(NotRetried):
            await retry_as_operator(database, KEY, subscription_id=refused, **common)

    events = await _operation_events(database)
    details = [
        {d["type"]: d["valueString"] for d in event["entity"][0]["detail"]} for event in events
    ]
    # Newest first: the whole domain's retry, then Subscription s1's; none for the refusals.
    assert details == [
        {"operation": "$resend", "scope": "all", "requested-by": "ops@host", "due-now": "1"},
        {"operation": "$resend", "requested-by": "ops@host", "due-now": "1"},
    ]
    assert events[1]["entity"][0]["what"] == {"reference": "Subscription/s1/_history/1"}
    assert events[0]["agent"][0]["who"] == {"reference": f"Device/{HUB_DEVICE}"}
    assert (await verify_domain(database, DOMAIN, KEY)).problems == []
