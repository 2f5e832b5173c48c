"""The repository on both backends: versions, history, deletion and index upkeep."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from hub.fhir import jsonio
from hub.fhir.query import parse_search
from hub.store import resources
from hub.store.db import Database
from hub.store.resources import StoredRow, VersionConflict
from hub.store.search import search
from hub.store.sql import Conflict, Work

T0 = datetime(2026, 11, 22, 9, 0, 0)


def _patient(family: str) -> dict[str, object]:
    return {"resourceType": "Patient", "name": [{"family": family}]}


async def _found(database: Database, family: str) -> list[str]:
    page = await database.read(
        search(
            domain="d",
            query=parse_search("Patient", [("family", family)]),
            allowed_origins=None,
            page_size=10,
        )
    )
    return [row.id for row in page.rows]


def _update(family: str, at: datetime) -> Work[StoredRow]:
    row = yield from resources.current("d", "Patient", "p1", for_update=True)
    assert row is not None
    new = resources.prepare(
        "d", _patient(family), id="p1", version_id=row.version_id + 1, now=at, origin=row.origin,
        method="PUT",
    )  # fmt: skip
    return (yield from resources.write(new, previous=row))


def _delete(at: datetime) -> Work[StoredRow]:
    row = yield from resources.current("d", "Patient", "p1", for_update=True)
    assert row is not None
    return (yield from resources.delete(row, now=at))


async def test_versions_history_and_delete(database: Database) -> None:
    first = resources.prepare(
        "d", _patient("Jansen"), id="p1", version_id=1, now=T0, origin="xis", method="POST"
    )
    created = await database.write(resources.write(first, previous=None))
    assert (created.id, created.version_id, created.deleted, created.origin) == (
        "p1",
        1,
        False,
        "xis",
    )
    assert await _found(database, "jansen") == ["p1"]

    second = await database.write(_update("Pietersen", T0 + timedelta(seconds=1)))
    assert (second.pk, second.version_id) == (created.pk, 2)
    # The index follows the current version only.
    assert await _found(database, "jansen") == []
    assert await _found(database, "pietersen") == ["p1"]

    deleted = await database.write(_delete(T0 + timedelta(seconds=2)))
    assert (deleted.version_id, deleted.deleted) == (3, True)
    assert await _found(database, "pietersen") == []

    def check() -> Work[None]:
        current = yield from resources.current("d", "Patient", "p1")
        assert current is not None and current.origin == "xis"
        assert (current.version_id, current.deleted) == (3, True)
        assert current.last_updated == T0 + timedelta(seconds=2)
        versions = yield from resources.history(current.pk, count=10)
        assert [(v.version_id, v.method, v.deleted) for v in versions] == [
            (3, "DELETE", True),
            (2, "PUT", False),
            (1, "POST", False),
        ]
        older = yield from resources.history(current.pk, count=1, before_version=3)
        assert [v.version_id for v in older] == [2]
        since = yield from resources.history(current.pk, count=10, since=T0 + timedelta(seconds=1))
        assert [v.version_id for v in since] == [3, 2]
        found = yield from resources.version("d", "Patient", "p1", 1)
        assert found is not None
        assert jsonio.loads(found.content)["name"][0]["family"] == "Jansen"
        assert (yield from resources.version("d", "Patient", "p1", 9)) is None
        assert (yield from resources.current("other-domain", "Patient", "p1")) is None

    await database.read(check())


async def test_a_second_create_of_one_id_is_a_conflict_and_leaves_the_first(
    database: Database,
) -> None:
    first = resources.prepare(
        "d", _patient("Jansen"), id="p1", version_id=1, now=T0, origin="xis", method="POST"
    )
    await database.write(resources.write(first, previous=None))
    again = resources.prepare(
        "d", _patient("Pietersen"), id="p1", version_id=1, now=T0, origin="xis", method="POST"
    )
    with pytest.raises(Conflict):
        await database.write(resources.write(again, previous=None))
    assert await _found(database, "jansen") == ["p1"]
    assert await _found(database, "pietersen") == []


async def test_an_update_from_a_stale_row_changes_nothing(database: Database) -> None:
    first = resources.prepare(
        "d", _patient("Jansen"), id="p1", version_id=1, now=T0, origin="xis", method="POST"
    )
    stale = await database.write(resources.write(first, previous=None))
    await database.write(_update("Pietersen", T0 + timedelta(seconds=1)))
    late = resources.prepare(
        "d", _patient("Late"), id="p1", version_id=2, now=T0, origin="xis", method="PUT"
    )
    with pytest.raises(VersionConflict):
        await database.write(resources.write(late, previous=stale))
    assert await _found(database, "late") == []
    assert await _found(database, "pietersen") == ["p1"]
    row = await database.read(resources.current("d", "Patient", "p1"))
    assert row is not None
    assert [v.version_id for v in await database.read(resources.history(row.pk, count=10))] == [
        2,
        1,
    ]
