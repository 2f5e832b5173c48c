"""One access line and the request metrics for every HTTP request: the outermost middleware.

It wraps everything, the trace middleware included, so a request refused for a
malformed trace header is counted and logged too; it takes the request's trace
ids from the response headers that middleware echoes. It opens the request's
log fields (`hub.logs`) with the domain, which the authentication adds the
client to, so every line of the request names both.

The access line (`hub.requests`, level info) has the method, the path with the
NAMES of the query parameters only (their values may identify a patient), the
status and the duration; never a header or a body. A pure ASGI middleware that
does little per request: the write path is measured (`python -m bench --only
writes`), and the line is not even built when info is not logged.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub import logs, metrics

log = logging.getLogger("hub.requests")

_TRACE_HEADERS = {
    b"x-request-id": "request_id",
    b"x-trace-id": "trace_id",
    b"x-correlation-id": "correlation_id",
}
_MAX_TARGET = 300


def known_domain(scope: Scope) -> str:
    """The request's domain if its first path segment is a domain of the apps file, else ''.

    Only known domains become a metric label or a log field: a request cannot make a
    series, or put text of its choosing in that field.
    """
    path: str = scope["path"]
    end = path.find("/", 1)
    segment = path[1:end] if end > 0 else path[1:]
    runtime = getattr(scope["app"].state, "runtime", None) if "app" in scope else None
    if runtime is not None and segment in runtime.access.registry.domains:
        return segment
    return ""


def target(scope: Scope) -> str:
    """The path, and the names of the query parameters without their values."""
    path: str = scope["path"]
    query: bytes = scope.get("query_string", b"")
    if query:
        names = (part.partition(b"=")[0] for part in query.split(b"&") if part)
        path += "?" + "&".join(name.decode("latin-1") for name in names)
    return path if len(path) <= _MAX_TARGET else path[: _MAX_TARGET - 1] + "…"


class TelemetryMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        domain = known_domain(scope)
        status = 500  # unless a response starts
        ids: dict[str, str] = {}

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    field = _TRACE_HEADERS.get(name.lower())
                    if field is not None:
                        ids[field] = value.decode("latin-1")
            await send(message)

        token = logs.open_request(domain)
        try:
            await self.app(scope, receive, observing_send)
        finally:
            seconds = time.perf_counter() - started
            request = logs.close_request(token)
            method: str = scope["method"]
            metrics.observe_request(domain, method, status, seconds)
            if log.isEnabledFor(logging.INFO):
                shown = target(scope)
                milliseconds = round(seconds * 1000, 1)
                log.info(
                    "%s %s %d %.1f ms",
                    method,
                    shown,
                    status,
                    milliseconds,
                    extra=logs.fields(
                        **ids,
                        **request,
                        method=method,
                        path=shown,
                        status=status,
                        duration_ms=milliseconds,
                    ),
                )
