"""The benchmark's only way past the HTTP API: the hub's own storage functions, in-process.

Two jobs need it:

- Setting up thousands of Subscriptions. Through the API each one would cost
  the hub a reload of its whole subscription index (every Subscription write
  changes the index generation), so 10,000 would take an hour of setup. Instead
  a Subscription made through the API is the template, and copies of it with
  other criteria and endpoints are stored with the same functions a write uses
  (`resources.prepare`, `resources.insert_new`) and the index generation is bumped,
  so the hub loads them as it loads any Subscription. They get no AuditEvent of
  their own: no application made them.
- Knowing when the hub has delivered everything it queued: the outbox is empty.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bench.hubs import CLIENT, DOMAIN
from hub.fhir.outcome import FhirError
from hub.fhir.query import parse_criteria
from hub.rules.subscription import validate_subscription
from hub.runtime import utcnow
from hub.store import outbox, resources, subscriptions
from hub.store.db import Database
from hub.store.sql import Work
from hub.trace import new_id

# Rows per transaction: short enough that the hub's own writes (its dispatcher)
# are never held up for long behind the benchmark's.
_BATCH = 500


class Store:
    def __init__(self, database_url: str) -> None:
        self.database = Database(database_url, pool_size=2)

    async def close(self) -> None:
        await self.database.dispose()

    async def copy_subscriptions(
        self, template: dict[str, Any], specs: Sequence[tuple[str, str]]
    ) -> list[str]:
        """Store a copy of `template` for each `(criteria, endpoint)`, as the API would; ids."""
        made: list[str] = []
        for start in range(0, len(specs), _BATCH):
            now = utcnow()
            copies = [
                resources.prepare(
                    DOMAIN,
                    _copy(template, criteria, endpoint),
                    id=new_id(),
                    version_id=1,
                    now=now,
                    origin=CLIENT,
                    method="POST",
                )
                for criteria, endpoint in specs[start : start + _BATCH]
            ]
            await self.database.write(_store_copies(copies))
            made += [copy.id for copy in copies]
        return made

    async def enqueue_backlog(
        self, request_id: str, writes: int, subscription_ids: Sequence[str]
    ) -> None:
        """`writes` Patients' notifications to each Subscription, queued in one transaction.

        As the writes would have queued them (one row per write and Subscription), with
        one request id for all, so the receiver counts them together. No write and no
        wake-up: the delivery processes find them when they next look.
        """
        now = utcnow()
        triggers = [
            outbox.Trigger(
                domain=DOMAIN,
                resource_type="Patient",
                resource_id=f"backlog-{number}",
                version_id=1,
                origin=CLIENT,
                source_device=CLIENT,
                request_id=request_id,
                trace_id=new_id(),
                now=now,
            )
            for number in range(writes)
        ]
        await self.database.write(_enqueue(triggers, subscription_ids))

    async def backlog(self) -> int:
        """Notifications queued and not yet delivered (or given up on)."""
        return await self.database.read(outbox.pending_count())

    async def drained(self, within: float) -> float | None:
        """Seconds until the outbox is empty; None if it is not within `within` seconds."""
        started = time.perf_counter()
        while await self.backlog():
            if time.perf_counter() - started > within:
                return None
            await asyncio.sleep(0.1)
        return time.perf_counter() - started


def _store_copies(copies: Sequence[resources.NewVersion]) -> Work[None]:
    """One transaction: the copies, and a new generation so every hub reloads its index."""
    yield from resources.insert_new(copies)
    yield from subscriptions.bump_generation(DOMAIN)


def _enqueue(triggers: Sequence[outbox.Trigger], subscription_ids: Sequence[str]) -> Work[None]:
    for trigger in triggers:
        yield from outbox.enqueue_webhooks(trigger, subscription_ids)


def _copy(template: dict[str, Any], criteria: str, endpoint: str) -> dict[str, Any]:
    resource = copy.deepcopy(template)
    for server_set in ("id", "meta"):
        resource.pop(server_set, None)
    resource["criteria"] = criteria
    resource["channel"]["endpoint"] = endpoint
    # The rules the API applies; a copy the API would refuse must not slip in here.
    issues = validate_subscription(resource, now=datetime.now(UTC), parse_criteria=parse_criteria)
    if issues:
        raise FhirError(422, issues)
    return resource
