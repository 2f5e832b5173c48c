"""Trace headers on every response (TOP-KT-011).

The outermost middleware: it reads X-Request-Id, X-Correlation-Id and
X-Trace-Id (or makes the request and trace ids), refuses malformed ones with
400, publishes them in `hub.trace.current` for every layer below, and echoes
them on every response, errors included.
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub import trace
from hub.api.errors import internal_error
from hub.api.refusals import audit_refusal
from hub.api.responses import error_response
from hub.fhir.outcome import bad_request

log = logging.getLogger("hub.api")


class TraceMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            ids = trace.from_headers(
                headers.get(trace.REQUEST_ID),
                headers.get(trace.CORRELATION_ID),
                headers.get(trace.TRACE_ID),
            )
        except trace.InvalidTraceHeader as exc:
            ids = trace.TraceIds.new()
            token = trace.current.set(ids)
            try:
                error = bad_request(str(exc), exc.header)
                try:
                    error = await audit_refusal(Request(scope), error)
                except Exception:
                    log.exception("auditing a refused request failed")
                    error = internal_error()  # no unaudited access, refused ones included
                await error_response(error)(scope, receive, _echoing(send, ids))
            finally:
                trace.current.reset(token)
            return
        token = trace.current.set(ids)
        try:
            await self.app(scope, receive, _echoing(send, ids))
        finally:
            trace.current.reset(token)


def _echoing(send: Send, ids: trace.TraceIds) -> Send:
    async def send_with_trace_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            headers[trace.REQUEST_ID] = ids.request_id
            headers[trace.TRACE_ID] = ids.trace_id
            if ids.correlation_id is not None:
                headers[trace.CORRELATION_ID] = ids.correlation_id
        await send(message)

    return send_with_trace_headers
