"""`hub keys new`, `hub token` and `hub worker`, run as commands (against a running hub).

The backend does not matter to these commands, so one hub on SQLite serves.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.api.common import origin_of
from tests.support.hub import MATRIX, AppKeys, hub_settings, running_hub, write_apps_file

HUB = Path(sys.executable).with_name("hub")


def run(*args: str, public_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    if public_url is not None:
        env["HUB_PUBLIC_URL"] = public_url
    return subprocess.run(
        [str(HUB), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


async def test_keys_new_then_token(
    tmp_path: Path, sqlite_template: Path, app_keys: dict[str, AppKeys]
) -> None:
    keys_dir = tmp_path / "app-keys"
    made = run("keys", "new", "--client-id", "cli-app", "--out", str(keys_dir))
    assert made.returncode == 0, made.stderr
    pem, jwks_file = keys_dir / "cli-app.pem", keys_dir / "cli-app.jwks.json"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    jwks = json.loads(jwks_file.read_text())
    [key] = jwks["keys"]
    assert key["kid"] == "cli-app-1"
    assert key["kty"] == "RSA"
    assert "d" not in key
    # A second run never overwrites a private key.
    before = pem.read_bytes()
    again = run("keys", "new", "--client-id", "cli-app", "--out", str(keys_dir))
    assert again.returncode != 0
    assert pem.read_bytes() == before

    database = tmp_path / "hub.db"
    shutil.copyfile(sqlite_template, database)
    keys = {**app_keys, "cli-app": AppKeys("cli-app", "cli-app-1", pem.read_bytes(), jwks)}
    apps_file = write_apps_file(
        tmp_path / "apps.yaml", keys, roles={"cli-app": "Zorgondersteuning"}
    )
    settings = hub_settings(tmp_path, f"sqlite+aiosqlite:///{database}", apps_file)
    with running_hub(settings, keys) as hub:
        common = ("token", "--domain", "test", "--client-id", "cli-app", "--key", str(pem))
        plain = run(*common, public_url=hub.url)
        full = run(*common, "--json", "--scope", "system/Patient.rs", public_url=hub.url)
        explicit_url = run(*common, "--token-url", hub.token_url())
        # Signed with another app's key: the hub refuses, the command says so and fails.
        other_pem = tmp_path / "xis.pem"
        other_pem.write_bytes(app_keys["xis"].private_pem)
        refused = run(
            "token", "--domain", "test", "--client-id", "cli-app", "--key", str(other_pem),
            public_url=hub.url,
        )  # fmt: skip
        assert plain.returncode == 0, plain.stderr
        token = plain.stdout.strip()
        async with hub.client(headers={"Authorization": f"Bearer {token}"}) as client:
            created = await client.post("/Patient", json={"resourceType": "Patient"})
    assert created.status_code == 201, created.text
    assert origin_of(created.json()) == "cli-app"
    assert full.returncode == 0, full.stderr
    response = json.loads(full.stdout)
    assert response["token_type"] == "Bearer"
    assert response["scope"] == "system/Patient.rs?resource-origin=Device/cli-app"
    assert explicit_url.returncode == 0, explicit_url.stderr
    assert explicit_url.stdout.count(".") == 2  # a compact JWT
    assert refused.returncode == 1
    assert json.loads(refused.stderr)["error"] == "invalid_client"
    assert refused.stdout == ""


def test_hub_serve_refuses_the_worker_role_and_an_unknown_one() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    worker = subprocess.run(
        [str(HUB), "serve"], capture_output=True, text=True, timeout=60, check=False,
        env={**env, "HUB_ROLE": "worker"},
    )  # fmt: skip
    assert worker.returncode == 2
    assert "run `hub worker`" in worker.stderr
    unknown = subprocess.run(
        [str(HUB), "serve"], capture_output=True, text=True, timeout=60, check=False,
        env={**env, "HUB_ROLE": "delivery"},
    )  # fmt: skip
    assert unknown.returncode == 2
    assert "HUB_ROLE" in unknown.stderr
    flag = run("serve", "--role", "worker")
    assert flag.returncode == 2
    assert "invalid choice" in flag.stderr


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_hub_worker_starts_from_its_flags_and_stops_cleanly(
    tmp_path: Path, sqlite_template: Path, app_keys: dict[str, AppKeys], stop: signal.Signals
) -> None:
    database = tmp_path / "hub.db"
    shutil.copyfile(sqlite_template, database)
    apps_file = write_apps_file(tmp_path / "apps.yaml", app_keys)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env |= {"HUB_KEYS_DIR": str(tmp_path / "keys"), "HUB_AUTHZ_MATRIX": str(MATRIX)}
    log = tmp_path / "worker.log"
    with log.open("wb") as output:
        worker = subprocess.Popen(
            [
                str(HUB), "worker",
                "--database-url", f"sqlite+aiosqlite:///{database}",
                "--apps", str(apps_file),
            ],
            env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "worker ready" not in log.read_text():
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        # Its Devices are there (it ran the start-up), its wake-up socket is bound.
        [socket_file] = (tmp_path / "hub.db.wake").iterdir()
        assert socket_file.name.startswith(f"{worker.pid}-")
        worker.send_signal(stop)
        assert worker.wait(30) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    output_text = log.read_text()
    assert output_text.count("worker ready") == 1
    assert "worker stopped" in output_text
    assert "Traceback" not in output_text
    assert not (tmp_path / "hub.db.wake").exists()  # its socket, and the directory it was alone in
