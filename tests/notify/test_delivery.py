"""Delivering one queued notification: re-checked against the state at send time.

A notification waits in the outbox; by the time it is sent, its Subscription may be
gone, paused or pointed elsewhere, and its subscriber may have lost the right to read
the resource. Each test makes one of those changes while a notification is held in
the queue, then lets it go and checks what (if anything) was sent.

The queue is held with a "gate": the hub delivers one notification at a time
(`delivery_concurrency=1`) and a first, unrelated notification is kept waiting at a
receiver that does not answer until released.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.https_receiver import HttpsReceiver, LocalCA, Reply
from tests.support.hub import AppKeys, HubServer
from tests.support.subscriptions import (
    correlation_ids,
    create,
    drained,
    notifying_hub,
    outbox,
    read,
    subscribe,
    transmit_events,
)
from tests.support.waiting import eventually

MALE: dict[str, Any] = {"resourceType": "Patient", "gender": "male"}
FEMALE: dict[str, Any] = {"resourceType": "Patient", "gender": "female"}


@pytest.fixture
def hub(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], local_ca: LocalCA
) -> Iterator[HubServer]:
    with notifying_hub(
        tmp_path, database_url, app_keys, local_ca, delivery_concurrency=1
    ) as server:
        yield server


@asynccontextmanager
async def gated(hub: HubServer, gate: HttpsReceiver) -> AsyncIterator[None]:
    """Hold the hub's only delivery place until the block ends: what is queued waits."""
    gate.hold()
    async with hub.client("xis") as xis:
        await subscribe(xis, "Patient?gender=male", gate.url())
        await create(xis, MALE)
    await gate.wait_for_async(1)
    try:
        yield
    finally:
        gate.release()


@pytest.fixture
def gate(local_ca: LocalCA) -> Iterator[HttpsReceiver]:
    with HttpsReceiver(local_ca) as receiver:
        yield receiver


async def test_a_subscription_deleted_meanwhile_gets_nothing(
    hub: HubServer, gate: HttpsReceiver, https_receiver: HttpsReceiver
) -> None:
    async with hub.client("xis") as xis:
        subscription_id = await subscribe(xis, "Patient?gender=female", https_receiver.url())
        async with gated(hub, gate):
            await create(xis, FEMALE, trace="queued")
            assert (await xis.delete(f"/Subscription/{subscription_id}")).status_code in (200, 204)
        await drained(hub.settings.database_url)
    assert https_receiver.requests == []


async def test_a_subscription_turned_off_meanwhile_gets_nothing(
    hub: HubServer, gate: HttpsReceiver, https_receiver: HttpsReceiver
) -> None:
    async with hub.client("xis") as xis, hub.client("auditor") as auditor:
        subscription_id = await subscribe(xis, "Patient?gender=female", https_receiver.url())
        async with gated(hub, gate):
            await create(xis, FEMALE, trace="queued")
            current = await read(xis, f"/Subscription/{subscription_id}")
            paused = await xis.put(
                f"/Subscription/{subscription_id}",
                json=current | {"status": "off"},
                headers={"If-Match": 'W/"1"'},
            )
            assert paused.status_code == 200, paused.text
        await drained(hub.settings.database_url)
        # Dropped, not tried: no transmit event either.
        assert await transmit_events(auditor, subscription_id) == []
    assert https_receiver.requests == []


async def test_a_changed_endpoint_is_where_a_waiting_notification_goes(
    hub: HubServer, gate: HttpsReceiver, https_receiver: HttpsReceiver, local_ca: LocalCA
) -> None:
    with HttpsReceiver(local_ca) as moved:
        async with hub.client("xis") as xis:
            subscription_id = await subscribe(xis, "Patient?gender=female", https_receiver.url())
            async with gated(hub, gate):
                await create(xis, FEMALE, trace="queued")
                current = await read(xis, f"/Subscription/{subscription_id}")
                current["channel"]["endpoint"] = moved.url("/new")
                changed = await xis.put(
                    f"/Subscription/{subscription_id}", json=current, headers={"If-Match": 'W/"1"'}
                )
                assert changed.status_code == 200, changed.text
            await drained(hub.settings.database_url)
        assert https_receiver.requests == []
        assert correlation_ids(moved.requests) == ["queued-w"]
        assert moved.requests[0].target == "/new"


async def test_a_subscriber_that_lost_its_right_to_read_meanwhile_gets_nothing(
    hub: HubServer, gate: HttpsReceiver, https_receiver: HttpsReceiver
) -> None:
    async with hub.client("module") as module, hub.client("xis") as xis:
        # The module reads the XIS's Patients under a grant ...
        await subscribe(module, "Patient?gender=female", https_receiver.url())
        patient = (await create(xis, FEMALE, trace="before")).json()
        await https_receiver.wait_for_async(1)
        async with gated(hub, gate):
            await create(xis, FEMALE, trace="queued")
            # ... which the operator withdraws while the notification waits.
            revoke_grant(hub.settings.apps_file, "module", "Patient")

            async def revoked() -> bool:
                response = await module.get(f"/Patient/{patient['id']}")
                return response.status_code == 403

            await eventually(revoked, what="the hub to reload the apps file")
        await drained(hub.settings.database_url)
    assert correlation_ids(https_receiver.requests) == ["before-w"]


def revoke_grant(apps_file: Path, client_id: str, rtype: str) -> None:
    document = yaml.safe_load(apps_file.read_text())
    for domain in document["domains"]:
        for app in domain["apps"]:
            if app["client_id"] == client_id:
                app["grants"].pop(rtype)
    apps_file.write_text(yaml.safe_dump(document, sort_keys=False))


async def test_only_failures_in_a_row_count_towards_error(
    hub: HubServer, https_receiver: HttpsReceiver
) -> None:
    async with hub.client("xis") as xis:
        subscription_id = await subscribe(xis, "Patient", https_receiver.url())
        # Two failures, a success, two failures, a success: never three in a row.
        for trace in ("one", "two"):
            https_receiver.queue(Reply(503), Reply(503))
            await create(xis, MALE, trace=trace)
            await drained(hub.settings.database_url)
        history = (await xis.get(f"/Subscription/{subscription_id}/_history")).json()
    assert correlation_ids(https_receiver.requests) == ["one-w"] * 3 + ["two-w"] * 3
    assert [entry["resource"]["status"] for entry in history["entry"]] == ["active"]


async def test_a_failed_attempt_is_rescheduled_with_its_error(
    hub: HubServer, https_receiver: HttpsReceiver
) -> None:
    https_receiver.reply(500)
    async with hub.client("xis") as xis:
        await subscribe(xis, "Patient", https_receiver.url())
        await create(xis, MALE)

        async def retried() -> list[Any]:
            return [r for r in await outbox(hub.settings.database_url) if r.attempts >= 2]

        [row] = await eventually(retried, what="two failed attempts")
    assert row.state == "pending"
    assert row.last_error == f"HTTP 500 from {https_receiver.url()}"
    assert row.first_attempt_at is not None
    assert row.next_attempt_at > row.first_attempt_at


async def test_a_notification_waiting_for_a_busy_endpoint_is_checked_again_before_it_goes(
    tmp_path: Path,
    database_url: str,
    app_keys: dict[str, AppKeys],
    local_ca: LocalCA,
    gate: HttpsReceiver,
) -> None:
    # One request at a time per endpoint: the second notification is claimed, then
    # waits behind the first, which the receiver holds.
    with notifying_hub(tmp_path, database_url, app_keys, local_ca, endpoint_concurrency=1) as hub:
        async with hub.client("xis") as xis:
            await subscribe(xis, "Patient?gender=male", gate.url("/a"))
            paused_id = await subscribe(xis, "Patient?gender=female", gate.url("/b"))
            gate.hold()
            await create(xis, MALE, trace="first")
            await gate.wait_for_async(1)
            await create(xis, FEMALE, trace="waiting")

            async def claimed() -> bool:
                rows = await outbox(hub.settings.database_url)
                return any(r.subscription_id == paused_id and r.lease_owner for r in rows)

            await eventually(claimed, what="the second notification to be claimed")
            current = await read(xis, f"/Subscription/{paused_id}")
            paused = await xis.put(
                f"/Subscription/{paused_id}",
                json=current | {"status": "off"},
                headers={"If-Match": 'W/"1"'},
            )
            assert paused.status_code == 200, paused.text
            gate.release()
            await drained(hub.settings.database_url)
    assert correlation_ids(gate.requests) == ["first-w"]
