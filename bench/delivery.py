"""Delivery at the speed of the wire: `python -m bench --only delivery`.

Each phase runs on a fresh database (SQLite in a temporary directory, or a new
database on `HUB_BENCH_DATABASE_URL`'s server), with a hub serving the API
(`hub serve --role api`) and separate delivery processes (`hub worker`), and a
local HTTPS receiver in this process:

- drain: a held backlog of notifications (10 Subscriptions on distinct
  endpoints, one row per write and Subscription, queued in one transaction
  while the workers idle) delivered by one worker and by two: notifications/s
  from the first arrival to the last, and the workers' CPU per notification
  (`/proc/<pid>/stat`);
- sustained: writes offered at a steady rate above what can be delivered,
  each matching 10 Subscriptions; writes/s counts only the writes all ten of
  whose notifications arrived by the end of the window;
- latency: commit-to-POST p50/p99 at a steady 50 writes/s x 10 Subscriptions
  and 100 writes/s x 1 (from the write's `meta.lastUpdated`, stamped in its
  transaction just before commit, to the arrival of its LAST notification).

Targets (2 cores, SQLite, auditing on, receiver and load on the same machine):
≥ 1,000 notifications/s with one delivery process; ≥ 100 sustained writes/s
x 10; p99 < 50 ms at 100 x 1 and < 100 ms at 50 x 10.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.hubs import (
    DOMAIN,
    LOGS,
    REPOSITORY,
    Hub,
    access_token,
    api_client,
    fresh_database,
    headers,
    start_hub,
    stop_hub,
)
from bench.load import process_cpu_seconds
from bench.paced import PacedRequest, paced
from bench.receiver import Receiver
from bench.report import Report, Row
from bench.store import Store
from bench.workload import criteria, patient, subscribe

MIN_NOTIFICATIONS_PER_SECOND = 1_000
MIN_SUSTAINED_WRITES_PER_SECOND = 100
MAX_P99_MS = {1: 50, 10: 100}  # by Subscriptions per write
SUBSCRIBERS = 10
TAG = ("urn:bench:delivery", "all")
ONE_TAG = ("urn:bench:delivery", "one")


@dataclass
class Worker:
    """A `hub worker` process: delivery and housekeeping, no HTTP."""

    process: asyncio.subprocess.Process

    @property
    def cpu(self) -> float:
        return process_cpu_seconds(self.process.pid) or 0.0


async def start_worker(env: dict[str, str]) -> Worker:
    # Its log lines (one per delivery at info) go to a file beside the report, not into it.
    LOGS.mkdir(parents=True, exist_ok=True)
    with (LOGS / f"hub-worker-{secrets.token_hex(4)}.log").open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub.cli", "worker", env=env, cwd=REPOSITORY, stderr=log_file
        )
    return Worker(process)


async def stop_worker(worker: Worker) -> None:
    if worker.process.returncode is None:
        worker.process.terminate()
        try:
            await asyncio.wait_for(worker.process.wait(), 30)
        except TimeoutError:
            worker.process.kill()
            await worker.process.wait()


async def _settled(workers: Sequence[Worker]) -> None:
    """Until the workers' start-up (imports, migrations) is over: their CPU stops growing."""
    previous = -1.0
    for _ in range(100):
        await asyncio.sleep(0.3)
        used = sum(worker.cpu for worker in workers)
        if used - previous < 0.01:
            return
        previous = used


@dataclass
class _Phase:
    env: dict[str, str]
    store: Store
    hub: Hub
    token: str
    template: dict[str, Any]


@contextlib.asynccontextmanager
async def _phase(
    directory: Path, name: str, base_env: dict[str, str], receiver: Receiver, private_pem: bytes
) -> AsyncIterator[_Phase]:
    """A fresh database, an API-only hub on it, and a Subscription template made through it."""
    server = base_env.get("HUB_BENCH_DATABASE_URL")
    async with fresh_database(directory, server, name=f"delivery-{name}") as url:
        env = {
            **base_env,
            "HUB_DATABASE_URL": url,
            "HUB_ROLE": "api",
            # The workers are woken at commit; the poll is only the safety net.
            "HUB_DELIVERY_POLL_SECONDS": "30",
        }
        hub = await start_hub(env, audit=True)
        store = Store(url)
        try:
            token = await access_token(hub, private_pem)
            async with api_client(hub, token) as client:
                template = await subscribe(client, criteria(("urn:bench:none", "x")), receiver.url)
            yield _Phase(env, store, hub, token, template)
        finally:
            await store.close()
            await stop_hub(hub)


async def _subscribers(
    phase: _Phase, receiver: Receiver, tag: tuple[str, str], n: int
) -> tuple[list[str], str]:
    """`n` Subscriptions matching `tag`, each on its own endpoint (round robin).

    Their ids, and the request id of an untimed write that notifies them all once a
    worker runs: it makes the API reload its subscription index, and the worker
    open its connections.
    """
    urls = receiver.urls
    made = await phase.store.copy_subscriptions(
        phase.template, [(criteria(tag), urls[k % len(urls)]) for k in range(n)]
    )
    async with api_client(phase.hub, phase.token) as client:
        # Untimed: the first write after the change reloads the hub's subscription index.
        request_id = _request_id("warm")
        response = await client.post(
            "/Patient", content=patient(1, tag=tag), headers={"X-Request-Id": request_id}
        )
        response.raise_for_status()
    return made, request_id


async def _warmed(receiver: Receiver, request_id: str, n: int) -> None:
    async with asyncio.timeout(60):
        await receiver.wait_for_count(request_id, n)


def _request_id(kind: str) -> str:
    return f"bench-{kind}-{secrets.token_hex(8)}"


def _committed(body: bytes) -> float:
    stamp = str(json.loads(body)["meta"]["lastUpdated"]).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def _percentile(values: list[float], p: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


async def drain(
    phase: _Phase, receiver: Receiver, workers: int, backlog: int, report: Report, within: float
) -> None:
    """A backlog of `backlog` notifications, delivered by `workers` worker processes."""
    subscriptions, warm = await _subscribers(phase, receiver, TAG, SUBSCRIBERS)
    # They find the backlog at their next poll: queued by the benchmark, it wakes nobody.
    quick_poll = {**phase.env, "HUB_DELIVERY_POLL_SECONDS": "1"}
    started = [await start_worker(quick_poll) for _ in range(workers)]
    try:
        await _warmed(receiver, warm, SUBSCRIBERS)
        await _settled(started)
        cpu_before = sum(worker.cpu for worker in started)
        request_id = _request_id(f"drain{workers}")
        writes = backlog // SUBSCRIBERS
        await phase.store.enqueue_backlog(request_id, writes, subscriptions)
        try:
            async with asyncio.timeout(within):
                await receiver.wait_for_count(request_id, writes * SUBSCRIBERS)
        except TimeoutError:
            pass
        arrived = receiver.counts[request_id]
        seconds = receiver.last[request_id] - receiver.arrivals[request_id] if arrived else 0.0
        cpu = sum(worker.cpu for worker in started) - cpu_before
    finally:
        for worker in started:
            await stop_worker(worker)
    rate = (arrived - 1) / seconds if seconds > 0 else None
    per = cpu / arrived * 1000 if arrived else None
    context = (
        f"{arrived:,} of {writes * SUBSCRIBERS:,} delivered in {seconds:.1f} s; worker CPU "
        + (f"{per:.2f} ms/notification" if per is not None else "n/a")
    )
    target = f"≥ {MIN_NOTIFICATIONS_PER_SECOND:,}" if workers == 1 else ""
    report.add(
        Row(
            f"delivery.drain.{workers}.rate",
            f"backlog drained, {workers} worker{'s' if workers > 1 else ''}",
            rate,
            "/s",
            context,
            target=target,
            met=(rate is not None and rate >= MIN_NOTIFICATIONS_PER_SECOND and arrived == backlog)
            if target
            else None,
            data={"cpu_ms_per_notification": per, "delivered": arrived, "queued": backlog},
        )
    )


async def sustained(
    phase: _Phase, receiver: Receiver, offered: float, seconds: float, report: Report
) -> None:
    """Writes offered at `offered`/s, each matching 10: those fully notified within the window."""
    _, warm = await _subscribers(phase, receiver, TAG, SUBSCRIBERS)
    worker = await start_worker(phase.env)
    try:
        await _warmed(receiver, warm, SUBSCRIBERS)
        await _settled([worker])
        request_ids: dict[int, str] = {}

        def make(number: int) -> PacedRequest:
            request_ids[number] = _request_id("sus")
            body = patient(50_000_000 + number, tag=TAG)
            return "POST", f"/{DOMAIN}/fhir/Patient", body, {"X-Request-Id": request_ids[number]}

        began = time.time()
        sent = await paced(
            "127.0.0.1", phase.hub.port, headers(phase.token), make, rate=offered, seconds=seconds
        )
        window_end = began + seconds + 1.0  # a second's grace for the last writes
        await asyncio.sleep(max(0.0, window_end - time.time()))
        written = [request_ids[s.number] for s in sent if s.status == 201]
        complete = [
            r
            for r in written
            if receiver.counts[r] >= SUBSCRIBERS and receiver.last[r] <= window_end
        ]
    finally:
        await stop_worker(worker)
    rate = len(complete) / seconds
    report.add(
        Row(
            "delivery.sustained.rate",
            "sustained writes/s x 10 notified",
            rate,
            "/s",
            f"{offered:g}/s offered for {seconds:g} s: {len(written)} written, "
            f"{len(complete)} with all {SUBSCRIBERS} notifications within the window",
            target=f"≥ {MIN_SUSTAINED_WRITES_PER_SECOND}",
            met=rate >= MIN_SUSTAINED_WRITES_PER_SECOND,
            data={"offered": offered, "written": len(written), "complete": len(complete)},
        )
    )


async def latency(
    phase: _Phase,
    receiver: Receiver,
    rate: float,
    subscribers: int,
    seconds: float,
    report: Report,
) -> None:
    """Commit-to-POST (of each write's last notification) at a steady `rate` writes/s."""
    tag = TAG if subscribers == SUBSCRIBERS else ONE_TAG
    _, warm = await _subscribers(phase, receiver, tag, subscribers)
    worker = await start_worker(phase.env)
    try:
        await _warmed(receiver, warm, subscribers)
        await _settled([worker])
        request_ids: dict[int, str] = {}

        def make(number: int) -> PacedRequest:
            request_ids[number] = _request_id("lat")
            body = patient(60_000_000 + number, tag=tag)
            return "POST", f"/{DOMAIN}/fhir/Patient", body, {"X-Request-Id": request_ids[number]}

        sent = await paced(
            "127.0.0.1", phase.hub.port, headers(phase.token), make, rate=rate, seconds=seconds
        )
        written = {request_ids[s.number]: _committed(s.body) for s in sent if s.status == 201}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                for request_id in written:
                    await receiver.wait_for_count(request_id, subscribers)
    finally:
        await stop_worker(worker)
    latencies = [
        receiver.last[r] - committed
        for r, committed in written.items()
        if receiver.counts[r] >= subscribers
    ]
    missing = len(written) - len(latencies)
    p50, p99 = _percentile(latencies, 50), _percentile(latencies, 99)
    limit = MAX_P99_MS[subscribers]
    report.add(
        Row(
            f"delivery.latency.{rate:g}x{subscribers}.p99_ms",
            f"commit → POST, {rate:g} writes/s x {subscribers}",
            p99,
            "ms p99",
            f"p50 {p50 or 0:.1f} ms, n={len(latencies)} writes"
            + (f", {missing} not fully notified" if missing else "")
            + (f", {len(sent) - len(written)} writes failed" if len(sent) != len(written) else ""),
            target=f"< {limit} ms",
            met=p99 is not None and p99 < limit and not missing,
            data={"p50_ms": p50, "n": len(latencies), "missing": missing},
        )
    )


async def delivery_phases(
    args: argparse.Namespace,
    report: Report,
    directory: Path,
    env: dict[str, str],
    receiver: Receiver,
    private_pem: bytes,
) -> None:
    """Every phase above, each on its own database."""
    report.note(
        f"delivery: hub serve --role api + hub worker; {SUBSCRIBERS} Subscriptions on "
        f"{len(receiver.urls)} endpoints; backlog {args.backlog:,}"
    )
    for workers in (1, 2):
        async with _phase(directory, f"drain{workers}", env, receiver, private_pem) as phase:
            await drain(phase, receiver, workers, args.backlog, report, args.drain_timeout)
    async with _phase(directory, "sustained", env, receiver, private_pem) as phase:
        await sustained(phase, receiver, args.offered, args.latency_seconds, report)
    for rate, subscribers in ((50.0, SUBSCRIBERS), (100.0, 1)):
        name = f"latency{rate:g}x{subscribers}"
        async with _phase(directory, name, env, receiver, private_pem) as phase:
            await latency(phase, receiver, rate, subscribers, args.latency_seconds, report)
