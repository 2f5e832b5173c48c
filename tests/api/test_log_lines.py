"""`hub serve --log-format json`: every line an object with its fields, none with a secret.

A real hub process, a real HTTPS receiver and real tokens: the test does what an
application does (a token, a Patient with a BSN, a search by that BSN, a
Subscription that works and one that fails), refused requests included, then reads
the hub's stderr line by line as an operator's log shipper would.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.access.assertion import make_client_assertion
from hub.rules.bsn import BSN_SYSTEM
from tests.support.https_receiver import HttpsReceiver, LocalCA
from tests.support.hub import REPOSITORY, AppKeys, write_apps_file
from tests.support.processes import HubProcess, access_token
from tests.support.subscriptions import subscribe, wait_for_status

BSN = "123456782"
FAMILY_NAME = "Zwart-Oranjeboom"  # from the Patient's body: never in a line


class JsonHub(HubProcess):
    """`hub serve --log-format json --log-level info`, its output in `log`."""

    def start(self, timeout: float = 60.0) -> HubProcess:
        command = [
            sys.executable, "-m", "hub.cli", "serve", "--port", str(self.port),
            "--log-format", "json", "--log-level", "info",
        ]  # fmt: skip
        with self.log.open("wb") as output:
            self._process = subprocess.Popen(
                command, cwd=REPOSITORY, env=self.env, stdout=output, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            assert self._process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)
        return self

    def interrupt(self) -> int:
        """Ctrl+C, as an operator stops it; the exit code."""
        assert self._process is not None
        self._process.send_signal(signal.SIGINT)
        return self._process.wait(30)

    def lines(self) -> list[dict[str, Any]]:
        text = self.log.read_text()
        assert text.endswith("\n")
        return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def hub(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], local_ca: LocalCA
) -> Iterator[JsonHub]:
    apps = write_apps_file(tmp_path / "apps.yaml", app_keys)
    started = JsonHub(
        tmp_path,
        database_url=database_url,
        apps_file=apps,
        ca_bundle=local_ca.bundle,
        env={"HUB_RETRY_BASE_SECONDS": "0.04"},
    )
    started.start()
    try:
        yield started
    finally:
        started.kill()


async def test_json_lines(
    hub: JsonHub,
    app_keys: dict[str, AppKeys],
    https_receiver: HttpsReceiver,
    local_ca: LocalCA,
) -> None:
    token = access_token(hub, app_keys["xis"])
    keys = app_keys["xis"]
    assertion = make_client_assertion(
        keys.private_pem, client_id="xis", token_url=f"{hub.url}/test/oauth2/token", kid=keys.kid
    )
    refused = httpx.post(  # a real assertion, of the wrong type: refused, and never logged
        f"{hub.url}/test/oauth2/token",
        data={"grant_type": "client_credentials", "client_assertion": assertion},
    )
    with HttpsReceiver(local_ca) as gone:
        closed = gone.url()
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": BSN_SYSTEM, "value": BSN}],
        "name": [{"family": FAMILY_NAME}],
    }
    async with hub.client(token) as xis:
        working = await subscribe(xis, "Patient", https_receiver.url())
        failing = await subscribe(xis, "Patient", closed)
        created = await xis.post("/Patient", json=patient, headers={"X-Correlation-Id": "corr-7"})
        found = await xis.get("/Patient", params={"identifier": f"{BSN_SYSTEM}|{BSN}"})
        await https_receiver.wait_for_async(1)
        await wait_for_status(xis, failing, "error")
        forged = await xis.get("/Patient", headers={"Authorization": f"Bearer {token}x"})
    assert refused.status_code == 400
    assert created.status_code == 201 and found.status_code == 200
    assert forged.status_code == 401
    assert hub.interrupt() == 0
    lines = hub.lines()

    # Every line: the four fields, then where known the request's.
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
        assert line["time"].endswith("Z")
    text = hub.log.read_text()
    for secret in (token, assertion, BSN, FAMILY_NAME):
        assert secret not in text, secret
    assert "Traceback" not in text
    assert any(line["logger"] == "hub" and " ready " in line["message"] for line in lines)

    # One access line per request: method, path without query values, status, duration.
    access = [line for line in lines if line["logger"] == "hub.requests"]
    [write] = [line for line in access if line["method"] == "POST" and line["status"] == 201
               and line["path"] == "/test/fhir/Patient"]  # fmt: skip
    assert write["correlation_id"] == "corr-7"
    assert write["domain"] == "test" and write["client_id"] == "xis"
    assert write["request_id"] == created.headers["x-request-id"]
    assert write["trace_id"] == created.headers["x-trace-id"]
    assert isinstance(write["duration_ms"], float) and write["duration_ms"] > 0
    [search] = [line for line in access if line["path"].startswith("/test/fhir/Patient?")]
    assert search["path"] == "/test/fhir/Patient?identifier"
    assert search["status"] == 200
    [token_line] = [line for line in access if line["status"] == 400]
    assert token_line["path"] == "/test/oauth2/token" and "client_id" not in token_line
    [granted] = [line for line in access if line["path"] == "/test/oauth2/token"
                 and line["status"] == 200]  # fmt: skip
    assert granted["client_id"] == "xis"  # the client the token went to
    [unauthorised] = [line for line in access if line["status"] == 401]
    assert "client_id" not in unauthorised  # a forged token names nobody

    # The refusals say why, for the operator, in the request's context.
    [why] = [line for line in lines if line["logger"] == "hub.auth"]
    assert why["message"].startswith("access token refused on test: ")
    assert why["request_id"] == unauthorised["request_id"]
    assert any(line["logger"] == "hub.oauth" and line["level"] == "warning" for line in lines)

    # One line per delivery attempt, one per status change.
    attempts = [line for line in lines if line["logger"] == "hub.delivery"]
    [delivered] = [line for line in attempts if line["subscription"] == working]
    assert delivered["outcome"] == "delivered" and delivered["http_status"] == 200
    assert delivered["endpoint_host"] == "127.0.0.1" and delivered["attempt"] == 1
    assert delivered["correlation_id"] == write["request_id"]
    assert delivered["trace_id"] == write["trace_id"]
    failures = [line for line in attempts if line["subscription"] == failing]
    assert len(failures) >= 3
    assert {line["outcome"] for line in failures} == {"failed"}
    assert {line["level"] for line in failures} == {"warning"}
    [error] = [line for line in lines if line["logger"] == "hub.subscriptions"]
    assert error["message"] == f"Subscription/{failing} is now error: connection refused"
    assert error["subscription_status"] == "error" and error["domain"] == "test"
