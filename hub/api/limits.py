"""Rate limits at the HTTP edge: which request spends which budget, and the 429 answers.

The counting is `hub.access.ratelimit`'s (one `RateLimits` per process, made with the
app: `app.state.rate_limits`); here is what the API does with it (README "Rate limits"):

- a token request spends its address's budget before its body is read, then the budget
  of the client_id its assertion claims, before the assertion is verified;
- a create, update or delete spends the authenticated app's write budget before its
  body is read;
- a refusal (any 4xx) of a caller without a valid token counts against its address;
  once the address has used up its budget for the minute, its requests without a valid
  token are answered 429 at once, before any other work and without an AuditEvent each.

A 429 is audited once per limited client and window, not per request, or a flood of
them would fill the append-only trail the refused-request limit is there to protect:
the first 429 records an event saying who was limited, why, and until when.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from datetime import timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hub.access.assertion import OAuthError
from hub.access.ratelimit import REPORT_INTERVAL, Blocked, RateLimits, Verdict
from hub.audit.events import Entity, login_event
from hub.fhir.bundle import format_instant
from hub.fhir.outcome import FhirError
from hub.interactions.exchange import Exchange
from hub.runtime import HUB_DEVICE, Runtime, utcnow
from hub.trace import TraceIds

log = logging.getLogger("hub.api")

# The restful interactions that spend an app's write budget (README "Rate limits").
WRITES = frozenset({"create", "update", "delete"})


def rate_limits(request: Request) -> RateLimits | None:
    """This process's limits; None where the app was built without them."""
    limits: RateLimits | None = getattr(request.app.state, "rate_limits", None)
    return limits


def _retry_after(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


def throttled(retry_after: int, diagnostics: str) -> FhirError:
    """The FHIR 429: an OperationOutcome `throttled`, with `Retry-After`."""
    return FhirError.single(429, "throttled", diagnostics, headers=_retry_after(retry_after))


def _until(seconds: float) -> str:
    return format_instant(utcnow() + timedelta(seconds=seconds))


def _from(client_address: str | None) -> str:
    """The caller's address for an event's description: its agent carries no `network`."""
    return f" ({client_address})" if client_address else ""


async def _audit_once(exchange: Exchange, entities: Sequence[Entity], description: str) -> None:
    await exchange.runtime.audit.record(
        exchange.domain, exchange.audit_event(429, entities, description)
    )


# --- refused requests of callers without a valid token -----------------------------------


def _refusal_key(exchange: Exchange) -> Hashable:
    return (exchange.domain, exchange.client_address)


async def refused_gate(
    limits: RateLimits | None, exchange: Exchange, entities: Sequence[Entity] = ()
) -> FhirError | None:
    """The 429 for a caller without a valid token whose address used up its refusals.

    None lets the request go on. Callers with a valid token pass: they are named on the
    trail, their writes have a limit of their own, and one anonymous flood from a shared
    address (a proxy, a NAT) must not lock out the apps behind it.
    """
    if limits is None or exchange.access is not None:
        return None
    blocked = limits.refused.check(_refusal_key(exchange))
    if blocked is None:
        return None
    error = throttled(
        blocked.retry_after,
        "Too many refused requests from this address; "
        f"try again in {blocked.retry_after} s, with a valid access token",
    )
    if blocked.report:
        await _audit_once(exchange, entities, _refusals_described(exchange, blocked))
    return error


def _refusals_described(exchange: Exchange, blocked: Blocked) -> str:
    start = utcnow() - timedelta(seconds=blocked.elapsed)
    end = start + timedelta(seconds=blocked.length)
    return (
        f"Rate limited: {blocked.refused} refused requests without a valid access token from "
        f"{exchange.client_address or 'an unknown address'} in the window "
        f"{format_instant(start)} to {format_instant(end)} ({blocked.length:g} s); until it "
        "ends, its requests without a valid token are answered 429 without an AuditEvent each"
    )


def count_refusal(limits: RateLimits | None, exchange: Exchange, status: int) -> None:
    """Count a refused request (a 4xx) of a caller without a valid token."""
    if limits is not None and exchange.access is None and 400 <= status < 500 and status != 429:
        limits.refused.count(_refusal_key(exchange))


# --- writes per app ------------------------------------------------------------------------


async def write_gate(
    limits: RateLimits | None, exchange: Exchange, entities: Sequence[Entity] = ()
) -> FhirError | None:
    """The 429 for a create, update or delete beyond the app's writes per second."""
    caller = exchange.caller
    if limits is None or caller is None or exchange.interaction not in WRITES:
        return None
    app = exchange.runtime.access.registry.app(exchange.domain, caller.client_id)
    app_limits = app.rate_limit if app is not None else None
    verdict = limits.write(exchange.domain, caller.client_id, app_limits)
    if verdict.allowed:
        return None
    per_second = limits.writes_per_second(app_limits)
    error = throttled(
        verdict.retry_after,
        f"Too many writes: at most {per_second:g} per second for {caller.client_id}; "
        f"try again in {verdict.retry_after} s",
    )
    if verdict.report:
        await _audit_once(
            exchange,
            entities,
            f"Rate limited: writes of {caller.client_id} beyond {per_second:g} per second are "
            f"answered 429; further 429s of its writes until {_until(REPORT_INTERVAL)} are "
            "not audited each",
        )
    return error


# --- token requests ------------------------------------------------------------------------


def token_too_many(verdict: Verdict, what: str) -> OAuthError:
    """The token endpoint's 429, an RFC 6749 §5.2 error body with `Retry-After`."""
    return OAuthError(
        "temporarily_unavailable",
        429,
        f"rate limited: {what}",
        f"too many token requests {what}; try again in {verdict.retry_after} s",
        headers={
            "Cache-Control": "no-store",
            "Pragma": "no-cache",
            **_retry_after(verdict.retry_after),
        },
    )


async def token_limited(
    runtime: Runtime,
    domain: str,
    verdict: Verdict,
    what: str,
    *,
    client_address: str | None,
    trace: TraceIds,
) -> Response:
    """Answer a token request refused by a rate limit; audit the first of a window."""
    error = token_too_many(verdict, what)
    log.warning("token request rate limited in %s: %s", domain, what)
    if verdict.report:
        event = login_event(
            success=False,
            outcome_description=(
                f"{error.error}: rate limited, too many token requests {what}"
                f"{_from(client_address)}; further 429s until {_until(REPORT_INTERVAL)} are "
                "not audited each"
            ),
            client_device=None,
            hub_device=HUB_DEVICE,
            site=runtime.settings.site,
            trace=trace,
            recorded=utcnow(),
        )
        await runtime.audit.record(domain, event)
    return JSONResponse(error.to_json(), error.status, headers=error.headers)
