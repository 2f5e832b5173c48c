"""The scrape (hub.metrics), read back with the Prometheus client's own parser."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from hub import metrics
from hub.metrics import DatabaseFigures, OutboxGroup, SubscriptionGroup

NOW = datetime(2026, 6, 1, 12, 0, 0)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(exposition: bytes) -> Samples:
    """Every sample of the scrape, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition.decode())
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def test_the_database_figures_have_a_series_for_every_known_domain() -> None:
    figures = DatabaseFigures(
        now=NOW,
        domains=("demo", "quiet"),
        outbox=[
            OutboxGroup("demo", "rest-hook", "pending", 3, NOW - timedelta(seconds=90)),
            OutboxGroup("demo", "email", "pending", 1, NOW - timedelta(seconds=30)),
            OutboxGroup("demo", "rest-hook", "gave-up", 2, NOW - timedelta(days=3)),
        ],
        subscriptions=[
            SubscriptionGroup("demo", "active", 4),
            SubscriptionGroup("demo", "error", 1),
        ],
    )
    found = samples(metrics.exposition(figures))
    assert value(found, "hub_database_up") == 1
    assert value(found, "hub_outbox_pending", domain="demo", channel="rest-hook") == 3
    assert value(found, "hub_outbox_pending", domain="demo", channel="email") == 1
    assert value(found, "hub_outbox_gave_up", domain="demo", channel="rest-hook") == 2
    # The oldest PENDING row; given-up rows wait for the operator, not for delivery.
    assert value(found, "hub_outbox_oldest_pending_age_seconds", domain="demo") == 90
    assert value(found, "hub_subscriptions", domain="demo", status="active") == 4
    assert value(found, "hub_subscriptions", domain="demo", status="error") == 1
    assert value(found, "hub_subscriptions", domain="demo", status="off") == 0
    # A domain with nothing queued still has its series, at zero: no gaps in a graph.
    assert value(found, "hub_outbox_pending", domain="quiet", channel="rest-hook") == 0
    assert value(found, "hub_outbox_oldest_pending_age_seconds", domain="quiet") == 0
    assert value(found, "hub_subscriptions", domain="quiet", status="active") == 0


def test_without_the_database_the_counters_are_still_served() -> None:
    found = samples(metrics.exposition(None))
    assert value(found, "hub_database_up") == 0
    assert not [name for name, _ in found if name.startswith("hub_outbox")]
    assert value(found, "process_cpu_seconds_total") is not None


def test_the_counters_count_what_the_process_did() -> None:
    before = samples(metrics.exposition(None))
    metrics.observe_request("unit", "GET", 200, 0.003)
    metrics.observe_request("unit", "GET", 200, 0.2)
    metrics.observe_request("unit", "BREW", 418, 0.001)  # an unknown method is OTHER
    metrics.token_request("unit", "granted")
    metrics.audit_events("unit", 3)
    metrics.delivery("unit", "rest-hook", "failed")
    metrics.delivery_latency("unit", "rest-hook", 0.04)
    after = samples(metrics.exposition(None))

    def grew(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    assert grew("hub_http_requests_total", domain="unit", method="GET", status="200") == 2
    assert grew("hub_http_requests_total", domain="unit", method="OTHER", status="418") == 1
    assert grew("hub_http_request_duration_seconds_count", domain="unit", method="GET") == 2
    assert (
        grew("hub_http_request_duration_seconds_bucket", domain="unit", method="GET", le="0.005")
        == 1
    )
    assert grew("hub_token_requests_total", domain="unit", outcome="granted") == 1
    assert grew("hub_audit_events_total", domain="unit") == 3
    assert grew("hub_deliveries_total", domain="unit", channel="rest-hook", outcome="failed") == 1
    assert (
        grew("hub_delivery_latency_seconds_bucket", domain="unit", channel="rest-hook", le="0.05")
        == 1
    )


COUNT = """
import sys
from hub import metrics
for _ in range(int(sys.argv[1])):
    metrics.observe_request("demo", "POST", 201, 0.01)
metrics.delivery("demo", "rest-hook", "delivered")
"""
SCRAPE = """
import sys
from hub import metrics
sys.stdout.write(metrics.exposition(None, multiprocess_dir=sys.argv[1]).decode())
"""


def test_worker_processes_on_one_port_report_their_sum(tmp_path: Path) -> None:
    """`hub serve --workers N`: whichever process answers a scrape reports them all."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def python(source: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", source, *args],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return done.stdout

    python(COUNT, "2")
    python(COUNT, "3")  # another process, perhaps since ended: its counts stay in the sum
    found = samples(python(SCRAPE, str(tmp_path)).encode())
    posted = {"domain": "demo", "method": "POST"}
    assert value(found, "hub_http_requests_total", **posted, status="201") == 5
    assert value(found, "hub_http_request_duration_seconds_count", **posted) == 5
    delivered = {"domain": "demo", "channel": "rest-hook", "outcome": "delivered"}
    assert value(found, "hub_deliveries_total", **delivered) == 2
