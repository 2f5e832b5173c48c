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

from sqlalchemy import Table, bindparam, delete
from sqlalchemy.dialects import postgresql, sqlite

from hub.store.sql import Prepared, Work, dialect, execute
from hub.store.tables import UsedAssertion

USED: Table = UsedAssertion.__table__  # type: ignore[attr-defined]
_COLUMNS = ("domain", "client_id", "jti", "expires_at")
_REMEMBER = {
    "sqlite": Prepared(sqlite.insert(USED).on_conflict_do_nothing(), column_keys=_COLUMNS),
    "postgresql": Prepared(postgresql.insert(USED).on_conflict_do_nothing(), column_keys=_COLUMNS),
}
_PURGE = Prepared(delete(USED).where(USED.c.expires_at < bindparam("now")))


def _naive_utc(moment: datetime) -> datetime:
    """Times are stored as naive UTC (see tables.py)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def remember_jti(domain: str, client_id: str, jti: str, expires_at: datetime) -> Work[bool]:
    """Record a used assertion; False when this client already used this jti (a replay)."""
    values = {
        "domain": domain,
        "client_id": client_id,
        "jti": jti,
        "expires_at": _naive_utc(expires_at),
    }
    backend = yield from dialect()
    inserted = yield from execute(_REMEMBER[backend], values)
    return inserted.rowcount == 1


def purge_expired(now: datetime) -> Work[int]:
    """Forget assertions that expired before `now` (they cannot be replayed any more)."""
    purged = yield from execute(_PURGE, {"now": _naive_utc(now)})
    return purged.rowcount
