"""`hub serve --role api` and `hub worker` as real subprocesses, and a deployment of them.

One database, one keys directory, one public URL: the processes an operator runs
when delivery has cores (or hosts) of its own (docs/architecture.md §6).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.support.https_receiver import LocalCA
from tests.support.hub import REPOSITORY, AppKeys, write_apps_file
from tests.support.processes import HubProcess


class RoleProcess(HubProcess):
    """A `hub` process started with `command()`; ready when `is_ready()` says so."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        return self._ready()  # GET /readyz answers 200

    def start(self, timeout: float = 60.0) -> HubProcess:
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "hub.cli", *self.command()],
                cwd=REPOSITORY,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if self._process.poll() is not None:
                raise RuntimeError(f"exited with {self._process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"not ready within {timeout} s:\n{self.output()}")
            time.sleep(0.05)
        return self


class ApiProcess(RoleProcess):
    """`hub serve --role api`: the HTTP API, no dispatcher."""

    def command(self) -> list[str]:
        return ["serve", "--role", "api", "--port", str(self.port), "--log-level", "warning"]


class WorkerProcess(RoleProcess):
    """`hub worker`: delivery and housekeeping, no HTTP server; ready when it logs so."""

    def command(self) -> list[str]:
        return ["worker", "--log-level", "info"]

    def is_ready(self) -> bool:
        return self.log.exists() and "worker ready" in self.log.read_text(errors="replace")


class Deployment:
    """The processes of one deployment: one database, one keys directory, one public URL."""

    def __init__(
        self, directory: Path, database_url: str, app_keys: dict[str, AppKeys], ca: LocalCA
    ) -> None:
        self.directory = directory
        self.database_url = database_url
        self.apps = write_apps_file(directory / "apps.yaml", app_keys)
        self.ca = ca
        self.public_url: str | None = None

    def api(self, kind: type[HubProcess] = ApiProcess, **env: str) -> HubProcess:
        """The process that answers HTTP (started first: workers use its public URL)."""
        process = kind(
            self.directory, database_url=self.database_url, apps_file=self.apps,
            ca_bundle=self.ca.bundle, env=env,
        )  # fmt: skip
        self.public_url = process.url
        return process

    def worker(self, **env: str) -> WorkerProcess:
        return WorkerProcess(
            self.directory, database_url=self.database_url, apps_file=self.apps,
            ca_bundle=self.ca.bundle, public_url=self.public_url, env=env,
        )  # fmt: skip
