"""`GET /metrics`: the Prometheus scrape (`hub.metrics`), behind a bearer secret if one is set.

With `HUB_METRICS_TOKEN` the scrape needs `Authorization: Bearer <that secret>`,
compared in constant time; without it the figures are public (they name
domains and counts, never a resource). The database's gauges are read at each
scrape; should the database not answer, the counters are still served, with
`hub_database_up 0`. A `hub worker` serves the same scrape on a port of its own
(`worker_app`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from hub import metrics
from hub.metrics import DatabaseFigures
from hub.runtime import Runtime
from hub.store.gauges import figures

log = logging.getLogger("hub.metrics")


def _authorised(request: Request, secret: str) -> bool:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    given = credentials.strip().encode("utf-8", "surrogateescape")
    # compare_digest of bytes: its time does not depend on where they differ.
    return scheme.lower() == "bearer" and hmac.compare_digest(given, secret.encode("ascii"))


async def _figures(runtime: Runtime) -> DatabaseFigures | None:
    try:
        return await runtime.database.read(figures(sorted(runtime.access.registry.domains)))
    except Exception as exc:
        log.warning("metrics: the database figures could not be read: %s", exc)
        return None


def _refusal(request: Request, secret: str | None) -> Response | None:
    """The 401 for a scrape without the secret, if one is set."""
    if secret is None or _authorised(request, secret):
        return None
    return PlainTextResponse(
        "401 Unauthorized: GET /metrics needs Authorization: Bearer <HUB_METRICS_TOKEN>\n",
        401,
        headers={"WWW-Authenticate": 'Bearer realm="metrics"', "Cache-Control": "no-store"},
    )


def _scrape(runtime: Runtime, figures: DatabaseFigures | None) -> Response:
    body = metrics.exposition(figures, multiprocess_dir=runtime.settings.metrics_dir)
    return Response(body, headers={"Cache-Control": "no-store"}, media_type=metrics.CONTENT_TYPE)


async def scrape(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    refused = _refusal(request, runtime.settings.metrics_token)
    if refused is not None:
        return refused
    return _scrape(runtime, await _figures(runtime))


routes = [Route("/metrics", scrape, methods=["GET"])]


def worker_app(runtime: Runtime, loop: asyncio.AbstractEventLoop) -> Starlette:
    """`GET /metrics` of a `hub worker` (`--metrics-port`), which has no HTTP server of its own.

    It is served from a thread with its own event loop, so that it answers however busy
    the worker's loop is; the database figures are still read on the worker's loop,
    where its database connections live.
    """

    async def scrape_worker(request: Request) -> Response:
        refused = _refusal(request, runtime.settings.metrics_token)
        if refused is not None:
            return refused
        reading = asyncio.run_coroutine_threadsafe(_figures(runtime), loop)
        return _scrape(runtime, await asyncio.wrap_future(reading))

    return Starlette(routes=[Route("/metrics", scrape_worker, methods=["GET"])])
