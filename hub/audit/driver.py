"""The audit store's statements, straight to the database driver, in the caller's transaction.

Storing AuditEvents is the hot path of every request, and its cost is not the
database's work but the layers around it: on SQLite every statement through
SQLAlchemy's aiosqlite adapter is three or four round trips to the driver's
thread (make a cursor, execute, fetch, close), each waiting for a turn of a
busy event loop. Here each statement is one call on the driver connection
(aiosqlite or asyncpg) that the session's transaction already holds. The
values are always parameters (the SQL text holds only names from the schema
and placeholders); datetimes get the dialect's own conversion, so the rows
read back exactly as if SQLAlchemy had written them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.ext.asyncio import AsyncSession

Row = tuple[Any, ...]


class AuditDriver:
    """SQL for one dialect on the driver connection of a session's transaction."""

    def __init__(self, driver: Any, dialect: str, time: Callable[[Any], Any] | None) -> None:
        self._driver = driver
        self.postgres = dialect == "postgresql"
        self._time = time

    @classmethod
    async def of(cls, session: AsyncSession) -> AuditDriver:
        """The driver of `session`'s connection (beginning its transaction if not begun)."""
        connection = await session.connection()
        raw = await connection.get_raw_connection()
        dialect = connection.dialect
        driver: Any = raw.driver_connection
        if dialect.name == "postgresql" and not driver.is_in_transaction():
            # SQLAlchemy's asyncpg adapter opens the transaction with its first statement;
            # without one, these statements (and the chain head's row lock) would autocommit.
            await connection.exec_driver_sql("SELECT 1")
        processor = DateTime().dialect_impl(dialect).bind_processor(dialect)
        return cls(driver, dialect.name, processor)

    def time(self, moment: datetime) -> Any:
        """A datetime as the dialect stores it (SQLite: the text SQLAlchemy writes)."""
        return moment if self._time is None else self._time(moment)

    def marks(self, count: int, start: int = 1) -> str:
        """`count` parameter placeholders, numbered from `start` on PostgreSQL."""
        if self.postgres:
            return ", ".join(f"${number}" for number in range(start, start + count))
        return ", ".join("?" * count)

    async def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        """One INSERT statement executed for every row."""
        if rows:
            marks = self.marks(len(columns))
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608
            await self._driver.executemany(sql, rows)

    async def insert_returning(
        self, table: str, columns: Sequence[str], rows: Sequence[Row], returning: str
    ) -> list[Row]:
        """One multi-row INSERT; `returning` columns of the new rows, in no promised order."""
        width = len(columns)
        values = ", ".join(
            f"({self.marks(width, start=1 + index * width)})" for index in range(len(rows))
        )
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values} RETURNING {returning}"  # noqa: S608
        return await self.fetch(sql, [value for row in rows for value in row])

    async def fetch(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        if self.postgres:
            return [tuple(record) for record in await self._driver.fetch(sql, *parameters)]
        return [tuple(row) for row in await self._driver.execute_fetchall(sql, parameters)]

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> None:
        if self.postgres:
            await self._driver.execute(sql, *parameters)
        else:
            await self._driver.execute_fetchall(sql, parameters)
