"""`Subscription/$status`, `Subscription/$resend` and `AuditEvent/$chain-head` over HTTP.

A real hub (one per backend for the module), real HTTPS receivers, real tokens. Each
test subscribes with criteria of its own (an identifier no other test writes), so the
tests share the hub without hearing each other's notifications.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.parameters import Parameters

from hub.audit.verify import check_anchor, read_key, verify_domain
from hub.store.db import Database
from tests.support.https_receiver import HttpsReceiver, LocalCA, Reply
from tests.support.hub import AppKeys, HubServer
from tests.support.subscriptions import (
    correlation_ids,
    create,
    notifying_hub,
    search,
    subscription,
    update,
)
from tests.support.waiting import eventually

# One hub per backend for the module: keep the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_subscription_operations")

SYSTEM = "urn:test:operations"


@pytest.fixture(scope="module")
def hub(
    tmp_path_factory: pytest.TempPathFactory,
    module_database_url: str,
    app_keys: dict[str, AppKeys],
    local_ca: LocalCA,
) -> Iterator[HubServer]:
    directory = tmp_path_factory.mktemp("operations")
    with notifying_hub(directory, module_database_url, app_keys, local_ca) as server:
        yield server


def _patient(tag: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": tag}]}


async def _subscribe(client: httpx.AsyncClient, criteria: str, endpoint: str) -> dict[str, Any]:
    response = await client.post("/Subscription", json=subscription(criteria, endpoint))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _values(parameters: dict[str, Any]) -> dict[str, Any]:
    """`name` → value (or `{part name: value}`) of a Parameters resource."""
    found: dict[str, Any] = {}
    for item in parameters["parameter"]:
        if "part" in item:
            found[item["name"]] = _values({"parameter": item["part"]})
        else:
            found[item["name"]] = next(v for k, v in item.items() if k.startswith("value"))
    return found


async def _status(client: httpx.AsyncClient, subscription_id: str) -> dict[str, Any]:
    response = await client.get(f"/Subscription/{subscription_id}/$status")
    assert response.status_code == 200, response.text
    Parameters.model_validate(response.json())  # a valid R4 Parameters resource
    return _values(response.json())


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def _operation_events(auditor: httpx.AsyncClient, subscription_id: str) -> list[Any]:
    events = await search(
        auditor, "/AuditEvent", entity=f"Subscription/{subscription_id}", subtype="operation"
    )
    return [
        {detail["type"]: detail["valueString"] for detail in event["entity"][0].get("detail", ())}
        | {"outcome": event["outcome"]}
        for event in events
    ]


async def test_status_shows_the_queue_and_resend_makes_it_due_now(
    hub: HubServer, https_receiver: HttpsReceiver
) -> None:
    # The receiver fails the first attempt and asks for an hour: the row waits, pending.
    https_receiver.queue(Reply(503, headers=[("Retry-After", "3600")]))
    tag = uuid.uuid4().hex
    async with hub.client("xis") as xis, hub.client("auditor") as auditor:
        made = await _subscribe(xis, f"Patient?identifier={SYSTEM}|{tag}", https_receiver.url())
        subscription_id = made["id"]
        idle = await _status(xis, subscription_id)
        assert idle == {
            "subscription": {"reference": f"Subscription/{subscription_id}"},
            "status": "active",
            "type": "query-status",
            "events-since-subscription-start": "0",
            "pending": 0,
            "in-flight": 0,
            "gave-up": 0,
        }
        written = (await create(xis, _patient(tag), trace="opstatus")).json()
        await https_receiver.wait_for_async(1)

        async def failed_once() -> dict[str, Any] | None:
            state = await _status(xis, subscription_id)
            return state if "last-attempt" in state and state["in-flight"] == 0 else None

        state = await eventually(failed_once, timeout=10, what="the failure to be recorded")
        endpoint = https_receiver.url()
        assert state["status"] == "active"  # one failure is not yet an error
        assert (state["pending"], state["gave-up"]) == (1, 0)
        assert state["events-since-subscription-start"] == "1"
        last = state["last-attempt"]
        assert last["outcome"] == "failure"
        assert last["http-status"] == 503
        assert last["error"] == f"HTTP 503 from {endpoint}"
        assert last["endpoint"] == endpoint
        assert last["trace-id"] == "opstatus"
        queued = _instant(state["oldest-pending"])
        assert abs(queued - _instant(written["meta"]["lastUpdated"])) < timedelta(seconds=5)
        # The receiver's hour is honoured: the next attempt is far away.
        assert _instant(state["next-attempt"]) > datetime.now(UTC) + timedelta(minutes=55)

        # The receiver is back: $resend makes the waiting notification due now.
        resent = await xis.post(
            f"/Subscription/{subscription_id}/$resend", headers={"X-Request-Id": "resend-1"}
        )
        assert resent.status_code == 200, resent.text
        assert _values(resent.json()) == {
            "subscription": {"reference": f"Subscription/{subscription_id}"},
            "due-now": 1,
        }
        await https_receiver.wait_for_async(2, timeout=10)

        async def delivered() -> dict[str, Any] | None:
            state = await _status(xis, subscription_id)
            return state if state["pending"] == 0 else None

        after = await eventually(delivered, timeout=10, what="the resent notification")
        assert after["last-attempt"]["outcome"] == "success"
        assert "http-status" not in after["last-attempt"]
        assert after["events-since-subscription-start"] == "1"  # one notification, delivered
        assert "next-attempt" not in after
        # Nothing waits now: a second resend has nothing to bring forward.
        again = await xis.post(f"/Subscription/{subscription_id}/$resend")
        assert _values(again.json())["due-now"] == 0
        audited = await _operation_events(auditor, subscription_id)

    # The same notification twice (the write's), not a new one.
    assert correlation_ids(https_receiver.requests) == ["opstatus-w", "opstatus-w"]
    resends = [e for e in audited if e.get("operation") == "$resend"]
    assert sorted(e["due-now"] for e in resends) == ["0", "1"]
    assert {e["outcome"] for e in resends} == {"0"}
    assert any(e.get("operation") == "$status" for e in audited)


async def test_resend_of_a_resource_queues_a_fresh_notification_only_when_it_matches(
    hub: HubServer, https_receiver: HttpsReceiver
) -> None:
    tag = uuid.uuid4().hex
    async with hub.client("xis") as xis, hub.client("module") as module:
        made = await _subscribe(xis, f"Patient?identifier={SYSTEM}|{tag}", https_receiver.url())
        subscription_id = made["id"]
        matching = (await create(xis, _patient(tag), trace="first")).json()
        other = (await create(xis, _patient(f"{tag}-other"))).json()
        await https_receiver.wait_for_async(1)
        path = f"/Subscription/{subscription_id}/$resend"

        body = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "resource", "valueReference": {"reference": f"Patient/{matching['id']}"}}
            ],
        }
        resent = await xis.post(path, json=body, headers={"X-Request-Id": "resend-resource"})
        assert resent.status_code == 200, resent.text
        assert _values(resent.json())["queued"] == {
            "reference": f"Patient/{matching['id']}/_history/1"
        }
        [_, fresh] = await https_receiver.wait_for_async(2, timeout=10)
        assert fresh.header("X-Correlation-Id") == "resend-resource"

        # Not matching the criteria: refused, nothing queued.
        mismatch = await xis.post(path, params={"resource": f"Patient/{other['id']}"})
        assert mismatch.status_code == 422, mismatch.text
        assert "does not match" in mismatch.json()["issue"][0]["diagnostics"]
        # Missing, and not readable by the owner: one answer, so nothing can be probed.
        missing = await xis.post(path, params={"resource": "Patient/no-such-patient"})
        activity = await module.post(
            "/ActivityDefinition", json={"resourceType": "ActivityDefinition", "status": "draft"}
        )
        unreadable = await xis.post(
            path, params={"resource": f"ActivityDefinition/{activity.json()['id']}"}
        )
        for refused in (missing, unreadable):
            assert refused.status_code == 422, refused.text
            assert "owner and you may read" in refused.json()["issue"][0]["diagnostics"]
            assert refused.json()["issue"][0]["expression"] == ["resource"]

        # A Subscription that is off delivers nothing: resending is refused.
        current = (await xis.get(f"/Subscription/{subscription_id}")).json()
        await update(xis, current | {"status": "off"})
        off = await xis.post(path)
        assert off.status_code == 422, off.text
        assert off.json()["issue"][0]["expression"] == ["Subscription.status"]
    assert len(https_receiver.requests) == 2


@pytest.mark.parametrize(
    ("params", "body", "content_type", "status", "where"),
    [
        ({"resource": "Patient"}, None, None, 400, "resource"),
        ({"resource": "Observation/1"}, None, None, 400, "resource"),
        ({"resource": "Patient/a b"}, None, None, 400, "resource"),
        ({"resource": "https://elsewhere.example/Patient/1"}, None, None, 400, "resource"),
        ({"other": "x"}, None, None, 400, "other"),
        (
            {},
            {"resourceType": "Parameters", "parameter": [{"name": "since", "valueString": "x"}]},
            "application/fhir+json",
            400,
            "Parameters.parameter[0].name",
        ),
        ({}, {"resourceType": "Patient"}, "application/fhir+json", 400, "resourceType"),
        (
            {},
            {"resourceType": "Parameters", "parameter": [{"name": "resource", "valueInteger": 1}]},
            "application/fhir+json",
            400,
            "Parameters.parameter[0].value[x]",
        ),
        ({}, {"resourceType": "Parameters"}, "text/plain", 415, None),
    ],
)
async def test_bad_resend_parameters_are_refused_and_change_nothing(
    hub: HubServer,
    params: dict[str, str],
    body: dict[str, Any] | None,
    content_type: str | None,
    status: int,
    where: str | None,
) -> None:
    async with hub.client("xis") as xis:
        made = await _subscribe(xis, f"Patient?identifier={SYSTEM}|never", "https://127.0.0.1:9/x")
        headers = {"Content-Type": content_type} if content_type else {}
        content = json.dumps(body).encode() if body is not None else None
        response = await xis.post(
            f"/Subscription/{made['id']}/$resend", params=params, content=content, headers=headers
        )
    assert response.status_code == status, response.text
    issue = response.json()["issue"][0]
    if where is not None:
        assert issue["expression"] == [where]


async def test_access_to_the_operations(hub: HubServer) -> None:
    async with (
        hub.client("xis") as xis,
        hub.client("portal") as portal,
        hub.client("auditor") as auditor,
        hub.client() as anonymous,
    ):
        made = await _subscribe(xis, f"Patient?identifier={SYSTEM}|never", "https://127.0.0.1:9/x")
        mine = f"/Subscription/{made['id']}"
        # Another application may neither see nor resend it: 403, as reading it would be.
        assert (await portal.get(f"{mine}/$status")).status_code == 403
        assert (await portal.post(f"{mine}/$resend")).status_code == 403
        # The auditor may read no Subscription at all.
        assert (await auditor.get(f"{mine}/$status")).status_code == 403
        assert (await anonymous.get(f"{mine}/$status")).status_code == 401
        assert (await anonymous.post(f"{mine}/$resend")).status_code == 401
        # Unknown: 404; deleted: 410.
        assert (await xis.get("/Subscription/no-such/$status")).status_code == 404
        assert (await xis.post("/Subscription/no-such/$resend")).status_code == 404
        assert (await xis.delete(mine)).status_code == 200
        assert (await xis.get(f"{mine}/$status")).status_code == 410
        assert (await xis.post(f"{mine}/$resend")).status_code == 410
        # Only the methods the operations define.
        assert (await xis.post(f"{mine}/$status")).status_code == 405
        refusals = await search(
            auditor,
            "/AuditEvent",
            entity=f"Subscription/{made['id']}",
            subtype="operation",
            outcome="4",
        )
    # Every refusal is on the trail, naming the Subscription and who asked.
    callers = sorted(e["agent"][0].get("who", {}).get("reference", "anonymous") for e in refusals)
    assert callers == sorted(
        ["Device/portal", "Device/portal", "Device/auditor", "anonymous", "anonymous"]
        + ["Device/xis"] * 2
    )


async def test_chain_head_is_a_head_the_verifier_accepts(hub: HubServer) -> None:
    async with (
        hub.client("auditor") as auditor,
        hub.client("xis") as xis,
        hub.client("module") as module,
    ):
        response = await auditor.get("/AuditEvent/$chain-head")
        from_xis = await xis.get("/AuditEvent/$chain-head")  # reads every AuditEvent too
        refused = await module.get("/AuditEvent/$chain-head")  # may only create them
    assert response.status_code == 200, response.text
    Parameters.model_validate(response.json())
    values = _values(response.json())
    seq, _, digest = values["head"].partition(":")
    assert (int(seq), digest) == (values["seq"], values["digest"])
    assert from_xis.status_code == 200
    assert refused.status_code == 403
    database = Database(hub.settings.database_url, pool_size=1)
    try:
        key = read_key(hub.settings.keys_dir)
        # What `hub audit verify --expect-head SEQ:DIGEST` checks.
        assert await check_anchor(database, "test", int(seq), digest) == []
        assert (await verify_domain(database, "test", key)).problems == []
    finally:
        await database.dispose()


async def test_the_capability_statement_documents_the_operations(hub: HubServer) -> None:
    async with hub.client() as anonymous:
        statement = (await anonymous.get("/metadata")).json()
    CapabilityStatement.model_validate(statement)
    [rest] = statement["rest"]
    operations = {
        resource["type"]: sorted(op["name"] for op in resource.get("operation", ()))
        for resource in rest["resource"]
    }
    assert operations["Subscription"] == ["resend", "status"]
    assert operations["AuditEvent"] == ["chain-head"]
