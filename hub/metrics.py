"""The hub's metrics, in the Prometheus text format (prometheus-client).

Two kinds of figures, so that they stay right however many processes share one
database (README "Logs and metrics"):

- **What this process did** (counters and histograms): requests, token requests,
  AuditEvents, delivery attempts and their latency. Each process counts its own,
  from its start, as Prometheus expects of a scrape target; a sum over the targets
  is the hub's total. `hub serve --workers N` puts N processes behind one port, so
  there they count in a shared directory (prometheus-client's multiprocess mode,
  `PROMETHEUS_MULTIPROC_DIR`) and every scrape reports the sum of them all.
- **The state of the queue and the Subscriptions** (gauges): read from the database
  at each scrape (`DatabaseFigures`, made by `hub.store.gauges`), so every process
  reports the same truth; take one process's figure (max), never the sum.

Labels stay few and bounded: `domain` is a domain of the apps file (anything else
counts as `""`), `method` one of the HTTP methods the hub knows (else `OTHER`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST

# No `*_created` series beside every counter and histogram: they double the scrape for a
# figure (the process's start) that `process_start_time_seconds` already gives.
disable_created_metrics()  # type: ignore[no-untyped-call]

# This process's own registry: the counters below, and the process, platform and GC
# collectors (CPU, memory, file descriptors), which are per process by nature.
REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "hub_http_requests",
    "HTTP requests answered, by domain, method and status",
    ["domain", "method", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "hub_http_request_duration_seconds",
    "Seconds from a request's arrival to the end of its response, by domain and method",
    ["domain", "method"],
    registry=REGISTRY,
)
TOKEN_REQUESTS = Counter(
    "hub_token_requests",
    "Token requests by outcome: granted, refused (an OAuth error), limited (429)",
    ["domain", "outcome"],
    registry=REGISTRY,
)
AUDIT_EVENTS = Counter(
    "hub_audit_events",
    "AuditEvents this process committed to the domain's trail",
    ["domain"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "hub_deliveries",
    "Delivery attempts on record, by outcome: delivered, failed (retried later), gave-up "
    "(no more retries), dropped (not sent: the Subscription is gone or the right was lost)",
    ["domain", "channel", "outcome"],
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "hub_delivery_latency_seconds",
    "Seconds from the commit of a write to the first POST (or e-mail) of its notification",
    ["domain", "channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
    registry=REGISTRY,
)


class Observer(NamedTuple):
    """The series one kind of request counts in, looked up once (labels() costs a lock)."""

    requests: Counter
    duration: Histogram


@lru_cache(maxsize=4096)
def request_series(domain: str, method: str, status: int) -> Observer:
    """The series of requests of `domain`, `method` and `status` (bounded label values)."""
    method = method if method in METHODS else "OTHER"
    return Observer(
        HTTP_REQUESTS.labels(domain, method, str(status)),
        HTTP_DURATION.labels(domain, method),
    )


def observe_request(domain: str, method: str, status: int, seconds: float) -> None:
    series = request_series(domain, method, status)
    series.requests.inc()
    series.duration.observe(seconds)


def token_request(domain: str, outcome: str) -> None:
    TOKEN_REQUESTS.labels(domain, outcome).inc()


def audit_events(domain: str, count: int = 1) -> None:
    """`count` AuditEvents of `domain` are committed (call after the commit, not before)."""
    if count:
        AUDIT_EVENTS.labels(domain).inc(count)


def delivery(domain: str, channel: str, outcome: str) -> None:
    DELIVERIES.labels(domain, channel, outcome).inc()


def delivery_latency(domain: str, channel: str, seconds: float) -> None:
    DELIVERY_LATENCY.labels(domain, channel).observe(max(seconds, 0.0))


# --- the figures read from the database at each scrape -----------------------------------


class OutboxGroup(NamedTuple):
    """The outbox rows of one domain, channel and state: how many, the oldest's commit time."""

    domain: str
    channel: str
    state: str
    rows: int
    oldest: datetime | None


class SubscriptionGroup(NamedTuple):
    domain: str
    status: str
    subscriptions: int


CHANNELS = ("rest-hook", "email")


@dataclass(frozen=True)
class DatabaseFigures:
    """The queue and the Subscriptions as the database has them, at `now`."""

    now: datetime
    domains: Sequence[str]
    outbox: Sequence[OutboxGroup]
    subscriptions: Sequence[SubscriptionGroup]


class _Figures(Collector):
    """The gauges of one scrape: every known domain has each series, zero if need be."""

    def __init__(self, figures: DatabaseFigures | None) -> None:
        self._figures = figures

    def collect(self) -> list[Metric]:
        up = GaugeMetricFamily(
            "hub_database_up", "1 if the figures below could be read from the database"
        )
        up.add_metric([], 0 if self._figures is None else 1)
        if self._figures is None:
            return [up]
        figures = self._figures
        pending = GaugeMetricFamily(
            "hub_outbox_pending",
            "Notifications waiting to be delivered (or retried), by domain and channel",
            labels=["domain", "channel"],
        )
        gave_up = GaugeMetricFamily(
            "hub_outbox_gave_up",
            "Notifications whose retries are over, kept for the operator",
            labels=["domain", "channel"],
        )
        oldest = GaugeMetricFamily(
            "hub_outbox_oldest_pending_age_seconds",
            "Seconds since the commit of the oldest notification still pending (0 if none)",
            labels=["domain"],
        )
        subscriptions = GaugeMetricFamily(
            "hub_subscriptions", "Subscriptions by domain and status", labels=["domain", "status"]
        )
        rows = {(g.domain, g.channel, g.state): g.rows for g in figures.outbox}
        oldest_by_domain: dict[str, datetime] = {}
        for group in figures.outbox:
            if group.state == "pending" and group.oldest is not None:
                known = oldest_by_domain.get(group.domain)
                oldest_by_domain[group.domain] = min(group.oldest, known or group.oldest)
        counts = {(g.domain, g.status): g.subscriptions for g in figures.subscriptions}
        domains = sorted({*figures.domains, *(d for d, _, _ in rows), *(d for d, _ in counts)})
        for domain in domains:
            for channel in CHANNELS:
                pending.add_metric([domain, channel], rows.get((domain, channel, "pending"), 0))
                gave_up.add_metric([domain, channel], rows.get((domain, channel, "gave-up"), 0))
            since = oldest_by_domain.get(domain)
            age = 0.0 if since is None else (figures.now - since).total_seconds()
            oldest.add_metric([domain], max(age, 0.0))
            for status in sorted({"requested", "active", "error", "off"} | _statuses(counts)):
                subscriptions.add_metric([domain, status], counts.get((domain, status), 0))
        return [up, pending, gave_up, oldest, subscriptions]


def _statuses(counts: dict[tuple[str, str], int]) -> set[str]:
    return {status for _, status in counts}


def exposition(figures: DatabaseFigures | None, *, multiprocess_dir: Path | None = None) -> bytes:
    """The scrape: this process's counters (or all workers', in multiprocess mode), then the
    database's gauges (`hub_database_up` 0 and none of them when the database did not answer).
    """
    if multiprocess_dir is not None:
        counted = CollectorRegistry()
        MultiProcessCollector(counted, str(multiprocess_dir))  # type: ignore[no-untyped-call]
    else:
        counted = REGISTRY
    gauges = CollectorRegistry()
    gauges.register(_Figures(figures))
    return generate_latest(counted) + generate_latest(gauges)
