"""`kill -9` of a `hub worker` in the middle of its batches (docs/architecture.md §4, §5).

An API process takes writes from four clients while one worker delivers them to
two Subscriptions each, recording its outcomes in batches; the worker is killed
with SIGKILL while notifications and their records are flowing, the writes go on,
and a second worker is started on the same database. Then:

- every committed write was notified to both Subscriptions (at-least-once: a POST
  whose record died with the worker is sent again);
- every delivered row has exactly ONE successful `transmit` AuditEvent: none lost
  with a batch that committed, none recorded twice for one attempt;
- the audit chain verifies.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from hub.audit.chain import load_or_create_key
from hub.audit.events import CORRELATION_ID_EXTENSION
from hub.audit.verify import verify_domain
from hub.store.db import Database
from hub.store.sql import Work, execute
from tests.support.https_receiver import HttpsReceiver, LocalCA
from tests.support.hub import AppKeys
from tests.support.processes import access_token
from tests.support.roles import Deployment
from tests.support.subscriptions import correlation_ids, drained, outbox, subscribe
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

# The rows the dead worker held come back within seconds: a lease covers a whole
# send, max(lease, webhook timeout + 5 s) = 7 s here.
FAST_TAKEOVER = {"HUB_DELIVERY_LEASE_SECONDS": "2", "HUB_WEBHOOK_TIMEOUT": "2"}


async def _write_until(
    client: httpx.AsyncClient, stop: asyncio.Event, committed: list[str], number: int
) -> None:
    for sequence in range(100_000):
        if stop.is_set():
            return
        request_id = f"crash-{number}-{sequence}"
        response = await client.post(
            "/Patient", json={"resourceType": "Patient"}, headers={"X-Request-Id": request_id}
        )
        assert response.status_code == 201, response.text
        committed.append(request_id)


def _transmits() -> Work[list[str]]:
    found = yield from execute(
        text("SELECT content FROM resources WHERE domain = 'test' AND rtype = 'AuditEvent'")
    )
    return [str(content) for (content,) in found.rows]


def _successes(contents: list[str]) -> Counter[tuple[str, str]]:
    """(correlation id, Subscription) of every successful `transmit` AuditEvent, counted."""
    counted: Counter[tuple[str, str]] = Counter()
    for content in contents:
        event = json.loads(content)
        if event["type"]["code"] != "transmit" or event["outcome"] != "0":
            continue
        [correlation] = [
            e["valueId"] for e in event.get("extension", []) if e["url"] == CORRELATION_ID_EXTENSION
        ]
        [subscription] = [
            entity["what"]["reference"]
            for entity in event["entity"]
            if entity["what"]["reference"].startswith("Subscription/")
        ]
        counted[(correlation, subscription)] += 1
    return counted


async def test_a_worker_killed_mid_batch_loses_and_duplicates_no_record(
    tmp_path: Path,
    database_url: str,
    app_keys: dict[str, AppKeys],
    local_ca: LocalCA,
    https_receiver: HttpsReceiver,
) -> None:
    deployment = Deployment(tmp_path, database_url, app_keys, local_ca)
    committed: list[str] = []
    with deployment.api() as api:
        async with api.client(access_token(api, app_keys["xis"])) as xis:
            subscriptions = [
                await subscribe(xis, "Patient", https_receiver.url()) for _ in range(2)
            ]
            stop = asyncio.Event()
            with deployment.worker(**FAST_TAKEOVER) as first:
                load = [
                    asyncio.create_task(_write_until(xis, stop, committed, n)) for n in range(4)
                ]

                async def flowing() -> bool:
                    return len(https_receiver.requests) >= 60

                await eventually(flowing, timeout=60, what="60 notifications delivered")
                await asyncio.to_thread(first.kill)
            written_at_crash = len(committed)
            # The crash left rows claimed by the dead worker: sent or being recorded.
            in_flight = [r for r in await outbox(database_url) if first.owns(r.lease_owner)]
            assert in_flight, "nothing was in flight at the crash"

            async def more_written() -> bool:
                return len(committed) >= written_at_crash + 20

            await eventually(more_written, timeout=60, what="20 writes after the crash")
            stop.set()
            await asyncio.gather(*load)

            with deployment.worker(**FAST_TAKEOVER) as second:

                async def all_notified() -> bool:
                    counts = Counter(correlation_ids(https_receiver.requests))
                    return all(counts[request_id] >= 2 for request_id in committed)

                try:
                    await eventually(all_notified, timeout=90, what="every committed write")
                    await drained(database_url, timeout=30)
                except AssertionError:
                    pytest.fail(f"first:\n{first.output()}\nsecond:\n{second.output()}")

    database = Database(database_url)
    try:
        successes = _successes(await database.read(_transmits()))
        expected = {
            (request_id, f"Subscription/{subscription}")
            for request_id in committed
            for subscription in subscriptions
        }
        assert set(successes) == expected
        assert [key for key, count in successes.items() if count != 1] == []
        verdict = await verify_domain(database, "test", load_or_create_key(tmp_path / "keys"))
        assert verdict.problems == []
    finally:
        await database.dispose()
