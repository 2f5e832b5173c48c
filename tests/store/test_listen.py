"""PostgreSQL LISTEN: a unit that queues deliveries wakes the listener when it commits."""

from __future__ import annotations

import asyncio

import pytest

from hub.store import outbox
from hub.store.db import Database
from hub.store.listen import OutboxListener
from hub.store.sql import Work


async def test_a_committed_announcement_wakes_the_listener(database: Database) -> None:
    if not database.is_postgres:
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite wakes the dispatcher in-process")
    woken = asyncio.Event()
    wakes = 0

    def on_notify() -> None:
        nonlocal wakes
        wakes += 1
        woken.set()

    listener = OutboxListener(database, on_notify)
    listener.start()
    try:
        async with asyncio.timeout(10):
            await woken.wait()  # once on connecting: rows queued while nobody listened
        woken.clear()

        def announce_then_fail() -> Work[None]:
            yield from outbox.announce()
            raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            await database.write(announce_then_fail())
        await database.write(outbox.announce())
        async with asyncio.timeout(10):
            await woken.wait()
        await asyncio.sleep(0.2)
        assert wakes == 2  # the rolled-back NOTIFY was never delivered
    finally:
        await listener.stop()
