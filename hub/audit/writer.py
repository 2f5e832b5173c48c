"""Group commit for the AuditEvents of reads and refused requests.

Koppeltaal wants every read audited before its response leaves. One write
transaction per read would serialise all reads behind the database's commit
latency; instead, events that arrive while a commit is in flight are stored
together in the next transaction. Each caller still waits until ITS event is
committed, and gets the exception if storing failed (the request then fails
with 500: no unaudited access).

Each event is serialised and indexed in its caller's task (`prepare`), so a
flush holds the writer only for the statements. A batch is one unit of work:
on SQLite it joins the database's group commit with the writes of the moment.

One bad event never fails the others: when a batch's unit fails, its events
are stored again one by one, each its own unit (concurrently, so on SQLite they
still share a commit, each in its own savepoint). An event that fails alone is
stored truncated (`hub.audit.events.truncated`: what the request made long cut,
with the SHA-256 of the whole), so no request can keep its refusal off the
trail; only if even that fails does its own caller get the exception.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hub import metrics
from hub.audit.events import truncated
from hub.audit.store import prepare
from hub.store.audit import append_events
from hub.store.db import Database
from hub.store.resources import NewVersion

log = logging.getLogger("hub.audit")

MAX_BATCH = 200


@dataclass
class _Pending:
    event: NewVersion
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class AuditWriter:
    def __init__(
        self,
        database: Database,
        chain_key: bytes,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC).replace(tzinfo=None),
    ) -> None:
        self._database = database
        self._chain_key = chain_key
        self._clock = clock
        self._queue: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    async def record(self, domain: str, event: dict[str, Any]) -> None:
        """Store `event`; returns once it is committed."""
        # Serialised and indexed here, in the caller's task, so a flush holds the
        # database only for the statements.
        pending = _Pending(prepare(domain, event, self._clock()))
        self._queue.append(pending)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_all())
        # shield: a client disconnecting must not cancel the batch others wait on.
        await asyncio.shield(pending.done)

    async def _flush_all(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            if len(batch) == 1:
                await self._store_alone(batch[0])
                continue
            try:
                await self._database.write(
                    append_events([pending.event for pending in batch], self._chain_key)
                )
            except Exception:
                log.exception("storing %d AuditEvents together failed: one by one", len(batch))
                await asyncio.gather(*(self._store_alone(pending) for pending in batch))
            else:
                _count(batch)
                _settle(batch, None)

    async def _store_alone(self, pending: _Pending) -> None:
        """Store one event in its own unit; truncated if it fails whole. Never raises."""
        try:
            await self._database.write(append_events([pending.event], self._chain_key))
        except Exception as exc:
            failure: Exception = exc
        else:
            _count([pending])
            _settle([pending], None)
            return
        event = pending.event
        shorter = truncated(event.resource)
        if shorter is None:
            log.error("storing an AuditEvent failed", exc_info=failure)
            _settle([pending], failure)
            return
        log.warning("storing an AuditEvent failed (%s): storing it truncated", failure)
        try:
            cut = prepare(event.domain, shorter, self._clock())
            await self._database.write(append_events([cut], self._chain_key))
        except Exception as exc:
            log.exception("storing a truncated AuditEvent failed too")
            _settle([pending], exc)
        else:
            _count([pending])
            _settle([pending], None)

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)


def _count(stored: list[_Pending]) -> None:
    """`hub_audit_events_total`: the events just committed, per domain."""
    for domain, events in Counter(pending.event.domain for pending in stored).items():
        metrics.audit_events(domain, events)


def _settle(batch: list[_Pending], failure: Exception | None) -> None:
    for pending in batch:
        if pending.done.done():
            continue
        if failure is None:
            pending.done.set_result(None)
        else:
            pending.done.set_exception(failure)
