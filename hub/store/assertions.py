"""The `jti`s of accepted client assertions, so that a replayed assertion is refused.

The primary key (domain, client_id, jti) decides: the first insert wins. The
insert is `INSERT ... ON CONFLICT DO NOTHING` on both SQLite and PostgreSQL, so
a duplicate is reported by the row count instead of an IntegrityError, and the
surrounding transaction stays usable. Under concurrency PostgreSQL makes the
second inserter wait for the first transaction and then do nothing; SQLite
runs one writer at a time. Either way exactly one caller sees True.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from hub.store.db import affected, dialect_of
from hub.store.tables import UsedAssertion


def _naive_utc(moment: datetime) -> datetime:
    """Times are stored as naive UTC (see tables.py)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


async def remember_jti(
    session: AsyncSession, domain: str, client_id: str, jti: str, expires_at: datetime
) -> bool:
    """Record a used assertion; False when this client already used this jti (a replay)."""
    values = {
        "domain": domain,
        "client_id": client_id,
        "jti": jti,
        "expires_at": _naive_utc(expires_at),
    }
    table = UsedAssertion.__table__  # type: ignore[attr-defined]
    dialect = dialect_of(session)
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(table).values(**values).on_conflict_do_nothing()
    result = await session.execute(statement)
    return affected(result) == 1


async def purge_expired(session: AsyncSession, now: datetime) -> int:
    """Forget assertions that expired before `now` (they cannot be replayed any more)."""
    statement = delete(UsedAssertion).where(
        UsedAssertion.expires_at < _naive_utc(now)  # type: ignore[arg-type]
    )
    result = await session.execute(statement)
    return affected(result)
