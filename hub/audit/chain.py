"""The audit chain's key: made once, kept with the hub's keys, never in the database.

The chain itself (`digest = HMAC-SHA256(key, previous digest || stored JSON)`,
one per domain) is appended by `hub.store.audit` and walked by
`hub.audit.verify`. Somebody who can write the database but not read this key
cannot re-forge the chain after an edit.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

KEY_FILE = "audit-chain.key"


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
