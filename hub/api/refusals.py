"""Exchanges for requests that need no token, and auditing requests refused early.

The CapabilityStatement is public, a PUT or DELETE of an AuditEvent is refused
for everyone, and a malformed trace header, an unknown route or an unsupported
method under a domain's FHIR base never reaches a FHIR handler. All of them are
still audited like any other request: naming the caller when its token is
valid, recording the client address when not. A caller without a valid token
spends its address's refused-request budget with them, as with any refusal
(`hub.api.limits`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from starlette.requests import Request

from hub import trace
from hub.api.auth import authenticate
from hub.api.limits import count_refusal, rate_limits, refused_gate
from hub.audit.events import Entity
from hub.fhir.outcome import FhirError
from hub.interactions.exchange import Exchange
from hub.runtime import Runtime


def public_exchange(request: Request, runtime: Runtime, domain: str, interaction: str) -> Exchange:
    """An Exchange that names the caller if it sent a valid token, and nobody otherwise."""
    access = None
    if "authorization" in request.headers:
        with contextlib.suppress(FhirError):
            access = authenticate(runtime, request, domain)
    return Exchange(
        runtime,
        domain,
        interaction,
        trace.get(),
        request.client.host if request.client else None,
        access=access,
    )


def interaction_for(method: str, segments: list[str]) -> str:
    """The restful-interaction a request to `<base>/<segments>` was presumably meant as."""
    if segments == ["metadata"]:
        return "capabilities"
    if method in ("GET", "HEAD"):
        return {1: "search-type", 3: "history-instance", 4: "vread"}.get(len(segments), "read")
    if method == "POST":
        return "search-type" if segments[1:2] == ["_search"] else "create"
    return {"PUT": "update", "DELETE": "delete", "PATCH": "patch"}.get(method, "operation")


async def audit_refusal(
    request: Request, error: FhirError, *, entities: Sequence[Entity] = ()
) -> FhirError:
    """Record `error`, naming `entities`, for a request under `/{domain}/fhir/` of a known domain.

    Answers the error to send: `error`, or a 429 when the caller has no valid token and
    its address has used up its refused requests (then nothing is recorded, but the
    first such 429 of the window). A request anywhere else is not recorded: no domain,
    no trail to write it in.
    """
    segments = request.url.path.strip("/").split("/")
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or len(segments) < 2 or segments[1] != "fhir":
        return error
    domain = segments[0]
    if domain not in runtime.access.registry.domains:
        return error  # no domain, no trail to write it in; the log has it
    exchange = public_exchange(
        request, runtime, domain, interaction_for(request.method, segments[2:])
    )
    limits = rate_limits(request)
    limited = await refused_gate(limits, exchange, entities)
    if limited is not None:
        return limited
    count_refusal(limits, exchange, error.status)
    await exchange.fail(error, entities)
    return error
