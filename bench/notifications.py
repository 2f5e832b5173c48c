"""How fast notifications reach the receiver: one at a time, at a steady rate, and fanned out.

Every latency here runs from the write's `meta.lastUpdated` to the moment the
receiver has read the notification's head. The hub stamps `lastUpdated` inside
the write's transaction, just before the rest of the transaction and its commit,
so these are upper bounds of commit-to-POST (the commit itself is not visible
from outside). Both clocks are this machine's wall clock.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
from datetime import datetime
from typing import Any

from bench.hubs import DOMAIN, Hub, api_client, headers
from bench.paced import PacedRequest, paced
from bench.receiver import Receiver
from bench.report import Report, Row
from bench.store import Store
from bench.workload import criteria, patient, subscribe

MAX_P99_COMMIT_TO_POST_MS = 100
MIN_NOTIFICATIONS_PER_SECOND = 1_000
LATENCY_TAG = ("urn:bench:latency", "steady")
FAN_OUT_TAG = ("urn:bench:fanout", "all")


def _committed(body: bytes | dict[str, Any]) -> float:
    """A written resource's `meta.lastUpdated` as a POSIX timestamp."""
    resource = body if isinstance(body, dict) else _json(body)
    stamp = str(resource["meta"]["lastUpdated"]).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def _json(body: bytes) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(body)
    return document


def _percentile(values: list[float], p: int) -> float:
    """`p`th percentile in milliseconds of `values` in seconds."""
    if len(values) < 2:
        return values[0] * 1000 if values else 0.0
    return statistics.quantiles(values, n=100)[p - 1] * 1000


def _request_id(kind: str) -> str:
    return f"bench-{kind}-{secrets.token_hex(8)}"


async def sequential(hub: Hub, token: str, receiver: Receiver, report: Report, count: int) -> None:
    """One write at a time, each waiting for its webhook; the Subscription is removed after."""
    tag = ("urn:bench:sequential", "one")
    latencies = []
    async with api_client(hub, token) as client:
        made = await subscribe(client, criteria(tag), receiver.url)
        for number in range(count):
            request_id = _request_id("seq")
            response = await client.post(
                "/Patient",
                content=patient(20_000_000 + number, tag=tag),
                headers={"X-Request-Id": request_id},
            )
            response.raise_for_status()
            async with asyncio.timeout(30):
                await receiver.wait_for({request_id})
            latencies.append(receiver.arrivals[request_id] - _committed(response.json()))
        # The subscription phases start from zero active Subscriptions.
        (await client.delete(f"/Subscription/{made['id']}")).raise_for_status()
    report.add(
        Row(
            "notify.sequential_p50_ms",
            "notification latency, 1 at a time",
            _percentile(latencies, 50),
            "ms p50",
            f"p95 {_percentile(latencies, 95):.1f} ms (commit → receiver, n={len(latencies)})",
            data={"p95_ms": _percentile(latencies, 95), "n": len(latencies)},
        )
    )


async def steady(
    hub: Hub, token: str, receiver: Receiver, store: Store, args: argparse.Namespace, report: Report
) -> dict[str, Any]:
    """Commit-to-POST at a steady offered rate, each write matching one Subscription.

    Returns the Subscription made (through the API), the template for `fan_out`.
    """
    async with api_client(hub, token) as client:
        made = await subscribe(client, criteria(LATENCY_TAG), receiver.url)
        (await client.post("/Patient", content=patient(29_999_999))).raise_for_status()  # warm
    await store.drained(args.drain_timeout)
    request_ids: dict[int, str] = {}

    def make(number: int) -> PacedRequest:
        request_ids[number] = _request_id("rate")
        body = patient(30_000_000 + number, tag=LATENCY_TAG)
        return "POST", f"/{DOMAIN}/fhir/Patient", body, {"X-Request-Id": request_ids[number]}

    report.note(f"{args.rate:g} writes/s for {args.latency_seconds:g} s, each notifying once")
    sent = await paced(
        "127.0.0.1", hub.port, headers(token), make, rate=args.rate, seconds=args.latency_seconds
    )
    written = {request_ids[s.number]: _committed(s.body) for s in sent if s.status == 201}
    try:
        async with asyncio.timeout(args.drain_timeout):
            await receiver.wait_for(set(written))
    except TimeoutError:
        pass
    latencies = [receiver.arrivals[r] - c for r, c in written.items() if r in receiver.arrivals]
    missing = len(written) - len(latencies)
    failed = len(sent) - len(written)
    lag = max((s.lag for s in sent), default=0.0) * 1000
    writes = [s.seconds for s in sent if s.status == 201]
    p99 = _percentile(latencies, 99) if latencies else None
    context = (
        f"n={len(latencies)} at {args.rate:g} writes/s offered (send lag ≤ {lag:.0f} ms), "
        f"write p50 {_percentile(writes, 50):.1f} ms p99 {_percentile(writes, 99):.1f} ms"
        + (f", {failed} writes failed" if failed else "")
        + (f", {missing} never notified" if missing else "")
    )
    numbers: dict[str, float | int | str | None] = {
        "measured_from": "meta.lastUpdated (stamped in the write's transaction, before commit)",
        "offered_writes_per_s": args.rate,
        "seconds": args.latency_seconds,
        "n": len(latencies),
        "failed_writes": failed,
        "missing_notifications": missing,
        "max_send_lag_ms": lag,
        "write_p50_ms": _percentile(writes, 50),
        "write_p99_ms": _percentile(writes, 99),
    }
    report.add(
        Row(
            "notify.steady_p50_ms",
            "commit → POST at steady rate",
            _percentile(latencies, 50) if latencies else None,
            "ms p50",
            context,
            data=numbers,
        )
    )
    report.add(
        Row(
            "notify.steady_p99_ms",
            "commit → POST at steady rate",
            p99,
            "ms p99",
            "1 matching Subscription per write (the others still active); "
            "from meta.lastUpdated, stamped before commit",
            target=f"< {MAX_P99_COMMIT_TO_POST_MS} ms",
            met=p99 is not None and p99 < MAX_P99_COMMIT_TO_POST_MS and not missing,
            data=numbers,
        )
    )
    return made


async def fan_out(
    hub: Hub,
    token: str,
    receiver: Receiver,
    store: Store,
    template: dict[str, Any],
    args: argparse.Namespace,
    report: Report,
) -> None:
    """One write that matches `--fan-out` Subscriptions spread over the receiver's endpoints."""
    urls = receiver.urls
    await store.copy_subscriptions(
        template, [(criteria(FAN_OUT_TAG), urls[n % len(urls)]) for n in range(args.fan_out)]
    )
    async with api_client(hub, token) as client:
        # Untimed: the first write after the change reloads the hub's subscription index.
        (await client.post("/Patient", content=patient(39_999_999))).raise_for_status()
        await store.drained(args.drain_timeout)
        report.note(f"one write matching {args.fan_out:,} subscriptions on {len(urls)} endpoints")
        request_id = _request_id("fan")
        response = await client.post(
            "/Patient",
            content=patient(40_000_000, tag=FAN_OUT_TAG),
            headers={"X-Request-Id": request_id},
        )
        response.raise_for_status()
    committed = _committed(response.json())
    try:
        async with asyncio.timeout(args.drain_timeout):
            await receiver.wait_for_count(request_id, args.fan_out)
    except TimeoutError:
        pass
    arrived = receiver.counts[request_id]
    if not arrived:
        report.add(
            Row("notify.fan_out_rate", "fan-out notifications/s", None, "/s", "none arrived")
        )
        return
    last = receiver.last[request_id] - committed
    first = receiver.arrivals[request_id] - committed
    rate = arrived / last if last > 0 else 0.0
    report.add(
        Row(
            "notify.fan_out_rate",
            f"fan-out notifications/s, 1 → {args.fan_out:,}",
            rate,
            "/s",
            f"{arrived} POSTs on {len(urls)} endpoints; first {first * 1000:.0f} ms, "
            f"last {last:.2f} s after commit",
            target=f"≥ {MIN_NOTIFICATIONS_PER_SECOND:,}",
            met=rate >= MIN_NOTIFICATIONS_PER_SECOND and arrived >= args.fan_out,
            data={
                "subscriptions": args.fan_out,
                "arrived": arrived,
                "endpoints": len(urls),
                "first_ms": first * 1000,
                "last_s": last,
            },
        )
    )
