"""Schema migrations (Alembic), applied at start-up and by `hub db upgrade`.

The migration scripts live in the package (`hub/migrations`) so an installed
hub can migrate its own database. On PostgreSQL an advisory lock makes
several processes starting at once take turns instead of racing.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from hub.store.db import Database

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


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(database: Database) -> None:
    """Bring the schema to the newest revision (a no-op when it is current)."""
    async with database.write_engine.begin() as connection:
        await connection.run_sync(_upgrade)


async def current_revision(database: Database) -> str | None:
    async with database.read_engine.connect() as connection:
        return await connection.run_sync(_current)
