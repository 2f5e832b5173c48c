"""Client authentication with a signed JWT (RFC 7523 `private_key_jwt`, SMART backend services).

`verify_client_assertion` checks, in this order, and refuses at the first failure:

1. the header's `alg` is one of RS256/384/512, ES256/384/512: `none`, HS*, PS* and
   anything else are refused before a key is even looked up (no algorithm confusion);
2. `iss` == `sub` == the client_id of an app of THIS domain;
3. the header's `kid` names one of that app's keys (for a `jwks_uri` app an unknown
   kid makes `keys_for` refetch, rate-limited), and the key fits the `alg`;
4. the signature;
5. `aud` is the token endpoint URL (or a list holding it); `exp` is present, not past
   and at most 5 minutes ahead; `iat` and `nbf`, when present, not in the future;
6. `jti` was never used before by this client (checked last, so a refused assertion
   does not use up its jti).

Time checks allow `CLOCK_SKEW` (30 s) either way, because client and hub clocks
differ a little in practice; the jti is remembered until `exp + CLOCK_SKEW`, the
last moment the same assertion could still pass, so a replay is caught throughout.

Every failure is `invalid_client` with one public message that tells an attacker
nothing; the specific reason goes in `log_detail` for the log.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from joserfc import jws
from joserfc import jwt as jose_jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import ECKey, Key, KeySet, RSAKey
from joserfc.jws import JWSRegistry

from hub.access.apps import App, Domain
from hub.access.keys import new_signing_key

ASSERTION_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLOCK_SKEW = timedelta(seconds=30)
MAX_ASSERTION_LIFETIME = timedelta(minutes=5)
MAX_JTI_LENGTH = 256  # the used_assertions.jti column
MAX_ASSERTION_LENGTH = 16_384

KeysFor = Callable[[App, str | None], Awaitable[KeySet]]
RememberJti = Callable[[str, str, datetime], Awaitable[bool]]

_PUBLIC_MESSAGES = {
    "invalid_client": "client authentication failed",
    "invalid_request": "the token request is malformed",
    "invalid_scope": "the requested scope is not available to this client",
    "unsupported_grant_type": "only grant_type=client_credentials is supported",
}


@dataclass
class OAuthError(Exception):
    """An RFC 6749 §5.2 error: `error` and `description` are public, `log_detail` is not."""

    error: str
    status: int = 400
    log_detail: str = ""
    description: str | None = None
    headers: dict[str, str] = field(
        default_factory=lambda: {"Cache-Control": "no-store", "Pragma": "no-cache"}
    )

    def __post_init__(self) -> None:
        super().__init__(f"{self.error}: {self.log_detail or self.public_description}")

    @property
    def public_description(self) -> str:
        return self.description or _PUBLIC_MESSAGES.get(self.error, "the request was refused")

    def to_json(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.public_description}


def claimed_client(assertion: str | None) -> str | None:
    """The client_id an assertion claims (`iss`), UNVERIFIED: for the audit trail only."""
    if not assertion or len(assertion) > MAX_ASSERTION_LENGTH:
        return None
    try:
        claims = json.loads(jws.extract_compact(assertion.encode("ascii")).payload)
    except (JoseError, ValueError, UnicodeError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer[:64] if isinstance(issuer, str) else None


def _refuse(detail: str) -> OAuthError:
    return OAuthError("invalid_client", 401, detail)


def _registry(alg: str | None = None) -> JWSRegistry:
    # Not strict on header names: clients may add their own (e.g. x5t); `crit` is still enforced.
    registry = JWSRegistry(algorithms=[alg] if alg else None, strict_check_header=False)
    registry.max_header_length = 4096  # room for an x5c certificate chain
    return registry


def _utc(now: datetime) -> datetime:
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _refuse(f"{name} is not a NumericDate: {value!r}")
    return float(value)


async def verify_client_assertion(
    assertion: str,
    *,
    domain: Domain,
    token_url: str,
    keys_for: KeysFor,
    remember_jti: RememberJti,
    now: datetime,
) -> App:
    """The app that signed `assertion`; raises `OAuthError` (invalid_client) otherwise."""
    if not assertion or len(assertion) > MAX_ASSERTION_LENGTH:
        raise _refuse("assertion empty or too long")
    try:
        unverified = jws.extract_compact(assertion.encode("ascii"), registry=_registry())
        header = unverified.headers()
        claims = json.loads(unverified.payload)
    except (JoseError, ValueError, UnicodeError) as exc:
        raise _refuse(f"assertion is not a compact JWS: {exc}") from exc
    alg = header.get("alg")
    if alg not in ASSERTION_ALGORITHMS:
        raise _refuse(f"alg {alg!r} is not accepted")
    if not isinstance(claims, dict):
        raise _refuse("assertion payload is not a JSON object")

    issuer, subject = claims.get("iss"), claims.get("sub")
    if not isinstance(issuer, str) or issuer != subject:
        raise _refuse(f"iss {issuer!r} and sub {subject!r} must be the same client_id")
    app = domain.apps.get(issuer)
    if app is None:
        raise _refuse(f"no client {issuer!r} in domain {domain.name!r}")

    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _refuse(f"{issuer}: assertion header has no kid")
    try:
        key_set = await keys_for(app, kid)
    except ValueError as exc:  # JwksError: the app's jwks_uri gave nothing usable
        raise _refuse(f"{issuer}: keys unavailable: {exc}") from exc
    key = next((k for k in key_set if k.kid == kid), None)
    if key is None:
        raise _refuse(f"{issuer}: unknown kid {kid!r}")
    if key.get("alg") not in (None, alg):
        raise _refuse(f"{issuer}: key {kid!r} is for {key.get('alg')}, assertion uses {alg}")

    try:
        jws.deserialize_compact(assertion, key, algorithms=[alg], registry=_registry(alg))
    except BadSignatureError as exc:
        raise _refuse(f"{issuer}: bad signature (kid {kid!r})") from exc
    except (JoseError, ValueError) as exc:  # e.g. an RSA key for an ES alg
        raise _refuse(f"{issuer}: signature not verifiable with key {kid!r}: {exc}") from exc

    expires_at = _check_claims(claims, issuer=issuer, token_url=token_url, now=_utc(now))
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise _refuse(f"{issuer}: jti missing or longer than {MAX_JTI_LENGTH}")
    if not await remember_jti(app.client_id, jti, expires_at):
        raise _refuse(f"{issuer}: jti {jti!r} was used before (replay)")
    return app


def _check_claims(
    claims: dict[str, Any], *, issuer: str, token_url: str, now: datetime
) -> datetime:
    """Check aud and the times; returns until when the jti must be remembered."""
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if token_url not in audiences:
        raise _refuse(f"{issuer}: aud {audience!r} is not the token endpoint {token_url}")
    current, skew = now.timestamp(), CLOCK_SKEW.total_seconds()
    expires = _number(claims, "exp")
    if expires is None:
        raise _refuse(f"{issuer}: exp missing")
    if expires + skew <= current:
        raise _refuse(f"{issuer}: assertion expired at {expires:.0f} (now {current:.0f})")
    if expires > current + MAX_ASSERTION_LIFETIME.total_seconds() + skew:
        raise _refuse(f"{issuer}: exp {expires:.0f} is more than 5 minutes ahead")
    for name in ("iat", "nbf"):
        value = _number(claims, name)
        if value is not None and value > current + skew:
            raise _refuse(f"{issuer}: {name} {value:.0f} is in the future (now {current:.0f})")
    return datetime.fromtimestamp(expires + skew, UTC)


# --- making assertions (for `hub token`, `hub keys new` and tests) --------------------------


def make_client_assertion(
    private_key: Key | bytes | str,
    *,
    client_id: str,
    token_url: str,
    kid: str,
    alg: str = "RS512",
    lifetime: int = 60,
    now: datetime | None = None,
    jti: str | None = None,
) -> str:
    """A signed client assertion for the token endpoint of `token_url`."""
    if isinstance(private_key, bytes | str):
        key: Key = (RSAKey if alg.startswith("RS") else ECKey).import_key(private_key)
    else:
        key = private_key
    issued = int(_utc(now or datetime.now(UTC)).timestamp())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": issued,
        "exp": issued + lifetime,
        "jti": jti or str(uuid.uuid4()),
    }
    return jose_jwt.encode({"alg": alg, "kid": kid}, claims, key, algorithms=[alg])


def generate_app_keypair(
    kid: str, *, alg: str = "RS512", rsa_bits: int = 3072
) -> tuple[bytes, dict[str, Any]]:
    """A new key pair for an application: (private key PEM, public JWKS with that `kid`)."""
    key = new_signing_key(alg, rsa_bits=rsa_bits)
    public = dict(key.as_dict(private=False, kid=kid, alg=alg, use="sig"))
    return key.as_pem(private=True), {"keys": [public]}
