"""Units of work: database conversations written once, run on SQLite and PostgreSQL alike.

Every store function is a generator that `yield`s the statements it needs and
receives their results, sans I/O (the `Work` type). It never touches a
connection itself, so the same code runs

- on SQLite, synchronously, inside the writer thread or a reader thread
  (`hub.store.db`): a whole unit costs one thread hand-off, not one per
  statement;
- on PostgreSQL, asynchronously, on an asyncpg connection.

Composing units is `yield from`. A unit's domain errors (an `If-Match` race,
a 404) are ordinary exceptions raised inside the generator; the runner rolls
back that unit's savepoint and hands the exception to its caller.

Statements are SQLAlchemy Core objects built from the tables in
`hub.store.tables` (the schema is defined once), compiled per dialect: the
module-level ones once (`Prepared`), dynamic ones (searches) per use. Their
parameters and results pass through the dialect's own type conversions, so a
datetime reads back as a datetime on both backends.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import BindParameter, DateTime
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.dialects.sqlite import pysqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

T = TypeVar("T")
Row = tuple[Any, ...]

DIALECTS: dict[str, Dialect] = {
    "sqlite": pysqlite.dialect(),
    "postgresql": pg_asyncpg.dialect(),  # type: ignore[no-untyped-call]
}


class Conflict(Exception):
    """A unique constraint refused a row.

    Thrown into the unit at its `yield`; a unit may catch it only to give up (raise
    again or return): on PostgreSQL the transaction is aborted after a failed
    statement, so the unit cannot go on with more SQL. Its caller then retries.
    """


@dataclass(frozen=True)
class Result:
    """What a statement gave back: its rows (converted) and the number of rows it changed."""

    rows: list[Row] = field(default_factory=list)
    rowcount: int = 0

    def scalar(self) -> Any:
        """The first column of the first row, or None when there is no row."""
        return self.rows[0][0] if self.rows else None

    def one(self) -> Row:
        if len(self.rows) != 1:
            raise LookupError(f"expected one row, got {len(self.rows)}")
        return self.rows[0]


@dataclass(frozen=True)
class Compiled:
    """A statement as one dialect runs it: SQL text, parameter order and converters."""

    sql: str
    names: tuple[str, ...]
    defaults: Mapping[str, Any]
    binds: Mapping[str, Callable[[Any], Any]]
    results: tuple[Callable[[Any], Any] | None, ...]
    returns_rows: bool
    # For an INSERT of given columns: where each parameter is in a row of those columns.
    positions: tuple[int, ...] | None = None

    def row_arguments(self, row: Sequence[Any]) -> list[Any]:
        """Positional arguments for a row given in the statement's `column_keys` order."""
        if self.positions is None:
            raise TypeError("rows need a Prepared INSERT with column_keys")
        binds = self.binds
        values = [row[position] for position in self.positions]
        if binds:
            for index, name in enumerate(self.names):
                convert = binds.get(name)
                if convert is not None and values[index] is not None:
                    values[index] = convert(values[index])
        return values

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        """Positional arguments for `params` (missing names take the statement's own values)."""
        values = []
        for name in self.names:
            value = params[name] if name in params else self.defaults[name]
            convert = self.binds.get(name)
            values.append(convert(value) if convert is not None and value is not None else value)
        return values

    def convert(self, rows: Sequence[Sequence[Any]]) -> list[Row]:
        if not any(self.results):
            return [tuple(row) for row in rows]
        converters = self.results
        return [
            tuple(
                value if convert is None or value is None else convert(value)
                for value, convert in zip(row, converters, strict=False)
            )
            for row in rows
        ]


def _sqlite_datetime(value: datetime) -> Any:
    """A naive datetime as SQLAlchemy's SQLite dialect stores it, at C speed.

    `2026-12-04 16:40:02.120084`: always six fraction digits, so the text sorts and
    compares as the instant does. An aware value (never stored by the hub) is left
    to SQLAlchemy's own conversion.
    """
    if value.tzinfo is not None:
        return _SQLALCHEMY_SQLITE_DATETIME(value)
    return value.isoformat(" ", "microseconds")


_SQLALCHEMY_SQLITE_DATETIME: Callable[[Any], Any] = DateTime().dialect_impl(
    DIALECTS["sqlite"]
).bind_processor(DIALECTS["sqlite"]) or (lambda value: value)


def _bind_processor(type_: Any, dialect_name: str) -> Callable[[Any], Any] | None:
    if dialect_name == "sqlite" and isinstance(type_, DateTime):
        return _sqlite_datetime
    dialect = DIALECTS[dialect_name]
    processor: Callable[[Any], Any] | None = type_.dialect_impl(dialect).bind_processor(dialect)
    return processor


def compile_for(
    statement: ClauseElement, dialect_name: str, *, column_keys: Sequence[str] = ()
) -> Compiled:
    """Compile `statement` (a SQLAlchemy Core statement) for `dialect_name`."""
    dialect = DIALECTS[dialect_name]
    compiled = statement.compile(
        dialect=dialect,
        compile_kwargs={"render_postcompile": True},
        column_keys=list(column_keys) or None,
    )
    assert isinstance(compiled, SQLCompiler)
    names = tuple(compiled.positiontup or ())
    binds: dict[str, Callable[[Any], Any]] = {}
    for name in names:
        bind: BindParameter[Any] | None = compiled.binds.get(name)
        if bind is None:
            continue
        processor = _bind_processor(bind.type, dialect_name)
        if processor is not None:
            binds[name] = processor
    exported = getattr(statement, "exported_columns", ())
    sql = _one_line(str(compiled))
    returns_rows = (
        bool(getattr(statement, "is_select", False))
        or bool(getattr(statement, "_returning", ()))
        or sql.upper().startswith(("SELECT", "WITH"))
    )
    results = tuple(
        column.type.dialect_impl(dialect).result_processor(dialect, None)
        for column in (exported if returns_rows else ())
    )
    return Compiled(
        sql=sql,
        names=names,
        # The values the statement carries itself (expanded IN lists included); names
        # without one (`bindparam("x")`) must come with each execution.
        defaults=compiled.construct_params(_check=False),
        binds=binds,
        results=results,
        returns_rows=returns_rows,
        positions=tuple(column_keys.index(name) for name in names)
        if column_keys and set(names) <= set(column_keys)
        else None,
    )


_SPACES = re.compile(r"\s*\n\s*")


def _one_line(sql: str) -> str:
    return _SPACES.sub(" ", sql).strip()


class Prepared:
    """A module-level statement, compiled once per dialect on first use.

    `column_keys` limits an INSERT to those columns (the others take their
    database defaults), as SQLAlchemy's `column_keys` does.
    """

    def __init__(self, statement: ClauseElement, *, column_keys: Sequence[str] = ()) -> None:
        self.statement = statement
        self._column_keys = list(column_keys)
        self._compiled: dict[str, Compiled] = {}

    def compiled(self, dialect_name: str) -> Compiled:
        found = self._compiled.get(dialect_name)
        if found is None:
            found = compile_for(self.statement, dialect_name, column_keys=self._column_keys)
            self._compiled[dialect_name] = found
        return found


@dataclass(frozen=True)
class Execute:
    """Run a statement once (`params`), or once per row of `many` (executemany).

    The rows of `many` are tuples in the order of the statement's `column_keys`: the
    index rows of one write are many, and building a mapping for each costs more
    than inserting it.
    """

    statement: Prepared | ClauseElement
    params: Mapping[str, Any] = field(default_factory=dict)
    many: Sequence[Sequence[Any]] | None = None

    def compiled(self, dialect_name: str) -> Compiled:
        if isinstance(self.statement, Prepared):
            return self.statement.compiled(dialect_name)
        return compile_for(self.statement, dialect_name)


@dataclass(frozen=True)
class WhichDialect:
    """Ask the runner which backend this is (a few statements differ: locks, NOTIFY)."""


Step = Execute | WhichDialect
# A unit of work: yields steps, receives their results, returns T.
Work = Generator[Step, Any, T]


def dialect() -> Work[str]:
    """`sqlite` or `postgresql`: the backend the unit runs on."""
    name: str = yield WhichDialect()
    return name


def execute(
    statement: Prepared | ClauseElement, params: Mapping[str, Any] | None = None
) -> Work[Result]:
    result: Result = yield Execute(statement, params or {})
    return result


def execute_many(statement: Prepared, rows: Sequence[Sequence[Any]]) -> Work[None]:
    """One INSERT per row, each in the statement's `column_keys` order (none for no rows)."""
    if rows:
        yield Execute(statement, many=rows)


def returning(value: T) -> Work[T]:
    """A unit that does no SQL and gives `value` (for composing optional steps)."""
    return value
    yield  # pragma: no cover - makes this function a generator
