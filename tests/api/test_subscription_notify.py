"""What a matching write sends, and to whom: docs/architecture.md §4-5 over real HTTP and HTTPS.

Each test runs a real hub (trusting a throwaway CA) and real HTTPS receivers. A test
that proves something is NOT sent waits until the hub's delivery queue is empty and a
later, matching write has been notified: only then is the silence meaningful.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.audit.trail import RESOURCE_TYPES
from tests.support.https_receiver import HttpsReceiver, LocalCA
from tests.support.hub import AppKeys, HubServer
from tests.support.subscriptions import (
    CONTENT_TYPE,
    DCM,
    LIFECYCLE,
    OBJECT_ROLE,
    activity,
    correlation_ids,
    create,
    decoded_query,
    drained,
    extension,
    notifying_hub,
    search,
    subscribe,
    task,
    transmit_events,
    update,
)

PATIENT: dict[str, Any] = {"resourceType": "Patient"}


@pytest.fixture
def hub(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], local_ca: LocalCA
) -> Iterator[HubServer]:
    # "admin" becomes a second XIS, so that two apps own Patients.
    roles = {"admin": "Zorgondersteuning"}
    with notifying_hub(tmp_path, database_url, app_keys, local_ca, roles=roles) as server:
        yield server


async def test_a_matching_write_sends_one_empty_post_with_the_headers_in_order(
    hub: HubServer, https_receiver: HttpsReceiver
) -> None:
    endpoint = https_receiver.url("/hooks/module")
    async with hub.client("module") as module, hub.client("xis") as xis:
        await subscribe(
            module, "Patient", endpoint, headers=["X-Subscription: s1", "Authorization:Bearer s3"]
        )
        await create(xis, PATIENT, trace="trace123")
    await drained(hub.settings.database_url)

    [request] = https_receiver.requests
    request_id = request.header("X-Request-Id")
    assert request_id is not None
    assert uuid.UUID(request_id).version == 4
    assert request.body == b""
    assert request.head == (
        f"POST /hooks/module HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{https_receiver.port}\r\n"
        f"Content-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: 0\r\n"
        f"X-Subscription: s1\r\n"
        f"Authorization: Bearer s3\r\n"
        f"X-Request-Id: {request_id}\r\n"
        f"X-Correlation-Id: trace123-w\r\n"
        f"X-Trace-Id: trace123\r\n"
        f"\r\n"
    ).encode("ascii")


async def test_the_transmit_audit_event_records_who_what_where_and_why(
    hub: HubServer, https_receiver: HttpsReceiver
) -> None:
    endpoint = https_receiver.url("/hooks/module")
    async with (
        hub.client("module") as module,
        hub.client("xis") as xis,
        hub.client("auditor") as auditor,
    ):
        subscription_id = await subscribe(module, "Patient?gender=female", endpoint)
        written = await create(xis, PATIENT | {"gender": "female"}, trace="trace-tx")
        await drained(hub.settings.database_url)
        [event] = await transmit_events(auditor, subscription_id)
        # One X-Trace-Id finds the write and its notification.
        chain = await search(auditor, "/AuditEvent", traceId="trace-tx")

    [request] = https_receiver.requests
    assert event["type"] == {
        "system": LIFECYCLE,
        "code": "transmit",
        "display": "Transmit Record Lifecycle Event",
    }
    assert "subtype" not in event
    assert event["action"] == "E"
    assert event["outcome"] == "0"
    source, destination = event["agent"]
    assert source["who"] == {"reference": "Device/xis"}
    assert (source["type"]["coding"][0]["system"], source["type"]["coding"][0]["code"]) == (
        DCM,
        "110153",
    )
    assert source["requestor"] is True
    assert destination["who"] == {"reference": "Device/module"}
    assert destination["type"]["coding"][0]["code"] == "110152"
    assert destination["type"]["coding"][0]["system"] == DCM
    assert destination["requestor"] is False
    assert destination["network"] == {"address": endpoint, "type": "5"}
    patient, subscriber = event["entity"]
    assert patient["what"] == {"reference": f"Patient/{written.json()['id']}/_history/1"}
    assert patient["type"] == {"system": RESOURCE_TYPES, "code": "Patient", "display": "Patient"}
    assert subscriber["what"] == {"reference": f"Subscription/{subscription_id}"}
    assert subscriber["role"] == {"system": OBJECT_ROLE, "code": "9", "display": "Subscriber"}
    assert subscriber["type"] == {
        "system": RESOURCE_TYPES,
        "code": "Subscription",
        "display": "Subscription",
    }
    assert "network" not in source
    assert decoded_query(subscriber) == "Patient?gender=female"
    assert event["source"]["observer"] == {"reference": "Device/koppeltaal-hub"}
    assert extension(event, "trace-id") == "trace-tx"
    assert extension(event, "correlation-id") == "trace-tx-w"
    assert extension(event, "request-id") == request.header("X-Request-Id")

    kinds = sorted(e["type"]["code"] for e in chain)
    assert kinds == ["rest", "transmit"]


async def test_writes_the_criteria_do_not_match_send_nothing(
    hub: HubServer, https_receiver: HttpsReceiver
) -> None:
    async with hub.client("module") as module, hub.client("xis") as xis:
        await subscribe(module, "Patient?gender=female", https_receiver.url())
        await create(xis, PATIENT | {"gender": "male"}, trace="male")
        female = (await create(xis, PATIENT | {"gender": "female"}, trace="female")).json()
        await drained(hub.settings.database_url)
        # Becoming male is a write the criteria no longer match.
        await update(xis, female | {"gender": "male"}, trace="now-male")
        await create(xis, PATIENT | {"gender": "female"}, trace="sentinel")
        await drained(hub.settings.database_url)
    assert correlation_ids(https_receiver.requests) == ["female-w", "sentinel-w"]


async def test_a_delete_sends_nothing(hub: HubServer, https_receiver: HttpsReceiver) -> None:
    practitioner = {"resourceType": "Practitioner"}
    async with hub.client("xis") as xis:
        await subscribe(xis, "Practitioner", https_receiver.url())
        created = await create(xis, practitioner, trace="created")
        await drained(hub.settings.database_url)
        path = f"/Practitioner/{created.json()['id']}"
        deleted = await xis.delete(path, headers={"X-Request-Id": "deleted-w"})
        assert deleted.status_code in (200, 204)
        await create(xis, practitioner, trace="sentinel")
        await drained(hub.settings.database_url)
    assert correlation_ids(https_receiver.requests) == ["created-w", "sentinel-w"]


async def test_a_subscriber_hears_only_of_what_it_may_read(
    hub: HubServer, https_receiver: HttpsReceiver, local_ca: LocalCA
) -> None:
    # xis and admin are both XIS (Patient read: OWN); the module reads xis's Patients
    # (GRANTED), not admin's.
    with HttpsReceiver(local_ca) as for_module, HttpsReceiver(local_ca) as for_admin:
        async with (
            hub.client("xis") as xis,
            hub.client("admin") as admin,
            hub.client("module") as module,
        ):
            await subscribe(xis, "Patient", https_receiver.url())
            await subscribe(admin, "Patient", for_admin.url())
            await subscribe(module, "Patient", for_module.url())
            await create(admin, PATIENT, trace="admins")
            await create(xis, PATIENT, trace="xiss")
            await drained(hub.settings.database_url)
        assert correlation_ids(https_receiver.requests) == ["xiss-w"]
        assert correlation_ids(for_admin.requests) == ["admins-w"]
        assert correlation_ids(for_module.requests) == ["xiss-w"]


async def test_audit_events_notify_only_when_an_application_posts_one(
    hub: HubServer, https_receiver: HttpsReceiver
) -> None:
    async with hub.client("xis") as xis, hub.client("module") as module:
        # The XIS may read every AuditEvent of the domain. From here on the hub writes
        # an AuditEvent for every request, and none of them may notify.
        await subscribe(xis, "AuditEvent", https_receiver.url())
        await create(xis, PATIENT, trace="not-an-audit")
        await search(xis, "/AuditEvent", _count="1")
        await create(module, receive_event(), trace="posted")
        await drained(hub.settings.database_url)
    assert correlation_ids(https_receiver.requests) == ["posted-w"]


def receive_event() -> dict[str, Any]:
    return {
        "resourceType": "AuditEvent",
        "type": {"system": LIFECYCLE, "code": "receive"},
        "action": "E",
        "recorded": "2025-03-01T12:00:00Z",
        "outcome": "0",
        "agent": [{"who": {"reference": "Device/module"}, "requestor": True}],
        "source": {"observer": {"reference": "Device/module"}},
        "entity": [{"what": {"reference": "Patient/p1/_history/1"}}],
    }


async def test_nothing_crosses_domains(
    hub: HubServer, https_receiver: HttpsReceiver, local_ca: LocalCA
) -> None:
    with HttpsReceiver(local_ca) as other_receiver:
        async with (
            hub.client("xis") as xis,
            hub.client("other-xis", domain="other") as other,
        ):
            await subscribe(xis, "Patient", https_receiver.url())
            await subscribe(other, "Patient", other_receiver.url())
            await create(other, PATIENT, trace="in-other")
            await create(xis, PATIENT, trace="in-test")
            await drained(hub.settings.database_url)
        assert correlation_ids(https_receiver.requests) == ["in-test-w"]
        assert correlation_ids(other_receiver.requests) == ["in-other-w"]


# --- Koppeltaal's typical criteria -------------------------------------------------------


async def test_koppeltaal_task_criteria_notify_exactly_the_matching_tasks(
    hub: HubServer, local_ca: LocalCA
) -> None:
    with (
        HttpsReceiver(local_ca) as by_publisher,
        HttpsReceiver(local_ca) as chained_by_type,
        HttpsReceiver(local_ca) as completed,
        HttpsReceiver(local_ca) as by_origin,
    ):
        async with hub.client("module") as module, hub.client("portal") as portal:
            mine = (await create(module, activity("pub-1"))).json()["id"]
            theirs = (await create(module, activity("pub-2"))).json()["id"]
            await subscribe(module, "Task?instantiates.publisherId=pub-1", by_publisher.url())
            await subscribe(
                module,
                "Task?instantiates:ActivityDefinition.publisherId=pub-1&status=ready",
                chained_by_type.url(),
            )
            await subscribe(module, "Task?status=completed", completed.url())
            await subscribe(module, "Task?resource-origin=Device/portal", by_origin.url())

            ready = (await create(portal, task(mine), trace="portal-mine")).json()
            await create(portal, task(theirs), trace="portal-theirs")
            await create(module, task(mine, "in-progress"), trace="module-mine")
            await update(portal, ready | {"status": "completed"}, trace="portal-done")
            await drained(hub.settings.database_url)

        assert correlation_ids(by_publisher.requests) == [
            "portal-mine-w",
            "module-mine-w",
            "portal-done-w",
        ]
        assert correlation_ids(chained_by_type.requests) == ["portal-mine-w"]
        assert correlation_ids(completed.requests) == ["portal-done-w"]
        assert correlation_ids(by_origin.requests) == [
            "portal-mine-w",
            "portal-theirs-w",
            "portal-done-w",
        ]
