"""PostgreSQL LISTEN: wake this process's dispatcher when any process queues a delivery.

`hub.store.outbox.announce` NOTIFYs the channel in every unit that queues rows;
the notification arrives when that unit commits. One dedicated asyncpg
connection (outside the pool) listens; when it is lost it reconnects, and the
dispatcher's slow poll covers the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from hub.store.db import Database
from hub.store.outbox import CHANNEL

log = logging.getLogger("hub.listener")


class OutboxListener:
    def __init__(self, database: Database, on_notify: Callable[[], None]) -> None:
        # The pool's own connection arguments (PostgreSQL only): read now, so a wrong
        # backend fails at start-up rather than in the background task.
        self._connect_args: dict[str, Any] = dict(database.connect_args)
        self._on_notify = on_notify
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hub-outbox-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(**self._connect_args)
                lost = asyncio.Event()
                connection.add_termination_listener(lambda *_, lost=lost: lost.set())
                await connection.add_listener(CHANNEL, lambda *_: self._on_notify())
                self._on_notify()  # anything queued while we were not listening
                await lost.wait()
                log.warning("outbox listener connection closed; reconnecting")
            except (OSError, asyncpg.PostgresError) as exc:
                # The slow poll still delivers meanwhile; only the wake-up is late.
                log.warning("outbox listener lost its connection (%s); reconnecting", exc)
                await asyncio.sleep(2)
            finally:
                if connection is not None and not connection.is_closed():
                    await connection.close()
