"""Reaching past the hub: SQL straight on its database, and the `hub` command line.

Tamper-evidence and failure tests change the real database underneath a
running hub (as an intruder or a broken disk would), then look at what the
hub and `hub audit verify` make of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from hub.store.db import Database
from hub.store.sql import Work, execute
from tests.support.hub import HubServer


def _statement(statement: str, params: Mapping[str, Any]) -> Work[Sequence[Any]]:
    result = yield from execute(text(statement), params)
    return result.rows


async def sql(
    database_url: str, statement: str, params: Mapping[str, Any] | None = None
) -> Sequence[Any]:
    """Run one statement in its own committed transaction; the rows it returns, if any.

    Plain SQL with `:name` parameters, untyped: values reach the driver as they are.
    """
    database = Database(database_url, pool_size=1)
    try:
        return await database.write(_statement(statement, dict(params or {})))
    finally:
        await database.dispose()


async def audit_row(database_url: str, event_id: str) -> tuple[int, int]:
    """(resources.pk, chain seq) of a stored AuditEvent."""
    [(pk, seq)] = await sql(
        database_url,
        "SELECT r.pk, c.seq FROM resources r JOIN audit_chain c ON c.resource_pk = r.pk "
        "WHERE r.rtype = 'AuditEvent' AND r.id = :id",
        {"id": event_id},
    )
    return int(pk), int(seq)


@dataclass(frozen=True)
class Verdict:
    exit_code: int
    stdout: str
    stderr: str


def hub_cli(hub: HubServer, *args: str) -> Verdict:
    """Run `hub <args>` as its own process against the hub's database and keys."""
    env = {
        **os.environ,
        "HUB_DATABASE_URL": hub.settings.database_url,
        "HUB_KEYS_DIR": str(hub.settings.keys_dir),
    }
    completed = subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return Verdict(completed.returncode, completed.stdout, completed.stderr)


def verify(hub: HubServer, domain: str = "test") -> Verdict:
    return hub_cli(hub, "audit", "verify", "--domain", domain)
