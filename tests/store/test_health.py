"""Delivery health on both backends: failures in a row counted, locked and reset."""

from __future__ import annotations

import asyncio

import pytest

from hub.store import health
from hub.store.db import Database
from hub.store.sql import Work


async def test_a_subscription_never_counted_has_nothing_to_reset(database: Database) -> None:
    assert not await database.write(health.reset_failures("d", "sub"))
    assert await database.read(health.failures("d", "sub")) == (0, None)


async def test_failures_count_in_a_row_with_the_last_error(database: Database) -> None:
    assert await database.write(health.count_failure("d", "sub", "HTTP 503")) == 1
    assert await database.write(health.count_failure("d", "sub", "HTTP 500")) == 2
    assert await database.read(health.failures("d", "sub")) == (2, "HTTP 500")
    # Per Subscription and per domain.
    assert await database.write(health.count_failure("d", "other", None)) == 1
    assert await database.write(health.count_failure("e", "sub", "timeout")) == 1
    assert await database.read(health.failures("d", "sub")) == (2, "HTTP 500")


async def test_a_success_forgets_the_failures_once(database: Database) -> None:
    await database.write(health.count_failure("d", "sub", "HTTP 503"))
    await database.write(health.count_failure("d", "other", "HTTP 503"))
    assert await database.write(health.reset_failures("d", "sub"))
    assert not await database.write(health.reset_failures("d", "sub"))  # nothing left
    assert await database.read(health.failures("d", "sub")) == (0, None)
    assert await database.read(health.failures("d", "other")) == (1, "HTTP 503")
    assert await database.write(health.count_failure("d", "sub", "again")) == 1


async def test_concurrent_failures_are_each_counted(database: Database) -> None:
    # The first failures of a Subscription race to create its row: none is lost.
    counts = await asyncio.gather(
        *(database.write(health.count_failure("d", "sub", f"error {n}")) for n in range(8))
    )
    assert sorted(counts) == list(range(1, 9))
    count, error = await database.read(health.failures("d", "sub"))
    assert count == 8
    assert error in {f"error {n}" for n in range(8)}


async def test_a_count_in_a_unit_that_fails_is_rolled_back(database: Database) -> None:
    await database.write(health.count_failure("d", "sub", "first"))

    def count_then_fail() -> Work[None]:
        yield from health.count_failure("d", "sub", "second")
        raise RuntimeError("the bookkeeping failed")

    with pytest.raises(RuntimeError, match="bookkeeping"):
        await database.write(count_then_fail())
    assert await database.read(health.failures("d", "sub")) == (1, "first")
