"""`python -m bench` (`make bench`): what one hub process sustains, as a table and a JSON file.

It starts real hubs (`bench.server`: uvicorn, the same app as `hub serve`) on
SQLite in a temporary directory, or on a fresh database of the PostgreSQL
server at `HUB_BENCH_DATABASE_URL`, and a local HTTPS webhook receiver, and
measures with concurrent keep-alive clients:

- reads/s with and without read auditing, and their ratio (`bench.rates`);
- writes/s and searches/s; one-at-a-time notification latency;
- creates/s and write latency with 0, 10, 1,000 and 10,000 active
  Subscriptions, about ten matching each write (`bench.creates`);
- commit-to-POST latency at a steady 100 writes/s, and the notifications/s of
  one write fanned out to 1,000 Subscriptions (`bench.notifications`);
- delivery with `hub serve --role api` and `hub worker` processes: a held
  backlog drained by one worker and by two, sustained writes/s x 10
  notifications, commit-to-POST at 50 x 10 and 100 x 1 writes/s
  (`bench.delivery`);
- how fast `hub audit verify` walks the resulting chain;
- write cost: Task creates/s and hub CPU per create with 0 Subscriptions, 10
  matching ones with delivery held, and 1,000 that match nothing, on SQLite and
  (with HUB_BENCH_DATABASE_URL) PostgreSQL, against a bare Starlette + SQLite
  app, and with `--baseline-tree` against an older checkout (`bench.writes`).

`--only writes` runs just the write-cost phase; `--only delivery` just the
delivery phases (`bench.delivery`: backlog drain with one and two `hub worker`
processes, sustained writes x 10 notifications, commit-to-POST at steady rates).

Targets from the issue are shown as met or not; missing one is reported, not
fatal. The run fails (exit 1) only if the audit chain does not verify or
auditing costs more than half of read throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from bench import writes
from bench.hubs import (
    CLIENT,
    REPOSITORY,
    access_token,
    bench_database,
    hub_env,
    start_hub,
    stop_hub,
    verify_audit,
)
from bench.rates import MIN_AUDITED_READ_RATIO, compare_reads, other_rates
from bench.receiver import Receiver
from bench.report import Report, Row
from bench.workload import SUBSCRIPTIONS_PER_TAG
from hub.access.assertion import generate_app_keypair

DEFAULT_JSON = REPOSITORY / "var" / "bench.json"
WRITES_JSON = REPOSITORY / "var" / "bench-writes.json"
DELIVERY_JSON = REPOSITORY / "var" / "bench-delivery.json"

# `--quick`: the same phases, shorter, for checking the benchmark itself.
QUICK = {"rounds": 1, "seconds": 2.0, "warmup": 1.0, "latency_seconds": 3.0, "notifications": 10}


async def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: they use the hub's storage in this process, and
    # `--only writes` must run while that is mid-change (against another `--tree`).
    from bench import creates, notifications
    from bench.delivery import delivery_phases
    from bench.store import Store

    with tempfile.TemporaryDirectory(prefix="hub-bench-") as temporary:
        directory = Path(temporary)
        receiver = Receiver(directory, ports=args.endpoints)
        await receiver.start()
        private_pem, jwks = generate_app_keypair(f"{CLIENT}-1", rsa_bits=2048)
        async with bench_database(directory) as database_url:
            env = hub_env(directory, database_url, jwks, receiver.ca_bundle)
            backend = make_url(database_url).get_backend_name()
            report = Report(
                f"Koppeltaal Hub benchmark: {backend}, one hub process, {args.clients} "
                f"concurrent clients, {args.seconds:g} s per phase after {args.warmup:g} s "
                f"warm-up ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})",
                writes.options(args),
            )
            report.header()
            # Both hubs share the database; the unaudited one drops its read events.
            audited = await start_hub(env, audit=True)
            unaudited = await start_hub(env, audit=False)
            store = Store(database_url)
            try:
                ratio = await compare_reads(audited, unaudited, private_pem, args, report)
                await stop_hub(unaudited)
                await other_rates(audited, private_pem, args, report)
                token = await access_token(audited, private_pem)
                await notifications.sequential(audited, token, receiver, report, args.notifications)
                await creates.create_rates(audited, token, receiver, store, args, report)
                # A token lives 15 minutes; the phases above may have used much of one.
                token = await access_token(audited, private_pem)
                template = await notifications.steady(audited, token, receiver, store, args, report)
                await notifications.fan_out(audited, token, receiver, store, template, args, report)
                await stop_hub(audited)
                await delivery_phases(args, report, directory, env, receiver, private_pem)
            finally:
                await store.close()
                await stop_hub(unaudited)
                await stop_hub(audited)
                await receiver.stop()

            code, seconds, verdict = verify_audit(env)
            report.add(
                Row(
                    "audit.verify_seconds",
                    "hub audit verify",
                    seconds,
                    "s",
                    verdict.splitlines()[0] if verdict else "(no output)",
                    target="intact",
                    met=code == 0,
                )
            )
        # Last, with every other hub stopped: its hubs have the machine to themselves.
        complete = await writes.write_costs(args, report, directory / "writes")
        print(report.summary())
        report.write_json(args.json)
        print(f"JSON: {args.json}")
        if code != 0:
            print("bench: the audit chain does not verify", file=sys.stderr)
            return 1
        if ratio < MIN_AUDITED_READ_RATIO:
            print("bench: auditing costs more than half of read throughput", file=sys.stderr)
            return 1
        if not complete:
            print("bench: some write-cost runs could not be measured", file=sys.stderr)
            return 1
    return 0


async def run_delivery(args: argparse.Namespace) -> int:
    from bench.delivery import delivery_phases

    with tempfile.TemporaryDirectory(prefix="hub-bench-") as temporary:
        directory = Path(temporary)
        receiver = Receiver(directory, ports=args.endpoints)
        await receiver.start()
        private_pem, jwks = generate_app_keypair(f"{CLIENT}-1", rsa_bits=2048)
        env = hub_env(directory, "", jwks, receiver.ca_bundle)
        server = os.environ.get("HUB_BENCH_DATABASE_URL")
        backend = make_url(server).get_backend_name() if server else "sqlite"
        report = Report(
            f"Koppeltaal Hub delivery benchmark: {backend}"
            f" ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})",
            writes.options(args),
        )
        report.header()
        try:
            await delivery_phases(args, report, directory, env, receiver, private_pem)
        finally:
            await receiver.stop()
        print(report.summary())
        report.write_json(args.json)
        print(f"JSON: {args.json}")
    return 0


def _counts(text: str) -> list[int]:
    """`--subscriptions`: increasing multiples of the Subscriptions per tag."""
    try:
        counts = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from exc
    if any(count % SUBSCRIPTIONS_PER_TAG for count in counts) or counts != sorted(set(counts)):
        raise argparse.ArgumentTypeError(
            f"counts must be increasing multiples of {SUBSCRIPTIONS_PER_TAG}: {text!r}"
        )
    return counts


def _tree(text: str) -> Path:
    return writes.check_tree(Path(text))


def _quick_options() -> str:
    return " ".join(f"--{key.replace('_', '-')} {value:g}" for key, value in QUICK.items())


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--rounds", type=int, default=3, help="alternating read rounds per hub")
    parser.add_argument(
        "--notifications", type=int, default=30, help="writes timed to webhook, one at a time"
    )
    parser.add_argument(
        "--subscriptions",
        type=_counts,
        default="0,10,1000,10000",
        metavar="N,N,...",
        help="active Subscription counts for creates/s (comma-separated, multiples of 10)",
    )
    parser.add_argument(
        "--endpoints", type=int, default=8, help="receiver ports the Subscriptions spread over"
    )
    parser.add_argument("--rate", type=float, default=100.0, help="steady writes/s offered")
    parser.add_argument(
        "--latency-seconds", type=float, default=10.0, help="seconds of the steady-rate phase"
    )
    parser.add_argument(
        "--fan-out", type=int, default=1_000, help="Subscriptions the fan-out write matches"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for queued notifications before moving on",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the results as JSON "
        f"(default {DEFAULT_JSON.relative_to(REPOSITORY)}, "
        f"with --only writes {WRITES_JSON.relative_to(REPOSITORY)})",
    )
    parser.add_argument(
        "--backlog", type=int, default=20_000, help="delivery: notifications in the held backlog"
    )
    parser.add_argument(
        "--offered", type=float, default=150.0, help="delivery: writes/s offered, x 10 each"
    )
    parser.add_argument(
        "--only",
        choices=["writes", "delivery"],
        help="run one phase alone: writes = the write-cost phase (bench.writes), "
        "delivery = the delivery phases (bench.delivery)",
    )
    parser.add_argument(
        "--tree",
        type=_tree,
        default=REPOSITORY,
        metavar="PATH",
        help="write-cost phase: the source tree whose hub is measured",
    )
    parser.add_argument(
        "--baseline-tree",
        type=_tree,
        default=None,
        metavar="PATH",
        help="write-cost phase: also measure the hub of this checkout (e.g. of an older "
        "commit, from `git worktree add`), alternating A B A with --tree's",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="shorter phases, to check the benchmark itself: " + _quick_options(),
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    options = parser()
    args = options.parse_args(argv)
    if args.quick:
        # As defaults, so an option given explicitly still wins.
        options.set_defaults(**QUICK)
        args = options.parse_args(argv)
    if args.json is None:
        args.json = {"writes": WRITES_JSON, "delivery": DELIVERY_JSON}.get(args.only, DEFAULT_JSON)
    if args.only == "writes":
        return asyncio.run(writes.run_only(args))
    if args.only == "delivery":
        return asyncio.run(run_delivery(args))
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
