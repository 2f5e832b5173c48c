"""Every failure becomes an OperationOutcome, never a stack trace.

`ErrorMiddleware` sits just inside the trace middleware, so even a crash gets
the trace headers and a FHIR body; the exception itself goes to the log with
the request id, where an operator can find it.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub import trace
from hub.api.refusals import audit_refusal
from hub.api.responses import error_response
from hub.fhir.outcome import FhirError, not_found

log = logging.getLogger("hub.api")

_STATUS_CODES = {405: "not-supported", 404: "not-found"}


async def fhir_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FhirError)
    return error_response(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    """Routing errors (unknown path 404, wrong method 405) as OperationOutcomes."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = not_found(f"No FHIR endpoint at {request.url.path}")
    else:
        error = FhirError.single(
            exc.status_code,
            _STATUS_CODES.get(exc.status_code, "processing"),
            f"{request.method} is not supported on {request.url.path}"
            if exc.status_code == 405
            else str(exc.detail),
        )
    error.headers.update(exc.headers or {})
    return error_response(await audit_refusal(request, error))


def internal_error() -> FhirError:
    """The 500 answer, and the `outcomeDesc` of its AuditEvent: the same words."""
    return FhirError.single(
        500,
        "exception",
        f"Internal server error; the operator can find it by request id {trace.get().request_id}",
    )


def timed_out(seconds: float, *, search: bool) -> FhirError:
    """The 503 answer to a statement PostgreSQL cancelled (`hub.store.db.Timeout`)."""
    if search:
        text = f"The search took longer than {seconds:g} s; narrow it"
    else:
        text = f"The request took longer than {seconds:g} s in the database; try again later"
    return FhirError.single(503, "timeout", text)


class ErrorMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error in request %s", trace.get().request_id)
            if started:
                raise
            response = error_response(internal_error())
            await response(scope, receive, send)
