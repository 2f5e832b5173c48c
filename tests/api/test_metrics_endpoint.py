"""`GET /metrics` on a real hub: what the test did shows in the figures, parsed by Prometheus.

One hub per backend for the module, behind a metrics secret. The counters are the
process's, and other hubs of this test process count in them too, so each test
compares the figures before and after what it does, in a domain or for a
Subscription of its own; the gauges come from the database.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.https_receiver import HttpsReceiver, LocalCA
from tests.support.hub import MATRIX, AppKeys, HubServer, write_apps_file
from tests.support.processes import free_port
from tests.support.subscriptions import create, notifying_hub, subscribe, wait_for_status

SECRET = "scrape-me-if-you-can-0123"
HUB = Path(sys.executable).with_name("hub")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def receiver(local_ca: LocalCA) -> Iterator[HttpsReceiver]:
    with HttpsReceiver(local_ca) as started:
        yield started


@pytest.fixture(scope="module")
def hub(
    tmp_path_factory: pytest.TempPathFactory,
    module_database_url: str,
    app_keys: dict[str, AppKeys],
    local_ca: LocalCA,
) -> Iterator[HubServer]:
    directory = tmp_path_factory.mktemp("metrics-hub")
    with notifying_hub(
        directory, module_database_url, app_keys, local_ca, metrics_token=SECRET
    ) as server:
        yield server


def scrape(hub: HubServer) -> Samples:
    response = httpx.get(f"{hub.url}/metrics", headers={"Authorization": f"Bearer {SECRET}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def grown(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-the-secret", f"Basic {SECRET}", f"Bearer {SECRET}x", SECRET],
)
def test_without_the_secret_there_are_no_figures(hub: HubServer, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.get(f"{hub.url}/metrics", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="metrics"'
    assert "hub_" not in response.text


def test_requests_tokens_and_audit_events_are_counted(hub: HubServer) -> None:
    """In domain `other`, which nothing else in this module touches."""
    before = scrape(hub)
    granted = [
        httpx.post(hub.token_url("other"), data=hub.token_form("other-xis", "other"))
        for _ in range(2)
    ]
    refused = httpx.post(
        hub.token_url("other"),
        data={**hub.token_form("other-xis", "other"), "client_assertion": "not.a.jwt"},
    )
    token = granted[0].json()["access_token"]
    missing = [
        httpx.get(
            f"{hub.fhir('other')}/Patient/{uuid.uuid4()}",
            headers={"Authorization": f"Bearer {token}"},
        )
        for _ in range(3)
    ]
    after = scrape(hub)

    assert [r.status_code for r in granted] == [200, 200]
    assert refused.status_code in (400, 401)
    assert [r.status_code for r in missing] == [404, 404, 404]
    assert grown(before, after, "hub_token_requests_total", domain="other", outcome="granted") == 2
    assert grown(before, after, "hub_token_requests_total", domain="other", outcome="refused") == 1
    counted = {"domain": "other", "method": "GET", "status": "404"}
    assert grown(before, after, "hub_http_requests_total", **counted) == 3
    assert grown(before, after, "hub_http_requests_total", domain="other", method="POST",
                 status="200") == 2  # fmt: skip
    assert grown(before, after, "hub_http_request_duration_seconds_count",
                 domain="other", method="GET") == 3  # fmt: skip
    # Each token request and each read is on the trail: 3 + 3 events.
    assert grown(before, after, "hub_audit_events_total", domain="other") == 6
    # An unknown domain makes no series of its own.
    httpx.get(f"{hub.url}/no-such-domain/fhir/metadata")
    assert not [labels for _, labels in scrape(hub) if ("domain", "no-such-domain") in labels]


async def test_deliveries_latency_and_the_queue(
    hub: HubServer,
    receiver: HttpsReceiver,
    local_ca: LocalCA,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hub.delivery")
    with HttpsReceiver(local_ca) as gone:
        closed = gone.url("/gone")  # its port is closed once this block ends
    system = f"urn:uuid:{uuid.uuid4()}"  # only this test's Patient matches
    criteria = f"Patient?identifier={system}|1"
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": "1"}],
    }
    before = scrape(hub)
    async with hub.client("xis") as xis:
        working = await subscribe(xis, criteria, receiver.url(f"/{system}"))
        failing = await subscribe(xis, criteria, closed)
        await create(xis, patient)
        await receiver.wait_for_async(1)
        await wait_for_status(xis, failing, "error")  # three refused attempts in a row
        after = scrape(hub)
        # Stop its retries, so that the rest of the module sees no more of them.
        assert (await xis.delete(f"/Subscription/{failing}")).status_code == 200

    delivered = {"domain": "test", "channel": "rest-hook", "outcome": "delivered"}
    failed = {**delivered, "outcome": "failed"}
    assert grown(before, after, "hub_deliveries_total", **delivered) == 1
    assert grown(before, after, "hub_deliveries_total", **failed) >= 3
    sent = {"domain": "test", "channel": "rest-hook"}
    assert grown(before, after, "hub_delivery_latency_seconds_count", **sent) == 2  # first sends
    assert grown(before, after, "hub_delivery_latency_seconds_bucket", **sent, le="+Inf") == 2
    # From the database: the failing row waits for its next attempt; two Subscriptions more.
    assert value(after, "hub_database_up") == 1
    assert grown(before, after, "hub_outbox_pending", **sent) == 1
    assert value(after, "hub_outbox_oldest_pending_age_seconds", domain="test") > 0
    assert grown(before, after, "hub_subscriptions", domain="test", status="active") == 1
    assert grown(before, after, "hub_subscriptions", domain="test", status="error") == 1

    # Each attempt has its line, with what an operator needs and no more.
    lines = [
        getattr(record, "hub_fields", {})
        for record in caplog.records
        if record.name == "hub.delivery"
        and getattr(record, "hub_fields", {}).get("subscription") in (working, failing)
    ]
    [ok] = [line for line in lines if line["outcome"] == "delivered"]
    assert ok["subscription"] == working and ok["http_status"] == 200
    assert ok["endpoint_host"] == "127.0.0.1" and ok["attempt"] == 1
    assert ok["duration_ms"] > 0 and "next_attempt" not in ok
    refusals = [line for line in lines if line["outcome"] == "failed"]
    assert [line["attempt"] for line in refusals][:3] == [1, 2, 3]
    assert all(line["error"] == "connection refused" for line in refusals)
    assert all(line["next_attempt"].endswith("Z") for line in refusals)
    assert "http_status" not in refusals[0]


def test_a_worker_serves_its_own_metrics(
    tmp_path: Path, sqlite_template: Path, app_keys: dict[str, AppKeys]
) -> None:
    """`hub worker --metrics-port`: the delivery role has no HTTP server, yet is scraped."""
    database = tmp_path / "hub.db"
    shutil.copyfile(sqlite_template, database)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")} | {
        "HUB_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "HUB_APPS": str(write_apps_file(tmp_path / "apps.yaml", app_keys)),
        "HUB_AUTHZ_MATRIX": str(MATRIX),
        "HUB_KEYS_DIR": str(tmp_path / "keys"),
        "HUB_METRICS_TOKEN": SECRET,
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as output:
        worker = subprocess.Popen(
            [str(HUB), "worker", "--metrics-port", str(port)],
            env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 60
        while "worker ready" not in log.read_text():
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        refused = httpx.get(url)
        answered = httpx.get(url, headers={"Authorization": f"Bearer {SECRET}"})
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    assert refused.status_code == 401
    assert answered.status_code == 200
    found = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answered.text)
        for sample in family.samples
    }
    assert value(found, "hub_database_up") == 1  # read on the worker's own loop
    pending = {("domain", "test"), ("channel", "rest-hook")}
    assert ("hub_outbox_pending", frozenset(pending)) in found
    assert value(found, "process_cpu_seconds_total") > 0
    assert "Traceback" not in log.read_text()
