from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from hub.store.db import Database


async def _connections_to(url: str) -> int:
    parts = make_url(url)
    watcher = await asyncpg.connect(
        host=parts.host, port=parts.port, user=parts.username, database="postgres"
    )
    try:
        count = await watcher.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", parts.database
        )
    finally:
        await watcher.close()
    assert isinstance(count, int)
    return count


async def test_a_postgres_burst_queues_for_the_pool_instead_of_opening_more(
    database_url: str,
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("the connection bound is a PostgreSQL setting")
    database = Database(database_url, pool_size=2)
    try:
        async with contextlib.AsyncExitStack() as held:
            for _ in range(2):
                session = await held.enter_async_context(database.read())
                await session.execute(text("SELECT 1"))

            async def third() -> int:
                async with database.read() as session:
                    return int((await session.execute(text("SELECT 3"))).scalar_one())

            waiting = asyncio.create_task(third())
            await asyncio.sleep(0.3)
            assert not waiting.done(), "a third session got a connection beyond the pool"
            assert await _connections_to(database_url) == 2
        # The held sessions are back in the pool: the waiting one proceeds on one of them.
        assert await asyncio.wait_for(waiting, timeout=10) == 3
        assert await _connections_to(database_url) == 2
    finally:
        await database.dispose()
