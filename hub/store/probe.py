"""Can the hub reach its database? Asked before it starts (`hub serve`, `hub config check`).

`probe(url)` connects once, without creating anything (no file, no directory,
no pool) and without changing anything, and answers with the schema revision,
or raises `Unreachable`: one line saying why, the URL with its password masked,
and a hint. `hub serve --wait-for-db` asks again until the database answers.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from hub.store.db import postgres_connect_args

CONNECT_TIMEOUT = 5.0


class Unreachable(Exception):
    """The database cannot be used: the reason in one line, with a hint."""


@dataclass(frozen=True)
class Reached:
    backend: str  # sqlite or postgresql
    revision: str | None  # None: no schema yet (start-up creates it)


def masked(url: str) -> str:
    """`url` with its password replaced by `***` (also when it cannot be parsed)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        scheme, _, rest = url.partition("://")
        credentials, at, host = rest.rpartition("@")
        if not at:
            return url
        user = credentials.partition(":")[0]
        return f"{scheme}://{user}:***@{host}"


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise Unreachable(f"{masked(url)!r} is not a database URL ({exc})") from exc
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise Unreachable(
            f"{masked(url)!r} is not a database the hub supports: "
            "use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DATABASE"
        )
    return parsed


async def probe(url: str) -> Reached:
    """Connect once; the schema revision, or `Unreachable`."""
    parsed = _parse(url)
    if parsed.get_backend_name() == "sqlite":
        return Reached("sqlite", await asyncio.to_thread(_probe_sqlite, parsed.database or ""))
    return Reached("postgresql", await _probe_postgres(parsed))


async def probe_until(url: str, seconds: float, *, every: float = 1.0) -> Reached:
    """`probe` again and again for up to `seconds` (a database that is still starting)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        try:
            return await probe(url)
        except Unreachable:
            if loop.time() + every > deadline:
                raise
        await asyncio.sleep(every)


# --- SQLite: the file, or where it will be made ---------------------------------------------


def _probe_sqlite(database: str) -> str | None:
    if database in ("", ":memory:"):
        return None
    path = Path(database)
    if not path.exists():
        parent = _nearest_existing(path.parent)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise Unreachable(
                f"cannot create the database {path}: {parent} is not writable "
                "(check HUB_DATABASE_URL and the directory's owner)"
            )
        return None
    if not path.is_file():
        raise Unreachable(f"the database {path} is not a file (check HUB_DATABASE_URL)")
    for needed in (path, path.parent):  # the WAL and its index are made beside the file
        if not os.access(needed, os.R_OK | os.W_OK):
            raise Unreachable(
                f"the database {path} cannot be written: {needed} is not writable "
                "by this user (check the file's owner)"
            )
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            return _sqlite_revision(connection)
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise Unreachable(f"the database {path} cannot be read: {exc}") from exc


def _sqlite_revision(connection: sqlite3.Connection) -> str | None:
    tables = connection.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
    ).fetchone()
    if not tables or not tables[0]:
        return None
    row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row[0])


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# --- PostgreSQL: one connection ------------------------------------------------------------


async def _probe_postgres(url: URL) -> str | None:
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    try:
        connection = await asyncpg.connect(**postgres_connect_args(url), timeout=CONNECT_TIMEOUT)
    except asyncpg.InvalidPasswordError as exc:
        raise _unreachable(url, exc, "check the user and password in HUB_DATABASE_URL") from exc
    except asyncpg.InvalidCatalogNameError as exc:
        raise _unreachable(url, exc, f"create the database on {where} first") from exc
    except (OSError, TimeoutError, asyncpg.CannotConnectNowError) as exc:
        raise _unreachable(
            url,
            exc,
            f"is PostgreSQL running on {where}? `hub serve --wait-for-db SECONDS` waits for it",
        ) from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _unreachable(url, exc, "check HUB_DATABASE_URL") from exc
    try:
        exists = await connection.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
        if not exists:
            return None
        revision = await connection.fetchval("SELECT version_num FROM alembic_version")
        return None if revision is None else str(revision)
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _unreachable(url, exc, "check the user's rights on the database") from exc
    finally:
        await connection.close()


def _unreachable(url: URL, error: BaseException, hint: str) -> Unreachable:
    reason = (str(error).strip().splitlines() or [""])[0] or type(error).__name__
    if isinstance(error, TimeoutError):
        reason = f"no answer within {CONNECT_TIMEOUT:g} s"
    shown = url.render_as_string(hide_password=True)
    return Unreachable(f"cannot reach the database {shown}: {reason} ({hint})")
