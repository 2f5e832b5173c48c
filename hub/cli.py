"""The `hub` command: serve, deliver, migrate, manage keys, get a token, verify the audit trail.

It sits above `hub.app` (it starts the app, and `hub worker` runs `hub.app.run_worker`);
heavy imports wait inside each command, so `hub token` starts quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub import logs
from hub import settings as settings_module

if TYPE_CHECKING:
    from hub.preflight import Listener


def _export_flags(args: argparse.Namespace, **extra: str | None) -> settings_module.Settings:
    """Put the flags that override settings into HUB_* variables; the settings they make.

    Uvicorn's workers are separate processes that build their own settings from the
    environment, so the flags travel as variables (the role too: `HUB_ROLE`). Building
    the settings here fails fast on a bad one, before any worker starts.
    """
    for flag, variable in (
        ("database_url", "HUB_DATABASE_URL"),
        ("apps", "HUB_APPS"),
        ("public_url", "HUB_PUBLIC_URL"),
    ):
        value = getattr(args, flag)
        if value:
            os.environ[variable] = value
    for variable, value in extra.items():
        if value:
            os.environ[variable] = value
    return settings_module.from_env()


def _cannot_start(
    settings: settings_module.Settings, wait_for_db: float, listener: Listener | None = None
) -> bool:
    """Check what the hub needs before starting it; say what is wrong in one line if not.

    The traceback of the cause only under `--log-level debug`.
    """
    from hub.preflight import StartupError, before_start

    try:
        asyncio.run(before_start(settings, wait_for_db=wait_for_db, listener=listener))
    except StartupError as exc:
        if settings.log_level == "debug":
            traceback.print_exception(exc)
        print(f"hub: cannot start: {exc}", file=sys.stderr)
        return True
    return False


def _share_counters(workers: int, settings: settings_module.Settings) -> None:
    """Several worker processes on one port: they count in one directory (`hub.metrics`).

    A fresh one per `hub serve`, removed when it ends, unless PROMETHEUS_MULTIPROC_DIR
    names one already (its owner then empties it before each start).
    """
    if workers <= 1 or settings.metrics_dir is not None:
        return
    directory = tempfile.mkdtemp(prefix="hub-metrics-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _export_flags(
        args, HUB_ROLE=args.role, HUB_LOG_LEVEL=args.log_level, HUB_LOG_FORMAT=args.log_format
    )
    if not settings.serves_api:
        print("hub: HUB_ROLE=worker serves no HTTP; run `hub worker`", file=sys.stderr)
        return 2
    from hub.preflight import Listener

    listener = Listener(args.host, args.port, args.ssl_certfile, args.ssl_keyfile)
    if _cannot_start(settings, args.wait_for_db, listener):
        return 2
    _share_counters(args.workers, settings)
    from hub.api.connections import GuardedHttpToolsProtocol

    uvicorn.run(
        "hub.app:create_app",
        factory=True,
        http=GuardedHttpToolsProtocol,
        host=args.host,
        port=args.port,
        workers=args.workers,
        ssl_keyfile=args.ssl_keyfile,
        ssl_certfile=args.ssl_certfile,
        log_level=args.log_level,
        proxy_headers=args.proxy_headers,
        server_header=False,
        # Every process uvicorn starts applies it: the hub's lines and uvicorn's alike.
        log_config=logs.dict_config(settings.log_level, settings.log_format),
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from hub.app import run_worker

    settings = _export_flags(
        args, HUB_ROLE="worker", HUB_LOG_LEVEL=args.log_level, HUB_LOG_FORMAT=args.log_format
    )
    logs.configure(settings.log_level, settings.log_format)
    listener = None
    if args.metrics_port is not None:
        from hub.preflight import Listener

        listener = Listener(args.metrics_host, args.metrics_port)
    if _cannot_start(settings, args.wait_for_db, listener):
        return 2
    address = None if listener is None else (args.metrics_host, args.metrics_port)
    asyncio.run(run_worker(settings, metrics_address=address))
    return 0


def _db_upgrade(_args: argparse.Namespace) -> int:
    from hub.store.db import Database
    from hub.store.migrate import current_revision, upgrade
    from hub.store.probe import Unreachable, probe

    settings = settings_module.from_env()
    try:
        asyncio.run(probe(settings.database_url))
    except Unreachable as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 2

    async def run() -> str | None:
        database = Database(settings.database_url)
        try:
            await upgrade(database)
            return await current_revision(database)
        finally:
            await database.dispose()

    print(f"database at revision {asyncio.run(run())}")
    return 0


def _keys_new(args: argparse.Namespace) -> int:
    from hub.access.assertion import generate_app_keypair

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    private_pem, public_jwks = generate_app_keypair(args.kid or f"{args.client_id}-1")
    key_path = out / f"{args.client_id}.pem"
    jwks_path = out / f"{args.client_id}.jwks.json"
    for existing in (key_path, jwks_path):
        if existing.exists():
            print(f"hub: {existing} exists; not overwriting a key", file=sys.stderr)
            return 1
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    jwks_path.write_text(json.dumps(public_jwks, indent=2) + "\n")
    print(
        f"private key: {key_path}\npublic JWKS: {jwks_path} (put it under `jwks:` in the apps file)"
    )
    return 0


def _keys_rotate(_args: argparse.Namespace) -> int:
    from hub.access.keys import SigningKeys

    keys = SigningKeys.load_or_create(settings_module.from_env())
    new = keys.rotate()
    print(f"new signing key {new}; older keys stay published until their tokens expire")
    return 0


def _token(args: argparse.Namespace) -> int:
    from hub.access.assertion import make_client_assertion
    from hub.net import OutboundClient, OutboundError

    settings = settings_module.from_env()
    token_url = args.token_url or settings.token_endpoint(args.domain)
    try:
        private_key = Path(args.key).read_bytes()
    except OSError as exc:
        print(f"hub: cannot read the key {args.key}: {exc.strerror}", file=sys.stderr)
        return 1
    assertion = make_client_assertion(
        private_key,
        client_id=args.client_id,
        token_url=token_url,
        kid=args.kid or f"{args.client_id}-1",
        alg=args.alg,
    )
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    if args.scope:
        form["scope"] = args.scope

    async def post() -> tuple[int, dict[str, Any]]:
        async with OutboundClient(settings) as client:
            return await client.post_form(token_url, form)

    try:
        status, body = asyncio.run(post())
    except OutboundError as exc:
        print(f"hub: the token request failed: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(json.dumps(body), file=sys.stderr)
        return 1
    print(body["access_token"] if not args.json else json.dumps(body, indent=2))
    return 0


async def _has_trail(database: Any, settings: settings_module.Settings, domain: str) -> bool:
    """Whether `domain` is one to verify: in the apps file, or with a chain in the database.

    A domain removed from the apps file keeps its trail, and verifying it must work; a
    name that is neither says "intact" about nothing, so it is refused.
    """
    from hub.access import ConfigError
    from hub.access.apps import AccessConfig
    from hub.store.audit import chain_head

    try:
        if domain in AccessConfig(settings.apps_file, settings.authz_matrix).registry.domains:
            return True
    except ConfigError:
        pass  # the database decides alone
    seq, _ = await database.read(chain_head(domain))
    return bool(seq)


def _has_schema(settings: settings_module.Settings) -> bool:
    """The database answers and holds the hub's tables; if not, say so in one line."""
    from hub.store.probe import Unreachable, masked, probe

    try:
        reached = asyncio.run(probe(settings.database_url))
    except Unreachable as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return False
    if reached.revision is None:
        print(
            f"hub: {masked(settings.database_url)} holds no hub database (check HUB_DATABASE_URL)",
            file=sys.stderr,
        )
        return False
    return True


def _config_check(args: argparse.Namespace) -> int:
    """`hub config check`: every start-up check, without starting; exit 2 if one fails."""
    from hub.preflight import Listener, check_all

    settings = _export_flags(args)
    listener = Listener(args.host, args.port, args.ssl_certfile, args.ssl_keyfile)
    print(
        f"ok   settings: role {settings.role}, public URL {settings.public_url}, "
        f"logs {settings.log_format} from {settings.log_level}, "
        f"/metrics {'behind HUB_METRICS_TOKEN' if settings.metrics_token else 'public'}"
    )
    verdicts = asyncio.run(check_all(settings, listener=listener))
    for verdict in verdicts:
        if verdict.ok:
            print(f"ok   {verdict.text}")
        else:
            print(f"hub: {verdict.text}", file=sys.stderr)
    failed = sum(not verdict.ok for verdict in verdicts)
    if failed:
        print(f"hub: {failed} problem(s); the hub would not start", file=sys.stderr)
        return 2
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from hub.audit.verify import MissingChainKey, check_anchor, read_key, verify_domain
    from hub.store.db import Database

    settings = settings_module.from_env()
    try:
        key = read_key(settings.keys_dir)
    except MissingChainKey as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 2

    anchor: tuple[int, str] | None = None
    if args.expect_head:
        seq, _, digest = args.expect_head.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            print(
                "hub: --expect-head takes SEQ:DIGEST as printed by an earlier verify",
                file=sys.stderr,
            )
            return 2
        anchor = (int(seq), digest)
    if not _has_schema(settings):
        return 2

    async def run() -> tuple[list[str], tuple[int, str]] | None:
        database = Database(settings.database_url, pool_size=1)
        try:
            if not await _has_trail(database, settings, args.domain):
                return None
            verdict = await verify_domain(database, args.domain, key)
            problems = list(verdict.problems)
            if anchor is not None:
                problems += await check_anchor(database, args.domain, *anchor)
            # The head the walk verified, not a newer one: events appended since are unchecked.
            return problems, verdict.head
        finally:
            await database.dispose()

    verified = asyncio.run(run())
    if verified is None:
        print(
            f"hub: unknown domain {args.domain!r}: not in {settings.apps_file}, "
            "and no audit trail in the database",
            file=sys.stderr,
        )
        return 2
    problems, (head_seq, head_digest) = verified
    for problem in problems:
        print(problem)
    if problems:
        print(f"audit trail of {args.domain!r}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"audit trail of {args.domain!r}: intact, {head_seq} events")
    # Kept outside the database, this anchor later proves no newest events were cut off.
    print(f"head {head_seq}:{head_digest}")
    return 0


def _known_domains(settings: settings_module.Settings) -> frozenset[str] | None:
    """The domains of the apps file; None (said on stderr) when it cannot be read."""
    from hub.access import ConfigError
    from hub.access.apps import AccessConfig

    try:
        return frozenset(AccessConfig(settings.apps_file, settings.authz_matrix).registry.domains)
    except ConfigError as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return None


def _when(moment: Any) -> str:
    from hub.fhir.bundle import format_instant

    return format_instant(moment) if moment is not None else "-"


def _deliveries_list(args: argparse.Namespace) -> int:
    """`hub deliveries list`: the pending notifications per Subscription and their state."""
    from hub.interactions.subscription_state import Listed, overview
    from hub.store.clock import utcnow
    from hub.store.db import Database
    from hub.store.delivery_state import rows
    from hub.store.outbox import Entry

    settings = settings_module.from_env()
    domains = _known_domains(settings)
    if domains is None:
        return 2
    if args.domain is not None and args.domain not in domains:
        print(f"hub: unknown domain {args.domain!r} (not in {settings.apps_file})", file=sys.stderr)
        return 2

    async def run() -> tuple[list[Listed], list[Entry]]:
        database = Database(settings.database_url, pool_size=1)
        try:
            listed = await database.read(
                overview(domain=args.domain, subscription_id=args.subscription, now=utcnow())
            )
            each: list[Entry] = []
            for item in listed if args.subscription else ():
                each += await database.read(rows(item.queue.domain, args.subscription))
            return listed, each
        finally:
            await database.dispose()

    listed, each = asyncio.run(run())
    if not listed:
        print("nothing pending")
        return 0
    print("domain\tqueue\tstatus\tpending\tin-flight\tgave-up\toldest-pending\tnext-attempt\terror")
    for item in listed:
        queue = item.queue
        name = f"Subscription/{queue.subscription_id}" if queue.subscription_id else queue.channel
        columns = (
            queue.domain, name, item.status or "-", str(queue.pending), str(queue.in_flight),
            str(queue.gave_up), _when(queue.oldest_pending), _when(queue.next_attempt),
            item.error or "-",
        )  # fmt: skip
        print("\t".join(columns))
    for row in each:
        print(
            f"  row {row.pk}: {row.resource_type}/{row.resource_id}/_history/{row.version_id}"
            f" {row.state}, {row.attempts} attempt(s), queued {_when(row.created_at)},"
            f" next {_when(row.next_attempt_at)}, last error: {row.last_error or '-'}"
        )
    return 0


def _operator() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _deliveries_retry(args: argparse.Namespace) -> int:
    """`hub deliveries retry`: make pending notifications due now, audited (as `$resend`)."""
    from hub.audit.verify import MissingChainKey, read_key
    from hub.interactions.subscription_state import NotRetried, retry_as_operator
    from hub.store.db import Database
    from hub.store.wake import Wake

    settings = settings_module.from_env()
    domains = _known_domains(settings)
    if domains is None:
        return 2
    if args.domain not in domains:
        print(f"hub: unknown domain {args.domain!r} (not in {settings.apps_file})", file=sys.stderr)
        return 2
    try:
        key = read_key(settings.keys_dir)
    except MissingChainKey as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        database = Database(settings.database_url, pool_size=1)
        try:
            count = await retry_as_operator(
                database,
                key,
                domain=args.domain,
                subscription_id=args.subscription,
                operator=_operator(),
                site=settings.site,
            )
            # SQLite: a datagram wakes the hub's dispatchers; PostgreSQL's heard the NOTIFY.
            wake = Wake.for_database(database) if count else None
            if wake is not None:
                wake.send()
                wake.close()
            return count
        finally:
            await database.dispose()

    try:
        count = asyncio.run(run())
    except NotRetried as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 1
    which = f"Subscription/{args.subscription}" if args.subscription else f"domain {args.domain!r}"
    print(f"{count} pending notification(s) of {which} made due now")
    return 0


def _mail_test(args: argparse.Namespace) -> int:
    from hub.notify.mail import MailError, compose_test_message, mail_tls_context, send_mail

    overrides = {"HUB_SMTP_URL": args.smtp_url} if args.smtp_url else {}
    settings = settings_module.from_env({**os.environ, **overrides})
    if settings.smtp_url is None:
        print("hub: e-mail is off: set HUB_SMTP_URL (or give --smtp-url)", file=sys.stderr)
        return 2
    try:
        message = compose_test_message(args.to, settings.public_url, settings.smtp_from)
    except ValueError as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 2
    target = settings.smtp_url
    try:
        asyncio.run(
            send_mail(
                target,
                message,
                timeout=settings.webhook_timeout,
                ssl_context=mail_tls_context(settings.ca_bundle),
            )
        )
    except MailError as exc:  # its text names the server, never the password
        print(f"hub: the test mail was not sent: {exc}", file=sys.stderr)
        return 1
    print(f"sent a test mail to {args.to} (From: {settings.smtp_from})")
    return 0


def _logging_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--log-level",
        choices=settings_module.LOG_LEVELS,
        help="the least severe lines logged (overrides HUB_LOG_LEVEL, default info)",
    )
    command.add_argument(
        "--log-format",
        choices=settings_module.LOG_FORMATS,
        help="text lines, or one JSON object a line (overrides HUB_LOG_FORMAT, default text)",
    )


def _wait_for_db_flag(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--wait-for-db",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep trying to reach the database this long at start-up (default: once)",
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("koppeltaal-hub")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hub", description="Koppeltaal Hub, a FHIR R4 subscription hub"
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the hub: the API, and delivery and housekeeping unless --role api"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    serve.add_argument(
        "--workers", type=int, default=1, help="processes serving the port (1); see README"
    )
    serve.add_argument("--ssl-keyfile", help="TLS private key (PEM) to serve HTTPS")
    serve.add_argument("--ssl-certfile", help="TLS certificate chain (PEM)")
    serve.add_argument("--database-url", help="overrides HUB_DATABASE_URL")
    serve.add_argument("--apps", help="overrides HUB_APPS")
    serve.add_argument("--public-url", help="overrides HUB_PUBLIC_URL")
    _logging_flags(serve)
    _wait_for_db_flag(serve)
    serve.add_argument(
        "--proxy-headers", action="store_true", help="trust X-Forwarded-* from a reverse proxy"
    )
    serve.add_argument(
        "--role",
        choices=("all", "api"),
        help="all: the API and delivery (default, or HUB_ROLE); api: the API only, "
        "delivery is left to `hub worker` processes",
    )
    serve.set_defaults(run=_serve)

    worker = commands.add_parser(
        "worker", help="deliver notifications and run housekeeping, without an HTTP server"
    )
    worker.add_argument("--database-url", help="overrides HUB_DATABASE_URL")
    worker.add_argument("--apps", help="overrides HUB_APPS")
    worker.add_argument("--public-url", help="overrides HUB_PUBLIC_URL")
    _logging_flags(worker)
    _wait_for_db_flag(worker)
    worker.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve GET /metrics (this worker's counters, the database's figures) on this port",
    )
    worker.add_argument(
        "--metrics-host", default="127.0.0.1", help="with --metrics-port: the address (127.0.0.1)"
    )
    worker.set_defaults(run=_worker)

    config = commands.add_parser("config", help="the hub's configuration").add_subparsers(
        dest="config", required=True
    )
    check = config.add_parser(
        "check",
        help="check the settings, the apps file and matrix, the keys directory and the "
        "database, without starting the hub (exit 2 if the hub would not start)",
    )
    check.add_argument("--database-url", help="overrides HUB_DATABASE_URL")
    check.add_argument("--apps", help="overrides HUB_APPS")
    check.add_argument("--public-url", help="overrides HUB_PUBLIC_URL")
    check.add_argument("--host", default="127.0.0.1", help="with --port: the address to check")
    check.add_argument("--port", type=int, help="also check that this port is free to listen on")
    check.add_argument("--ssl-keyfile", help="also check this TLS private key (PEM)")
    check.add_argument("--ssl-certfile", help="also check this TLS certificate chain (PEM)")
    check.set_defaults(run=_config_check)

    db = commands.add_parser("db", help="database maintenance").add_subparsers(
        dest="db", required=True
    )
    db.add_parser("upgrade", help="apply the schema migrations").set_defaults(run=_db_upgrade)

    keys = commands.add_parser("keys", help="key management").add_subparsers(
        dest="keys", required=True
    )
    new = keys.add_parser("new", help="make an application key pair (PEM + public JWKS)")
    new.add_argument("--client-id", required=True, help="the application's client_id")
    new.add_argument("--kid", help="key id (default: <client-id>-1)")
    new.add_argument("--out", default=".", help="directory for the two files")
    new.set_defaults(run=_keys_new)
    keys.add_parser("rotate", help="rotate the hub's token-signing key").set_defaults(
        run=_keys_rotate
    )

    token = commands.add_parser("token", help="get an access token for a registered application")
    token.add_argument("--domain", required=True, help="the domain the app is registered in")
    token.add_argument("--client-id", required=True, help="the application's client_id")
    token.add_argument("--key", required=True, help="the application's private key (PEM)")
    token.add_argument("--kid", help="key id in the app's JWKS (default: <client-id>-1)")
    token.add_argument("--alg", default="RS512", help="the assertion's signing algorithm")
    token.add_argument("--scope", help="ask for less than the role grants")
    token.add_argument("--token-url", help="default: HUB_PUBLIC_URL/<domain>/oauth2/token")
    token.add_argument("--json", action="store_true", help="print the whole token response")
    token.set_defaults(run=_token)

    audit = commands.add_parser("audit", help="audit trail").add_subparsers(
        dest="audit", required=True
    )
    verify = audit.add_parser("verify", help="check a domain's AuditEvent hash chain")
    verify.add_argument("--domain", required=True, help="the domain whose chain to check")
    verify.add_argument(
        "--expect-head",
        metavar="SEQ:DIGEST",
        help="a head printed by an earlier verify: fail if the chain no longer contains it",
    )
    verify.set_defaults(run=_audit_verify)

    deliveries = commands.add_parser(
        "deliveries", help="the pending notifications: list them, or try them now"
    ).add_subparsers(dest="deliveries", required=True)
    listing = deliveries.add_parser(
        "list", help="pending and given-up notifications per Subscription (and e-mail)"
    )
    listing.add_argument("--domain", help="only this domain (default: every domain)")
    listing.add_argument(
        "--subscription", metavar="ID", help="only this Subscription, with each of its rows"
    )
    listing.set_defaults(run=_deliveries_list)
    retry = deliveries.add_parser(
        "retry", help="make pending notifications due now (as $resend does), audited"
    )
    retry.add_argument("--domain", required=True, help="the domain of the notifications")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--subscription", metavar="ID", help="this Subscription's notifications")
    which.add_argument(
        "--all", action="store_true", help="every pending notification of the domain"
    )
    retry.set_defaults(run=_deliveries_retry)

    mail = commands.add_parser("mail", help="patient e-mail").add_subparsers(
        dest="mail", required=True
    )
    mail_test = mail.add_parser(
        "test", help="send a test mail through HUB_SMTP_URL (exit 1 if the server refuses)"
    )
    mail_test.add_argument("--to", required=True, metavar="ADDRESS", help="the recipient")
    mail_test.add_argument("--smtp-url", help="overrides HUB_SMTP_URL")
    mail_test.set_defaults(run=_mail_test)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except settings_module.SettingsError as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
