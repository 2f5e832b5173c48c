"""The token request (SMART backend services): an interaction like any FHIR one.

Exchanges a client-credentials form with a signed assertion (RFC 7523) for an
access token, remembers the assertion's `jti` in the database so a replay is
refused by every process, and records a DICOM 110114 User Authentication
AuditEvent before the answer leaves, granted or refused. The API layer only
reads the form and turns the outcome into HTTP.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from hub import logs
from hub.access.assertion import OAuthError, claimed_client
from hub.access.tokens import exchange
from hub.audit.events import login_event
from hub.runtime import HUB_DEVICE, Runtime, utcnow
from hub.store.assertions import remember_jti
from hub.trace import TraceIds

log = logging.getLogger("hub.oauth")


async def request_token(
    runtime: Runtime,
    domain: str,
    fields: dict[str, str],
    *,
    client_address: str | None,
    trace: TraceIds,
) -> dict[str, Any]:
    """The RFC 6749 §5.1 response body; raises `OAuthError` (§5.2) once it is audited."""
    snapshot = runtime.access.snapshot

    async def remember(client_id: str, jti: str, expires_at: datetime) -> bool:
        return await runtime.database.write(remember_jti(domain, client_id, jti, expires_at))

    # Sign with the newest key, even if another process rotated it a moment ago.
    runtime.keys.refresh()
    try:
        body = await exchange(
            fields,
            domain=snapshot.registry.domains[domain],
            matrix=snapshot.matrix,
            token_url=runtime.settings.token_endpoint(domain),
            signing_key=runtime.keys.current_key(),
            issuer=runtime.issuer(domain),
            audience=runtime.fhir_base(domain),
            lifetime=runtime.settings.access_token_lifetime,
            keys_for=runtime.jwks.keys_for,
            remember_jti=remember,
            now=datetime.now(UTC),
        )
    except OAuthError as error:
        # The client hears the RFC 6749 code; the reason is for the operator only.
        log.warning("token request refused in %s: %s (%s)", domain, error.error, error.log_detail)
        await _audit_login(runtime, domain, fields, error, client_address, trace)
        raise
    await _audit_login(runtime, domain, fields, None, client_address, trace)
    # Verified now: the request's access line names the client it gave a token to.
    logs.note(client_id=claimed_client(fields.get("client_assertion")) or "")
    return body


async def _audit_login(
    runtime: Runtime,
    domain: str,
    fields: dict[str, str],
    error: OAuthError | None,
    client_address: str | None,
    trace: TraceIds,
) -> None:
    """Record the token request before answering it, granted or refused."""
    claimed = claimed_client(fields.get("client_assertion"))
    event = login_event(
        success=error is None,
        outcome_description=(
            None if error is None else refusal_description(error, claimed, client_address)
        ),
        client_device=claimed if error is None else None,
        hub_device=HUB_DEVICE,
        site=runtime.settings.site,
        trace=trace,
        recorded=utcnow(),
    )
    await runtime.audit.record(domain, event)


def refusal_description(error: OAuthError, claimed: str | None, client_address: str | None) -> str:
    """The `outcomeDesc` of a refused token request: the public error, then why and from where.

    The client hears only its single RFC 6749 error (`invalid_client` for every
    assertion problem); the trail keeps the reason the log has. It names the client
    the assertion claimed here, never as the agent: the claim is unproven. The agent
    carries no `network`, so the caller's address is named here too.
    """
    description = f"{error.error}: {error.public_description}"
    if error.log_detail and error.log_detail != error.public_description:
        description += f" ({error.log_detail})"
    known = [f"assertion claims client_id {claimed!r}"] if claimed is not None else []
    if client_address:
        known.append(f"from {client_address}")
    return f"{description} [{'; '.join(known)}]" if known else description
