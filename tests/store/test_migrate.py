from __future__ import annotations

from datetime import datetime

from sqlalchemy import text

from hub.store import resources
from hub.store.db import Database
from hub.store.migrate import current_revision, head_revision, upgrade
from hub.store.sql import Work, execute


def _count_resources() -> Work[int]:
    found = yield from execute(text("SELECT count(*) FROM resources"))
    return int(found.scalar())


async def test_migrated_database_is_at_head(database: Database) -> None:
    assert await current_revision(database) == head_revision()


async def test_upgrade_twice_is_a_no_op(database: Database) -> None:
    assert await database.read(_count_resources()) == 0
    patient = resources.prepare(
        "d", {"resourceType": "Patient"}, id="p1", version_id=1, now=datetime(2026, 1, 1),
        origin="xis", method="POST",
    )  # fmt: skip
    await database.write(resources.write(patient, previous=None))
    await upgrade(database)
    # The schema is untouched and so is what it holds.
    assert await database.read(_count_resources()) == 1
    assert await current_revision(database) == head_revision()
