"""`create_app()`: the Starlette application and its lifespan.

The lifespan builds the `Runtime` (database, access configuration, keys,
audit writer, subscription index), applies migrations, makes sure every
application's Device exists, and starts the dispatcher, the PostgreSQL
listener and the housekeeping jobs; it stops them in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub import settings as settings_module
from hub.access import ConfigError
from hub.access.apps import AccessConfig
from hub.access.jwks_cache import JwksCache
from hub.access.keys import SigningKeys
from hub.api import fhir, oauth
from hub.api.errors import ErrorMiddleware, fhir_error, http_error
from hub.api.trace import TraceMiddleware
from hub.audit.chain import load_or_create_key
from hub.audit.writer import AuditWriter
from hub.fhir.outcome import FhirError
from hub.housekeeping import reload_access, scheduler
from hub.interactions.delivery import Deliverer
from hub.interactions.devices import ensure_devices
from hub.net import OutboundClient
from hub.notify.dispatcher import Dispatcher
from hub.notify.registry import SubscriptionIndex
from hub.runtime import Runtime
from hub.settings import Settings, SettingsError
from hub.store.db import Database
from hub.store.listen import OutboxListener
from hub.store.migrate import current_revision, head_revision, upgrade

log = logging.getLogger("hub")


def _version() -> str:
    try:
        return version("koppeltaal-hub")
    except PackageNotFoundError:
        return "0.0.0"


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    try:
        revision = await current_revision(runtime.database)
    except Exception as exc:
        log.warning("readiness check: database unreachable: %s", exc)
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, 503)
    if revision != head_revision():
        return JSONResponse({"status": "unavailable", "migrations": revision}, 503)
    return JSONResponse(
        {"status": "ready", "database": runtime.database.dialect, "revision": revision}
    )


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    try:
        access = AccessConfig(settings.apps_file, settings.authz_matrix)
    except ConfigError as exc:
        raise SystemExit(f"hub: cannot start: {exc}") from exc
    try:
        outbound = OutboundClient(settings)
    except SettingsError as exc:
        raise SystemExit(f"hub: cannot start: {exc}") from exc
    database = Database(
        settings.database_url,
        pool_size=settings.database_pool_size,
        statement_timeout=settings.database_statement_timeout,
    )
    await upgrade(database)
    chain_key = load_or_create_key(settings.keys_dir)
    runtime = Runtime(
        settings=settings,
        database=database,
        access=access,
        keys=SigningKeys.load_or_create(settings),
        jwks=JwksCache(outbound.fetch_json),
        audit=AuditWriter(database, chain_key),
        chain_key=chain_key,
        subscriptions=SubscriptionIndex(),
        version=_version(),
    )
    await ensure_devices(database, access.registry)
    # Unique per process even where host names and pids repeat (containers: every hub
    # is pid 1); readable in the outbox for an operator. At most 64 characters.
    owner = f"{socket.gethostname()[:34]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    dispatcher = Dispatcher(database, settings, Deliverer(runtime, outbound, owner=owner))
    runtime.wake_dispatcher = dispatcher.wake
    listener = OutboxListener(database, dispatcher.wake) if database.is_postgres else None
    jobs = scheduler(runtime)
    app.state.runtime = runtime

    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        # SIGHUP: re-read the apps file and the matrix now, without a restart.
        loop.add_signal_handler(
            signal.SIGHUP, lambda: loop.create_task(reload_access(runtime, force=True))
        )
    dispatcher.start()
    if listener is not None:
        listener.start()
    jobs.start()
    log.info(
        "Koppeltaal Hub %s ready: %s on %s", runtime.version, settings.public_url, database.dialect
    )
    try:
        yield
    finally:
        jobs.shutdown(wait=False)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGHUP)
        if listener is not None:
            await listener.stop()
        await dispatcher.stop()
        await runtime.audit.close()
        await outbound.aclose()
        await database.dispose()


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI application; settings from `HUB_*` variables unless given."""
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *oauth.routes,
            *fhir.routes,
        ],
        middleware=[Middleware(TraceMiddleware), Middleware(ErrorMiddleware)],
        exception_handlers={FhirError: fhir_error, HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.settings = settings or settings_module.from_env()
    return app
