"""Alembic environment: runs on the connection hub.store.migrate hands in."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from hub.store import tables  # noqa: F401  (registers every table on the metadata)

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations through `hub db upgrade` (hub.store.migrate), not plain alembic"
    )

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
