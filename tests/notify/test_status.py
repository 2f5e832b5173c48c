"""The hub's verdicts on a Subscription's status, on both backends: stored as a new version.

`set_status` is a unit of work composed into delivery's bookkeeping and run on its
own by housekeeping (`end_subscriptions`, also tested here).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

import pytest

from hub.fhir import jsonio
from hub.housekeeping import end_subscriptions
from hub.notify.status import set_status
from hub.runtime import Runtime
from hub.store import resources
from hub.store.db import Database
from hub.store.resources import StoredRow
from hub.store.sql import Work
from hub.store.subscriptions import generation, subscriptions_with_end

T0 = datetime(2026, 11, 22, 9, 0, 0)


def _subscription(**elements: Any) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "active",
        "reason": "test",
        "criteria": "Patient",
        "channel": {"type": "rest-hook", "endpoint": "https://receiver.example/hook"},
        **elements,
    }


async def _store(database: Database, id: str, domain: str = "d", **elements: Any) -> None:
    new = resources.prepare(
        domain, _subscription(**elements), id=id, version_id=1, now=T0, origin="xis",
        method="POST",
    )  # fmt: skip
    await database.write(resources.write(new, previous=None))


async def _current(database: Database, id: str, domain: str = "d") -> StoredRow:
    row = await database.read(resources.current(domain, "Subscription", id))
    assert row is not None
    return row


def _status(row: StoredRow) -> tuple[int, str, str | None]:
    resource = jsonio.loads(row.content)
    return row.version_id, resource["status"], resource.get("error")


async def test_a_verdict_is_a_new_version_and_a_new_generation(database: Database) -> None:
    await _store(database, "s1")
    before = await database.read(generation("d"))
    later = T0 + timedelta(minutes=1)
    assert await database.write(set_status("d", "s1", "error", "HTTP 503 from x", later))
    row = await _current(database, "s1")
    assert _status(row) == (2, "error", "HTTP 503 from x")
    assert (row.last_updated, row.origin) == (later, "xis")
    assert jsonio.loads(row.content)["meta"]["versionId"] == "2"
    assert await database.read(generation("d")) != before
    versions = await database.read(resources.history(row.pk, count=10))
    assert [(v.version_id, v.method) for v in versions] == [(2, "PUT"), (1, "POST")]

    # Active again: the error goes.
    assert await database.write(set_status("d", "s1", "active", None, later))
    assert _status(await _current(database, "s1")) == (3, "active", None)


async def test_no_verdict_when_nothing_would_change(database: Database) -> None:
    await _store(database, "s1")
    stamp = await database.read(generation("d"))
    assert not await database.write(set_status("d", "s1", "active", None, T0))  # already so
    assert not await database.write(
        set_status("d", "s1", "error", "x", T0, applies=lambda s: s.get("status") == "off")
    )
    assert not await database.write(set_status("d", "gone", "off", None, T0))  # never existed
    assert _status(await _current(database, "s1")) == (1, "active", None)
    assert await database.read(generation("d")) == stamp


async def test_no_verdict_on_a_deleted_subscription(database: Database) -> None:
    await _store(database, "s1")

    def delete() -> Work[None]:
        row = yield from resources.current("d", "Subscription", "s1", for_update=True)
        assert row is not None
        yield from resources.delete(row, now=T0)

    await database.write(delete())
    assert not await database.write(set_status("d", "s1", "off", None, T0))


async def test_a_verdict_in_a_unit_that_fails_is_rolled_back(database: Database) -> None:
    await _store(database, "s1")

    def verdict_then_fail() -> Work[None]:
        yield from set_status("d", "s1", "off", "gone", T0)
        raise RuntimeError("the bookkeeping failed")

    with pytest.raises(RuntimeError, match="bookkeeping"):
        await database.write(verdict_then_fail())
    assert _status(await _current(database, "s1")) == (1, "active", None)


class _Runtime:
    def __init__(self, database: Database) -> None:
        self.database = database


async def test_housekeeping_turns_off_the_subscriptions_whose_end_has_passed(
    database: Database,
) -> None:
    await _store(database, "ended", end="2020-01-01T00:00:00Z")
    await _store(database, "ended-elsewhere", domain="e", end="2020-01-01T00:00:00Z")
    await _store(database, "running", end="2999-01-01T00:00:00Z")
    await _store(database, "endless")
    await _store(database, "already-off", status="off", end="2020-01-01T00:00:00Z")
    listed = await database.read(subscriptions_with_end())
    assert sorted((domain, id) for domain, id, _ in listed) == [
        ("d", "already-off"),
        ("d", "ended"),
        ("d", "running"),
        ("e", "ended-elsewhere"),
    ]

    runtime = cast(Runtime, _Runtime(database))
    assert await end_subscriptions(runtime) == 2
    assert _status(await _current(database, "ended")) == (2, "off", None)
    assert _status(await _current(database, "ended-elsewhere", "e")) == (2, "off", None)
    for still in ("running", "endless", "already-off"):
        assert (await _current(database, still)).version_id == 1
    assert await end_subscriptions(runtime) == 0  # nothing left to end
