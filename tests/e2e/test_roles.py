"""Process roles (docs/architecture.md §6): `hub serve --role api` beside `hub worker`.

Real processes, as an operator runs them, on one database: the API process commits
writes and their outbox rows and never delivers; the workers deliver, woken at
commit by the API process (SQLite: a datagram beside the database file; PostgreSQL:
NOTIFY), with the poll set far beyond the tests' waits so only a wake-up explains a
prompt delivery.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import conftest
from tests.support.https_receiver import HttpsReceiver, LocalCA
from tests.support.hub import AppKeys
from tests.support.processes import HubProcess, access_token, free_port
from tests.support.roles import ApiProcess, Deployment
from tests.support.subscriptions import drained, outbox, subscribe, transmit_events
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

# Far beyond every wait below: a delivery within them was woken, not polled.
NO_POLL = {"HUB_DELIVERY_POLL_SECONDS": "30"}
# A functional bound for "it was woken", not a speed target.
WOKEN_WITHIN = 10.0


@pytest.fixture
def another_database_url(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    """A second fresh database of `database_url`'s backend, for a second deployment."""
    if database_url.startswith("sqlite"):
        path = tmp_path / "another.db"
        path.write_bytes(sqlite_template.read_bytes())
        yield f"sqlite+aiosqlite:///{path}"
        return
    template = request.getfixturevalue("postgres_template")
    name = f"hub_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(conftest._pg_execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield conftest._pg_url(name)
    asyncio.run(conftest._pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --- one script of writes, and what it must notify -------------------------------------

# (the Subscription's X-Sub header, the write's X-Request-Id): every Patient version
# notifies "every"; the male ones notify "male" too.
FIRST = [("every", "p1-v1"), ("male", "p1-v1"), ("every", "p2-v1")]
SECOND = [("every", "p1-v2"), ("every", "p2-v2"), ("male", "p2-v2")]


async def subscribe_both(client: httpx.AsyncClient, receiver: HttpsReceiver) -> None:
    await subscribe(client, "Patient", receiver.url(), headers=["X-Sub: every"])
    await subscribe(client, "Patient?gender=male", receiver.url(), headers=["X-Sub: male"])


async def write(
    client: httpx.AsyncClient, request_id: str, resource: dict[str, Any]
) -> dict[str, Any]:
    headers = {"X-Request-Id": request_id}
    if "id" in resource:
        headers["If-Match"] = f'W/"{resource["meta"]["versionId"]}"'
        response = await client.put(f"/Patient/{resource['id']}", json=resource, headers=headers)
    else:
        response = await client.post("/Patient", json=resource, headers=headers)
    assert response.status_code in (200, 201), response.text
    written: dict[str, Any] = response.json()
    return written


async def first_writes(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """p1 male, p2 female: notifies FIRST."""
    return [
        await write(client, "p1-v1", {"resourceType": "Patient", "gender": "male"}),
        await write(client, "p2-v1", {"resourceType": "Patient", "gender": "female"}),
    ]


async def second_writes(client: httpx.AsyncClient, patients: list[dict[str, Any]]) -> None:
    """p1 becomes female, p2 male: notifies SECOND."""
    p1, p2 = patients
    await write(client, "p1-v2", {**p1, "gender": "female"})
    await write(client, "p2-v2", {**p2, "gender": "male"})


def notified(receiver: HttpsReceiver) -> list[tuple[str, str]]:
    """(subscription, write) of every notification received, sorted."""
    return sorted(
        (r.header("X-Sub") or "", r.header("X-Correlation-Id") or "") for r in receiver.requests
    )


# --- the tests ---------------------------------------------------------------------------


async def deploy_and_write(
    directory: Path,
    database_url: str,
    app_keys: dict[str, AppKeys],
    ca: LocalCA,
    *,
    split: bool,
) -> list[tuple[str, str]]:
    """Run the script against one `hub serve`, or `hub serve --role api` + `hub worker`."""
    directory.mkdir()
    deployment = Deployment(directory, database_url, app_keys, ca)
    with HttpsReceiver(ca) as receiver, ExitStack() as running:
        api = running.enter_context(deployment.api(ApiProcess if split else HubProcess))
        if split:
            running.enter_context(deployment.worker())
        async with api.client(access_token(api, app_keys["xis"])) as xis:
            await subscribe_both(xis, receiver)
            await second_writes(xis, await first_writes(xis))
        await drained(database_url, timeout=30)  # a row leaves once its POST completed
        return notified(receiver)


async def test_an_api_process_and_a_worker_deliver_what_one_serve_delivers(
    tmp_path: Path,
    database_url: str,
    another_database_url: str,
    app_keys: dict[str, AppKeys],
    local_ca: LocalCA,
) -> None:
    one = await deploy_and_write(tmp_path / "serve", database_url, app_keys, local_ca, split=False)
    split = await deploy_and_write(
        tmp_path / "split", another_database_url, app_keys, local_ca, split=True
    )
    assert one == sorted(FIRST + SECOND)
    assert split == one


async def test_an_api_process_never_delivers_and_its_writes_wake_a_worker(
    tmp_path: Path,
    database_url: str,
    app_keys: dict[str, AppKeys],
    local_ca: LocalCA,
    https_receiver: HttpsReceiver,
) -> None:
    deployment = Deployment(tmp_path, database_url, app_keys, local_ca)
    # A short poll: had the API process a dispatcher, it would claim within the wait.
    with deployment.api(HUB_DELIVERY_POLL_SECONDS="0.2") as api:
        async with api.client(access_token(api, app_keys["xis"])) as xis:
            await subscribe_both(xis, https_receiver)
            patients = await first_writes(xis)
            await asyncio.sleep(1.5)
            rows = await outbox(database_url)
            assert https_receiver.requests == []
            assert len(rows) == len(FIRST)
            assert all(row.lease_owner is None and row.attempts == 0 for row in rows)

            with deployment.worker(**NO_POLL) as worker:
                # It takes over what is queued when it starts...
                await https_receiver.wait_for_async(len(FIRST), timeout=WOKEN_WITHIN)
                await drained(database_url)
                # ...and from then on is woken by each commit in the API process.
                started = time.monotonic()
                await second_writes(xis, patients)
                try:
                    await https_receiver.wait_for_async(len(FIRST + SECOND), timeout=WOKEN_WITHIN)
                except BaseException:
                    print(f"worker:\n{worker.output()}\napi:\n{api.output()}")  # for the report
                    raise
                woken_after = time.monotonic() - started
    assert notified(https_receiver) == sorted(FIRST + SECOND)
    assert woken_after < WOKEN_WITHIN  # the poll would have taken 30 s


async def test_a_slow_and_a_dead_receiver_do_not_delay_a_healthy_one_across_two_workers(
    tmp_path: Path,
    database_url: str,
    app_keys: dict[str, AppKeys],
    local_ca: LocalCA,
    https_receiver: HttpsReceiver,
) -> None:
    deployment = Deployment(tmp_path, database_url, app_keys, local_ca)
    # Two places per worker and one per endpoint: were a held delivery (or one waiting
    # for the held endpoint) to count, the slow receiver alone would fill each worker.
    # All three receivers belong to one app, which may therefore hold every place.
    small = {
        **NO_POLL,
        "HUB_DELIVERY_CONCURRENCY": "2",
        "HUB_ENDPOINT_CONCURRENCY": "1",
        "HUB_DELIVERY_APP_SHARE": "1",
    }
    dead = f"https://127.0.0.1:{free_port()}/hook"  # nothing listens: refused at once
    writes = [f"w{n}" for n in range(10)]
    with HttpsReceiver(local_ca) as slow, deployment.api() as api:
        slow.hold()
        with (
            deployment.worker(**small, HUB_SITE="worker-a"),
            deployment.worker(**small, HUB_SITE="worker-b"),
            ExitStack() as first_of_all,
        ):
            # Answer the held requests before the workers stop, whatever happens:
            # a stopping worker waits for its deliveries in flight.
            first_of_all.callback(slow.release)
            token = access_token(api, app_keys["xis"])
            async with api.client(token) as xis:
                await subscribe(xis, "Patient", slow.url())
                await subscribe(xis, "Patient", dead)
                healthy = await subscribe(xis, "Patient", https_receiver.url())
                started = time.monotonic()
                await asyncio.gather(
                    *(write(xis, request_id, {"resourceType": "Patient"}) for request_id in writes)
                )
                received = await https_receiver.wait_for_async(len(writes), timeout=WOKEN_WITHIN)
                healthy_took = time.monotonic() - started
                assert slow.requests, "the slow receiver was never called"
                async with api.client(access_token(api, app_keys["auditor"])) as auditor:

                    async def all_recorded() -> list[dict[str, Any]] | None:
                        events = await transmit_events(auditor, healthy)
                        return events if len(events) == len(writes) else None

                    events = await eventually(all_recorded, what="the healthy transmits")
    assert sorted(r.header("X-Correlation-Id") or "" for r in received) == sorted(writes)
    assert healthy_took < WOKEN_WITHIN
    # Delivered by the workers, never by the API process.
    assert {event["source"]["site"] for event in events} <= {"worker-a", "worker-b"}
