"""`python -m bench` (`make bench`): what one hub process sustains, and what auditing costs.

It starts real hubs (`bench.server`: uvicorn, the same app as `hub serve`) on
SQLite in a temporary directory, or on a fresh database of the PostgreSQL
server at `HUB_BENCH_DATABASE_URL`, and measures with concurrent keep-alive
clients:

- reads/s of `GET Patient/{id}`, first on a hub whose read AuditEvents are
  dropped (bench-only substitute writer), then on a normal hub; the ratio is
  the share of read throughput that survives auditing;
- writes/s (`POST Patient`, audited in the write's transaction) and searches/s;
- notification latency: a write's `meta.lastUpdated` (just before its commit)
  until its webhook arrives at a local HTTPS receiver;
- how fast `hub audit verify` walks the resulting chain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from bench.load import Result, hammer
from bench.receiver import Receiver
from hub.access.assertion import CLIENT_ASSERTION_TYPE, generate_app_keypair, make_client_assertion

REPOSITORY = Path(__file__).resolve().parents[1]
DOMAIN = "bench"
CLIENT = "bench-xis"
SEED = 500


@dataclass
class Hub:
    process: asyncio.subprocess.Process
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def fhir(self) -> str:
        return f"{self.url}/{DOMAIN}/fhir"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_hub(env: dict[str, str], *, audit: bool) -> Hub:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.server",
        "--port",
        str(port),
        *(() if audit else ("--no-audit",)),
        env={**env, "HUB_PUBLIC_URL": f"http://127.0.0.1:{port}"},
        cwd=REPOSITORY,
    )
    hub = Hub(process, port)
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            if process.returncode is not None:
                raise SystemExit(f"bench: the hub exited with {process.returncode}")
            try:
                if (await client.get(f"{hub.url}/readyz")).status_code == 200:
                    return hub
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("bench: the hub did not become ready within a minute")


async def stop_hub(hub: Hub) -> None:
    if hub.process.returncode is None:
        hub.process.terminate()
        try:
            await asyncio.wait_for(hub.process.wait(), 30)
        except TimeoutError:
            hub.process.kill()
            await hub.process.wait()


async def access_token(hub: Hub, private_pem: bytes) -> str:
    token_url = f"{hub.url}/{DOMAIN}/oauth2/token"
    assertion = make_client_assertion(
        private_pem, client_id=CLIENT, token_url=token_url, kid=f"{CLIENT}-1"
    )
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    async with httpx.AsyncClient() as client:
        response = await client.post(token_url, data=form)
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


def _headers(token: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "Accept": "application/fhir+json",
        "Content-Type": "application/fhir+json",
    }


def _patient(number: int, gender: str = "unknown") -> bytes:
    identifier = {"system": "urn:bench", "value": str(number)}
    return json.dumps(
        {"resourceType": "Patient", "identifier": [identifier], "gender": gender}
    ).encode()


async def seed(hub: Hub, token: str) -> list[str]:
    async with httpx.AsyncClient(base_url=hub.fhir, headers=_headers(token)) as client:

        async def create(number: int) -> str:
            response = await client.post("/Patient", content=_patient(number))
            response.raise_for_status()
            patient_id: str = response.json()["id"]
            return patient_id

        ids: list[str] = []
        for start in range(0, SEED, 25):
            ids += await asyncio.gather(*(create(n) for n in range(start, start + 25)))
        return ids


async def reads(hub: Hub, token: str, ids: list[str], args: argparse.Namespace) -> Result:
    return await hammer(
        "127.0.0.1",
        hub.port,
        _headers(token),
        lambda i: ("GET", f"/{DOMAIN}/fhir/Patient/{ids[i % len(ids)]}", b""),
        clients=args.clients,
        seconds=args.seconds,
        warmup=args.warmup,
        pid=hub.process.pid,
    )


async def notification_latency(hub: Hub, token: str, receiver: Receiver, count: int) -> list[float]:
    """Seconds from each write's lastUpdated to its webhook's arrival, one write at a time."""
    subscription = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "bench",
        "criteria": "Patient?gender=other",
        "channel": {"type": "rest-hook", "endpoint": receiver.url},
    }
    latencies = []
    async with httpx.AsyncClient(base_url=hub.fhir, headers=_headers(token)) as client:
        (await client.post("/Subscription", json=subscription)).raise_for_status()
        for number in range(count):
            request_id = f"bench-{secrets.token_hex(8)}"
            response = await client.post(
                "/Patient",
                content=_patient(10_000_000 + number, gender="other"),
                headers={"X-Request-Id": request_id},
            )
            response.raise_for_status()
            committed = datetime.fromisoformat(
                response.json()["meta"]["lastUpdated"].replace("Z", "+00:00")
            ).timestamp()
            async with asyncio.timeout(30):
                await receiver.wait_for({request_id})
            latencies.append(receiver.arrivals[request_id] - committed)
    return latencies


@asynccontextmanager
async def bench_database(directory: Path) -> AsyncIterator[str]:
    """SQLite in `directory`, or a fresh database on HUB_BENCH_DATABASE_URL's server."""
    server = os.environ.get("HUB_BENCH_DATABASE_URL")
    if not server:
        yield f"sqlite+aiosqlite:///{directory / 'hub.db'}"
        return
    url = make_url(server)
    name = f"hub_bench_{secrets.token_hex(6)}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


def _apps_file(directory: Path, jwks: dict[str, Any]) -> Path:
    path = directory / "apps.yaml"
    app = {"client_id": CLIENT, "name": "Bench XIS", "role": "Zorgondersteuning", "jwks": jwks}
    path.write_text(yaml.safe_dump({"domains": [{"name": DOMAIN, "apps": [app]}]}))
    return path


def _verify(env: dict[str, str]) -> tuple[int, float, str]:
    started = time.perf_counter()
    import subprocess

    completed = subprocess.run(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", "hub.cli", "audit", "verify", "--domain", DOMAIN],
        env=env,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=False,
    )
    return completed.returncode, time.perf_counter() - started, completed.stdout.strip()


def _line(label: str, value: str) -> None:
    print(f"  {label:<28}{value}")


def _latencies(result: Result) -> str:
    failed = (
        f", {sum(result.failures.values())} failed {result.failures}" if result.failures else ""
    )
    cpu = result.cpu_per_request
    used = f", hub CPU {cpu:.2f} ms/request" if cpu is not None else ""
    return f"p50 {result.percentile(50):.1f} ms, p99 {result.percentile(99):.1f} ms{used}{failed}"


def _median(results: list[Result]) -> Result:
    return sorted(results, key=lambda result: result.rate)[len(results) // 2]


async def compare_reads(
    audited: Hub, unaudited: Hub, private_pem: bytes, args: argparse.Namespace
) -> float:
    """Reads on both hubs in alternating rounds (machine noise hits both alike); the ratio."""
    audited_token = await access_token(audited, private_pem)
    unaudited_token = await access_token(unaudited, private_pem)
    ids = await seed(audited, audited_token)
    without: list[Result] = []
    with_audit: list[Result] = []
    for _ in range(args.rounds):
        without.append(await reads(unaudited, unaudited_token, ids, args))
        with_audit.append(await reads(audited, audited_token, ids, args))
    off, on = _median(without), _median(with_audit)
    ratio = on.rate / off.rate if off.rate else 0.0
    rounds = f"median of {args.rounds}"
    _line("reads/s without audit", f"{off.rate:8.0f}   {_latencies(off)} ({rounds})")
    _line("reads/s with audit", f"{on.rate:8.0f}   {_latencies(on)} ({rounds})")
    _line("audited/unaudited", f"{ratio:8.2f}   throughput kept with auditing on")
    cpu_off, cpu_on = off.cpu_per_request, on.cpu_per_request
    if cpu_off and cpu_on:
        _line("CPU per read", f"{cpu_off / cpu_on:8.2f}   unaudited/audited hub CPU per read")
    return ratio


async def other_rates(hub: Hub, private_pem: bytes, args: argparse.Namespace) -> None:
    token = await access_token(hub, private_pem)
    writes = await hammer(
        "127.0.0.1",
        hub.port,
        _headers(token),
        lambda i: ("POST", f"/{DOMAIN}/fhir/Patient", _patient(SEED + i)),
        clients=args.clients,
        seconds=args.seconds,
        warmup=args.warmup,
        expect=201,
        pid=hub.process.pid,
    )
    _line("writes/s", f"{writes.rate:8.0f}   {_latencies(writes)}")
    searches = await hammer(
        "127.0.0.1",
        hub.port,
        _headers(token),
        lambda i: ("GET", f"/{DOMAIN}/fhir/Patient?identifier=urn:bench|{i % SEED}", b""),
        clients=args.clients,
        seconds=args.seconds,
        warmup=args.warmup,
        pid=hub.process.pid,
    )
    _line("searches/s", f"{searches.rate:8.0f}   {_latencies(searches)}")


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="hub-bench-") as temporary:
        directory = Path(temporary)
        receiver = Receiver(directory)
        await receiver.start()
        private_pem, jwks = generate_app_keypair(f"{CLIENT}-1", rsa_bits=2048)
        async with bench_database(directory) as database_url:
            env = {
                **os.environ,
                "HUB_DATABASE_URL": database_url,
                "HUB_APPS": str(_apps_file(directory, jwks)),
                "HUB_AUTHZ_MATRIX": str(REPOSITORY / "authz_matrix.yaml"),
                "HUB_KEYS_DIR": str(directory / "keys"),
                "HUB_CA_BUNDLE": str(receiver.ca_bundle),
                "HUB_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
                "HUB_SITE": "bench",
            }
            backend = make_url(database_url).get_backend_name()
            print(
                f"Koppeltaal Hub benchmark: {backend}, one hub process, {args.clients} "
                f"concurrent clients, {args.seconds:g} s per phase after {args.warmup:g} s "
                f"warm-up ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})"
            )
            # Both hubs share the database; the unaudited one drops its read events.
            audited = await start_hub(env, audit=True)
            unaudited = await start_hub(env, audit=False)
            try:
                ratio = await compare_reads(audited, unaudited, private_pem, args)
                await stop_hub(unaudited)
                await other_rates(audited, private_pem, args)
                token = await access_token(audited, private_pem)
                latencies = sorted(
                    await notification_latency(audited, token, receiver, args.notifications)
                )
                middle, high = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.95)]
                _line(
                    "notification latency",
                    f"p50 {middle * 1000:.1f} ms, p95 {high * 1000:.1f} ms "
                    f"(commit → receiver, n={len(latencies)})",
                )
            finally:
                await stop_hub(unaudited)
                await stop_hub(audited)
                await receiver.stop()

            code, seconds, verdict = _verify(env)
            _line("hub audit verify", f"{seconds:8.1f} s   {verdict}")
            if code != 0:
                print("bench: the audit chain does not verify", file=sys.stderr)
                return 1
            if ratio < 0.5:
                print("bench: auditing costs more than half of read throughput", file=sys.stderr)
                return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--rounds", type=int, default=3, help="alternating read rounds per hub")
    parser.add_argument("--notifications", type=int, default=30, help="writes timed to webhook")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
