from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import func, select

from hub.fhir.extract import IndexValues, extract, instant
from hub.store.db import Database
from hub.store.index import INDEX_TABLES, clear_index, load_chain_targets, write_index
from hub.store.tables import StoredResource
from tests.fhir.corpus import PATIENTS, TASKS, Resource


async def insert(database: Database, r: Resource, *, domain: str = "demo") -> int:
    async with database.write() as session:
        row = StoredResource(
            domain=domain,
            rtype=r["resourceType"],
            id=r["id"],
            version_id=1,
            last_updated=instant(r["meta"]["lastUpdated"]) or datetime.min,
            content=json.dumps(r),
            origin=f"origin-of-{r['id']}",
        )
        session.add(row)
        await session.flush()
        assert row.pk is not None
        await write_index(session, row.pk, domain, r["resourceType"], extract(r))
        return row.pk


async def row_counts(database: Database, resource_pk: int) -> list[int]:
    async with database.read() as session:
        connection = await session.connection()
        counts = []
        for table in INDEX_TABLES:
            statement = select(func.count()).where(table.c.resource_pk == resource_pk)
            counts.append((await connection.execute(statement)).scalar_one())
        return counts


def as_sets(values: IndexValues) -> tuple[frozenset[object], ...]:
    return tuple(
        frozenset(rows)
        for rows in (values.tokens, values.strings, values.references, values.dates, values.uris)
    )


async def test_written_values_load_back_unchanged(database: Database) -> None:
    for r in PATIENTS + TASKS:
        await insert(database, r)
    refs = [(r["resourceType"], r["id"]) for r in PATIENTS + TASKS]
    async with database.read() as session:
        loaded = await load_chain_targets(session, "demo", [*refs, ("Patient", "missing")])
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
    async with database.write() as session:
        await write_index(session, pk, "demo", "Patient", extract(changed))
    async with database.read() as session:
        [target] = (await load_chain_targets(session, "demo", [("Patient", "p1")])).values()
    loaded = target.values
    assert ("gender", None, "female", None) in loaded.tokens
    assert ("gender", None, "male", None) not in loaded.tokens
    assert loaded.strings == ()
    async with database.write() as session:
        await clear_index(session, pk)
    assert await row_counts(database, pk) == [0, 0, 0, 0, 0]


async def test_load_skips_deleted_resources_and_other_domains(database: Database) -> None:
    pk = await insert(database, TASKS[0])
    await insert(database, TASKS[1], domain="other")
    async with database.write() as session:
        row = await session.get(StoredResource, pk)
        assert row is not None
        row.deleted = True
    async with database.read() as session:
        loaded = await load_chain_targets(session, "demo", [("Task", "t1"), ("Task", "t2")])
        assert loaded == {}
        assert await load_chain_targets(session, "demo", []) == {}
        other = await load_chain_targets(session, "other", [("Task", "t2")])
    assert set(other) == {("Task", "t2")}


async def test_a_resource_without_values_has_no_rows(database: Database) -> None:
    pk = await insert(
        database, {"resourceType": "Device", "id": "d1", "meta": {"lastUpdated": "2024-01-01"}}
    )
    assert await row_counts(database, pk) == [0, 0, 0, 0, 0]
    async with database.read() as session:
        loaded = await load_chain_targets(session, "demo", [("Device", "d1")])
    assert {ref: target.values for ref, target in loaded.items()} == {
        ("Device", "d1"): IndexValues()
    }
