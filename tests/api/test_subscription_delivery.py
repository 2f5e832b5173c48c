"""Delivery over time: retries, the Subscription's status, slow receivers, coalescing.

The hubs here retry on a shortened schedule (`retry_base_seconds`, the
HUB_RETRY_BASE_SECONDS knob: the same steps, scaled), so three failures take about a
second or two. Where the order of events matters the receiver holds its answers
(`hold`/`release`), so each step is observed before the next can happen.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

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
    update,
    wait_for_status,
)
from tests.support.waiting import eventually

PATIENT: dict[str, Any] = {"resourceType": "Patient"}


@pytest.fixture
def hub(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], local_ca: LocalCA
) -> Iterator[HubServer]:
    with notifying_hub(tmp_path, database_url, app_keys, local_ca) as server:
        yield server


async def test_three_failures_in_a_row_set_error_and_the_next_success_clears_it(
    hub: HubServer, https_receiver: HttpsReceiver
) -> None:
    https_receiver.reply(503, retry_after="1")
    https_receiver.hold()
    endpoint = https_receiver.url()
    async with hub.client("xis") as xis, hub.client("auditor") as auditor:
        subscription_id = await subscribe(xis, "Patient", endpoint)
        await create(xis, PATIENT, trace="flaky")
        # Let the attempts through one at a time: attempt n+1 arriving means n failed.
        for attempt in (1, 2):
            await https_receiver.wait_for_async(attempt)
            https_receiver.release()
            https_receiver.hold()
        await https_receiver.wait_for_async(3)
        # Two failures recorded, the third attempt held: not yet in error.
        assert (await read(xis, f"/Subscription/{subscription_id}"))["status"] == "active"
        https_receiver.release()

        failed = await wait_for_status(xis, subscription_id, "error")
        assert failed["error"] == f"HTTP 503 from {endpoint}"

        https_receiver.reply(200)
        recovered = await wait_for_status(xis, subscription_id, "active")
        assert "error" not in recovered
        await drained(hub.settings.database_url)
        events = await transmit_events(auditor, subscription_id)
        history = (await xis.get(f"/Subscription/{subscription_id}/_history")).json()

    requests = https_receiver.requests
    assert len(requests) >= 4
    # Every attempt is the same notification (same trigger), each a request of its own.
    assert set(correlation_ids(requests)) == {"flaky-w"}
    assert len({r.header("X-Request-Id") for r in requests}) == len(requests)
    outcomes = sorted(e["outcome"] for e in events)
    assert outcomes == ["0"] + ["4"] * (len(requests) - 1)
    assert {e.get("outcomeDesc") for e in events if e["outcome"] == "4"} == {
        f"HTTP 503 from {endpoint}"
    }
    # The verdicts are versions of the Subscription: active, error, active, nothing else.
    statuses = [entry["resource"]["status"] for entry in reversed(history["entry"])]
    assert statuses == ["active", "error", "active"]


async def test_an_unreachable_receiver_puts_the_subscription_in_error(
    hub: HubServer, local_ca: LocalCA
) -> None:
    with HttpsReceiver(local_ca) as gone:
        endpoint = gone.url()
    # The port is closed now: every attempt is refused.
    async with hub.client("xis") as xis:
        subscription_id = await subscribe(xis, "Patient", endpoint)
        await create(xis, PATIENT)
        failed = await wait_for_status(xis, subscription_id, "error")
    assert failed["error"] == "connection refused"
    [row] = await outbox(hub.settings.database_url)
    assert row.attempts >= 3
    assert row.state == "pending"  # still being retried


async def test_410_gone_turns_the_subscription_off_and_stops_notifications(
    hub: HubServer, https_receiver: HttpsReceiver, local_ca: LocalCA
) -> None:
    https_receiver.reply(410)
    endpoint = https_receiver.url()
    with HttpsReceiver(local_ca) as sentinel:
        async with hub.client("xis") as xis:
            subscription_id = await subscribe(xis, "Patient", endpoint)
            await create(xis, PATIENT, trace="first")
            off = await wait_for_status(xis, subscription_id, "off")
            assert off["error"] == f"HTTP 410 from {endpoint}"

            await subscribe(xis, "Patient", sentinel.url())
            await create(xis, PATIENT, trace="second")
            await sentinel.wait_for_async(1)
        assert correlation_ids(https_receiver.requests) == ["first-w"]
        assert correlation_ids(sentinel.requests) == ["second-w"]

    async def settled() -> list[Any] | None:
        rows = await outbox(hub.settings.database_url)
        return rows if all(r.state == "gave-up" for r in rows) else None

    # The refused notification is kept for the operator, not retried.
    [row] = await eventually(settled, what="the sentinel's delivery to finish")
    assert (row.state, row.attempts) == ("gave-up", 1)


async def test_retry_after_is_honoured_over_a_shorter_schedule(
    hub: HubServer, https_receiver: HttpsReceiver
) -> None:
    https_receiver.queue(Reply(503, headers=[("Retry-After", "3")]))
    async with hub.client("xis") as xis:
        await subscribe(xis, "Patient", https_receiver.url())
        await create(xis, PATIENT, trace="later")

        async def failed_once() -> list[Any]:
            return [r for r in await outbox(hub.settings.database_url) if r.attempts == 1]

        [row] = await eventually(failed_once, what="the first failure to be recorded")
        await drained(hub.settings.database_url)
    # The schedule says 0.04 s; the receiver asked for 3 s, and gets at least that.
    assert row.first_attempt_at is not None
    assert row.next_attempt_at - row.first_attempt_at >= timedelta(seconds=3)
    assert correlation_ids(https_receiver.requests) == ["later-w", "later-w"]


# --- one receiver's trouble is not another's -------------------------------------------


async def test_a_slow_receiver_does_not_hold_back_a_healthy_one(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], local_ca: LocalCA
) -> None:
    # Small limits, so that a handful of notifications fill them (the defaults are 32/4).
    # Both receivers belong to one app, so it may hold every place (tests/notify/
    # test_fairness.py shows the share that keeps one app from delaying the others).
    with (
        notifying_hub(
            tmp_path,
            database_url,
            app_keys,
            local_ca,
            delivery_concurrency=4,
            endpoint_concurrency=2,
            delivery_app_share=1.0,
        ) as hub,
        HttpsReceiver(local_ca) as slow,
        HttpsReceiver(local_ca) as healthy,
    ):
        slow.hold()
        async with hub.client("xis") as xis:
            await subscribe(xis, "Patient", slow.url())
            await subscribe(xis, "Patient?gender=female", healthy.url())
            for n in range(6):
                await create(xis, PATIENT | {"gender": "male"}, trace=f"male{n}")
            await slow.wait_for_async(2)  # its two slots are taken, and stay taken
            await create(xis, PATIENT | {"gender": "female"}, trace="female")
            # The healthy receiver hears of the write while the slow one still holds.
            [request] = await healthy.wait_for_async(1, timeout=10)
            assert request.header("X-Correlation-Id") == "female-w"
            assert len(slow.requests) == 2
            slow.release()
            await drained(hub.settings.database_url)
        assert sorted(correlation_ids(slow.requests)) == sorted(
            [f"male{n}-w" for n in range(6)] + ["female-w"]
        )


async def test_writes_while_a_notification_waits_are_coalesced_never_lost(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], local_ca: LocalCA
) -> None:
    # One delivery at a time: while the first is held, the next one must wait queued.
    with (
        notifying_hub(tmp_path, database_url, app_keys, local_ca, delivery_concurrency=1) as hub,
        HttpsReceiver(local_ca) as receiver,
    ):
        receiver.hold()
        async with hub.client("xis") as xis, hub.client("auditor") as auditor:
            subscription_id = await subscribe(xis, "Patient", receiver.url())
            patient = (await create(xis, PATIENT, trace="v1")).json()
            await receiver.wait_for_async(1)
            for version in (2, 3, 4):
                patient = (await update(xis, patient, trace=f"v{version}")).json()
            receiver.release()
            await drained(hub.settings.database_url)
            events = await transmit_events(auditor, subscription_id)
    # Fewer notifications than writes, never none, and the last names the newest write.
    assert correlation_ids(receiver.requests) == ["v1-w", "v4-w"]
    assert receiver.requests[-1].header("X-Trace-Id") == "v4"
    versions = sorted(e["entity"][0]["what"]["reference"].rsplit("/", 1)[1] for e in events)
    assert versions == ["1", "4"]
