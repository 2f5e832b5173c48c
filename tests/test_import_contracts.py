"""The import contracts of pyproject.toml (`lint-imports`) catch what they are meant to.

A contract that is mistyped, or that names modules the wrong way, passes silently:
so each one is run against a skeleton of hub that keeps every contract, and must
break, naming the offending import, once one forbidden import is added. The
skeleton's top-level modules are the real ones, so the skeleton follows the
package as it grows. `lint-imports` runs in a subprocess with the skeleton first
on PYTHONPATH: grimp finds `hub` through the import system, and in this process
that is the installed package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from importlinter.api import read_configuration
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.contracts.layers import LayersContract
from importlinter.domain.contract import Contract

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACT_TYPES: dict[str, type[Contract]] = {
    "layers": LayersContract,
    "forbidden": ForbiddenContract,
}
# What each direct-import contract allows, as the architecture says it: the contract
# must forbid the import to every other top-level module of hub.
ALLOWED_IMPORTERS = {
    "outbound-http": {"hub.net"},
    "store-tables": {"hub.store", "hub.migrations"},
    "database-libraries": {"hub.store", "hub.migrations"},
}


def contracts() -> dict[str, dict[str, Any]]:
    options: list[dict[str, Any]] = read_configuration(str(PYPROJECT))["contracts_options"]
    return {contract["id"]: contract for contract in options}


def top_level_modules() -> set[str]:
    """hub's direct children as in the source tree (packages and modules)."""
    hub = ROOT / "hub"
    packages = {p.name for p in hub.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in hub.glob("*.py") if p.name != "__init__.py"}
    return {f"hub.{name}" for name in packages | modules}


# --- the configuration as written -----------------------------------------------------------


def test_the_contracts_parse_and_validate() -> None:
    configuration = read_configuration(str(PYPROJECT))
    assert configuration["session_options"]["root_packages"] == ["hub"]
    found = contracts()
    assert set(found) == {"layers", *ALLOWED_IMPORTERS}
    for options in found.values():
        # The constructor parses every field and validates the contract as a whole.
        CONTRACT_TYPES[options["type"]](
            name=options["name"],
            session_options=configuration["session_options"],
            contract_options=options,
        )


@pytest.mark.parametrize("contract_id", sorted(ALLOWED_IMPORTERS))
def test_a_direct_import_contract_leaves_no_module_out(contract_id: str) -> None:
    sources = set(contracts()[contract_id]["source_modules"])
    allowed = ALLOWED_IMPORTERS[contract_id]
    assert not sources & allowed
    assert sources | allowed == top_level_modules(), "list a new module in source_modules"


# --- the contracts at work ------------------------------------------------------------------


def skeleton(root: Path) -> None:
    """An empty hub with the real top level, plus the imports the contracts allow."""
    files = {
        "hub/__init__.py": "",
        "hub/store/tables.py": "",
        # Allowed: storage and migrations use the database libraries and the tables...
        "hub/store/db.py": "import sqlalchemy\nimport asyncpg\nfrom hub.store import tables\n",
        "hub/migrations/env.py": "import alembic\nimport sqlmodel\nimport hub.store.tables\n",
        # ...only hub.net speaks HTTP, and higher layers use it and the lower ones.
        "hub/net/__init__.py": "import httpcore\nimport httpx\nimport hub.addresses\n",
        "hub/notify/delivery.py": "import hub.net\nimport hub.store.db\nimport hub.trace\n",
        "hub/api/fhir.py": "import hub.interactions\nimport hub.runtime\n",
        "hub/interactions/writes.py": "import hub.audit\nimport hub.notify.delivery\n",
    }
    for name in top_level_modules():
        path = Path(*name.split("."))
        is_package = (ROOT / path / "__init__.py").is_file()
        files.setdefault(str(path / "__init__.py" if is_package else path.with_suffix(".py")), "")
    for relative, text in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    shutil.copy(PYPROJECT, root / "pyproject.toml")


def lint_imports(root: Path, *contract_ids: str) -> subprocess.CompletedProcess[str]:
    limits = [argument for cid in contract_ids for argument in ("--contract", cid)]
    environment = {
        **os.environ,
        "PYTHONPATH": str(root),
        "COLUMNS": "200",  # no wrapped import chains
        "NO_COLOR": "1",
    }
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml"), *limits],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_skeleton_keeps_every_contract(tmp_path: Path) -> None:
    skeleton(tmp_path)
    result = lint_imports(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "source", "contract_id", "reported"),
    [
        ("hub/fhir/leak.py", "import hub.store\n", "layers", "hub.fhir.leak -> hub.store"),
        # The command starts the app (`hub worker`); the app never reaches back up.
        ("hub/app.py", "import hub.cli\n", "layers", "hub.app -> hub.cli"),
        (
            "hub/store/upward.py",
            "from hub.notify import delivery\n",
            "layers",
            "hub.store.upward -> hub.notify.delivery",
        ),
        (
            "hub/notify/sibling.py",
            "import hub.audit\n",
            "layers",
            "hub.notify.sibling -> hub.audit",
        ),
        (
            "hub/notify/http.py",
            "import httpx\n",
            "outbound-http",
            "hub.notify.http -> httpx",
        ),
        (
            "hub/api/schema.py",
            "from hub.store import tables\n",
            "store-tables",
            "hub.api.schema -> hub.store.tables",
        ),
        (
            "hub/audit/query.py",
            "from sqlalchemy import select\n",
            "database-libraries",
            "hub.audit.query -> sqlalchemy",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, source: str, contract_id: str, reported: str
) -> None:
    skeleton(tmp_path)
    (tmp_path / module).write_text(source)
    result = lint_imports(tmp_path, contract_id)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 kept, 1 broken" in result.stdout
    assert reported in result.stdout


def test_a_forbidden_import_in_a_copy_of_the_real_package_is_reported(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "hub", tmp_path / "hub", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    (tmp_path / "hub/fhir/leak.py").write_text("import hub.store\n")
    result = lint_imports(tmp_path, "layers")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "hub.fhir.leak -> hub.store" in result.stdout
