"""The index of live Subscriptions: what it offers a write, and when it changes.

Each test stores Subscriptions in a real database (both backends) as the write path
does: the resource, its index rows, and a bump of the domain's generation in the same
unit of work. Two `SubscriptionIndex` instances stand for two hub processes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from hub.fhir import jsonio
from hub.fhir.extract import extract
from hub.fhir.origin import with_origin
from hub.fhir.stamp import stamp
from hub.notify.registry import SubscriptionIndex
from hub.runtime import utcnow
from hub.store import resources
from hub.store.db import Database
from hub.store.sql import Work
from hub.store.subscriptions import bump_generation


def _subscription(id: str, criteria: str, **elements: Any) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "active",
        "reason": "test",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": f"https://receiver.example/{id}"},
        **elements,
    }


def _create(domain: str, id: str, resource: dict[str, Any]) -> Work[None]:
    new = resources.prepare(
        domain,
        with_origin(resource, "xis"),
        id=id,
        version_id=1,
        now=utcnow(),
        origin="xis",
        method="POST",
    )
    yield from resources.write(new, previous=None)


async def store(
    database: Database, id: str, criteria: str, *, domain: str = "test", **elements: Any
) -> None:
    """Store a Subscription as the write path does: resource and generation bump in one unit."""

    def unit() -> Work[None]:
        yield from _create(domain, id, _subscription(id, criteria, **elements))
        yield from bump_generation(domain)

    await database.write(unit())


async def change(database: Database, id: str, *, bump: bool = True, **elements: Any) -> None:
    def unit() -> Work[None]:
        row = yield from resources.current("test", "Subscription", id, for_update=True)
        assert row is not None
        new = resources.prepare(
            "test",
            jsonio.loads(row.content) | elements,
            id=id,
            version_id=row.version_id + 1,
            now=utcnow(),
            origin=row.origin,
            method="PUT",
        )
        yield from resources.write(new, previous=row)
        if bump:
            yield from bump_generation("test")

    await database.write(unit())


async def remove(database: Database, id: str) -> None:
    def unit() -> Work[None]:
        row = yield from resources.current("test", "Subscription", id, for_update=True)
        assert row is not None
        yield from resources.delete(row, now=utcnow())
        yield from bump_generation("test")

    await database.write(unit())


async def candidates(
    index: SubscriptionIndex, database: Database, resource: dict[str, Any], domain: str = "test"
) -> set[str]:
    """The ids a write of `resource` would be matched against, as the write path asks."""
    await database.read(index.ensure_current(domain))
    stamped = stamp(resource, id="r1", version_id=1, last_updated=utcnow())
    found = index.candidates(domain, resource["resourceType"], extract(stamped), utcnow())
    return {subscription.id for subscription in found}


PATIENT_F = {"resourceType": "Patient", "gender": "female"}
PATIENT_M = {"resourceType": "Patient", "gender": "male"}


async def test_a_write_meets_only_subscriptions_filed_under_keys_it_has(
    database: Database,
) -> None:
    await store(database, "all-patients", "Patient")
    await store(database, "female", "Patient?gender=female")
    await store(database, "male", "Patient?gender=male")
    await store(database, "tasks", "Task?status=completed")
    index = SubscriptionIndex()
    assert await candidates(index, database, PATIENT_F) == {"all-patients", "female"}
    assert await candidates(index, database, PATIENT_M) == {"all-patients", "male"}
    task = {"resourceType": "Task", "status": "ready", "intent": "order"}
    assert await candidates(index, database, task) == set()


async def test_paused_and_ended_subscriptions_are_not_candidates_errored_ones_are(
    database: Database,
) -> None:
    past = (utcnow() - timedelta(minutes=1)).isoformat() + "Z"
    future = (utcnow() + timedelta(days=1)).isoformat() + "Z"
    await store(database, "off", "Patient", status="off")
    await store(database, "ended", "Patient", end=past)
    await store(database, "ends-later", "Patient", end=future)
    await store(database, "error", "Patient", status="error", error="HTTP 503")
    index = SubscriptionIndex()
    assert await candidates(index, database, PATIENT_F) == {"ends-later", "error"}


async def test_a_change_made_by_another_process_is_seen_by_the_next_write(
    database: Database,
) -> None:
    here, elsewhere = SubscriptionIndex(), SubscriptionIndex()
    await store(database, "s1", "Patient?gender=female")
    assert await candidates(here, database, PATIENT_F) == {"s1"}
    assert await candidates(elsewhere, database, PATIENT_F) == {"s1"}

    # "elsewhere" changes, pauses and adds subscriptions; "here" sees each at once.
    await change(database, "s1", criteria="Patient?gender=male")
    assert await candidates(here, database, PATIENT_F) == set()
    assert await candidates(here, database, PATIENT_M) == {"s1"}
    await change(database, "s1", status="off")
    assert await candidates(here, database, PATIENT_M) == set()
    await store(database, "s2", "Patient")
    assert await candidates(here, database, PATIENT_M) == {"s2"}
    await remove(database, "s2")
    assert await candidates(here, database, PATIENT_M) == set()


async def test_the_generation_is_what_tells_an_index_to_reload(database: Database) -> None:
    index = SubscriptionIndex()
    await store(database, "s1", "Patient?gender=female")
    assert await candidates(index, database, PATIENT_F) == {"s1"}
    # A change that (wrongly) leaves the generation alone goes unseen: every code path
    # that changes a Subscription must bump it, as this shows.
    await change(database, "s1", bump=False, criteria="Patient?gender=male")
    assert await candidates(index, database, PATIENT_M) == set()
    await change(database, "s1", criteria="Patient?gender=male")
    assert await candidates(index, database, PATIENT_M) == {"s1"}


class _RolledBack(Exception):
    pass


async def test_an_index_loaded_in_a_rolled_back_transaction_is_not_taken_for_current(
    database: Database,
) -> None:
    await store(database, "s0", "Patient")
    here, elsewhere = SubscriptionIndex(), SubscriptionIndex()
    assert await candidates(here, database, PATIENT_F) == {"s0"}

    # "here" adds a subscription and matches a write against it in the same unit, as the
    # write path does, and then the unit fails and is rolled back...
    def unit() -> Work[None]:
        yield from _create("test", "phantom", _subscription("phantom", "Patient"))
        yield from bump_generation("test")
        yield from here.ensure_current("test")
        loaded = here.loaded("test")
        assert loaded is not None and "phantom" in loaded.by_id
        raise _RolledBack

    with pytest.raises(_RolledBack):
        await database.write(unit())
    # ...while another process commits its own change.
    assert await candidates(elsewhere, database, PATIENT_F) == {"s0"}
    await store(database, "real", "Patient")
    assert await candidates(here, database, PATIENT_F) == {"s0", "real"}


async def test_domains_do_not_share_subscriptions(database: Database) -> None:
    await store(database, "in-test", "Patient")
    await store(database, "in-other", "Patient", domain="other")
    index = SubscriptionIndex()
    assert await candidates(index, database, PATIENT_F) == {"in-test"}
    assert await candidates(index, database, PATIENT_F, domain="other") == {"in-other"}
    assert {s.id for s in index.all("test")} == {"in-test"}


async def test_a_subscription_whose_criteria_no_longer_parse_is_left_out(
    database: Database,
) -> None:
    # Stored before the server dropped support for the parameter, say.
    await store(database, "stale", "Patient?shoe-size=44")
    await store(database, "fine", "Patient")
    index = SubscriptionIndex()
    assert await candidates(index, database, PATIENT_F) == {"fine"}
