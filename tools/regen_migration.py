"""Regenerate one Alembic revision from the table definitions (developer tool).

    python tools/regen_migration.py 0001 initial

Autogenerates against an empty SQLite database brought up to the revision
before the one being written, so the new file holds exactly the difference.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

from hub.store.migrate import MIGRATIONS, alembic_config


def main() -> None:
    rev_id, message = sys.argv[1], sys.argv[2]
    for existing in (MIGRATIONS / "versions").glob(f"{rev_id}_*.py"):
        existing.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'schema.db'}")
        with engine.begin() as connection:
            config = alembic_config(connection)
            command.upgrade(config, "head")
            command.revision(config, message=message, autogenerate=True, rev_id=rev_id)
    # The lint gate checks formatting; generated code should pass it as written.
    versions = str(MIGRATIONS / "versions")
    subprocess.run([sys.executable, "-m", "ruff", "format", versions], check=True)  # noqa: S603


if __name__ == "__main__":
    main()
