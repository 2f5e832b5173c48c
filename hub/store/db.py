"""The database: runs units of work (`hub.store.sql`) on SQLite or PostgreSQL.

`Database.write(work)` stores one logical write (a resource version, its
history and index rows, its AuditEvent and chain link, its outbox rows) and
returns only after it is committed: a 201 means durable. `Database.read(work)`
runs a unit in one read-only snapshot.

SQLite (the embedded default) allows one writer at a time, so the hub gives it
one writer thread on the standard `sqlite3` module and commits in groups:
units that arrive while a commit is in flight are run together in the next
transaction (`BEGIN IMMEDIATE`), each inside its own SAVEPOINT. A unit that
fails (a constraint, an `If-Match` race, a bad value) is rolled back to its
savepoint and fails alone; the others commit, and their callers are released
the moment the transaction commits. One batch costs one thread hand-off and
one commit, however many units it holds. Readers have their own long-lived
connections, one per reader thread (`query_only`, so a read can never write).

PostgreSQL (the scale-out backend, any number of hub processes) runs each unit
in its own transaction on an asyncpg pool connection, with asyncpg's prepared
statement cache. Every process locks rows in one order (resources first, the
audit chain head last); batching units of one process into one transaction
would hold a chain head while a later unit waits for a row another process
holds, so PostgreSQL does not group them. Reads run in REPEATABLE READ, so a
search counts and pages one snapshot. Every pooled connection has a
`statement_timeout`: a statement that runs longer is cancelled by the server
and surfaces as `Timeout`, so one costly search cannot hold a connection (and
the pool) for long. SQLite has no statement timeout; the caps on a search's
clauses (`hub.fhir.query`) bound what it can be asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.engine import URL, make_url

from hub.store.sql import Compiled, Conflict, Execute, Result, Step, WhichDialect, Work

log = logging.getLogger("hub.store")

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Units committed together at most; a larger backlog is committed in several groups.
MAX_GROUP = 256
SQLITE_READERS = 4
DEFAULT_STATEMENT_TIMEOUT = 5.0  # seconds (PostgreSQL only)


class Timeout(Exception):
    """PostgreSQL cancelled a statement that ran longer than the statement timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"a statement ran longer than the statement timeout of {seconds:g} s")
        self.seconds = seconds


def _sqlite_path(url: URL) -> str:
    database = url.database or ":memory:"
    if database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    return database


def _connect_sqlite(path: str, *, reader: bool) -> sqlite3.Connection:
    # Autocommit mode: the runner issues BEGIN, SAVEPOINT and COMMIT itself.
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable in WAL mode against a crash of the process (kill -9); only a
    # power loss before the next checkpoint can lose the newest commits.
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    connection.execute("PRAGMA foreign_keys=ON")
    if reader:
        connection.execute("PRAGMA query_only=ON")
    return connection


def _run_sqlite(connection: sqlite3.Connection, step: Execute) -> Result:
    compiled = step.compiled("sqlite")
    try:
        if step.many is not None:
            cursor = connection.executemany(
                compiled.sql, [compiled.row_arguments(row) for row in step.many]
            )
            return Result([], cursor.rowcount)
        cursor = connection.execute(compiled.sql, compiled.arguments(step.params))
        rows = cursor.fetchall() if compiled.returns_rows else []
    except sqlite3.IntegrityError as exc:
        if "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc):
            raise Conflict(str(exc)) from exc
        raise
    return Result(compiled.convert(rows), cursor.rowcount)


def drive_sync(connection: sqlite3.Connection, work: Work[T]) -> T:
    """Run a unit of work to its end on a SQLite connection, in the calling thread."""
    try:
        step = next(work)
        while True:
            try:
                value: Any = (
                    "sqlite" if isinstance(step, WhichDialect) else _run_sqlite(connection, step)
                )
            except Exception as exc:  # the unit may handle it (e.g. a Conflict)
                step = work.throw(exc)
            else:
                step = work.send(value)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _run_postgres(connection: Any, step: Execute, compiled: Compiled) -> Result:
    try:
        if step.many is not None:
            await connection.executemany(
                compiled.sql, [compiled.row_arguments(row) for row in step.many]
            )
            return Result([], len(step.many))
        arguments = compiled.arguments(step.params)
        if compiled.returns_rows:
            records = await connection.fetch(compiled.sql, *arguments)
            return Result(compiled.convert(records), len(records))
        status: str = await connection.execute(compiled.sql, *arguments)
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(str(exc)) from exc
    except asyncpg.QueryCanceledError as exc:
        # statement_timeout (the only cancellation the hub asks for); the unit cannot go
        # on, its transaction is aborted.
        raise _Cancelled(str(exc)) from exc
    last = status.rsplit(" ", 1)[-1]
    return Result([], int(last) if last.isdigit() else 0)


@dataclass(frozen=True)
class _Next:
    """The unit's next step, compiled for PostgreSQL; or, when it has ended, its value."""

    step: Step | None = None
    compiled: Compiled | None = None
    value: Any = None


def _resume(work: Work[Any], started: bool, value: Any, error: Exception | None) -> _Next:
    """Run the unit's own Python up to its next statement (built and compiled) or its end.

    Never raises StopIteration: that cannot cross a thread's future.
    """
    try:
        if not started:
            step = next(work)
        elif error is not None:
            step = work.throw(error)
        else:
            step = work.send(value)
    except StopIteration as stop:
        return _Next(value=stop.value)
    compiled = step.compiled("postgresql") if isinstance(step, Execute) else None
    return _Next(step, compiled)


async def drive_async(connection: Any, work: Work[T], *, off_loop: bool = False) -> T:
    """Run a unit of work to its end on an asyncpg connection.

    With `off_loop` the unit's own Python (building and compiling its statements) runs
    in a thread, for units that cost the event loop too long: a search at the limits of
    hub.fhir.query takes about 100 ms to build and compile.
    """
    started, error = False, None
    value: Any = None
    while True:
        if off_loop:
            following = await asyncio.to_thread(_resume, work, started, value, error)
        else:
            following = _resume(work, started, value, error)
        if following.step is None:
            return following.value  # type: ignore[no-any-return]
        started, value, error = True, None, None
        try:
            if following.compiled is None:
                value = "postgresql"  # WhichDialect
            else:
                assert isinstance(following.step, Execute)
                value = await _run_postgres(connection, following.step, following.compiled)
        except Exception as exc:  # the unit may handle it (e.g. a Conflict)
            error = exc


class _Cancelled(Exception):
    """A statement cancelled by the server; `_Postgres` turns it into `Timeout`."""


@dataclass
class _Pending:
    work: Work[Any]
    future: asyncio.Future[Any]


Outcome = tuple[bool, Any]  # (committed, value) or (False, the exception)


class _Reading:
    """A read unit's connection while it runs, so that a cancelled caller can interrupt it.

    `sqlite3.Connection.interrupt` may be called from any thread; the lock makes sure it
    reaches this unit's statements, never a later unit's on the same connection.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._cancelled = False

    @contextlib.contextmanager
    def on(self, connection: sqlite3.Connection) -> Iterator[None]:
        with self._lock:
            if self._cancelled:
                raise sqlite3.OperationalError("interrupted")  # cancelled before it began
            self._connection = connection
        try:
            yield
        finally:
            with self._lock:
                self._connection = None

    def interrupt(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._connection is not None:
                self._connection.interrupt()


class _Sqlite:
    """One writer thread committing in groups, and a few reader threads."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="hub-sqlite-writer")
        self._readers = ThreadPoolExecutor(SQLITE_READERS, thread_name_prefix="hub-sqlite-reader")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    def _connection(self, *, reader: bool) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = _connect_sqlite(self._path, reader=reader)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    async def write(self, work: Work[T]) -> T:
        loop = asyncio.get_running_loop()
        pending = _Pending(work, loop.create_future())
        # Retrieve a failure even when the caller has gone (a client that disconnected).
        pending.future.add_done_callback(_retrieve)
        self._pending.append(pending)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="hub-sqlite-group-commit")
        # shield: a caller that is cancelled must not take the group's commit with it.
        result: T = await asyncio.shield(pending.future)
        return result

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
            works = [pending.work for pending in group]
            try:
                outcomes = await loop.run_in_executor(self._writer, self._commit_group, works)
            except BaseException as exc:
                outcomes = [(False, exc)] * len(group)
            for pending, (committed, value) in zip(group, outcomes, strict=True):
                if pending.future.done():
                    continue
                if committed:
                    pending.future.set_result(value)
                else:
                    pending.future.set_exception(value)

    def _commit_group(self, works: list[Work[Any]]) -> list[Outcome]:
        """In the writer thread: every unit in its savepoint, one commit for all."""
        connection = self._connection(reader=False)
        outcomes: list[Outcome] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for work in works:
                connection.execute("SAVEPOINT unit")
                try:
                    value = drive_sync(connection, work)
                except Exception as exc:
                    connection.execute("ROLLBACK TO unit")
                    connection.execute("RELEASE unit")
                    outcomes.append((False, exc))
                else:
                    connection.execute("RELEASE unit")
                    outcomes.append((True, value))
            connection.execute("COMMIT")
        except Exception as exc:
            log.exception("committing a group of %d unit(s) failed", len(works))
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            return [(False, exc)] * len(works)
        return outcomes

    async def read(self, work: Work[T], *, costly: bool = False) -> T:
        # `costly` changes nothing here: every read already runs in a reader thread.
        loop = asyncio.get_running_loop()
        reading = _Reading()
        try:
            return await loop.run_in_executor(self._readers, self._read, work, reading)
        except asyncio.CancelledError:
            reading.interrupt()  # the caller has gone: stop the statement in flight
            raise

    def _read(self, work: Work[T], reading: _Reading) -> T:
        connection = self._connection(reader=True)
        connection.execute("BEGIN")  # one snapshot for the whole unit
        try:
            with reading.on(connection):
                return drive_sync(connection, work)
        finally:
            connection.execute("ROLLBACK")

    async def dispose(self) -> None:
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class _Postgres:
    """A bounded asyncpg pool: each unit in its own transaction."""

    def __init__(self, url: URL, pool_size: int, statement_timeout: float) -> None:
        self.connect_args = postgres_connect_args(url)
        self._pool_size = pool_size
        self._statement_timeout = statement_timeout
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    # No overflow: a burst of requests queues for a connection instead of
                    # opening more, so N hub processes never hold more than N * pool_size.
                    # In milliseconds, at least 1: PostgreSQL reads 0 as "no timeout".
                    timeout_ms = max(1, round(self._statement_timeout * 1000))
                    self._pool = await asyncpg.create_pool(
                        **self.connect_args,
                        min_size=1,
                        max_size=self._pool_size,
                        server_settings={"statement_timeout": str(timeout_ms)},
                    )
        return self._pool

    async def write(self, work: Work[T]) -> T:
        pool = await self.pool()
        try:
            async with pool.acquire() as connection, connection.transaction():
                return await drive_async(connection, work)
        except _Cancelled as exc:
            raise Timeout(self._statement_timeout) from exc

    async def read(self, work: Work[T], *, costly: bool = False) -> T:
        pool = await self.pool()
        try:
            async with (
                pool.acquire() as connection,
                connection.transaction(isolation="repeatable_read", readonly=True),
            ):
                return await drive_async(connection, work, off_loop=costly)
        except _Cancelled as exc:
            raise Timeout(self._statement_timeout) from exc

    async def dispose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def postgres_connect_args(url: URL) -> dict[str, Any]:
    """asyncpg's connection arguments for a `postgresql://` URL."""
    return {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "database": url.database,
    }


class Database:
    """The hub's database: `write()` and `read()` run units of work."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    ) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self._backend: _Sqlite | _Postgres
        if self.dialect == "sqlite":
            self.sqlite_path = _sqlite_path(parsed)
            self._backend = _Sqlite(self.sqlite_path)
        elif self.dialect == "postgresql":
            self._backend = _Postgres(parsed, pool_size, statement_timeout)
        else:
            raise ValueError(
                f"unsupported database URL {url!r}: use sqlite+aiosqlite or postgresql+asyncpg"
            )

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def connect_args(self) -> dict[str, Any]:
        """asyncpg's connection arguments (PostgreSQL only): for LISTEN."""
        assert isinstance(self._backend, _Postgres)
        return self._backend.connect_args

    async def write(self, work: Work[T]) -> T:
        """Run `work` as a write; returns once it is committed (or raises what it raised)."""
        return await self._backend.write(work)

    async def read(self, work: Work[T], *, costly: bool = False) -> T:
        """Run `work` in one read-only snapshot (`Timeout` when PostgreSQL cancels a statement).

        A `costly` unit (a large search) builds its statements off the event loop. When
        the caller is cancelled (its client went away) the statement in flight is
        cancelled too: asyncpg asks the server to, and SQLite's is interrupted.
        """
        return await self._backend.read(work, costly=costly)

    async def dispose(self) -> None:
        await self._backend.dispose()
