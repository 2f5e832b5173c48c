from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update

from hub.fhir.extract import IndexValues, extract, instant
from hub.store import resources
from hub.store.db import Database
from hub.store.index import INDEX_TABLES, RESOURCES, clear_index, load_chain_targets, write_index
from hub.store.sql import Work, execute
from tests.fhir.corpus import PATIENTS, TASKS, Resource


async def insert(database: Database, r: Resource, *, domain: str = "demo") -> int:
    """Store `r` as the repository does (row, history, index rows); its `resources.pk`."""
    new = resources.prepare(
        domain,
        r,
        id=r["id"],
        version_id=1,
        now=instant(r["meta"]["lastUpdated"]) or datetime.min,
        origin=f"origin-of-{r['id']}",
        method="POST",
    )
    row = await database.write(resources.write(new, previous=None))
    return row.pk


def _counts(resource_pk: int) -> Work[list[int]]:
    counts = []
    for table in INDEX_TABLES:
        found = yield from execute(select(func.count()).where(table.c.resource_pk == resource_pk))
        counts.append(int(found.scalar()))
    return counts


async def row_counts(database: Database, resource_pk: int) -> list[int]:
    """The number of index rows of the resource, per index table."""
    return await database.read(_counts(resource_pk))


def as_sets(values: IndexValues) -> tuple[frozenset[object], ...]:
    return tuple(
        frozenset(rows)
        for rows in (values.tokens, values.strings, values.references, values.dates, values.uris)
    )


async def test_written_values_load_back_unchanged(database: Database) -> None:
    for r in PATIENTS + TASKS:
        await insert(database, r)
    refs = [(r["resourceType"], r["id"]) for r in PATIENTS + TASKS]
    loaded = await database.read(load_chain_targets("demo", [*refs, ("Patient", "missing")]))
    assert set(loaded) == set(refs)
    for r in PATIENTS + TASKS:
        target = loaded[(r["resourceType"], r["id"])]
        assert as_sets(target.values) == as_sets(extract(r))
        assert target.origin == f"origin-of-{r['id']}"


async def test_write_replaces_and_clear_removes(database: Database) -> None:
    patient = PATIENTS[0]
    pk = await insert(database, patient)
    before = await row_counts(database, pk)
    assert all(count > 0 for count in before[:4])
    changed = {**patient, "gender": "female", "name": [], "address": []}
    await database.write(write_index(pk, "demo", "Patient", extract(changed)))
    [target] = (await database.read(load_chain_targets("demo", [("Patient", "p1")]))).values()
    loaded = target.values
    assert ("gender", None, "female", None) in loaded.tokens
    assert ("gender", None, "male", None) not in loaded.tokens
    assert loaded.strings == ()
    # Replaced, not added to: exactly the new values' rows remain.
    assert as_sets(loaded) == as_sets(extract(changed))
    await database.write(clear_index(pk))
    assert await row_counts(database, pk) == [0, 0, 0, 0, 0]


async def test_clearing_one_resource_leaves_the_others_rows(database: Database) -> None:
    first = await insert(database, PATIENTS[0])
    second = await insert(database, PATIENTS[1])
    kept = await row_counts(database, second)
    await database.write(clear_index(first))
    assert await row_counts(database, first) == [0, 0, 0, 0, 0]
    assert await row_counts(database, second) == kept


def _mark_deleted(resource_pk: int) -> Work[None]:
    # Only the flag, index rows left in place: loading must go by the flag itself.
    yield from execute(update(RESOURCES).where(RESOURCES.c.pk == resource_pk).values(deleted=True))


async def test_load_skips_deleted_resources_and_other_domains(database: Database) -> None:
    pk = await insert(database, TASKS[0])
    await insert(database, TASKS[1], domain="other")
    await database.write(_mark_deleted(pk))
    loaded = await database.read(load_chain_targets("demo", [("Task", "t1"), ("Task", "t2")]))
    assert loaded == {}
    assert await database.read(load_chain_targets("demo", [])) == {}
    other = await database.read(load_chain_targets("other", [("Task", "t2")]))
    assert set(other) == {("Task", "t2")}


async def test_a_resource_without_values_has_no_rows(database: Database) -> None:
    pk = await insert(
        database, {"resourceType": "Device", "id": "d1", "meta": {"lastUpdated": "2024-01-01"}}
    )
    assert await row_counts(database, pk) == [0, 0, 0, 0, 0]
    loaded = await database.read(load_chain_targets("demo", [("Device", "d1")]))
    assert {ref: target.values for ref, target in loaded.items()} == {
        ("Device", "d1"): IndexValues()
    }
