"""SIGHUP makes a running `hub serve` re-read its apps file and matrix at once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from tests.support.https_receiver import LocalCA
from tests.support.hub import AppKeys, write_apps_file
from tests.support.processes import HubProcess, access_token


async def _task_search_status(hub: HubProcess, keys: AppKeys) -> int:
    async with hub.client(access_token(hub, keys)) as client:
        return (await client.get("/Task")).status_code


async def test_sighup_reloads_the_access_configuration(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], local_ca: LocalCA
) -> None:
    apps_file = write_apps_file(tmp_path / "apps.yaml", app_keys)
    # An hour between housekeeping runs: only the signal can explain a reload.
    quiet = {"HUB_HOUSEKEEPING_SECONDS": "3600"}
    with HubProcess(
        tmp_path,
        database_url=database_url,
        apps_file=apps_file,
        ca_bundle=local_ca.bundle,
        env=quiet,
    ) as hub:
        module = app_keys["module"]
        assert await _task_search_status(hub, module) == 200
        # The module becomes an Auditor, which may not read Tasks.
        write_apps_file(apps_file, app_keys, roles={"module": "Auditor"})
        assert await _task_search_status(hub, module) == 200  # not re-read yet
        os.kill(hub.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while await _task_search_status(hub, module) != 403:
            assert time.monotonic() < deadline, "SIGHUP did not reload the apps file"
            await asyncio.sleep(0.2)
