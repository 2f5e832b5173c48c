"""The FHIR operations: `Subscription/{id}/$status`, `$resend` and `AuditEvent/$chain-head`.

Thin handlers around `hub.interactions.subscription_state`, run by `perform` like
every interaction (token, permission, audit). Their routes come before the REST
routes of `hub.api.fhir` (`hub.app`), whose `{rtype}/{id}` would take them otherwise.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.api.fhir import Answer, perform, read_body, read_limited
from hub.api.responses import FhirResponse
from hub.fhir.outcome import FhirError
from hub.interactions import subscription_state
from hub.interactions.exchange import Exchange
from hub.interactions.subscription_state import Answered


def _answer(answered: Answered) -> Answer:
    return Answer(FhirResponse(answered.parameters, 200), answered.audit)


async def _optional_body(request: Request, limit: int) -> bytes:
    """The request body, if any: a body needs a FHIR JSON content type (415 otherwise)."""
    if "content-type" in request.headers:
        return await read_body(request, limit)
    body = await read_limited(request, limit)
    if body.strip():
        raise FhirError.single(
            415, "not-supported", "A Parameters body needs Content-Type application/fhir+json"
        )
    return body


async def subscription_status(request: Request) -> Response:
    id = request.path_params["id"]

    async def operation(exchange: Exchange) -> Answer:
        return _answer(await subscription_state.status(exchange, id))

    return await perform(request, "operation", operation, rtype="Subscription")


async def subscription_resend(request: Request) -> Response:
    id = request.path_params["id"]

    async def operation(exchange: Exchange) -> Answer:
        body = await _optional_body(request, exchange.runtime.settings.max_body_bytes)
        query = parse_qsl(request.url.query, keep_blank_values=True)
        return _answer(await subscription_state.resend(exchange, id, body, query))

    return await perform(request, "operation", operation, rtype="Subscription")


async def audit_chain_head(request: Request) -> Response:
    async def operation(exchange: Exchange) -> Answer:
        return _answer(await subscription_state.chain_head(exchange))

    return await perform(request, "operation", operation, rtype="AuditEvent")


routes = [
    Route("/{domain}/fhir/Subscription/{id}/$status", subscription_status, methods=["GET"]),
    Route("/{domain}/fhir/Subscription/{id}/$resend", subscription_resend, methods=["POST"]),
    Route("/{domain}/fhir/AuditEvent/$chain-head", audit_chain_head, methods=["GET"]),
]
