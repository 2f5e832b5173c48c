"""index the names of stored people by sound, for the `phonetic` search parameter

R4's `phonetic` (Patient, Practitioner, RelatedPerson, Organization) matches token rows
of phonetic keys (`hub.fhir.phonetic`) that `hub.fhir.extract` writes with every version
from now on. Resources stored before get theirs here, from their current JSON, so a
`phonetic` search finds them too. No schema change: the rows go in `idx_token`.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.fhir import jsonio
from hub.fhir.extract import extract
from hub.fhir.search_params import SUPPORTED_TYPES, params_for

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_PARAM = "phonetic"
_BATCH = 500  # resources read, and their rows written, per statement

_RESOURCES = sa.table(
    "resources",
    sa.column("pk", sa.BigInteger),
    sa.column("domain", sa.Text),
    sa.column("rtype", sa.Text),
    sa.column("deleted", sa.Boolean),
    sa.column("content", sa.Text),
)
_TOKENS = sa.table(
    "idx_token",
    sa.column("resource_pk", sa.BigInteger),
    sa.column("domain", sa.Text),
    sa.column("rtype", sa.Text),
    sa.column("param", sa.Text),
    sa.column("system", sa.Text),
    sa.column("code", sa.Text),
    sa.column("text", sa.Text),
)


def upgrade() -> None:
    connection = op.get_bind()
    types = [rtype for rtype in SUPPORTED_TYPES if _PARAM in params_for(rtype)]
    connection.execute(sa.delete(_TOKENS).where(_TOKENS.c.param == _PARAM))  # a rerun starts over
    after = 0
    while True:
        batch = connection.execute(
            sa.select(
                _RESOURCES.c.pk, _RESOURCES.c.domain, _RESOURCES.c.rtype, _RESOURCES.c.content
            )
            .where(
                _RESOURCES.c.rtype.in_(types),
                _RESOURCES.c.deleted == sa.false(),
                _RESOURCES.c.pk > after,
            )
            .order_by(_RESOURCES.c.pk)
            .limit(_BATCH)
        ).all()
        if not batch:
            return
        rows = [
            {"resource_pk": pk, "domain": domain, "rtype": rtype, "param": _PARAM,
             "system": row.system, "code": row.code, "text": row.text}
            for pk, domain, rtype, content in batch
            for row in extract(jsonio.loads(content)).tokens
            if row.param == _PARAM
        ]  # fmt: skip
        if rows:
            connection.execute(sa.insert(_TOKENS), rows)
        after = batch[-1].pk


def downgrade() -> None:
    op.execute(sa.delete(_TOKENS).where(_TOKENS.c.param == _PARAM))
