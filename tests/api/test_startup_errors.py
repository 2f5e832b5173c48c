"""Start-up errors: each one line on stderr and exit code 2, the traceback only under debug.

The commands run as an operator runs them (`hub ...` in a subprocess, without any
HUB_* variable of the test run), against real files, a real SQLite database, a
closed port where a PostgreSQL server would be, and a port another socket holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from hub.audit.chain import load_or_create_key
from hub.cli import build_parser
from hub.preflight import database as reach_database
from tests.conftest import POSTGRES_URL
from tests.support.hub import MATRIX, AppKeys, hub_settings, write_apps_file
from tests.support.processes import free_port

HUB = Path(sys.executable).with_name("hub")
PASSWORD = "s3cret-pw"


@pytest.fixture
def env(tmp_path: Path, app_keys: dict[str, AppKeys]) -> dict[str, str]:
    """A working configuration: apps file, matrix, keys and a SQLite file not yet made."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    return clean | {
        "HUB_APPS": str(write_apps_file(tmp_path / "apps.yaml", app_keys)),
        "HUB_AUTHZ_MATRIX": str(MATRIX),
        "HUB_KEYS_DIR": str(tmp_path / "keys"),
        "HUB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}",
    }


def hub(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HUB), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line of stderr of a command that failed with exit code 2."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def closed_port() -> int:
    return free_port()  # nothing listens there once the probe socket is closed


def unreachable_postgres() -> str:
    return f"postgresql+asyncpg://hub:{PASSWORD}@127.0.0.1:{closed_port()}/hub"


def test_a_bad_setting(env: dict[str, str]) -> None:
    line = one_line(hub(env | {"HUB_LOG_FORMAT": "xml"}, "serve"))
    assert line == "hub: HUB_LOG_FORMAT: 'xml' is not one of text, json"


def test_a_bad_apps_file(env: dict[str, str], tmp_path: Path) -> None:
    apps = tmp_path / "broken.yaml"
    apps.write_text("domains:\n  - name: demo\n    apps: [\n")  # YAML that never closes
    line = one_line(hub(env | {"HUB_APPS": str(apps)}, "serve"))
    assert line.startswith(f"hub: cannot start: {apps}: is not valid YAML (")


def test_a_bad_matrix(env: dict[str, str], tmp_path: Path) -> None:
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text("roles: 12\n")
    line = one_line(hub(env | {"HUB_AUTHZ_MATRIX": str(matrix)}, "serve"))
    assert line.startswith(f"hub: cannot start: {matrix}")


def test_an_unreachable_database_is_named_with_its_password_masked(env: dict[str, str]) -> None:
    url = unreachable_postgres()
    line = one_line(hub(env | {"HUB_DATABASE_URL": url}, "serve"))
    masked = url.replace(PASSWORD, "***")
    assert line.startswith(f"hub: cannot start: cannot reach the database {masked}: ")
    assert "Connect call failed" in line or "refused" in line.lower()
    assert "`hub serve --wait-for-db SECONDS` waits for it" in line
    assert PASSWORD not in line


def test_the_traceback_shows_under_debug(env: dict[str, str]) -> None:
    result = hub(
        env | {"HUB_DATABASE_URL": unreachable_postgres()}, "serve", "--log-level", "debug"
    )
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("hub: cannot start: cannot reach")
    assert PASSWORD not in result.stderr


def test_wait_for_db_keeps_asking_then_gives_up_in_one_line(env: dict[str, str]) -> None:
    started = time.monotonic()
    result = hub(env | {"HUB_DATABASE_URL": unreachable_postgres()}, "serve", "--wait-for-db", "2")
    took = time.monotonic() - started
    line = one_line(result)
    assert line.endswith("(waited 2 s)")
    assert took >= 1.5


def test_a_port_in_use(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(hub(env, "serve", "--port", str(port)))
    assert line == (
        f"hub: cannot start: cannot listen on 127.0.0.1:{port}: address already in use "
        "(another process listens there: stop it or choose another --port)"
    )


def test_a_missing_certificate(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    line = one_line(
        hub(env, "serve", "--ssl-certfile", str(missing), "--ssl-keyfile", str(missing))
    )
    assert line == f"hub: cannot start: TLS: {missing} does not exist"


def test_the_worker_and_the_migrations_too(env: dict[str, str]) -> None:
    unreachable = env | {"HUB_DATABASE_URL": unreachable_postgres()}
    line = one_line(hub(unreachable, "worker"))
    assert line.startswith("hub: cannot start: cannot reach the database")
    line = one_line(hub(unreachable, "db", "upgrade"))
    assert line.startswith("hub: cannot reach the database")


def test_config_check_reports_every_check(env: dict[str, str], tmp_path: Path) -> None:
    fine = hub(env, "config", "check")
    assert fine.returncode == 0, fine.stderr
    assert fine.stderr == ""
    lines = fine.stdout.splitlines()
    assert [line.split(" ", 3)[3].split(":")[0] for line in lines[:1]] == ["settings"]
    assert lines[1].startswith(f"ok   apps file {env['HUB_APPS']}: 2 domain(s) (other, test)")
    assert lines[2] == f"ok   keys directory {env['HUB_KEYS_DIR']} (made at start-up)"
    assert lines[3] == (
        f"ok   database {env['HUB_DATABASE_URL']} (sqlite): no schema yet: start-up creates it"
    )
    assert not (tmp_path / "hub.db").exists()  # a check creates nothing

    broken = tmp_path / "broken.yaml"
    broken.write_text("domains: [")
    url = unreachable_postgres()
    both = hub(env | {"HUB_APPS": str(broken), "HUB_DATABASE_URL": url}, "config", "check")
    assert both.returncode == 2
    problems = both.stderr.splitlines()
    assert len(problems) == 3, both.stderr
    assert problems[0].startswith(f"hub: {broken}: is not valid YAML")
    assert problems[1].startswith("hub: cannot reach the database")
    assert problems[2] == "hub: 2 problem(s); the hub would not start"
    assert PASSWORD not in both.stdout + both.stderr


def test_audit_verify_refuses_an_unknown_domain(env: dict[str, str]) -> None:
    assert hub(env, "db", "upgrade").returncode == 0
    load_or_create_key(Path(env["HUB_KEYS_DIR"]))  # as the hub's first start makes it
    line = one_line(hub(env, "audit", "verify", "--domain", "nosuch"))
    assert line == (
        f"hub: unknown domain 'nosuch': not in {env['HUB_APPS']}, "
        "and no audit trail in the database"
    )
    # A known domain without events yet is intact.
    known = hub(env, "audit", "verify", "--domain", "test")
    assert known.returncode == 0, known.stderr
    assert "intact, 0 events" in known.stdout


def test_version(env: dict[str, str]) -> None:
    result = hub(env, "--version")
    assert result.returncode == 0
    assert result.stdout.startswith("hub ") and result.stdout.strip() != "hub"


def test_every_flag_has_help() -> None:
    def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from parsers(child)

    missing = [
        f"{parser.prog} {action.option_strings[0]}"
        for parser in parsers(build_parser())
        for action in parser._actions
        if action.option_strings and not action.help
    ]
    assert missing == []


# --- waiting for a database that comes up ---------------------------------------------------


@contextlib.asynccontextmanager
async def forwarder(port: int, target: tuple[str, int], after: float) -> AsyncIterator[None]:
    """After `after` seconds, listen on `port` and pass every connection on to `target`."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    servers: list[asyncio.Server] = []

    async def open_later() -> None:
        await asyncio.sleep(after)
        servers.append(await asyncio.start_server(connection, "127.0.0.1", port))

    opening = asyncio.create_task(open_later())
    try:
        yield
    finally:
        opening.cancel()
        for server in servers:
            server.close()


@pytest.mark.skipif(not POSTGRES_URL, reason="HUB_TEST_DATABASE_URL is not set")
async def test_wait_for_db_starts_once_the_database_answers(tmp_path: Path) -> None:
    real = make_url(POSTGRES_URL)
    port = closed_port()
    url = real.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    settings = replace(hub_settings(tmp_path, url, tmp_path / "apps.yaml"))
    started = time.monotonic()
    async with forwarder(port, (real.host or "127.0.0.1", real.port or 5432), after=1.5):
        line = await reach_database(settings, wait_seconds=20)
    assert time.monotonic() - started >= 1.5
    assert line.startswith(f"database postgresql+asyncpg://{real.username}")
    assert "(postgresql)" in line
