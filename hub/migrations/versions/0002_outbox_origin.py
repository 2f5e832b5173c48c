"""outbox rows carry the resource's origin

The pre-send check of a subscriber's right to read (`hub.interactions.delivery`)
needs the resource's origin; on the row, it needs no read of the resource.
Rows already waiting take it from their resource.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("origin", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
    op.execute(
        "UPDATE outbox SET origin = (SELECT resources.origin FROM resources"
        " WHERE resources.domain = outbox.domain AND resources.rtype = outbox.resource_type"
        " AND resources.id = outbox.resource_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("origin")
