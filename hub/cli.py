"""The `hub` command: serve, deliver, migrate, manage keys, get a token, verify the audit trail.

It sits above `hub.app` (it starts the app, and `hub worker` runs `hub.app.run_worker`);
heavy imports wait inside each command, so `hub token` starts quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hub import settings as settings_module


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


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _export_flags(args, HUB_ROLE=args.role)
    if not settings.serves_api:
        print("hub: HUB_ROLE=worker serves no HTTP; run `hub worker`", file=sys.stderr)
        return 2
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
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    import logging

    from hub.app import run_worker

    settings = _export_flags(args, HUB_ROLE="worker")
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A line per job run is noise; its warnings and errors still show.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.root.level))
    asyncio.run(run_worker(settings))
    return 0


def _db_upgrade(_args: argparse.Namespace) -> int:
    from hub.store.db import Database
    from hub.store.migrate import current_revision, upgrade

    async def run() -> str | None:
        database = Database(settings_module.from_env().database_url)
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

    async def run() -> tuple[list[str], tuple[int, str]]:
        database = Database(settings.database_url, pool_size=1)
        try:
            verdict = await verify_domain(database, args.domain, key)
            problems = list(verdict.problems)
            if anchor is not None:
                problems += await check_anchor(database, args.domain, *anchor)
            # The head the walk verified, not a newer one: events appended since are unchecked.
            return problems, verdict.head
        finally:
            await database.dispose()

    problems, (head_seq, head_digest) = asyncio.run(run())
    for problem in problems:
        print(problem)
    if problems:
        print(f"audit trail of {args.domain!r}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"audit trail of {args.domain!r}: intact, {head_seq} events")
    # Kept outside the database, this anchor later proves no newest events were cut off.
    print(f"head {head_seq}:{head_digest}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hub", description="Koppeltaal Hub, a FHIR R4 subscription hub"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the hub: the API, and delivery and housekeeping unless --role api"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--ssl-keyfile", help="TLS private key (PEM) to serve HTTPS")
    serve.add_argument("--ssl-certfile", help="TLS certificate chain (PEM)")
    serve.add_argument("--database-url", help="overrides HUB_DATABASE_URL")
    serve.add_argument("--apps", help="overrides HUB_APPS")
    serve.add_argument("--public-url", help="overrides HUB_PUBLIC_URL")
    serve.add_argument("--log-level", default="info")
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
    worker.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    worker.set_defaults(run=_worker)

    db = commands.add_parser("db", help="database maintenance").add_subparsers(
        dest="db", required=True
    )
    db.add_parser("upgrade", help="apply the schema migrations").set_defaults(run=_db_upgrade)

    keys = commands.add_parser("keys", help="key management").add_subparsers(
        dest="keys", required=True
    )
    new = keys.add_parser("new", help="make an application key pair (PEM + public JWKS)")
    new.add_argument("--client-id", required=True)
    new.add_argument("--kid", help="key id (default: <client-id>-1)")
    new.add_argument("--out", default=".", help="directory for the two files")
    new.set_defaults(run=_keys_new)
    keys.add_parser("rotate", help="rotate the hub's token-signing key").set_defaults(
        run=_keys_rotate
    )

    token = commands.add_parser("token", help="get an access token for a registered application")
    token.add_argument("--domain", required=True)
    token.add_argument("--client-id", required=True)
    token.add_argument("--key", required=True, help="the application's private key (PEM)")
    token.add_argument("--kid", help="key id in the app's JWKS (default: <client-id>-1)")
    token.add_argument("--alg", default="RS512")
    token.add_argument("--scope", help="ask for less than the role grants")
    token.add_argument("--token-url", help="default: HUB_PUBLIC_URL/<domain>/oauth2/token")
    token.add_argument("--json", action="store_true", help="print the whole token response")
    token.set_defaults(run=_token)

    audit = commands.add_parser("audit", help="audit trail").add_subparsers(
        dest="audit", required=True
    )
    verify = audit.add_parser("verify", help="check a domain's AuditEvent hash chain")
    verify.add_argument("--domain", required=True)
    verify.add_argument(
        "--expect-head",
        metavar="SEQ:DIGEST",
        help="a head printed by an earlier verify: fail if the chain no longer contains it",
    )
    verify.set_defaults(run=_audit_verify)
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
