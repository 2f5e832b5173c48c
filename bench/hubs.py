"""The hubs under benchmark: their database, their settings, starting and stopping them.

Each hub is a real `bench.server` process (uvicorn, the same app as `hub serve`)
on loopback; the benchmark talks to it only over HTTP, like an application,
except where `bench.store` says otherwise.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml
from sqlalchemy.engine import URL, make_url

from hub.access.assertion import CLIENT_ASSERTION_TYPE, make_client_assertion
from hub.store.db import postgres_connect_args

REPOSITORY = Path(__file__).resolve().parents[1]
# Where the hubs under benchmark write their log lines (one file per server).
LOGS = REPOSITORY / "var" / "bench-logs"
DOMAIN = "bench"
CLIENT = "bench-xis"


@dataclass
class Hub:
    process: asyncio.subprocess.Process
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def fhir(self) -> str:
        return f"{self.url}/{DOMAIN}/fhir"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tree_env(tree: Path) -> dict[str, str]:
    """What makes a process run `tree`'s `hub` and `bench` rather than this checkout's.

    `python -m` puts the working directory first on `sys.path` and PYTHONPATH
    next, both ahead of the virtualenv's editable install of this checkout (a
    finder consulted only after the path), so with the working directory and
    PYTHONPATH at `tree` both `bench.server` and the `hub` it imports are `tree`'s.
    """
    return {"PYTHONPATH": str(tree)} if tree != REPOSITORY else {}


async def start_hub(env: dict[str, str], *, audit: bool, tree: Path = REPOSITORY) -> Hub:
    """A `bench.server` process, ready; `tree` is the source tree it runs (another checkout)."""
    flags = () if audit else ("--no-audit",)
    return await start_server("bench.server", *flags, env={**env, **tree_env(tree)}, cwd=tree)


async def start_server(module: str, *args: str, env: dict[str, str], cwd: Path) -> Hub:
    """`python -m module --port P *args` on a free port, once its `/readyz` answers 200."""
    port = _free_port()
    # The server's log lines go to a file beside the report, not into it.
    LOGS.mkdir(parents=True, exist_ok=True)
    with (LOGS / f"{module}-{port}.log").open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            "--port",
            str(port),
            *args,
            env={**env, "HUB_PUBLIC_URL": f"http://127.0.0.1:{port}"},
            cwd=cwd,
            stderr=log_file,
        )
    hub = Hub(process, port)
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            if process.returncode is not None:
                raise SystemExit(
                    f"bench: {module} exited with {process.returncode}; see {log_file.name}"
                )
            try:
                if (await client.get(f"{hub.url}/readyz")).status_code == 200:
                    return hub
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    process.kill()
    await process.wait()
    raise SystemExit(f"bench: {module} did not become ready within a minute")


async def stop_hub(hub: Hub, *, grace: float = 30) -> None:
    """Terminate the hub and wait `grace` seconds for it to finish, then kill it."""
    if hub.process.returncode is None:
        hub.process.terminate()
        try:
            await asyncio.wait_for(hub.process.wait(), grace)
        except TimeoutError:
            hub.process.kill()
            await hub.process.wait()


async def access_token(hub: Hub, private_pem: bytes, *, client: str = CLIENT) -> str:
    """A token for `client`, whose key in the apps file has the kid `<client>-1`."""
    token_url = f"{hub.url}/{DOMAIN}/oauth2/token"
    assertion = make_client_assertion(
        private_pem, client_id=client, token_url=token_url, kid=f"{client}-1"
    )
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    async with httpx.AsyncClient() as http:
        response = await http.post(token_url, data=form)
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


def headers(token: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "Accept": "application/fhir+json",
        "Content-Type": "application/fhir+json",
    }


def api_client(hub: Hub, token: str) -> httpx.AsyncClient:
    """An httpx client on the bench domain's FHIR base (for setup, not for measuring)."""
    return httpx.AsyncClient(base_url=hub.fhir, headers=headers(token), timeout=60)


@asynccontextmanager
async def bench_database(directory: Path) -> AsyncIterator[str]:
    """SQLite in `directory`, or a fresh database on HUB_BENCH_DATABASE_URL's server."""
    async with fresh_database(directory, os.environ.get("HUB_BENCH_DATABASE_URL")) as url:
        yield url


@asynccontextmanager
async def fresh_database(
    directory: Path, server: str | None, *, name: str = "hub"
) -> AsyncIterator[str]:
    """An empty database: SQLite file `name`.db in `directory`, or one made on `server`.

    On PostgreSQL the database is made for this use and dropped after it, so
    nothing one hub wrote is seen by the next.
    """
    if not server:
        yield f"sqlite+aiosqlite:///{directory / f'{name}.db'}"
        return
    url = make_url(server)
    database = f"hub_bench_{secrets.token_hex(6)}"
    await _admin(url, f'CREATE DATABASE "{database}"')
    try:
        yield url.set(database=database).render_as_string(hide_password=False)
    finally:
        await _admin(url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


async def _admin(server: URL, statement: str) -> None:
    """One statement outside a transaction (CREATE/DROP DATABASE) on `server`'s database."""
    connection = await asyncpg.connect(**postgres_connect_args(server))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def hub_env(
    directory: Path, database_url: str, jwks: dict[str, Any], ca_bundle: Path
) -> dict[str, str]:
    """`HUB_*` settings of the hubs: defaults, except what a loopback benchmark needs."""
    apps = directory / "apps.yaml"
    app = {"client_id": CLIENT, "name": "Bench XIS", "role": "Zorgondersteuning", "jwks": jwks}
    apps.write_text(yaml.safe_dump({"domains": [{"name": DOMAIN, "apps": [app]}]}))
    return {
        **os.environ,
        "HUB_DATABASE_URL": database_url,
        "HUB_APPS": str(apps),
        "HUB_AUTHZ_MATRIX": str(REPOSITORY / "authz_matrix.yaml"),
        "HUB_KEYS_DIR": str(directory / "keys"),
        "HUB_CA_BUNDLE": str(ca_bundle),
        "HUB_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
        "HUB_SITE": "bench",
    }


def verify_audit(env: dict[str, str]) -> tuple[int, float, str]:
    """`hub audit verify` on the bench domain: exit code, seconds taken, its verdict."""
    started = time.perf_counter()
    completed = subprocess.run(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", "hub.cli", "audit", "verify", "--domain", DOMAIN],
        env=env,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=False,
    )
    return completed.returncode, time.perf_counter() - started, completed.stdout.strip()
