"""Request rates without subscriptions: reads with and without auditing, writes, searches.

Reads are measured on two hubs sharing one database: a normal one and one whose
read AuditEvents are dropped (`bench.server --no-audit`), in alternating rounds
so that noise on a shared machine hits both alike; their ratio is the share of
read throughput that survives auditing.
"""

from __future__ import annotations

import argparse
import asyncio

from bench.hubs import DOMAIN, Hub, access_token, api_client, headers
from bench.load import Result, hammer
from bench.report import Report, Row
from bench.workload import patient

SEED = 500
# The existing hard check: auditing may not cost more than half of read throughput.
MIN_AUDITED_READ_RATIO = 0.5


def latencies(result: Result) -> str:
    failed = (
        f", {sum(result.failures.values())} failed {result.failures}" if result.failures else ""
    )
    cpu = result.cpu_per_request
    used = f", hub CPU {cpu:.2f} ms/request" if cpu is not None else ""
    return f"p50 {result.percentile(50):.1f} ms, p99 {result.percentile(99):.1f} ms{used}{failed}"


def numbers(result: Result) -> dict[str, float | int | str | None]:
    """What the JSON file keeps of a hammered phase."""
    return {
        "rate": result.rate,
        "p50_ms": result.percentile(50),
        "p99_ms": result.percentile(99),
        "hub_cpu_ms_per_request": result.cpu_per_request,
        "failures": sum(result.failures.values()),
    }


async def seed(hub: Hub, token: str) -> list[str]:
    async with api_client(hub, token) as client:

        async def create(number: int) -> str:
            response = await client.post("/Patient", content=patient(number))
            response.raise_for_status()
            patient_id: str = response.json()["id"]
            return patient_id

        ids: list[str] = []
        for start in range(0, SEED, 25):
            ids += await asyncio.gather(*(create(n) for n in range(start, start + 25)))
        return ids


async def _reads(hub: Hub, token: str, ids: list[str], args: argparse.Namespace) -> Result:
    return await hammer(
        "127.0.0.1",
        hub.port,
        headers(token),
        lambda i: ("GET", f"/{DOMAIN}/fhir/Patient/{ids[i % len(ids)]}", b""),
        clients=args.clients,
        seconds=args.seconds,
        warmup=args.warmup,
        pid=hub.process.pid,
    )


def _median(results: list[Result]) -> Result:
    return sorted(results, key=lambda result: result.rate)[len(results) // 2]


async def compare_reads(
    audited: Hub, unaudited: Hub, private_pem: bytes, args: argparse.Namespace, report: Report
) -> float:
    """Reads on both hubs in alternating rounds; the audited/unaudited throughput ratio."""
    audited_token = await access_token(audited, private_pem)
    unaudited_token = await access_token(unaudited, private_pem)
    ids = await seed(audited, audited_token)
    without: list[Result] = []
    with_audit: list[Result] = []
    for _ in range(args.rounds):
        without.append(await _reads(unaudited, unaudited_token, ids, args))
        with_audit.append(await _reads(audited, audited_token, ids, args))
    off, on = _median(without), _median(with_audit)
    ratio = on.rate / off.rate if off.rate else 0.0
    rounds = f" (median of {args.rounds})"
    report.add(
        Row(
            "reads.unaudited",
            "reads/s without audit",
            off.rate,
            "/s",
            latencies(off) + rounds,
            data=numbers(off),
        )
    )
    report.add(
        Row(
            "reads.audited",
            "reads/s with audit",
            on.rate,
            "/s",
            latencies(on) + rounds,
            data=numbers(on),
        )
    )
    report.add(
        Row(
            "reads.audited_ratio",
            "audited/unaudited reads",
            ratio,
            "ratio",
            "throughput kept with auditing on (bench fails below)",
            target=f"≥ {MIN_AUDITED_READ_RATIO:.2f}",
            met=ratio >= MIN_AUDITED_READ_RATIO,
        )
    )
    cpu_off, cpu_on = off.cpu_per_request, on.cpu_per_request
    if cpu_off and cpu_on:
        report.add(
            Row(
                "reads.cpu_ratio",
                "CPU per read",
                cpu_off / cpu_on,
                "ratio",
                "unaudited/audited hub CPU per read",
            )
        )
    return ratio


async def other_rates(
    hub: Hub, private_pem: bytes, args: argparse.Namespace, report: Report
) -> None:
    token = await access_token(hub, private_pem)
    writes = await hammer(
        "127.0.0.1",
        hub.port,
        headers(token),
        lambda i: ("POST", f"/{DOMAIN}/fhir/Patient", patient(SEED + i)),
        clients=args.clients,
        seconds=args.seconds,
        warmup=args.warmup,
        expect=201,
        pid=hub.process.pid,
    )
    report.add(
        Row("writes", "writes/s", writes.rate, "/s", latencies(writes), data=numbers(writes))
    )
    searches = await hammer(
        "127.0.0.1",
        hub.port,
        headers(token),
        lambda i: ("GET", f"/{DOMAIN}/fhir/Patient?identifier=urn:bench|{i % SEED}", b""),
        clients=args.clients,
        seconds=args.seconds,
        warmup=args.warmup,
        pid=hub.process.pid,
    )
    report.add(
        Row(
            "searches",
            "searches/s",
            searches.rate,
            "/s",
            latencies(searches),
            data=numbers(searches),
        )
    )
