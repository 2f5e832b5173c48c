"""The delivery worker: woken by writes, leases honoured, capacity shared fairly.

A real hub on each backend, real HTTPS receivers; the outbox is read straight from
the database to see what is queued, leased or done.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from hub.runtime import utcnow
from hub.store import outbox
from hub.store.db import Database
from hub.store.outbox import Entry, Trigger
from hub.store.sql import Work
from tests.support.https_receiver import HttpsReceiver, LocalCA
from tests.support.hub import AppKeys, HubServer
from tests.support.subscriptions import (
    correlation_ids,
    create,
    drained,
    notifying_hub,
    subscribe,
    transmit_events,
)

PATIENT: dict[str, Any] = {"resourceType": "Patient"}


HubFactory = Callable[..., AbstractContextManager[HubServer]]


@pytest.fixture
def hub_factory(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], local_ca: LocalCA
) -> HubFactory:
    """Start a hub on this test's database with the given settings."""

    def start(**settings: Any) -> AbstractContextManager[HubServer]:
        return notifying_hub(tmp_path, database_url, app_keys, local_ca, **settings)

    return start


async def test_a_write_wakes_the_dispatcher_without_waiting_for_the_poll(
    hub_factory: HubFactory, https_receiver: HttpsReceiver
) -> None:
    with hub_factory(delivery_poll_seconds=600) as hub:
        async with hub.client("xis") as xis:
            await subscribe(xis, "Patient", https_receiver.url())
            await create(xis, PATIENT, trace="now")
            # Far sooner than the 10-minute poll: the commit woke the dispatcher.
            [request] = await https_receiver.wait_for_async(1, timeout=30)
    assert request.header("X-Correlation-Id") == "now-w"


async def test_a_delivery_that_outlasts_its_lease_is_not_sent_twice(
    hub_factory: HubFactory, https_receiver: HttpsReceiver
) -> None:
    # The receiver answers only after the lease (1 s) has run out twice over.
    https_receiver.reply(200, delay=2.5)
    with hub_factory(delivery_lease_seconds=1.0) as hub:
        async with hub.client("xis") as xis, hub.client("auditor") as auditor:
            subscription_id = await subscribe(xis, "Patient", https_receiver.url())
            await create(xis, PATIENT, trace="slow")
            await drained(hub.settings.database_url, timeout=30)
            events = await transmit_events(auditor, subscription_id)
    assert correlation_ids(https_receiver.requests) == ["slow-w"]
    assert len(events) == 1


async def test_another_worker_never_takes_over_a_delivery_in_progress(
    tmp_path: Path,
    database_url: str,
    app_keys: dict[str, AppKeys],
    local_ca: LocalCA,
    https_receiver: HttpsReceiver,
) -> None:
    # Two hubs on one database; whichever sends, the other sees a lease (1 s) that
    # would run out long before the receiver answers.
    https_receiver.reply(200, delay=2.5)
    first = notifying_hub(tmp_path, database_url, app_keys, local_ca, delivery_lease_seconds=1.0)
    second = notifying_hub(tmp_path, database_url, app_keys, local_ca, delivery_lease_seconds=1.0)
    with first as hub, second:
        async with hub.client("xis") as xis, hub.client("auditor") as auditor:
            subscription_id = await subscribe(xis, "Patient", https_receiver.url())
            await create(xis, PATIENT, trace="slow")
            await drained(database_url, timeout=30)
            events = await transmit_events(auditor, subscription_id)
    assert correlation_ids(https_receiver.requests) == ["slow-w"]
    assert len(events) == 1


async def test_deliveries_waiting_for_their_endpoint_longer_than_the_lease_are_sent_once(
    hub_factory: HubFactory, https_receiver: HttpsReceiver
) -> None:
    # Two requests at a time to the endpoint; the others wait for a slot (2.5 s)
    # longer than their lease (1 s).
    https_receiver.reply(200, delay=2.5)
    settings = {"delivery_lease_seconds": 1.0, "endpoint_concurrency": 2}
    writes = ["w1", "w2", "w3", "w4"]
    with hub_factory(**settings) as hub:
        async with hub.client("xis") as xis, hub.client("auditor") as auditor:
            subscription_id = await subscribe(xis, "Patient", https_receiver.url())
            for trace in writes:
                await create(xis, PATIENT, trace=trace)
            await drained(hub.settings.database_url, timeout=30)
            events = await transmit_events(auditor, subscription_id)
    assert sorted(correlation_ids(https_receiver.requests)) == [f"{w}-w" for w in writes]
    assert len(events) == len(writes)


async def test_rows_leased_by_a_dead_worker_come_back_when_the_lease_runs_out(
    hub_factory: HubFactory, https_receiver: HttpsReceiver
) -> None:
    with hub_factory(delivery_lease_seconds=1.0) as hub:
        async with hub.client("xis") as xis:
            subscription_id = await subscribe(xis, "Patient", https_receiver.url())
            patient = (await create(xis, PATIENT)).json()
            await https_receiver.wait_for_async(1)
            await drained(hub.settings.database_url)
            # A row as a worker that died mid-delivery leaves it: leased, never finished.
            await leave_orphan(hub.settings.database_url, subscription_id, patient["id"], "orphan")
            await drained(hub.settings.database_url)
    assert correlation_ids(https_receiver.requests)[-1] == "orphan"


async def leave_orphan(
    database_url: str, subscription_id: str, patient_id: str, request_id: str
) -> None:
    now = utcnow()
    trigger = Trigger(
        domain="test",
        resource_type="Patient",
        resource_id=patient_id,
        version_id=1,
        origin="xis",
        source_device="xis",
        request_id=request_id,
        trace_id=request_id,
        now=now,
    )

    def orphan() -> Work[list[Entry]]:
        # Queued and leased in one unit: the hub's own dispatcher never sees it unleased.
        yield from outbox.enqueue_webhooks(trigger, [subscription_id])
        return (
            yield from outbox.claim(
                owner="dead-host:1", now=now, lease=timedelta(seconds=2), limit=1
            )
        )

    database = Database(database_url)
    try:
        [row] = await database.write(orphan())
    finally:
        await database.dispose()
    assert (row.request_id, row.lease_owner) == (request_id, "dead-host:1")
