"""Creates per second, and per-write latency, as the number of active Subscriptions grows.

For each count (0, 10, 1,000, 10,000 by default) the hub holds that many live
Subscriptions laid out as `bench.workload` describes: each create matches ten
of them and queues ten notifications to the receiver. Per count:

1. write latency with one client (no queueing in the hub: the cost of one write);
2. creates/s with `--clients` concurrent clients (throughput, and latency under load);
3. the notification backlog those writes left, and how fast the hub drains it.

The ten deliveries each write causes run in the same hub process during both
measurements, as they would in production; they are the same ten at 10 and at
10,000 Subscriptions, so comparing those two isolates what the other 9,990 cost.
The backlog is drained before the next count, so no phase inherits another's work.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from bench.hubs import DOMAIN, Hub, api_client, headers
from bench.load import RequestMaker, Result, hammer
from bench.rates import latencies, numbers
from bench.receiver import Receiver
from bench.report import Report, Row
from bench.store import Store
from bench.workload import SUBSCRIPTIONS_PER_TAG, group_specs, group_tag, patient, subscribe

# The targets.
MIN_CREATES_PER_SECOND = 500
CREATES_TARGET_AT = 1_000
MAX_LATENCY_GROWTH = 1.25
LATENCY_BASE, LATENCY_HIGH = 10, 10_000


@dataclass(frozen=True)
class Measured:
    serial: Result
    loaded: Result
    backlog: int
    drain_seconds: float | None


class _Subscriptions:
    """Grows the hub's Subscriptions group by group: the first through the API."""

    def __init__(self, hub: Hub, token: str, receiver: Receiver, store: Store) -> None:
        self.hub, self.token, self.receiver, self.store = hub, token, receiver, store
        self.groups = 0
        self.template: dict[str, Any] = {}

    async def grow_to(self, groups: int) -> None:
        specs = group_specs(range(self.groups, groups), self.receiver.urls)
        if not specs:
            return
        if not self.template:
            # The first group goes through the API (rules, endpoint checks, audit) and
            # its first Subscription is the template of all the stored copies.
            async with api_client(self.hub, self.token) as client:
                made = [await subscribe(client, c, e) for c, e in specs[:SUBSCRIPTIONS_PER_TAG]]
            self.template = made[0]
            specs = specs[SUBSCRIPTIONS_PER_TAG:]
        if specs:
            await self.store.copy_subscriptions(self.template, specs)
        self.groups = groups


async def _warm(hub: Hub, token: str, number: int) -> None:
    """One untimed write: the hub reloads its subscription index on the first after a change."""
    async with api_client(hub, token) as client:
        (await client.post("/Patient", content=patient(number))).raise_for_status()


async def measure(
    hub: Hub, token: str, count: int, base: int, store: Store, args: argparse.Namespace
) -> Measured:
    cycle = max(count // SUBSCRIPTIONS_PER_TAG, 1)
    path = f"/{DOMAIN}/fhir/Patient"

    def maker(offset: int) -> RequestMaker:
        def make(i: int) -> tuple[str, str, bytes]:
            return "POST", path, patient(offset + i, tag=group_tag(i % cycle))

        return make

    await _warm(hub, token, base)
    await store.drained(args.drain_timeout)
    serial = await hammer(
        "127.0.0.1",
        hub.port,
        headers(token),
        maker(base + 1),
        clients=1,
        seconds=args.seconds,
        warmup=min(args.warmup, 1.0),
        expect=201,
        pid=hub.process.pid,
    )
    loaded = await hammer(
        "127.0.0.1",
        hub.port,
        headers(token),
        maker(base + 500_000),
        clients=args.clients,
        seconds=args.seconds,
        warmup=args.warmup,
        expect=201,
        pid=hub.process.pid,
    )
    backlog = await store.backlog()
    drain_seconds = await store.drained(args.drain_timeout)
    return Measured(serial, loaded, backlog, drain_seconds)


def _drained(measured: Measured) -> str:
    if not measured.backlog:
        return "no notifications left queued"
    if measured.drain_seconds is None:
        return f"{measured.backlog} notifications still queued after the drain timeout"
    rate = measured.backlog / measured.drain_seconds if measured.drain_seconds else 0.0
    return (
        f"{measured.backlog} notifications left queued, delivered in "
        f"{measured.drain_seconds:.1f} s ({rate:,.0f}/s)"
    )


def _report_count(count: int, measured: Measured, args: argparse.Namespace, report: Report) -> None:
    loaded, serial = measured.loaded, measured.serial
    target = count == CREATES_TARGET_AT
    report.add(
        Row(
            f"creates.{count}.rate",
            f"creates/s, {count:,} subscriptions",
            loaded.rate,
            "/s",
            f"{args.clients} clients: {latencies(loaded)}; {_drained(measured)}",
            target=f"≥ {MIN_CREATES_PER_SECOND}" if target else "",
            met=loaded.rate >= MIN_CREATES_PER_SECOND if target else None,
            data={
                **numbers(loaded),
                "subscriptions": count,
                "matching_per_write": min(count, SUBSCRIPTIONS_PER_TAG),
                "backlog_after": measured.backlog,
                "drain_seconds": measured.drain_seconds,
            },
        )
    )
    report.add(
        Row(
            f"creates.{count}.serial_p50_ms",
            f"write latency, {count:,} subs, 1 client",
            serial.percentile(50),
            "ms p50",
            f"p99 {serial.percentile(99):.1f} ms, {serial.rate:.0f} creates/s one at a time",
            data={**numbers(serial), "subscriptions": count},
        )
    )


def _report_growth(results: dict[int, Measured], report: Report) -> None:
    if LATENCY_BASE not in results or LATENCY_HIGH not in results:
        return
    base, high = results[LATENCY_BASE], results[LATENCY_HIGH]
    p50 = high.serial.percentile(50) / max(base.serial.percentile(50), 1e-9)
    p99 = high.serial.percentile(99) / max(base.serial.percentile(99), 1e-9)
    loaded = high.loaded.percentile(50) / max(base.loaded.percentile(50), 1e-9)
    report.add(
        Row(
            "creates.latency_growth",
            f"write latency {LATENCY_HIGH:,} ÷ {LATENCY_BASE} subs",
            p50,
            "ratio",
            f"1-client p50 at {LATENCY_HIGH:,} over at {LATENCY_BASE}; "
            f"p99 ratio {p99:.2f}, p50 under load ratio {loaded:.2f}",
            target=f"≤ {MAX_LATENCY_GROWTH}",
            met=p50 <= MAX_LATENCY_GROWTH,
            data={"p50_ratio": p50, "p99_ratio": p99, "loaded_p50_ratio": loaded},
        )
    )


async def create_rates(
    hub: Hub, token: str, receiver: Receiver, store: Store, args: argparse.Namespace, report: Report
) -> None:
    subscriptions = _Subscriptions(hub, token, receiver, store)
    results: dict[int, Measured] = {}
    for index, count in enumerate(args.subscriptions):
        await subscriptions.grow_to(count // SUBSCRIPTIONS_PER_TAG)
        report.note(f"{count:,} active subscriptions: measuring creates")
        results[count] = await measure(hub, token, count, 100_000_000 * (index + 1), store, args)
        _report_count(count, results[count], args, report)
    _report_growth(results, report)
