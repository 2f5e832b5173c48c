"""Revision 0003 gives resources stored before `phonetic` existed their phonetic index rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from alembic import command
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from hub.fhir.query import parse_search
from hub.store import resources
from hub.store.db import Database
from hub.store.migrate import alembic_config, current_revision, head_revision, upgrade
from hub.store.search import search
from hub.store.sql import Work, execute


def _downgrade_to_0002(connection: Connection) -> None:
    command.downgrade(alembic_config(connection), "0002")


async def downgrade_to_0002(database: Database) -> None:
    """Back to the schema before 0003: what a hub of the previous release left."""
    if database.is_postgres:
        engine = create_async_engine(database.url)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(_downgrade_to_0002)
        finally:
            await engine.dispose()
    else:
        sync_engine = create_engine(f"sqlite:///{database.sqlite_path}")
        try:
            with sync_engine.begin() as connection:
                _downgrade_to_0002(connection)
        finally:
            sync_engine.dispose()


def _phonetic_rows() -> Work[int]:
    found = yield from execute(text("SELECT count(*) FROM idx_token WHERE param = 'phonetic'"))
    return int(found.scalar())


def _write(
    resource_type: str, id_: str, body: dict[str, Any], *, delete: bool = False
) -> Work[None]:
    prepared = resources.prepare(
        "d", {"resourceType": resource_type, **body}, id=id_, version_id=1,
        now=datetime(2026, 1, 1), origin="xis", method="POST",
    )  # fmt: skip
    row = yield from resources.write(prepared, previous=None)
    if delete:
        yield from resources.delete(row, now=datetime(2026, 1, 2))


async def found(database: Database, resource_type: str, value: str) -> list[str]:
    query = parse_search(resource_type, [("phonetic", value)])
    page = await database.read(search(domain="d", query=query, allowed_origins=None, page_size=10))
    return sorted(row.id for row in page.rows)


async def test_upgrade_indexes_stored_names_by_sound(database: Database) -> None:
    await database.write(_write("Patient", "p1", {"name": [{"family": "Meijer"}]}))
    await database.write(_write("Practitioner", "r1", {"name": [{"given": ["Claes"]}]}))
    await database.write(_write("Patient", "p2", {"name": [{"family": "Meyer"}]}, delete=True))
    await database.write(_write("Task", "t1", {"status": "ready", "intent": "order"}))
    written = await database.read(_phonetic_rows())
    assert written == 2  # p1 and r1: a deleted resource has no index rows

    await downgrade_to_0002(database)
    assert await database.read(_phonetic_rows()) == 0
    assert await found(database, "Patient", "Maier") == []

    await upgrade(database)
    assert await current_revision(database) == head_revision()
    assert await database.read(_phonetic_rows()) == written
    assert await found(database, "Patient", "Maier") == ["p1"]
    assert await found(database, "Practitioner", "Klaas") == ["r1"]

    await upgrade(database)  # a no-op at head
    assert await database.read(_phonetic_rows()) == written
