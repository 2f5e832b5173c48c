from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

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


def test_processes_starting_at_once_on_a_new_sqlite_file_take_turns(tmp_path: Path) -> None:
    # Each process migrates at start-up; unlocked, the second one's CREATE TABLE
    # failed with "table ... already exists".
    database = tmp_path / "new.db"
    script = (
        "import asyncio, sys\n"
        "from hub.store.db import Database\n"
        "from hub.store.migrate import upgrade\n"
        "async def main():\n"
        "    db = Database(sys.argv[1])\n"
        "    try:\n"
        "        await upgrade(db)\n"
        "    finally:\n"
        "        await db.dispose()\n"
        "asyncio.run(main())\n"
    )
    url = f"sqlite+aiosqlite:///{database}"
    processes = [
        subprocess.Popen([sys.executable, "-c", script, url], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    outcomes = [(p.communicate(timeout=120)[1], p.returncode) for p in processes]
    assert [err.decode() for err, code in outcomes if code != 0] == []
