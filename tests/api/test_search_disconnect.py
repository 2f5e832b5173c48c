"""A search whose client hangs up is cancelled, its database statement included.

On PostgreSQL the search is made to wait for a table lock that a test connection holds;
the client gives up after half a second. Without the cancel the statement would wait on
for the whole statement timeout (here a minute), holding a pooled connection all along.
The AuditEvent records the search as cancelled. On SQLite the same cancel interrupts the
statement (tests/store/test_db.py shows it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.support.hub import AppKeys, HubServer, hub_settings, running_hub, write_apps_file
from tests.support.notifications import audit_events


@pytest.fixture
def patient_hub(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys]
) -> Iterator[HubServer]:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite readers never wait for a lock; test_db.py shows the interrupt")
    settings = hub_settings(
        tmp_path,
        database_url,
        write_apps_file(tmp_path / "apps.yaml", app_keys),
        database_statement_timeout=60.0,
    )
    with running_hub(settings, app_keys) as hub:
        yield hub


async def _admin(url: str) -> asyncpg.Connection:
    parts = make_url(url)
    connection: asyncpg.Connection = await asyncpg.connect(
        host=parts.host, port=parts.port, user=parts.username, database=parts.database
    )
    return connection


@asynccontextmanager
async def resources_locked(url: str) -> AsyncIterator[None]:
    """Every statement that reads the resources table waits while this is held."""
    holder = await _admin(url)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE resources IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await holder.close()


async def _searches_waiting(url: str) -> int:
    """Statements that wait for the lock and look up names: the search (the hub's own
    background work reads and writes the resources table too)."""
    watcher = await _admin(url)
    try:
        count = await watcher.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state = 'active' AND wait_event_type = 'Lock' AND query LIKE '%idx_string%'"
        )
    finally:
        await watcher.close()
    assert isinstance(count, int)
    return count


async def test_a_search_is_cancelled_when_its_client_goes(
    patient_hub: HubServer, database_url: str
) -> None:
    token = patient_hub.token("xis")
    async with resources_locked(database_url):
        async with httpx.AsyncClient(
            base_url=patient_hub.fhir(), headers={"Authorization": f"Bearer {token}"}
        ) as client:
            searching = asyncio.create_task(
                client.get(
                    "/Patient",
                    params={"family": "Waiting"},
                    headers={"X-Request-Id": "gave-up"},
                    timeout=httpx.Timeout(10, read=1.0),
                )
            )
            deadline = time.monotonic() + 10
            while not await _searches_waiting(database_url):  # it reached the database
                assert time.monotonic() < deadline, "the search never reached PostgreSQL"
                await asyncio.sleep(0.05)
            with pytest.raises(httpx.ReadTimeout):
                await searching
        # The client has closed its connection: the statement waiting for the lock goes.
        deadline = time.monotonic() + 10
        while await _searches_waiting(database_url):
            assert time.monotonic() < deadline, "the abandoned search still waits in PostgreSQL"
            await asyncio.sleep(0.05)
    [event] = await audit_events(patient_hub, requestId="gave-up")
    assert event["outcome"] == "4"
    assert "closed the connection" in event["outcomeDesc"]
