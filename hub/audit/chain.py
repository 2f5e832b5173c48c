"""Tamper evidence for the audit trail: a keyed hash chain per domain.

Each stored AuditEvent gets the next link of its domain's chain:
`digest = HMAC-SHA256(key, previous digest || stored JSON)`. The chain key
lives with the hub's keys, outside the database, so somebody who can write
the database but not read the key cannot re-forge the chain after an edit.
Appends serialise on the domain's head row (`FOR UPDATE` on PostgreSQL; SQLite
has a single writer anyway), which is what makes the chain a total order even
with several processes writing at once. `hub.audit.verify` walks it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Table

from hub.audit.driver import AuditDriver
from hub.store.tables import AuditChainHead, AuditChainLink

GENESIS = "0" * 64
KEY_FILE = "audit-chain.key"

LINKS: Table = AuditChainLink.__table__  # type: ignore[attr-defined]
HEADS: Table = AuditChainHead.__table__  # type: ignore[attr-defined]


def load_or_create_key(keys_dir: Path) -> bytes:
    """The chain key; made on first use, atomically, so concurrent starts agree on one."""
    path = keys_dir / KEY_FILE
    if not path.exists():
        keys_dir.mkdir(parents=True, exist_ok=True)
        temporary = keys_dir / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
        try:
            os.link(temporary, path)  # fails if another process won the race: use theirs
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return bytes.fromhex(path.read_text().strip())


def link_digest(key: bytes, previous: str, content: str) -> str:
    return hmac.new(
        key, previous.encode("ascii") + content.encode("utf-8"), hashlib.sha256
    ).hexdigest()


async def _locked_head(driver: AuditDriver, domain: str) -> tuple[int, str]:
    """The domain's head, locked for this transaction (made at the genesis if missing)."""
    lock = " FOR UPDATE" if driver.postgres else ""  # SQLite: the writer holds the database
    select = f"SELECT seq, digest FROM {HEADS.name} WHERE domain = {driver.marks(1)}{lock}"  # noqa: S608
    found = await driver.fetch(select, [domain])
    if not found:
        await driver.execute(
            f"INSERT INTO {HEADS.name} (domain, seq, digest) VALUES ({driver.marks(3)}) "  # noqa: S608
            "ON CONFLICT (domain) DO NOTHING",
            [domain, 0, GENESIS],
        )
        found = await driver.fetch(select, [domain])
    [(seq, digest)] = found
    return int(seq), str(digest)


async def append(
    driver: AuditDriver, *, domain: str, links: Sequence[tuple[int, str]], key: bytes
) -> None:
    """Chain stored AuditEvents `(resources.pk, stored JSON)`, in order, in their transaction."""
    if not links:
        return
    seq, digest = await _locked_head(driver, domain)
    rows = []
    for resource_pk, content in links:
        seq += 1
        digest = link_digest(key, digest, content)
        rows.append((domain, seq, resource_pk, digest))
    await driver.insert(LINKS.name, ("domain", "seq", "resource_pk", "digest"), rows)
    await driver.execute(
        f"UPDATE {HEADS.name} SET seq = {driver.marks(1)}, "  # noqa: S608
        f"digest = {driver.marks(1, start=2)} WHERE domain = {driver.marks(1, start=3)}",
        [seq, digest, domain],
    )
