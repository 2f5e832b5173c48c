"""Schema migrations (Alembic), applied at start-up and by `hub db upgrade`.

The migration scripts live in the package (`hub/migrations`) so an installed
hub can migrate its own database. Several processes starting at once (an API
process and its workers, `hub serve --workers N`) take turns instead of
racing: on PostgreSQL by an advisory lock, on SQLite by an exclusive `flock`
on the database file itself (independent of SQLite's own byte-range locks).
"""

from __future__ import annotations

import asyncio
import fcntl
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from hub.store.db import Database
from hub.store.sql import Work, execute

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# An arbitrary constant that names "the hub's migration lock" among advisory locks.
_ADVISORY_LOCK_KEY = 0x4B54_4855_4221


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
    command.upgrade(alembic_config(connection), "head")


def _upgrade_sqlite(path: str) -> None:
    if path == ":memory:":
        _upgrade_sqlite_unlocked(path)
        return
    # Opened for appending: creates the file if need be (SQLite takes an empty file
    # as a new database) and never changes a byte of it.
    with open(path, "ab") as database_file:
        fcntl.flock(database_file, fcntl.LOCK_EX)  # released when the file is closed
        _upgrade_sqlite_unlocked(path)


def _upgrade_sqlite_unlocked(path: str) -> None:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as connection:
            _upgrade(connection)
    finally:
        engine.dispose()


async def upgrade(database: Database) -> None:
    """Bring the schema to the newest revision (a no-op when it is current).

    Alembic runs on its own short-lived SQLAlchemy engine; the hub's units of work
    never go through SQLAlchemy's engine layer.
    """
    if database.is_postgres:
        engine = create_async_engine(database.url)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(_upgrade)
        finally:
            await engine.dispose()
    else:
        await asyncio.to_thread(_upgrade_sqlite, database.sqlite_path)


def _revision() -> Work[str | None]:
    found = yield from execute(text("SELECT version_num FROM alembic_version"))
    return None if found.scalar() is None else str(found.scalar())


async def current_revision(database: Database) -> str | None:
    """The schema's revision (fails when the database cannot be reached)."""
    return await database.read(_revision())
