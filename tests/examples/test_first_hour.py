"""The first hour, as README's "Quick start" and walk-through tell it.

`make run PORT=…` serves that port and its public URL follows (tokens are issued for
it); the demo apps' registered endpoints match the ports the example receivers listen
on by default, and a receiver on another port is told why the hub refuses it; the
demo's own apps file registers whatever port its portal uses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from examples import demo, receiver
from examples.portal.app import NOTIFY_PATH
from hub.access.apps import load_registry
from hub.access.matrix import load_matrix
from hub.net.urls import endpoint_within
from tests.support.hub import REPOSITORY
from tests.support.processes import free_port

DEMO_APPS = ("epd-demo", "portal-demo", "module-demo", "admin-demo", "auditor-demo")


def registered_endpoints(apps_file: Path) -> dict[str, tuple[str, ...]]:
    matrix = load_matrix(REPOSITORY / "authz_matrix.yaml")
    registry = load_registry(apps_file, matrix)
    return {
        client_id: tuple(app.endpoints)
        for domain in registry.domains.values()
        for client_id, app in domain.apps.items()
    }


def admitted(url: str, prefixes: tuple[str, ...]) -> bool:
    return any(endpoint_within(url, prefix) for prefix in prefixes)


def test_the_example_receivers_default_endpoints_are_registered_for_every_demo_app() -> None:
    defaults = receiver.build_parser().parse_args([])
    receiver_endpoint = f"https://{defaults.host}:{defaults.port}{defaults.path}"
    portal_endpoint = f"https://127.0.0.1:{demo.PORTAL_PORT}{NOTIFY_PATH}"
    endpoints = registered_endpoints(REPOSITORY / "examples" / "apps.yaml")
    for client_id in DEMO_APPS:
        assert admitted(receiver_endpoint, endpoints[client_id]), client_id
        assert admitted(portal_endpoint, endpoints[client_id]), client_id
        assert not admitted("https://127.0.0.1:8444/notify", endpoints[client_id]), client_id


def test_the_demo_registers_the_port_its_portal_uses(tmp_path: Path) -> None:
    apps_file = demo.demo_apps_file(tmp_path, "https://127.0.0.1:9555")
    endpoints = registered_endpoints(apps_file)
    assert admitted(f"https://127.0.0.1:9555{NOTIFY_PATH}", endpoints["portal-demo"])
    assert not admitted(f"https://127.0.0.1:8443{NOTIFY_PATH}", endpoints["portal-demo"])
    # Nothing else of the shipped file changes: the same apps, roles and keys.
    shipped = load_registry(
        REPOSITORY / "examples" / "apps.yaml", load_matrix(REPOSITORY / "authz_matrix.yaml")
    )
    copied = load_registry(apps_file, load_matrix(REPOSITORY / "authz_matrix.yaml"))
    for name, domain in shipped.domains.items():
        for client_id, app in domain.apps.items():
            twin = copied.domains[name].apps[client_id]
            assert (twin.role, twin.grants, twin.jwks) == (app.role, app.grants, app.jwks)


# -- `make run PORT=…` ------------------------------------------------------------------


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`make run PORT=<free>` as a newcomer runs it (its own database and keys)."""
    directory = tmp_path_factory.mktemp("make-run")
    port = free_port()
    receiver_ca = receiver.local_certificate(directory / "tls", ["127.0.0.1", "localhost"])[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env |= {
        "HUB_DATABASE_URL": f"sqlite+aiosqlite:///{directory / 'hub.db'}",
        "HUB_KEYS_DIR": str(directory / "keys"),
        "HUB_CA_BUNDLE": str(receiver_ca),
        "HUB_WEBHOOK_ALLOW_NETWORKS": "127.0.0.1/32",
    }
    log = (directory / "make-run.log").open("wb")
    # `-o install`: the virtualenv is the one running this test; never rebuild it here.
    process = subprocess.Popen(
        ["make", "--no-print-directory", "-o", "install", "run", f"PORT={port}"],
        cwd=REPOSITORY,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # make, its shell and the hub: one group to stop
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (directory / "make-run.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "make run did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        log.close()


def test_make_run_port_serves_there_and_issues_tokens_for_that_address(make_run: str) -> None:
    discovery = httpx.get(f"{make_run}/demo/fhir/.well-known/smart-configuration", timeout=10)
    assert discovery.status_code == 200
    token_url = f"{make_run}/demo/oauth2/token"
    assert discovery.json()["token_endpoint"] == token_url
    # README's `hub token`, pointed at the public URL `make run` set.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    token = subprocess.run(
        [
            str(Path(sys.executable).with_name("hub")),
            *("token", "--domain", "demo", "--client-id", "epd-demo"),
            *("--key", "examples/keys/epd-demo.pem", "--token-url", token_url),
        ],
        cwd=REPOSITORY,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert token.returncode == 0, token.stderr
    metadata = httpx.get(
        f"{make_run}/demo/fhir/Patient",
        headers={"Authorization": f"Bearer {token.stdout.strip()}"},
        timeout=10,
    )
    assert metadata.status_code == 200, metadata.text


def test_a_receiver_on_an_unregistered_port_is_told_why(make_run: str, tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "examples.receiver", "--subscribe"),
            *("--hub", make_run, "--port", str(port), "--ca-out", str(tmp_path / "tls")),
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "the hub refused the Subscription" in result.stderr
    assert f"https://127.0.0.1:{port}/notify is not among portal-demo's registered" in (
        result.stderr
    )
    assert "use --port 8443" in result.stderr
