"""Bearer authentication of FHIR requests (SMART backend services access tokens)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from starlette.requests import Request

from hub import logs
from hub.access.policy import Access, Caller, role_scopes
from hub.access.tokens import (
    AccessToken,
    InvalidToken,
    UnknownKeyId,
    verify_access_token,
)
from hub.fhir.outcome import FhirError
from hub.runtime import Runtime

log = logging.getLogger("hub.auth")


# The refused token names a client that this domain no longer has (apps file reloaded).
NOT_REGISTERED = "The access token's client is not registered in this domain"


def unauthorized(description: str) -> FhirError:
    """401 `invalid_token` saying why (RFC 6750 §3): one of a few fixed texts, no detail.

    `description` goes in the challenge's `error_description` and the
    OperationOutcome (so in the AuditEvent's `outcomeDesc`); the detail stays in the log.
    """
    return FhirError.single(
        401,
        "login",
        f"Authentication required: a valid bearer access token of this domain. {description}",
        headers={
            "WWW-Authenticate": (
                f'Bearer realm="koppeltaal", error="invalid_token", '
                f'error_description="{description}"'
            )
        },
    )


def authenticate(runtime: Runtime, request: Request, domain: str) -> Access:
    """The caller's rights, or 401 for a missing, malformed, expired or foreign token."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise FhirError.single(
            401,
            "login",
            "Authentication required: send Authorization: Bearer <access token>",
            headers={"WWW-Authenticate": 'Bearer realm="koppeltaal"'},
        )
    try:
        try:
            verified = _verify(runtime, token.strip(), domain)
        except UnknownKeyId:
            # Signed with a key another process made after this one last read the keys.
            runtime.keys.refresh()
            verified = _verify(runtime, token.strip(), domain)
    except InvalidToken as exc:
        log.info("access token refused on %s: %s", domain, exc)
        raise unauthorized(exc.description) from exc
    # From here on, every log line of the request names its client.
    logs.note(client_id=verified.client_id)
    snapshot = runtime.access.snapshot
    app = snapshot.registry.app(domain, verified.client_id)
    granted = role_scopes(snapshot, domain, verified.client_id)
    if app is None or granted is None:
        log.info(
            "access token of %s refused: no longer registered in %s", verified.client_id, domain
        )
        raise unauthorized(NOT_REGISTERED)
    return Access(Caller(domain, verified.client_id, verified.scopes), granted, app.role)


def _verify(runtime: Runtime, token: str, domain: str) -> AccessToken:
    return verify_access_token(
        token,
        keys=runtime.keys.verification_keys(),
        algorithm=runtime.settings.token_algorithm,
        issuer=runtime.issuer(domain),
        audience=runtime.fhir_base(domain),
        now=datetime.now(UTC),
        cache=runtime.verified_tokens,
    )
