"""Fixtures for audit-trail tests: a real hub shared by a module, and the `hub` CLI.

Tests that only read the trail share one hub per module and backend
(`shared_hub`): every request carries its own X-Request-Id and X-Trace-Id,
so a test finds exactly its own events whatever its neighbours did. Tests
that break the database on purpose take the per-test `hub_server` instead.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BACKENDS, _pg_execute, _pg_url
from tests.support.hub import AppKeys, HubServer, hub_settings, running_hub, write_apps_file


@pytest.fixture(scope="module", params=BACKENDS)
def shared_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[str]:
    """A fresh, migrated database for one test module on the parametrised backend."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("shared") / "hub.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    template = request.getfixturevalue("postgres_template")
    name = f"hub_audit_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield _pg_url(name)
    asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def shared_hub(
    shared_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    app_keys: dict[str, AppKeys],
) -> Iterator[HubServer]:
    """One real hub for every test of a module (per backend)."""
    directory = tmp_path_factory.mktemp("hub")
    apps_file = write_apps_file(directory / "apps.yaml", app_keys)
    with running_hub(hub_settings(directory, shared_database_url, apps_file), app_keys) as server:
        yield server
