"""Stopping the housekeeping is quiet: no scheduler traceback, whenever the stop comes.

APScheduler's own shutdown cancels a coroutine job that is running, or that it started
a moment before and that has not begun yet, and logs the `CancelledError` as an error
with its traceback. `Housekeeping.stop` must leave it nothing to cancel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import pytest

from hub import housekeeping
from hub.housekeeping import Housekeeping
from hub.runtime import Runtime

NO_RUNTIME = cast(Runtime, None)  # the jobs below need none


def errors_and_tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.levelno >= logging.ERROR or record.exc_info
    ]


async def test_a_stop_right_after_a_run_was_started_waits_for_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    finished: list[str] = []

    async def chore(_runtime: Runtime) -> None:
        await asyncio.sleep(0.05)  # a database call, say
        finished.append("chore")

    jobs = Housekeeping()
    jobs.add(chore, NO_RUNTIME, 60)
    jobs.start()
    await asyncio.sleep(0)  # the scheduler wakes and starts the run: a task not yet begun
    await jobs.stop()
    await asyncio.sleep(0.1)  # the scheduler's own shutdown runs on the loop
    assert finished == ["chore"]
    assert errors_and_tracebacks(caplog) == []


async def test_a_run_that_overruns_the_stop_is_cancelled_in_one_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "STOP_SECONDS", 0.1)
    caplog.set_level(logging.INFO)
    started = asyncio.Event()

    async def stuck(_runtime: Runtime) -> None:
        started.set()
        await asyncio.sleep(60)

    jobs = Housekeeping()
    jobs.add(stuck, NO_RUNTIME, 60)
    jobs.start()
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(jobs.stop(), 5)
    await asyncio.sleep(0.05)
    assert errors_and_tracebacks(caplog) == []
    [line] = [r.getMessage() for r in caplog.records if r.name == "hub.housekeeping"]
    assert line == "stuck did not finish within 0.1 s of the stop: cancelled"


@pytest.mark.parametrize(("level", "traceback"), [(logging.INFO, False), (logging.DEBUG, True)])
async def test_a_failed_run_is_one_line_with_its_traceback_under_debug(
    caplog: pytest.LogCaptureFixture, level: int, traceback: bool
) -> None:
    caplog.set_level(level)
    ran = asyncio.Event()

    async def failing(_runtime: Runtime) -> None:
        ran.set()
        raise ConnectionRefusedError("the database is gone")

    jobs = Housekeeping()
    jobs.add(failing, NO_RUNTIME, 60)
    jobs.start()
    await asyncio.wait_for(ran.wait(), 5)
    await jobs.stop()
    await asyncio.sleep(0.05)
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.name == "hub.housekeeping"
    assert record.getMessage() == "failing failed: the database is gone"
    assert bool(record.exc_info) is traceback
