"""Engines, sessions and transactions for SQLite and PostgreSQL.

SQLite allows one writer at a time. Rather than let concurrent writers collide
on the file lock, the hub gives SQLite a dedicated single-connection write
engine whose transactions start with `BEGIN IMMEDIATE` (so a transaction never
has to upgrade a read lock, the classic source of `database is locked`), and a
separate pool of reader connections that WAL lets run beside the writer.
PostgreSQL uses one pooled engine for both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _prepare_sqlite_path(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        from pathlib import Path

        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_engine(url: str, *, writer: bool) -> AsyncEngine:
    engine = create_async_engine(
        url,
        poolclass=AsyncAdaptedQueuePool,
        pool_size=1 if writer else 8,
        max_overflow=0 if writer else 8,
        pool_timeout=60,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable in WAL mode except against power loss before a checkpoint.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


class Database:
    """The hub's database: `write()` and `read()` give transactional sessions."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        if self.dialect == "sqlite":
            _prepare_sqlite_path(url)
            self.write_engine = _sqlite_engine(url, writer=True)
            self.read_engine = _sqlite_engine(url, writer=False)
        elif self.dialect == "postgresql":
            # No overflow: a burst of requests queues for a connection (up to
            # pool_timeout) instead of opening more, so N hub processes on one
            # server never hold more than N times pool_size connections.
            engine = create_async_engine(
                url, pool_size=pool_size, max_overflow=0, pool_timeout=30, pool_pre_ping=True
            )
            self.write_engine = engine
            # A search counts and pages in one snapshot, so reads are REPEATABLE READ.
            self.read_engine = engine.execution_options(isolation_level="REPEATABLE READ")
        else:
            raise ValueError(
                f"unsupported database URL {url!r}: use sqlite+aiosqlite or postgresql+asyncpg"
            )

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A read-write transaction, committed when the block ends without an exception."""
        async with (
            AsyncSession(self.write_engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only transaction: one consistent snapshot on both backends."""
        async with (
            AsyncSession(self.read_engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    async def dispose(self) -> None:
        await self.write_engine.dispose()
        if self.dialect == "sqlite":
            await self.read_engine.dispose()


def dialect_of(session: AsyncSession) -> str:
    """`postgresql` or `sqlite`: the backend a session talks to."""
    bind = session.bind
    assert bind is not None, "sessions are always bound to an engine"
    return bind.dialect.name


def affected(result: object) -> int:
    """Rows changed by an UPDATE/DELETE/INSERT result."""
    count = getattr(result, "rowcount", 0)
    return int(count) if isinstance(count, int) else 0
