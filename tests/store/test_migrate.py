from __future__ import annotations

from sqlalchemy import text

from hub.store.db import Database
from hub.store.migrate import current_revision, head_revision, upgrade


async def test_migrated_database_is_at_head(database: Database) -> None:
    assert await current_revision(database) == head_revision()


async def test_upgrade_twice_is_a_no_op(database: Database) -> None:
    await upgrade(database)
    async with database.read() as session:
        rows = (await session.execute(text("SELECT count(*) FROM resources"))).one()
    assert rows[0] == 0
    assert await current_revision(database) == head_revision()
