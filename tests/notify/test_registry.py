"""The index of live Subscriptions: what it offers a write, and when it changes.

Each test stores Subscriptions in a real database (both backends) as the write path
does: the resource, its index rows, and a bump of the domain's generation in the same
transaction. Two `SubscriptionIndex` instances stand for two hub processes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hub.fhir import jsonio
from hub.fhir.extract import extract
from hub.fhir.origin import with_origin
from hub.fhir.stamp import stamp
from hub.notify.registry import SubscriptionIndex, bump_generation
from hub.runtime import utcnow
from hub.store import resources
from hub.store.db import Database


def _subscription(id: str, criteria: str, **elements: Any) -> dict[str, Any]:
    resource = {
        "resourceType": "Subscription",
        "status": "active",
        "reason": "test",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": f"https://receiver.example/{id}"},
        **elements,
    }
    return stamp(with_origin(resource, "xis"), id=id, version_id=1, last_updated=utcnow())


async def store(
    database: Database, id: str, criteria: str, *, domain: str = "test", **elements: Any
) -> None:
    resource = _subscription(id, criteria, **elements)
    async with database.write() as session:
        await resources.insert(
            session,
            domain=domain,
            rtype="Subscription",
            id=id,
            content=jsonio.dumps(resource),
            last_updated=utcnow(),
            origin="xis",
            values=extract(resource),
        )
        await bump_generation(session, domain)


async def change(database: Database, id: str, *, bump: bool = True, **elements: Any) -> None:
    async with database.write() as session:
        row = await resources.current(session, "test", "Subscription", id, for_update=True)
        assert row is not None
        resource = jsonio.loads(row.content) | elements
        await resources.replace(
            session,
            row,
            content=jsonio.dumps(resource),
            last_updated=utcnow(),
            values=extract(resource),
        )
        if bump:
            await bump_generation(session, "test")


async def remove(database: Database, id: str) -> None:
    async with database.write() as session:
        row = await resources.current(session, "test", "Subscription", id, for_update=True)
        assert row is not None
        await resources.delete(session, row, last_updated=utcnow())
        await bump_generation(session, "test")


async def candidates(
    index: SubscriptionIndex, database: Database, resource: dict[str, Any], domain: str = "test"
) -> set[str]:
    """The ids a write of `resource` would be matched against, as the write path asks."""
    async with database.read() as session:
        await index.ensure_current(session, domain)
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
    # "here" adds a subscription and matches a write against it in the same transaction,
    # as the write path does, and then the transaction rolls back...
    try:
        async with database.write() as session:
            phantom = _subscription("phantom", "Patient")
            await resources.insert(
                session,
                domain="test",
                rtype="Subscription",
                id="phantom",
                content=jsonio.dumps(phantom),
                last_updated=utcnow(),
                origin="xis",
                values=extract(phantom),
            )
            await bump_generation(session, "test")
            await here.ensure_current(session, "test")
            raise _RolledBack
    except _RolledBack:
        pass
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
