"""`hub serve` as a real subprocess: started from HUB_* variables, killed with SIGKILL.

The in-process test hub (tests.support.hub) cannot die the way a process dies; these
tests need exactly that, so the hub runs as `python -m hub.cli serve`, the command an
operator runs, and `kill()` sends SIGKILL: no shutdown hooks, no goodbye.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from hub.access.assertion import CLIENT_ASSERTION_TYPE, make_client_assertion
from tests.support.hub import MATRIX, REPOSITORY, AppKeys


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class HubProcess:
    """One `hub serve` process on 127.0.0.1:`port`; its output goes to `log`."""

    def __init__(
        self,
        directory: Path,
        *,
        database_url: str,
        apps_file: Path,
        ca_bundle: Path,
        port: int | None = None,
        public_url: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Processes behind one load balancer share one public URL (tokens' `aud`).
        self.public_url = public_url or self.url
        self.log = directory / f"hub-{self.port}.log"
        self.env = {
            **os.environ,
            "HUB_DATABASE_URL": database_url,
            "HUB_DATABASE_POOL_SIZE": "4",
            "HUB_PUBLIC_URL": self.public_url,
            "HUB_APPS": str(apps_file),
            "HUB_AUTHZ_MATRIX": str(MATRIX),
            "HUB_KEYS_DIR": str(directory / "keys"),
            "HUB_CA_BUNDLE": str(ca_bundle),
            "HUB_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
            "HUB_DELIVERY_POLL_SECONDS": "2",
            "HUB_HOUSEKEEPING_SECONDS": "5",
            "HUB_RETRY_BASE_SECONDS": "0.2",
            "HUB_SITE": "e2e",
            **(env or {}),
        }
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def owns(self, lease_owner: str | None) -> bool:
        """Whether an outbox lease is this process's (owners are `<host>:<pid>:<random>`)."""
        return f":{self.pid}:" in (lease_owner or "")

    def start(self, timeout: float = 60.0) -> HubProcess:
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hub.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                cwd=REPOSITORY,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self._process.poll() is not None:
                raise RuntimeError(f"hub exited with {self._process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"hub not ready within {timeout} s:\n{self.output()}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: nothing runs on the way out."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(10)

    def stop(self) -> None:
        """A normal shutdown (SIGTERM), as at the end of a test."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def client(self, token: str, domain: str = "test") -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"{self.url}/{domain}/fhir",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
            timeout=30,
        )

    def __enter__(self) -> HubProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def access_token(hub: HubProcess, keys: AppKeys, domain: str = "test") -> str:
    """A token from `hub`'s token endpoint, valid at every process sharing its public URL."""
    token_url = f"{hub.public_url}/{domain}/oauth2/token"
    assertion = make_client_assertion(
        keys.private_pem, client_id=keys.client_id, token_url=token_url, kid=keys.kid
    )
    response = httpx.post(
        f"{hub.url}/{domain}/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token
