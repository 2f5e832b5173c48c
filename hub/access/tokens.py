"""Access tokens: the token endpoint's exchange, and issuing and verifying the JWTs.

An access token is a JWT signed with the hub's current key (`kid` in the header),
claims `iss` (the hub), `aud` (the FHIR base of ONE domain), `azp` (the client_id),
`scope` (SMART v2 system scopes), `iat`, `exp`, `jti`, and no `sub` (client
credentials act for no user). Verification pins `alg` to the hub's own, `iss` to
the hub and `aud` to the domain being called: a token of domain A is refused on B.

`exchange` turns a token request form (RFC 6749 §4.4 with an RFC 7523 assertion)
into the §5.1 response, or raises `OAuthError` for the §5.2 error response.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from joserfc import jws
from joserfc import jwt as jose_jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import KeySet

from hub.access.apps import Domain
from hub.access.assertion import (
    CLIENT_ASSERTION_TYPE,
    KeysFor,
    OAuthError,
    RememberJti,
    verify_client_assertion,
)
from hub.access.keys import SigningKey
from hub.access.matrix import Matrix, ScopeError, Scopes, parse_scopes

__all__ = [
    "AccessToken",
    "InvalidToken",
    "OAuthError",
    "exchange",
    "issue_access_token",
    "token_response",
    "verify_access_token",
]


class InvalidToken(Exception):
    """A bearer token the hub does not accept; `reason` is for the log, never the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownKeyId(InvalidToken):
    """The token names a `kid` the hub does not (yet) know: perhaps a newer key."""


@dataclass(frozen=True)
class AccessToken:
    """A verified access token. It holds no domain: it was verified for the one called."""

    client_id: str
    scopes: Scopes
    exp: datetime
    jti: str


def _utc(now: datetime) -> datetime:
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def issue_access_token(
    *,
    key: SigningKey,
    issuer: str,
    audience: str,
    client_id: str,
    scopes: Scopes | str,
    lifetime: int,
    now: datetime,
) -> tuple[str, int]:
    """A signed access token and its `expires_in` (seconds)."""
    issued = int(_utc(now).timestamp())
    claims = {
        "iss": issuer,
        "aud": audience,
        "azp": client_id,
        "scope": str(scopes),
        "iat": issued,
        "exp": issued + lifetime,
        "jti": str(uuid.uuid4()),
    }
    header = {"alg": key.alg, "kid": key.kid}
    return jose_jwt.encode(header, claims, key.key, algorithms=[key.alg]), lifetime


def verify_access_token(
    token: str,
    *,
    keys: KeySet,
    algorithm: str,
    issuer: str,
    audience: str,
    now: datetime,
) -> AccessToken:
    """The verified token; `InvalidToken` for anything the hub did not issue for `audience`."""
    try:
        unverified = jws.extract_compact(token.encode("ascii"))
        header = unverified.headers()
    except (JoseError, ValueError, UnicodeError) as exc:
        raise InvalidToken(f"malformed token: {exc}") from exc
    if header.get("alg") != algorithm:
        raise InvalidToken(f"alg {header.get('alg')!r} is not the hub's {algorithm}")
    kid = header.get("kid")
    key = next((k for k in keys if k.kid == kid), None) if isinstance(kid, str) else None
    if key is None:
        raise UnknownKeyId(f"unknown kid {kid!r}")
    try:
        verified = jws.deserialize_compact(token, key, algorithms=[algorithm])
        claims = json.loads(verified.payload)
    except BadSignatureError as exc:
        raise InvalidToken("bad signature") from exc
    except (JoseError, ValueError) as exc:
        raise InvalidToken(f"not verifiable: {exc}") from exc
    if not isinstance(claims, dict):
        raise InvalidToken("payload is not a JSON object")
    return _check_claims(claims, issuer=issuer, audience=audience, now=_utc(now))


def _check_claims(
    claims: dict[str, Any], *, issuer: str, audience: str, now: datetime
) -> AccessToken:
    if claims.get("iss") != issuer:
        raise InvalidToken(f"iss {claims.get('iss')!r} is not this hub")
    aud = claims.get("aud")
    if audience not in (aud if isinstance(aud, list) else [aud]):
        raise InvalidToken(f"aud {aud!r} is not {audience} (a token of another domain?)")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        raise InvalidToken(f"exp missing or not a NumericDate: {exp!r}")
    if exp <= now.timestamp():
        raise InvalidToken(f"expired at {exp}")
    client_id, scope, jti = claims.get("azp"), claims.get("scope"), claims.get("jti")
    if not isinstance(client_id, str) or not isinstance(scope, str) or not isinstance(jti, str):
        raise InvalidToken("azp, scope or jti missing")
    try:
        scopes = parse_scopes(scope)
    except ScopeError as exc:
        raise InvalidToken(f"unreadable scope: {exc}") from exc
    return AccessToken(client_id, scopes, datetime.fromtimestamp(exp, UTC), jti)


# --- the token endpoint --------------------------------------------------------------------


def token_response(access_token: str, expires_in: int, scope: Scopes | str) -> dict[str, Any]:
    """The RFC 6749 §5.1 success body (send with `Cache-Control: no-store`)."""
    return {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": str(scope),
    }


def _invalid_request(description: str) -> OAuthError:
    return OAuthError("invalid_request", 400, description, description)


async def exchange(
    form: Mapping[str, str],
    *,
    domain: Domain,
    matrix: Matrix,
    token_url: str,
    signing_key: SigningKey,
    issuer: str,
    audience: str,
    lifetime: int,
    keys_for: KeysFor,
    remember_jti: RememberJti,
    now: datetime,
) -> dict[str, Any]:
    """Handle a token request form; returns the §5.1 body or raises `OAuthError` (§5.2).

    `scope` absent or empty: everything the app's role grants. Otherwise the
    token gets the intersection of the request and the role's scopes, and a
    requested scope that the role does not grant at all is `invalid_scope`.
    Form fields the hub does not know are ignored (clients do send others).
    """
    grant_type = form.get("grant_type")
    if not grant_type:
        raise _invalid_request("grant_type is required")
    if grant_type != "client_credentials":
        raise OAuthError("unsupported_grant_type", 400, f"grant_type {grant_type!r}")
    if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
        raise _invalid_request(f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}")
    assertion = form.get("client_assertion")
    if not assertion:
        raise _invalid_request("client_assertion is required")

    app = await verify_client_assertion(
        assertion,
        domain=domain,
        token_url=token_url,
        keys_for=keys_for,
        remember_jti=remember_jti,
        now=now,
    )
    # RFC 7523 §3: a client_id parameter, when sent, must name the authenticated client.
    if form.get("client_id") not in (None, "", app.client_id):
        raise OAuthError(
            "invalid_client", 401, f"client_id {form.get('client_id')!r} != {app.client_id}"
        )

    granted = matrix.scopes(app.role, app.client_id, app.grants)
    requested = (form.get("scope") or "").strip()
    if requested:
        try:
            granted = granted.narrow(parse_scopes(requested))
        except ScopeError as exc:
            raise OAuthError("invalid_scope", 400, f"{app.client_id}: {exc}", str(exc)) from exc

    token, expires_in = issue_access_token(
        key=signing_key,
        issuer=issuer,
        audience=audience,
        client_id=app.client_id,
        scopes=granted,
        lifetime=lifetime,
        now=now,
    )
    return token_response(token, expires_in, granted)
