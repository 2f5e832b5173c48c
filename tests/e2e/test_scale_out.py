"""Two `hub serve` processes on one PostgreSQL database (docs/architecture.md §2, §4).

Delivery is coordinated through the database: in the happy path every notification is
sent exactly once, whichever process took the write and whichever was woken; when the
process delivering a notification is killed mid-send, the other delivers it once the
lease runs out.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from hub.store.outbox import Entry
from tests.conftest import POSTGRES_URL
from tests.support.https_receiver import HttpsReceiver, LocalCA
from tests.support.hub import AppKeys, write_apps_file
from tests.support.processes import HubProcess, access_token, free_port
from tests.support.subscriptions import (
    correlation_ids,
    drained,
    outbox,
    read,
    search,
    subscribe,
    transmit_events,
)
from tests.support.waiting import eventually

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not POSTGRES_URL, reason="HUB_TEST_DATABASE_URL is not set"),
    # A fresh PostgreSQL database per test; several processes on SQLite are not a setup.
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
]

# A lease covers a whole send: max(lease, webhook timeout + 5 s) = 8 s here.
FAST_TAKEOVER = {"HUB_DELIVERY_LEASE_SECONDS": "2", "HUB_WEBHOOK_TIMEOUT": "3"}


def two_hubs(
    directory: Path,
    database_url: str,
    apps: Path,
    ca: LocalCA,
    env: tuple[dict[str, str], dict[str, str]] = (FAST_TAKEOVER, FAST_TAKEOVER),
) -> tuple[HubProcess, HubProcess]:
    """Two processes behind one public URL, as behind a load balancer."""
    port = free_port()
    first = HubProcess(
        directory, database_url=database_url, apps_file=apps, ca_bundle=ca.bundle,
        port=port, env=env[0],
    )  # fmt: skip
    second = HubProcess(
        directory, database_url=database_url, apps_file=apps, ca_bundle=ca.bundle,
        public_url=first.url, env=env[1],
    )  # fmt: skip
    return first, second


async def test_each_notification_is_sent_once_by_one_of_two_processes(
    tmp_path: Path,
    database_url: str,
    app_keys: dict[str, AppKeys],
    local_ca: LocalCA,
    https_receiver: HttpsReceiver,
) -> None:
    apps = write_apps_file(tmp_path / "apps.yaml", app_keys)
    first, second = two_hubs(tmp_path, database_url, apps, local_ca)
    with first, second:
        token = access_token(first, app_keys["xis"])
        auditor_token = access_token(first, app_keys["auditor"])
        async with (
            first.client(token) as one,
            second.client(token) as two,
            first.client(auditor_token) as auditor,
        ):
            subscription_id = await subscribe(one, "Patient", https_receiver.url())
            # Writes through both processes at once; both dispatchers are woken by each.
            written = [f"w{n}" for n in range(30)]
            await asyncio.gather(
                *(
                    client.post(
                        "/Patient", json={"resourceType": "Patient"}, headers={"X-Request-Id": n}
                    )
                    for client, n in zip(itertools.cycle((one, two)), written, strict=False)
                )
            )
            await drained(database_url, timeout=60)
            events = await transmit_events(auditor, subscription_id)
    assert sorted(correlation_ids(https_receiver.requests)) == sorted(written)
    assert len(events) == len(written)


async def test_the_survivor_delivers_what_a_killed_process_was_sending(
    tmp_path: Path,
    database_url: str,
    app_keys: dict[str, AppKeys],
    local_ca: LocalCA,
    https_receiver: HttpsReceiver,
) -> None:
    https_receiver.hold()  # the first attempt never gets its answer
    apps = write_apps_file(tmp_path / "apps.yaml", app_keys)
    first, second = two_hubs(tmp_path, database_url, apps, local_ca)
    with first, second:
        token = access_token(first, app_keys["xis"])
        auditor_token = access_token(first, app_keys["auditor"])
        async with first.client(token) as xis:
            subscription_id = await subscribe(xis, "Patient", https_receiver.url())
            written = await xis.post(
                "/Patient",
                json={"resourceType": "Patient"},
                headers={"X-Request-Id": "crash-w", "X-Trace-Id": "crash"},
            )
            assert written.status_code == 201, written.text
            [sent] = await https_receiver.wait_for_async(1)

            # Kill whichever process is sending it, mid-request.
            [row] = await outbox(database_url)
            sender, survivor = (first, second) if holds(first, row) else (second, first)
            assert holds(sender, row)
            await asyncio.to_thread(sender.kill)

        [_, resent] = await https_receiver.wait_for_async(2, timeout=30)
        https_receiver.release()
        await drained(database_url, timeout=30)
        async with survivor.client(token) as xis, survivor.client(auditor_token) as auditor:
            events = await transmit_events(auditor, subscription_id)
            current = await read(xis, f"/Subscription/{subscription_id}")
    # The same notification, a new request: same trigger and trace, new X-Request-Id.
    assert resent.header("X-Correlation-Id") == sent.header("X-Correlation-Id") == "crash-w"
    assert resent.header("X-Trace-Id") == "crash"
    assert resent.header("X-Request-Id") != sent.header("X-Request-Id")
    [event] = events  # only the attempt that finished was recorded
    assert event["outcome"] == "0"
    assert current["status"] == "active"


def holds(process: HubProcess, row: Entry) -> bool:
    """Whether `process` leased `row`."""
    return process.owns(row.lease_owner)


async def test_a_write_in_one_process_wakes_the_other_through_listen_notify(
    tmp_path: Path,
    database_url: str,
    app_keys: dict[str, AppKeys],
    local_ca: LocalCA,
    https_receiver: HttpsReceiver,
) -> None:
    # Neither process polls or wakes for a lease within the test's time: the first can
    # deliver one notification at a time, and its one place is taken by a held one.
    slow = {"HUB_DELIVERY_POLL_SECONDS": "600", "HUB_WEBHOOK_TIMEOUT": "300"}
    env = ({**slow, "HUB_DELIVERY_CONCURRENCY": "1"}, {**slow, "HUB_SITE": "second"})
    apps = write_apps_file(tmp_path / "apps.yaml", app_keys)
    first, second = two_hubs(tmp_path, database_url, apps, local_ca, env)
    with HttpsReceiver(local_ca) as gate, first:
        gate.hold()
        token = access_token(first, app_keys["xis"])
        async with first.client(token) as xis:
            await subscribe(xis, "Patient?gender=male", gate.url())
            await subscribe(xis, "Patient?gender=female", https_receiver.url())
            male = {"resourceType": "Patient", "gender": "male"}
            assert (await xis.post("/Patient", json=male)).status_code == 201
            await gate.wait_for_async(1)  # the first process is now full
            with second:
                female = {"resourceType": "Patient", "gender": "female"}
                written = await xis.post(
                    "/Patient", json=female, headers={"X-Request-Id": "via-first"}
                )
                assert written.status_code == 201
                # Only the second process can send it, and only NOTIFY can wake it now.
                [request] = await https_receiver.wait_for_async(1, timeout=60)
                assert request.header("X-Correlation-Id") == "via-first"
                auditor = access_token(first, app_keys["auditor"])
                async with second.client(auditor) as audit:

                    async def transmitted() -> list[dict[str, Any]]:
                        return await search(
                            audit, "/AuditEvent", type="transmit", correlationId="via-first"
                        )

                    [event] = await eventually(transmitted, what="the transmit event")
            gate.release()
    assert event["source"]["site"] == "second"
