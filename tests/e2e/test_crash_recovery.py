"""At-least-once delivery across a crash (docs/architecture.md §5), with `hub serve` killed -9.

A write load runs against a real `hub serve` process while the receiver holds its
answers, so notifications pile up queued and in flight; the process is killed with
SIGKILL mid-load and started again on the same database. Every write that was answered 201 was
committed with its outbox row, so every one of them must be notified, by the process
that died or by the one that took over.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.support.https_receiver import HttpsReceiver, LocalCA
from tests.support.hub import AppKeys, write_apps_file
from tests.support.processes import HubProcess, access_token
from tests.support.subscriptions import correlation_ids, drained, outbox, subscribe
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

# Short, so the rows the dead process held come back within seconds: a lease covers a
# whole send, max(lease, webhook timeout + 5 s) = 7 s here.
FAST_TAKEOVER = {"HUB_DELIVERY_LEASE_SECONDS": "2", "HUB_WEBHOOK_TIMEOUT": "2"}


async def write_load(
    client: httpx.AsyncClient, *, writers: int, committed: list[str], attempted: list[str]
) -> None:
    """Create Patients from `writers` concurrent loops until the hub stops answering."""

    async def writer(number: int) -> None:
        for sequence in range(10_000):
            request_id = f"load-{number}-{sequence}"
            attempted.append(request_id)
            try:
                response = await client.post(
                    "/Patient",
                    json={"resourceType": "Patient"},
                    headers={"X-Request-Id": request_id},
                )
            except httpx.TransportError:
                return  # the hub is gone; whether this write committed is unknown
            assert response.status_code == 201, response.text
            committed.append(request_id)

    await asyncio.gather(*(writer(n) for n in range(writers)))


async def test_every_committed_write_is_notified_after_a_kill_9_and_restart(
    tmp_path: Path,
    database_url: str,
    app_keys: dict[str, AppKeys],
    local_ca: LocalCA,
    https_receiver: HttpsReceiver,
) -> None:
    https_receiver.hold()  # no answers until the crash: a backlog builds up
    apps = write_apps_file(tmp_path / "apps.yaml", app_keys)
    first = HubProcess(
        tmp_path, database_url=database_url, apps_file=apps, ca_bundle=local_ca.bundle,
        env=FAST_TAKEOVER,
    )  # fmt: skip
    committed: list[str] = []
    attempted: list[str] = []
    with first:
        async with first.client(access_token(first, app_keys["xis"])) as xis:
            await subscribe(xis, "Patient", https_receiver.url())
            load = asyncio.create_task(
                write_load(xis, writers=4, committed=committed, attempted=attempted)
            )

            async def enough() -> bool:
                return len(committed) >= 40

            await eventually(enough, timeout=60, what="40 committed writes")
            await asyncio.to_thread(first.kill)
            await load
        https_receiver.release()
        # The crash left notifications queued, and some in flight under its lease.
        rows = await outbox(database_url)
        assert any(r.lease_owner is None for r in rows), "nothing was queued at the crash"
        assert any(first.owns(r.lease_owner) for r in rows), "nothing was in flight at the crash"

        second = HubProcess(
            tmp_path, database_url=database_url, apps_file=apps, ca_bundle=local_ca.bundle,
            port=first.port, env=FAST_TAKEOVER,
        )  # fmt: skip
        with second:

            async def all_notified() -> bool:
                return set(committed) <= set(correlation_ids(https_receiver.requests))

            try:
                await eventually(all_notified, timeout=90, what="every committed write")
                await drained(database_url, timeout=30)
            except AssertionError:
                missing = set(committed) - set(correlation_ids(https_receiver.requests))
                pytest.fail(
                    f"{len(missing)} committed writes never notified: {sorted(missing)[:5]}\n"
                    f"first hub:\n{first.output()}\nsecond hub:\n{second.output()}"
                )
    notified = correlation_ids(https_receiver.requests)
    # Nothing is notified that was not written, and nothing committed is missing.
    assert set(notified) <= set(attempted)
    assert set(committed) <= set(notified)
