"""`create_app()`: the Starlette application and its lifespan.

`running(settings)` builds the services of one process's role
(docs/architecture.md §6): the `Runtime` (database, access configuration, keys,
audit writer, subscription index), migrations, every application's Device,
then, for the delivery role, the dispatcher and what wakes it from other
processes, and the housekeeping jobs of the role; it stops them in reverse
order. The lifespan runs it for `hub serve` (roles `all` and `api`),
`run_worker` for `hub worker` (delivery without an HTTP server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

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
from hub.access.ratelimit import RateLimits
from hub.api import console, fhir, metrics, oauth, operations
from hub.api.connections import STATE_KEY, ConnectionGuard, ConnectionLimits
from hub.api.errors import ErrorMiddleware, fhir_error, http_error
from hub.api.telemetry import TelemetryMiddleware
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
from hub.store.wake import Wake

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


def make_dispatcher(runtime: Runtime, outbound: OutboundClient) -> Dispatcher:
    """This process's delivery worker: the one place it is built."""
    # Unique per process even where host names and pids repeat (containers: every hub
    # is pid 1); readable in the outbox for an operator. At most 64 characters.
    owner = f"{socket.gethostname()[:34]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    return Dispatcher(runtime.database, runtime.settings, Deliverer(runtime, outbound, owner=owner))


async def _open(
    settings: Settings, stack: contextlib.AsyncExitStack
) -> tuple[Runtime, OutboundClient]:
    """What every role needs: configuration, database (migrated), keys, the `Runtime`."""
    try:
        access = AccessConfig(settings.apps_file, settings.authz_matrix)
    except ConfigError as exc:
        raise SystemExit(f"hub: cannot start: {exc}") from exc
    try:
        outbound = OutboundClient(settings)
    except SettingsError as exc:
        raise SystemExit(f"hub: cannot start: {exc}") from exc
    stack.push_async_callback(outbound.aclose)
    database = Database(
        settings.database_url,
        pool_size=settings.database_pool_size,
        statement_timeout=settings.database_statement_timeout,
    )
    stack.push_async_callback(database.dispose)
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
    stack.push_async_callback(runtime.audit.close)
    await ensure_devices(database, access.registry)
    return runtime, outbound


def _start_delivery(
    runtime: Runtime,
    outbound: OutboundClient,
    wake: Wake | None,
    stack: contextlib.AsyncExitStack,
) -> Dispatcher:
    """The delivery role: the dispatcher, and what wakes it when another process commits."""
    database = runtime.database
    dispatcher = make_dispatcher(runtime, outbound)
    if wake is not None:  # SQLite: a datagram from the process that committed
        try:
            wake.listen(dispatcher.wake)
        except OSError as exc:
            log.warning("no cross-process wake-up (%s): queued deliveries wait for the poll", exc)
    dispatcher.start()  # its first claim takes what was queued before it listened
    stack.push_async_callback(dispatcher.stop)
    if database.is_postgres:  # PostgreSQL: NOTIFY at the commit of the queuing unit
        listener = OutboxListener(database, dispatcher.wake)
        listener.start()
        stack.push_async_callback(listener.stop)
    return dispatcher


def _wake_every_dispatcher(dispatcher: Dispatcher | None, wake: Wake | None) -> Callable[[], None]:
    """`Runtime.wake_dispatcher`: this process's dispatcher at once, the others' by signal.

    On PostgreSQL the others hear the unit's NOTIFY, so only the local one is woken here.
    """
    wakers: list[Callable[[], None]] = []
    if dispatcher is not None:
        wakers.append(dispatcher.wake)
    if wake is not None:
        wakers.append(wake.signal)

    def wake_all() -> None:
        for waker in wakers:
            waker()

    return wakers[0] if len(wakers) == 1 else wake_all


def _handle_sighup(runtime: Runtime, stack: contextlib.AsyncExitStack) -> None:
    """SIGHUP: re-read the apps file and the matrix now, without a restart (every role)."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(
            signal.SIGHUP, lambda: loop.create_task(reload_access(runtime, force=True))
        )
        stack.callback(_remove_signal_handler, loop, signal.SIGHUP)


def _remove_signal_handler(loop: asyncio.AbstractEventLoop, signum: int) -> None:
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.remove_signal_handler(signum)


def _in_memory(database: Database) -> bool:
    return database.dialect == "sqlite" and database.sqlite_path in ("", ":memory:")


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Runtime]:
    """The services of this process's role (`settings.role`), started; stopped on exit.

    Every role: the `Runtime`, migrations, the apps' Devices, the access configuration
    with its reload (on change and on SIGHUP: a process that only delivers re-checks
    rights too), and the wake-up a commit that queued deliveries sends to the other
    processes (on SQLite; PostgreSQL's NOTIFY needs no help). The delivery role adds
    the dispatcher, what wakes it (PostgreSQL LISTEN, or the SQLite signal) and the
    database chores; the API role the key refresh. They stop in reverse order: the
    jobs, the listeners, the dispatcher (its deliveries in flight finish), the audit
    writer, the outbound client, the database.
    """
    async with contextlib.AsyncExitStack() as stack:
        runtime, outbound = await _open(settings, stack)
        wake = Wake.for_database(runtime.database)
        if wake is not None:
            stack.callback(wake.close)
        dispatcher = None
        if settings.delivers:
            dispatcher = _start_delivery(runtime, outbound, wake, stack)
        elif _in_memory(runtime.database):
            log.warning("role api on an in-memory database, which no worker can open: no delivery")
        runtime.wake_dispatcher = _wake_every_dispatcher(dispatcher, wake)
        _handle_sighup(runtime, stack)
        jobs = scheduler(runtime)
        jobs.start()
        stack.push_async_callback(jobs.stop)
        yield runtime


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    """Run the hub while the server serves; its state carries the connection guard."""
    settings: Settings = app.state.settings
    if not settings.serves_api:
        raise SystemExit("hub: the worker role serves no HTTP; run `hub worker`")
    async with running(settings) as runtime:
        app.state.runtime = runtime
        log.info(
            "Koppeltaal Hub %s ready (role %s): %s on %s",
            runtime.version,
            settings.role,
            settings.public_url,
            runtime.database.dialect,
        )
        yield {STATE_KEY: ConnectionGuard(ConnectionLimits.from_settings(settings))}


@asynccontextmanager
async def _worker_metrics(runtime: Runtime, address: tuple[str, int]) -> AsyncIterator[None]:
    """`GET /metrics` of a worker on `address`: uvicorn in a thread with a loop of its own.

    In a thread, uvicorn leaves the process's signals to the worker.
    """
    import uvicorn

    config = uvicorn.Config(
        metrics.worker_app(runtime, asyncio.get_running_loop()),
        host=address[0],
        port=address[1],
        lifespan="off",
        log_config=None,  # the worker's logging stays as it is
        access_log=False,
        server_header=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="hub-worker-metrics", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(
                f"the worker's metrics could not listen on {address[0]}:{address[1]}"
            )
        await asyncio.sleep(0.02)
    log.info("worker metrics on http://%s:%d/metrics", *address)
    try:
        yield
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 5)


async def run_worker(settings: Settings, *, metrics_address: tuple[str, int] | None = None) -> None:
    """`hub worker`: delivery and housekeeping, no HTTP server, until SIGTERM or SIGINT.

    On the signal it stops claiming and lets the deliveries in flight finish
    (`Dispatcher.stop`); their rows are leased anyway, should it be killed meanwhile.
    With `metrics_address`, it serves `GET /metrics` there (its counters, and the
    database's figures).
    """
    if settings.serves_api:
        raise ValueError(f"run_worker needs the worker role, not {settings.role!r}")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        async with contextlib.AsyncExitStack() as stack:
            runtime = await stack.enter_async_context(running(settings))
            if metrics_address is not None:
                await stack.enter_async_context(_worker_metrics(runtime, metrics_address))
            log.info(
                "Koppeltaal Hub %s worker ready: delivering from %s (pid %d)",
                runtime.version,
                runtime.database.dialect,
                os.getpid(),
            )
            await stop.wait()
            log.info("stopping: the deliveries in flight finish first")
    finally:
        for signum in signals:
            _remove_signal_handler(loop, signum)
    log.info("worker stopped")


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI application; settings from `HUB_*` variables unless given."""
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *metrics.routes,
            *oauth.routes,
            # Before the REST routes, whose `{rtype}/{id}` would take `AuditEvent/$chain-head`.
            *operations.routes,
            *fhir.routes,
            *console.routes,
        ],
        # Outermost, the access line and request metrics: it sees every answer, the trace
        # middleware's own 400 included.
        middleware=[
            Middleware(TelemetryMiddleware),
            Middleware(TraceMiddleware),
            Middleware(ErrorMiddleware),
        ],
        exception_handlers={FhirError: fhir_error, HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.settings = settings or settings_module.from_env()
    # In memory, per process (README "Rate limits"): each uvicorn worker counts its own.
    app.state.rate_limits = RateLimits(app.state.settings)
    return app
