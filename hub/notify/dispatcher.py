"""The delivery worker: claims due outbox rows and delivers them, many at once.

It is woken the moment a write commits (in-process, and on PostgreSQL by
LISTEN/NOTIFY from every process), and otherwise sleeps until the next row is
due, with a slow poll as the safety net. A global limit bounds the deliveries
in flight; the per-endpoint limit lives in the `Deliverer`. A delivery waiting
for its busy endpoint does not count against the global limit, and no more rows
of its Subscription are claimed meanwhile: one slow receiver never uses up the
places the others need (docs/architecture.md §4).

The unit that claims rows also brings the subscription index of their domains
up to date (one generation read per domain): the deliverer's pre-send check
reads the index from memory, and so sees every change committed before the
claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Protocol

from hub.notify.registry import SubscriptionIndex
from hub.settings import Settings
from hub.store import outbox
from hub.store.clock import utcnow
from hub.store.db import Database
from hub.store.outbox import Entry
from hub.store.sql import Work

log = logging.getLogger("hub.dispatcher")


class Deliverer(Protocol):
    """What delivers one claimed row (`hub.interactions.delivery`): the dispatcher's only peer."""

    on_waiting: Callable[[], None]

    @property
    def owner(self) -> str: ...

    @property
    def subscriptions(self) -> SubscriptionIndex:
        """The index the deliverer's pre-send check reads."""

    @property
    def waiting(self) -> Mapping[int, str]:
        """Rows (pk → subscription id) waiting for a slot of their busy endpoint."""

    async def deliver(self, row: Entry) -> None: ...


class Dispatcher:
    def __init__(self, database: Database, settings: Settings, deliverer: Deliverer) -> None:
        self.database = database
        self.settings = settings
        self.deliverer = deliverer
        self._wake = asyncio.Event()
        # Each delivery in progress, with its outbox row's pk.
        self._in_flight: dict[asyncio.Task[None], int] = {}
        deliverer.on_waiting = self.wake  # a delivery that waits frees its place
        self._capacity = settings.delivery_concurrency
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hub-dispatcher")

    async def stop(self) -> None:
        """Stop claiming; let deliveries in flight finish (their rows are leased anyway)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=self.settings.webhook_timeout + 1)

    async def _run(self) -> None:
        while True:
            try:
                claimed = await self._claim_and_start()
            except Exception:
                log.exception("claiming deliveries failed; retrying shortly")
                claimed = 0
                await asyncio.sleep(1)
            if claimed and self._active() < self._capacity:
                continue  # there may be more due right now
            await self._sleep()

    def _active(self) -> int:
        """Deliveries that hold a place; those waiting for their busy endpoint do not."""
        return len(self._in_flight) - len(self.deliverer.waiting)

    def _rows(self) -> set[int]:
        """The rows in progress here: never claimed twice, even once their lease ran out."""
        return set(self._in_flight.values())

    def _busy_subscriptions(self) -> set[str]:
        """Subscriptions whose endpoint is busy: more of their rows would only wait."""
        return set(self.deliverer.waiting.values())

    async def _claim_and_start(self) -> int:
        free = self._capacity - self._active()
        if free <= 0:
            return 0
        settings = self.settings
        rows = await self.database.write(
            _claim(
                self.deliverer.subscriptions,
                outbox.claim(
                    owner=self.deliverer.owner,
                    now=utcnow(),
                    lease=timedelta(seconds=settings.delivery_lease_seconds),
                    limit=free,
                    skip_rows=self._rows(),
                    skip_subscriptions=self._busy_subscriptions(),
                ),
            )
        )
        # The tasks start here, after the unit: it ran in another thread on SQLite.
        for row in rows:
            task = asyncio.create_task(self._deliver(row))
            self._in_flight[task] = row.pk
            task.add_done_callback(self._finished)
        return len(rows)

    async def _deliver(self, row: Entry) -> None:
        try:
            await self.deliverer.deliver(row)
        except Exception:
            # The lease runs out and the row is tried again; nothing is lost.
            log.exception("delivering outbox row %s failed unexpectedly", row.pk)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._wake.set()  # capacity freed: look for more work

    async def _sleep(self) -> None:
        timeout = self.settings.delivery_poll_seconds
        if self._active() < self._capacity:
            try:
                due = await self.database.read(
                    outbox.next_due(
                        skip_rows=self._rows(), skip_subscriptions=self._busy_subscriptions()
                    )
                )
            except Exception:
                log.exception("reading the next due delivery failed")
                due = None
            if due is not None:
                timeout = max(0.0, min(timeout, (due - utcnow()).total_seconds()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        self._wake.clear()


def _claim(subscriptions: SubscriptionIndex, claim: Work[list[Entry]]) -> Work[list[Entry]]:
    """Claim rows, and bring the index of their domains up to date in the same unit."""
    rows = yield from claim
    for domain in sorted({row.domain for row in rows if row.channel != "email"}):
        yield from subscriptions.ensure_current(domain)
    return rows
