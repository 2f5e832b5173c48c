"""Write cost: Task creates/s and hub CPU per create, and how they compare with a bare app.

`python -m bench --only writes` runs just this phase; the full run ends with it.
What it measures is the cost of the write itself: the request, validation,
access control, the stored version, its history and index rows, its AuditEvent
and chain link, and the outbox rows of the Subscriptions it matches. Nothing is
delivered while it is measured, so delivery work does not hide in the numbers.

Three situations, each on a fresh hub with a fresh database (nothing one run
leaves behind, such as a queue of notifications, reaches the next):

- no Subscriptions at all;
- 10 Subscriptions that match every create (`Task?status=requested`), with
  delivery held: the hub runs with `HUB_DELIVERY_CONCURRENCY=1`, and the
  Subscriptions' endpoint (`bench.receiver` in hang mode) reads the first
  notification and never answers, so the one delivery place stays taken for
  `HUB_WEBHOOK_TIMEOUT` (600 s) and every create only queues its ten rows.
  That needs nothing of the hub but its settings, so it holds delivery in old
  and new versions alike;
- 1,000 Subscriptions on Task that match nothing (each asks for a code no
  create has): what the subscription index costs a write it does not notify.

Each is measured on SQLite, and also on PostgreSQL when HUB_BENCH_DATABASE_URL
names a server (a database made for each run and dropped after it).

Before and after, side by side: with `--baseline-tree PATH` (a checkout of an
older commit, e.g. `git worktree add /tmp/hub-before <commit>`) every situation
runs A B A: this tree's hub, the baseline's, this tree's again, back to back,
so the two sides share the machine's state of the moment; the report has each
run and the ratios. `--tree PATH` swaps the side under test too, to check the
harness against a known tree while this one is mid-change. A hub from another
tree is that tree's `bench.server` with that tree's `hub` (`bench.hubs.tree_env`),
and its 1,000 Subscriptions are stored by that tree's `bench.store`, run in a
child process for the same reason: the storage it writes with must be the one
the hub under test reads.

The bare app (`bench.bare`: Starlette, uvicorn, one SQLite INSERT and commit per
request) is measured in the same run with the same clients and bodies: the
hub's creates/s over its requests/s is a figure that a slower or busier machine
changes much less than the creates/s themselves.

CPU per create is the hub process's CPU time over the measured window divided
by the creates answered in it: on a shared two-core machine that is steadier
than throughput, which the neighbours' load moves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.hubs import (
    CLIENT,
    DOMAIN,
    REPOSITORY,
    Hub,
    access_token,
    api_client,
    fresh_database,
    headers,
    hub_env,
    start_hub,
    start_server,
    stop_hub,
    tree_env,
)
from bench.load import Result, hammer
from bench.rates import latencies
from bench.receiver import Receiver
from bench.report import Number, Report, Row
from bench.workload import subscription
from hub.access.assertion import generate_app_keypair

# The targets. SQLite, auditing on, write-only (nothing delivered meanwhile):
MIN_SQLITE_CREATES = 450
MIN_BARE_RATIO = 0.15
MAX_CPU_MS_PER_CREATE = 2.5
# PostgreSQL:
MIN_POSTGRES_CREATES = 190

# The app that writes the Tasks and owns the Subscriptions. Tasks are not for the
# XIS role the other phases' app has, so in these hubs the same client id is an
# eHealthModule, which may create Tasks and reads (so its Subscriptions hear of)
# those of the apps its grants name: itself. The same id, because `bench.store`
# gives the Subscriptions it copies that origin: they belong to the same app as
# their template, as if it had made them through the API.
MODULE = CLIENT
TASK_PATH = f"/{DOMAIN}/fhir/Task"
HELD_SETTINGS = {"HUB_DELIVERY_CONCURRENCY": "1", "HUB_WEBHOOK_TIMEOUT": "600"}
MATCHING_CRITERIA = "Task?status=requested"
# The bare app checks no token; one as long as the hub's (RS256, about 1,370
# characters) keeps the requests of both alike.
BARE_TOKEN = "bare-" + "x" * 1_360

# Runs in a child process in the tree under test, with that tree's `bench.store`.
_COPY_SUBSCRIPTIONS = """
import asyncio, json, sys
from bench.store import Store

async def main():
    job = json.load(sys.stdin)
    store = Store(job["database_url"])
    try:
        await store.copy_subscriptions(job["template"], [tuple(s) for s in job["specs"]])
    finally:
        await store.close()

asyncio.run(main())
"""


def task(number: int) -> bytes:
    """A small valid Task, created as requested (so the matching criteria match it)."""
    return json.dumps(
        {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "identifier": [{"system": "urn:bench", "value": str(number)}],
        }
    ).encode()


def unmatched_criteria(number: int) -> str:
    """Criteria on a code that no Task the benchmark writes has."""
    return f"Task?code=urn:bench:absent|c{number}"


@dataclass(frozen=True)
class Situation:
    key: str  # in the JSON keys
    label: str  # in the table, short to fit its column
    note: str  # what the label stands for
    matching: int  # Subscriptions every create matches (their delivery is held)
    unmatched: int  # Subscriptions no create matches


SITUATIONS = (
    Situation("none", "0 subs", "no Subscriptions", 0, 0),
    Situation("held10", "10 held", "10 Subscriptions matching every create, delivery held", 10, 0),
    Situation("unmatched1000", "1k unmatched", "1,000 Subscriptions matching nothing", 0, 1_000),
)


@dataclass(frozen=True)
class Backend:
    name: str  # "SQLite" or "PG"
    server: str | None  # the PostgreSQL server to make each run's database on


@dataclass(frozen=True)
class Tree:
    side: str  # "current" or "baseline"
    path: Path
    revision: str  # `git describe --always --dirty` of the tree, for the record


@dataclass(frozen=True)
class Run:
    name: str  # "A", or "A1", "B", "A2"
    tree: Tree
    result: Result | None
    held: int = 0  # notifications that reached the hanging receiver
    error: str = ""
    client_cpu_ms: float | None = None  # the load generator's CPU per request (bare app)
    # The machine's 1-minute load average when the run ended: on a shared machine, what
    # tells a run its neighbours slowed from one the code did.
    load: float | None = None

    @property
    def rate(self) -> float | None:
        return self.result.rate if self.result is not None and self.result.latencies else None

    @property
    def busy(self) -> float | None:
        """The hub's CPU seconds per second of the measured window.

        Near 1, it had a core and used it; well below with its clients waiting, it
        waited (disk, locks) or its neighbours starved it.
        """
        if self.result is None or self.result.window_cpu_seconds is None:
            return None
        return self.result.window_cpu_seconds / self.result.seconds

    @property
    def cpu_ms(self) -> float | None:
        if self.result is None:
            return None
        return self.result.window_cpu_per_request or self.result.cpu_per_request


class SetupFailed(Exception):
    """A run could not be set up (the hub did not start, a Subscription was refused)."""


@dataclass
class _Bench:
    directory: Path
    env: dict[str, str]  # the hubs' settings, but for the database and the tree's own files
    receiver: Receiver  # in hang mode: the endpoint of every Subscription
    private_pem: bytes
    args: argparse.Namespace
    runs: int = 0


def revision(tree: Path) -> str:
    completed = subprocess.run(  # noqa: S603 (git, on a path the user gave)
        ["git", "-C", str(tree), "describe", "--always", "--dirty"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    return completed.stdout.strip() or "(not a git checkout)"


def check_tree(path: Path) -> Path:
    """`--tree`/`--baseline-tree`: a checkout with the hub and a `bench.server` to run it."""
    path = path.resolve()
    for needed in ("hub/app.py", "bench/server.py", "bench/store.py", "authz_matrix.yaml"):
        if not (path / needed).is_file():
            raise argparse.ArgumentTypeError(f"{path} has no {needed}: not a hub checkout")
    return path


def _backends() -> list[Backend]:
    server = os.environ.get("HUB_BENCH_DATABASE_URL")
    return [Backend("SQLite", None), *([Backend("PG", server)] if server else [])]


def _sequence(args: argparse.Namespace) -> list[tuple[str, Tree]]:
    """A B A when there is a baseline: each side once before and once after the other's run."""
    current = Tree("current", args.tree, revision(args.tree))
    if args.baseline_tree is None:
        return [("A", current)]
    baseline = Tree("baseline", args.baseline_tree, revision(args.baseline_tree))
    return [("A1", current), ("B", baseline), ("A2", current)]


async def write_costs(args: argparse.Namespace, report: Report, directory: Path) -> bool:
    """Measure every situation on every backend; False if any run could not be measured."""
    os.makedirs(directory, exist_ok=True)
    receiver = Receiver(directory, hang=True)
    await receiver.start()
    private_pem, jwks = generate_app_keypair(f"{MODULE}-1", rsa_bits=2048)
    bench = _Bench(
        directory, _env(directory, jwks, receiver.ca_bundle), receiver, private_pem, args
    )
    sequence = _sequence(args)
    for name, tree in dict(sequence).items():
        report.note(f"{name}: {tree.side} tree {tree.path} at {tree.revision}")
    complete = True
    try:
        bare = await _bare(directory, args)
        _report_bare(report, bare, args)
        complete = _measured(bare)
        for backend in _backends():
            for situation in SITUATIONS:
                order = " ".join(name for name, _ in sequence)
                report.note(f"{backend.name}, {situation.note} ({situation.label}): {order}")
                runs = [await _measure(bench, backend, situation, n, t) for n, t in sequence]
                complete = complete and all(_measured(run, situation) for run in runs)
                _report(report, backend, situation, runs, bare, args)
    finally:
        await receiver.stop()
    return complete


def _measured(run: Run, situation: Situation | None = None) -> bool:
    """A run with creates in its window, no failed request, and delivery held if it should be.

    With matching Subscriptions exactly one notification reaches the hanging
    receiver: none means the creates matched nothing, more that delivery was not
    held, and either way the run did not measure what it says.
    """
    held = situation is None or not situation.matching or run.held == 1
    return run.result is not None and run.rate is not None and not run.result.failures and held


def _env(directory: Path, jwks: dict[str, Any], ca_bundle: Path) -> dict[str, str]:
    env = hub_env(directory, "", jwks, ca_bundle)
    apps = directory / "writes-apps.yaml"
    app = {
        "client_id": MODULE,
        "name": "Bench module",
        "role": "eHealthModule",
        "jwks": jwks,
        "grants": {"Task": [MODULE]},
    }
    apps.write_text(yaml.safe_dump({"domains": [{"name": DOMAIN, "apps": [app]}]}))
    return {**env, "HUB_APPS": str(apps)}


async def _measure(
    bench: _Bench, backend: Backend, situation: Situation, name: str, tree: Tree
) -> Run:
    bench.runs += 1
    async with fresh_database(bench.directory, backend.server, name=f"writes-{bench.runs}") as url:
        env = {
            **bench.env,
            "HUB_DATABASE_URL": url,
            "HUB_AUTHZ_MATRIX": str(tree.path / "authz_matrix.yaml"),
            "HUB_KEYS_DIR": str(bench.directory / f"keys-{tree.side}"),
            **(HELD_SETTINGS if situation.matching else {}),
        }
        try:
            hub = await start_hub(env, audit=True, tree=tree.path)
        except SystemExit as exc:
            return Run(name, tree, None, error=f"the hub did not start: {exc}")
        held_before = bench.receiver.total
        try:
            token = await access_token(hub, bench.private_pem, client=MODULE)
            await _subscribe(bench, hub, token, situation, url, tree)
            result = await hammer(
                "127.0.0.1",
                hub.port,
                headers(token),
                lambda i: ("POST", TASK_PATH, task(bench.runs * 10_000_000 + i)),
                clients=bench.args.clients,
                seconds=bench.args.seconds,
                warmup=bench.args.warmup,
                expect=201,
                pid=hub.process.pid,
            )
            held = bench.receiver.total - held_before
            return Run(name, tree, result, held=held, load=os.getloadavg()[0])
        except SetupFailed as exc:
            return Run(name, tree, None, error=str(exc))
        except (httpx.HTTPError, OSError, asyncio.IncompleteReadError) as exc:
            # Most likely the hub under test failed; the other runs are still worth having.
            return Run(name, tree, None, error=f"{type(exc).__name__}: {exc}")
        finally:
            # A held delivery would keep the hub's shutdown waiting out the webhook timeout.
            bench.receiver.release()
            await stop_hub(hub, grace=10)
            bench.receiver.hold()


async def _subscribe(
    bench: _Bench, hub: Hub, token: str, situation: Situation, database_url: str, tree: Tree
) -> None:
    """The situation's Subscriptions, then one untimed create.

    That create makes the hub load its subscription index (it does on the first
    write after the index changed), and with matching Subscriptions takes the one
    delivery place, so no delivery runs in the measured window.
    """
    endpoint = bench.receiver.url
    async with api_client(hub, token) as client:
        template: dict[str, Any] = {}
        wanted = [MATCHING_CRITERIA] * situation.matching
        if situation.unmatched:
            wanted.append(unmatched_criteria(0))  # the template of the copies
        for number, criteria in enumerate(wanted):
            # Distinct paths, one endpoint (scheme, host, port) for the hub's limits.
            body = subscription(criteria, f"{endpoint}/{number}")
            response = await client.post("/Subscription", json=body)
            if response.status_code != 201:
                raise SetupFailed(f"Subscription refused ({response.status_code}): {response.text}")
            template = response.json()
        if situation.unmatched > 1:
            specs = [(unmatched_criteria(n), endpoint) for n in range(1, situation.unmatched)]
            await _copy_subscriptions(tree, database_url, template, specs)
        response = await client.post("/Task", content=task(bench.runs * 10_000_000 - 1))
        if response.status_code != 201:
            raise SetupFailed(f"Task refused ({response.status_code}): {response.text}")


async def _copy_subscriptions(
    tree: Tree, database_url: str, template: dict[str, Any], specs: Sequence[tuple[str, str]]
) -> None:
    """`tree`'s `bench.store.Store.copy_subscriptions`, in a child process in that tree."""
    job = json.dumps({"database_url": database_url, "template": template, "specs": specs})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _COPY_SUBSCRIPTIONS,
        stdin=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **tree_env(tree.path)},
        cwd=tree.path,
    )
    _, errors = await process.communicate(job.encode())
    if process.returncode != 0:
        last = errors.decode(errors="replace").strip().splitlines()[-1:] or ["(no message)"]
        raise SetupFailed(f"copying Subscriptions with {tree.path}'s bench.store failed: {last[0]}")


async def _bare(directory: Path, args: argparse.Namespace) -> Run:
    """The bare app, hammered as the hubs are; a Run of the current side for the report."""
    database = directory / "bare.db"
    tree = Tree("bare", REPOSITORY, "bench.bare")
    try:
        server = await start_server(
            "bench.bare", "--database", str(database), env=dict(os.environ), cwd=REPOSITORY
        )
    except SystemExit as exc:
        return Run("bare", tree, None, error=f"the bare app did not start: {exc}")
    client_cpu = time.process_time()
    try:
        result = await hammer(
            "127.0.0.1",
            server.port,
            headers(BARE_TOKEN),
            lambda i: ("POST", TASK_PATH, task(i)),
            clients=args.clients,
            seconds=args.seconds,
            warmup=args.warmup,
            expect=201,
            pid=server.process.pid,
        )
        client_cpu = time.process_time() - client_cpu
    finally:
        await stop_hub(server)
    client_cpu_ms = client_cpu / result.completed * 1000 if result.completed else None
    return Run("bare", tree, result, client_cpu_ms=client_cpu_ms)


def _numbers(run: Run) -> dict[str, Number]:
    """What the JSON file keeps of one run, its keys prefixed with the run's name."""
    result = run.result
    numbers: dict[str, Number] = {
        f"{run.name}_rate": run.rate,
        f"{run.name}_cpu_ms": run.cpu_ms,
        f"{run.name}_tree": str(run.tree.path),
        f"{run.name}_revision": run.tree.revision,
    }
    if result is not None:
        numbers |= {
            f"{run.name}_p50_ms": result.percentile(50),
            f"{run.name}_p99_ms": result.percentile(99),
            f"{run.name}_creates": len(result.latencies),
            f"{run.name}_failures": sum(result.failures.values()),
            f"{run.name}_held_notifications": run.held,
            f"{run.name}_hub_busy": run.busy,
            f"{run.name}_load_average": run.load,
        }
    if run.error:
        numbers[f"{run.name}_error"] = run.error
    return numbers


def _report_bare(report: Report, bare: Run, args: argparse.Namespace) -> None:
    cpu = f"{bare.cpu_ms:.2f} ms CPU/request" if bare.cpu_ms is not None else "no CPU reading"
    if bare.client_cpu_ms is not None:
        # Near the app's own, it says the load generator, not the app, set the pace.
        cpu += f" (load generator {bare.client_cpu_ms:.2f} ms/request)"
    detail = (
        f"{cpu}; {latencies(bare.result)}" if bare.result is not None else bare.error or "failed"
    )
    report.add(
        Row(
            "writes.bare.rate",
            "bare Starlette+SQLite requests/s",
            bare.rate,
            "/s",
            f"{args.clients} clients, 1 INSERT + commit each; {detail}",
            data=_numbers(bare),
        )
    )


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean of the runs that were measured.

    A failed run is in the details and fails the exit code; the other run of its
    side is still worth showing.
    """
    known = [value for value in values if value is not None]
    return statistics.fmean(known) if known else None


def _show(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top is not None and bottom else None


def _describe(run: Run) -> str:
    if run.error or run.result is None:
        return f"{run.name} failed: {run.error}"
    cpu = f" at {run.cpu_ms:.2f} ms CPU/create" if run.cpu_ms is not None else ""
    if run.busy is not None:
        cpu += f" (hub {run.busy:.0%} busy, load {run.load or 0:.1f})"
    failed = f" ({sum(run.result.failures.values())} failed)" if run.result.failures else ""
    return f"{run.name} {run.rate or 0:.0f}/s{cpu}{failed}"


def _report(
    report: Report,
    backend: Backend,
    situation: Situation,
    runs: list[Run],
    bare: Run,
    args: argparse.Namespace,
) -> None:
    current = [run for run in runs if run.tree.side == "current"]
    baseline = [run for run in runs if run.tree.side == "baseline"]
    key = f"writes.{backend.name.lower()}.{situation.key}"
    label = f"{backend.name} {{}}, {situation.label}"
    sqlite = backend.server is None
    data: dict[str, Number] = {"clients": args.clients, "seconds": args.seconds}
    for run in runs:
        data |= _numbers(run)
    rate = _mean([run.rate for run in current])
    cpu = _mean([run.cpu_ms for run in current])
    runs_text = ", ".join(_describe(run) for run in current)
    held = ""
    if situation.matching:
        counts = ", ".join(f"{run.name} {run.held}" for run in runs if run.result is not None)
        good = all(run.held == 1 for run in runs if run.result is not None)
        held = f"; notifications held: {counts}" + (
            " (1 each: the one delivery place, taken)" if good else " (NOT 1 each: not held!)"
        )
    minimum = MIN_SQLITE_CREATES if sqlite else MIN_POSTGRES_CREATES
    report.add(
        Row(
            f"{key}.rate",
            label.format("creates/s"),
            rate,
            "/s",
            f"{runs_text}; {_latency(current)}{held}",
            target=f"≥ {minimum}",
            met=rate is not None and rate >= minimum,
            data=data,
        )
    )
    report.add(
        Row(
            f"{key}.cpu_ms",
            label.format("CPU ms/create"),
            cpu,
            "ms",
            "hub process CPU over the measured window ÷ creates answered in it",
            target=f"≤ {MAX_CPU_MS_PER_CREATE}" if sqlite else "",
            met=(cpu is not None and cpu <= MAX_CPU_MS_PER_CREATE) if sqlite else None,
        )
    )
    bare_ratio = _ratio(rate, bare.rate)
    report.add(
        Row(
            f"{key}.bare_ratio",
            label.format("creates ÷ bare"),
            bare_ratio,
            "ratio",
            f"÷ {_show(bare.rate, '.0f')} bare requests/s"
            + ("" if sqlite else " (the bare app is on SQLite)"),
            target=f"≥ {MIN_BARE_RATIO}" if sqlite else "",
            met=(bare_ratio is not None and bare_ratio >= MIN_BARE_RATIO) if sqlite else None,
        )
    )
    if baseline:
        _report_baseline(report, key, label, current, baseline[0], bare)


def _latency(runs: list[Run]) -> str:
    results = [run.result for run in runs if run.result is not None]
    if not results:
        return "no latencies"
    p50 = statistics.fmean(result.percentile(50) for result in results)
    p99 = statistics.fmean(result.percentile(99) for result in results)
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"


def _report_baseline(
    report: Report, key: str, label: str, current: list[Run], baseline: Run, bare: Run
) -> None:
    report.add(
        Row(
            f"{key}.baseline.rate",
            label.format("B creates/s"),
            baseline.rate,
            "/s",
            f"{_describe(baseline)}; ÷ bare "
            f"{_show(_ratio(baseline.rate, bare.rate))}; {baseline.tree.revision}",
        )
    )
    rate = _ratio(_mean([run.rate for run in current]), baseline.rate)
    cpu = _ratio(_mean([run.cpu_ms for run in current]), baseline.cpu_ms)
    each = ", ".join(f"{run.name}÷B {_show(_ratio(run.rate, baseline.rate))}" for run in current)
    report.add(
        Row(
            f"{key}.vs_baseline",
            label.format("A ÷ B creates/s"),
            rate,
            "ratio",
            f"creates/s {each}; CPU ms/create current ÷ baseline {_show(cpu)}",
            data={"rate_ratio": rate, "cpu_ratio": cpu},
        )
    )


async def run_only(args: argparse.Namespace) -> int:
    """`python -m bench --only writes`: this phase alone, in a temporary directory."""
    backends = " and ".join(backend.name for backend in _backends())
    sides = f"A B A against {args.baseline_tree}" if args.baseline_tree else "no baseline"
    report = Report(
        f"Koppeltaal Hub write cost: {backends}, one hub process per run, {args.clients} "
        f"concurrent clients, {args.seconds:g} s per run after {args.warmup:g} s warm-up, "
        f"{sides} ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})",
        options(args),
    )
    report.header()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hub-bench-writes-") as temporary:
        complete = await write_costs(args, report, Path(temporary))
    report.note(f"{time.perf_counter() - started:.0f} s in all")
    print(report.summary())
    report.write_json(args.json)
    print(f"JSON: {args.json}")
    if not complete:
        print("bench: some write-cost runs could not be measured", file=sys.stderr)
        return 1
    return 0


def options(args: argparse.Namespace) -> dict[str, Any]:
    """The options as the JSON file keeps them (paths as text)."""
    return {
        key: str(value) if isinstance(value, Path) else value
        for key, value in vars(args).items()
        if key != "json"
    }
