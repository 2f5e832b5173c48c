"""The repository on both backends: versions, history, deletion and index upkeep."""

from __future__ import annotations

from datetime import datetime, timedelta

from hub.fhir import jsonio
from hub.fhir.extract import extract
from hub.fhir.query import parse_search
from hub.fhir.stamp import stamp
from hub.store import resources
from hub.store.db import Database
from hub.store.search import search

T0 = datetime(2026, 11, 22, 9, 0, 0)


def _patient(family: str, version: int, at: datetime) -> dict[str, object]:
    return stamp(
        {"resourceType": "Patient", "name": [{"family": family}]},
        id="p1",
        version_id=version,
        last_updated=at,
    )


async def _found(database: Database, family: str) -> list[str]:
    async with database.read() as session:
        page = await search(
            session,
            domain="d",
            query=parse_search("Patient", [("family", family)]),
            allowed_origins=None,
            page_size=10,
        )
    return [row.id for row in page.rows]


async def test_versions_history_and_delete(database: Database) -> None:
    first = _patient("Jansen", 1, T0)
    async with database.write() as session:
        await resources.insert(
            session, domain="d", rtype="Patient", id="p1", content=jsonio.dumps(first),
            last_updated=T0, origin="xis", values=extract(first),
        )  # fmt: skip
    assert await _found(database, "jansen") == ["p1"]

    second = _patient("Pietersen", 2, T0 + timedelta(seconds=1))
    async with database.write() as session:
        row = await resources.current(session, "d", "Patient", "p1", for_update=True)
        assert row is not None and row.version_id == 1
        await resources.replace(
            session, row, content=jsonio.dumps(second), last_updated=T0 + timedelta(seconds=1),
            values=extract(second),
        )  # fmt: skip
    # The index follows the current version only.
    assert await _found(database, "jansen") == []
    assert await _found(database, "pietersen") == ["p1"]

    async with database.write() as session:
        row = await resources.current(session, "d", "Patient", "p1", for_update=True)
        assert row is not None
        deleted = await resources.delete(session, row, last_updated=T0 + timedelta(seconds=2))
    assert (deleted.version_id, deleted.deleted) == (3, True)
    assert await _found(database, "pietersen") == []

    async with database.read() as session:
        current = await resources.current(session, "d", "Patient", "p1")
        assert current is not None and current.origin == "xis"
        versions = await resources.history(session, current, count=10)
        assert [(v.version_id, v.method, v.deleted) for v in versions] == [
            (3, "DELETE", True),
            (2, "PUT", False),
            (1, "POST", False),
        ]
        older = await resources.history(session, current, count=1, before_version=3)
        assert [v.version_id for v in older] == [2]
        found = await resources.version(session, "d", "Patient", "p1", 1)
        assert found is not None and jsonio.loads(found[1].content)["name"][0]["family"] == "Jansen"
        assert await resources.version(session, "d", "Patient", "p1", 9) is None
        assert await resources.current(session, "other-domain", "Patient", "p1") is None
