"""`kill -9` of `hub serve` in the middle of group-committed writes (docs/architecture.md §2, §5).

Sixteen clients create Patients as fast as the hub takes them, so on SQLite the
writer thread is always committing a group of several units when the process
dies. After the crash, on the database as the dead process left it:

- every write that was answered 201 is there: its resource, its history row, its
  index rows (a search finds it) and its REST AuditEvent;
- nothing is half-written: no resource without its history row and its AuditEvent,
  no AuditEvent outside the chain;
- the audit chain verifies, and a restarted hub on the same database writes on.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from hub.audit.chain import load_or_create_key
from hub.audit.verify import verify_domain
from hub.store.db import Database
from hub.store.sql import Work, execute
from tests.support.https_receiver import LocalCA
from tests.support.hub import AppKeys, write_apps_file
from tests.support.processes import HubProcess, access_token
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

IDENTIFIER_SYSTEM = "urn:test:crash"


async def _write_load(client: httpx.AsyncClient, committed: dict[str, str]) -> None:
    """Create Patients from 16 loops until the hub stops answering; 201s go in `committed`."""

    async def writer(number: int) -> None:
        for sequence in range(100_000):
            value = f"w{number}-{sequence}"
            patient = {
                "resourceType": "Patient",
                "identifier": [{"system": IDENTIFIER_SYSTEM, "value": value}],
            }
            try:
                response = await client.post("/Patient", json=patient)
            except httpx.TransportError:
                return  # the hub is gone: whether this write committed is unknown
            assert response.status_code == 201, response.text
            committed[value] = response.headers["Location"].split("/Patient/")[1].split("/")[0]

    await asyncio.gather(*(writer(number) for number in range(16)))


def _stored() -> Work[dict[str, list[tuple[object, ...]]]]:
    """What the dead process left: Patients with their history and index rows, and events."""
    queries = {
        "patients": "SELECT pk, id, version_id FROM resources "
        "WHERE domain = 'test' AND rtype = 'Patient'",
        "versions": "SELECT v.resource_pk FROM resource_versions v "
        "JOIN resources r ON r.pk = v.resource_pk WHERE r.rtype = 'Patient'",
        "identifiers": "SELECT i.code, r.id FROM idx_token i JOIN resources r "
        "ON r.pk = i.resource_pk WHERE i.param = 'identifier' AND i.system = 'urn:test:crash'",
        "events": "SELECT content FROM resources WHERE domain = 'test' AND rtype = 'AuditEvent'",
        "unchained": "SELECT count(*) FROM resources r WHERE r.rtype = 'AuditEvent' AND NOT "
        "EXISTS (SELECT 1 FROM audit_chain c WHERE c.resource_pk = r.pk)",
    }
    found: dict[str, list[tuple[object, ...]]] = {}
    for name, sql in queries.items():
        found[name] = (yield from execute(text(sql))).rows
    return found


def _created_entities(events: list[tuple[object, ...]]) -> set[str]:
    """The `Patient/<id>` of every successful REST create event."""
    created = set()
    for (content,) in events:
        event = json.loads(str(content))
        if event.get("action") == "C" and event.get("outcome") == "0":
            for entity in event.get("entity", ()):
                what = entity.get("what", {}).get("reference", "")
                if what.startswith("Patient/"):
                    created.add("/".join(what.split("/")[:2]))
    return created


async def test_kill_9_mid_group_loses_no_acknowledged_write_and_leaves_nothing_half_written(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], local_ca: LocalCA
) -> None:
    apps = write_apps_file(tmp_path / "apps.yaml", app_keys)
    first = HubProcess(
        tmp_path, database_url=database_url, apps_file=apps, ca_bundle=local_ca.bundle
    )
    committed: dict[str, str] = {}
    with first:
        async with first.client(access_token(first, app_keys["xis"])) as xis:
            load = asyncio.create_task(_write_load(xis, committed))

            async def enough() -> bool:
                return len(committed) >= 150

            await eventually(enough, timeout=90, what="150 committed writes")
            await asyncio.to_thread(first.kill)
            await load

    database = Database(database_url)
    try:
        stored = await database.read(_stored())
        patients = {str(id_): int(str(pk)) for pk, id_, _version in stored["patients"]}
        # Every acknowledged write is there, with its history, index rows and AuditEvent.
        assert set(committed.values()) <= set(patients)
        indexed = {str(code): str(id_) for code, id_ in stored["identifiers"]}
        assert {value: indexed.get(value) for value in committed} == committed
        # Nothing half-written: every stored Patient has its history row and its event.
        assert sorted(patients.values()) == sorted(int(str(pk)) for (pk,) in stored["versions"])
        assert _created_entities(stored["events"]) == {f"Patient/{id_}" for id_ in patients}
        assert stored["unchained"] == [(0,)]
        verdict = await verify_domain(database, "test", load_or_create_key(tmp_path / "keys"))
        assert verdict.problems == []
    finally:
        await database.dispose()

    # A hub restarted on the same database writes on, and the chain still verifies.
    second = HubProcess(
        tmp_path, database_url=database_url, apps_file=apps, ca_bundle=local_ca.bundle
    )
    with second:
        async with second.client(access_token(second, app_keys["xis"])) as xis:
            response = await xis.post("/Patient", json={"resourceType": "Patient"})
            assert response.status_code == 201, response.text
    database = Database(database_url)
    try:
        verdict = await verify_domain(database, "test", load_or_create_key(tmp_path / "keys"))
        assert verdict.problems == []
    finally:
        await database.dispose()
