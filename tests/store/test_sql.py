"""Compiling statements per dialect: parameters and results as the dialect stores them."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import DateTime, bindparam, insert, select

from hub.fhir.extract import MAX_DATE, MIN_DATE
from hub.store.index import DATE
from hub.store.sql import DIALECTS, Prepared, _sqlite_datetime, compile_for

SQLITE = DIALECTS["sqlite"]
SQLALCHEMY_SQLITE_DATETIME = DateTime().dialect_impl(SQLITE).bind_processor(SQLITE)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 12, 4, 16, 40, 2, 120084),
        datetime(2026, 12, 4, 16, 40, 2),  # no fraction: still six digits
        MIN_DATE,
        MAX_DATE,
        datetime(999, 1, 2, 3, 4, 5, 6),
    ],
)
def test_the_fast_sqlite_datetime_is_sqlalchemys_text(moment: datetime) -> None:
    assert SQLALCHEMY_SQLITE_DATETIME is not None
    assert _sqlite_datetime(moment) == SQLALCHEMY_SQLITE_DATETIME(moment)


def test_rows_are_given_in_column_keys_order_whatever_the_tables_order() -> None:
    statement = Prepared(insert(DATE), column_keys=("low", "high", "param", "resource_pk"))
    compiled = statement.compiled("sqlite")
    low, high = datetime(2026, 1, 1), datetime(2026, 1, 2)
    arguments = compiled.row_arguments((low, high, "date", 7))
    by_name = dict(zip(compiled.names, arguments, strict=True))
    assert by_name == {
        "resource_pk": 7,
        "param": "date",
        "low": "2026-01-01 00:00:00.000000",
        "high": "2026-01-02 00:00:00.000000",
    }


def test_rows_need_an_insert_of_known_columns() -> None:
    compiled = Prepared(select(DATE.c.pk).where(DATE.c.param == bindparam("p"))).compiled("sqlite")
    with pytest.raises(TypeError):
        compiled.row_arguments(("x",))


def test_expanded_in_lists_and_literal_values_travel_with_the_statement() -> None:
    compiled = compile_for(
        select(DATE.c.pk).where(DATE.c.param.in_(["a", "b"]), DATE.c.rtype == "Task"),
        "postgresql",
    )
    assert compiled.sql.count("$") == 3
    # Positional in the order of the $n numbers, whatever the order in the text.
    assert sorted(compiled.arguments({})) == ["Task", "a", "b"]
