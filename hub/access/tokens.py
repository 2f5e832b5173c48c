"""Access tokens: the token endpoint's exchange, and issuing and verifying the JWTs.

An access token is a JWT signed with the hub's current key (`kid` in the header),
claims `iss` (the hub), `aud` (the FHIR base of ONE domain), `azp` (the client_id),
`scope` (SMART v2 system scopes), `iat`, `exp`, `jti`, and no `sub` (client
credentials act for no user). Verification pins `alg` to the hub's own, `iss` to
the hub and `aud` to the domain being called: a token of domain A is refused on B.

Verifying an RS512 signature costs far more than the rest of a request's
authentication, and a client sends the same token with every request for its
lifetime. `VerifiedTokens` remembers the verified claims of recent tokens so a
known token skips the signature check; what a token may do is still decided per
request from the current matrix and apps (see `hub.access.policy`), never cached.

`exchange` turns a token request form (RFC 6749 §4.4 with an RFC 7523 assertion)
into the §5.1 response, or raises `OAuthError` for the §5.2 error response.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from joserfc import jws
from joserfc import jwt as jose_jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import Key, KeySet

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
    "VerifiedTokens",
    "exchange",
    "issue_access_token",
    "token_response",
    "verify_access_token",
]


# Why a bearer token is refused, as the 401's `error_description` tells the client
# (RFC 6750 §3): one of these few, never the detail (`InvalidToken.reason`, for the log).
MALFORMED = "The access token is malformed"
EXPIRED = "The access token has expired"
NOT_FOR_THIS_DOMAIN = "The access token is not for this domain"
BAD_SIGNATURE = "The access token's signature does not verify"


class InvalidToken(Exception):
    """A bearer token the hub does not accept.

    `reason` is the detail, for the log only; `description` is one of the fixed texts
    above, which the client may hear (what to fix without telling how the hub checks).
    """

    def __init__(self, reason: str, description: str = MALFORMED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.description = description


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
    cache: VerifiedTokens | None = None,
) -> AccessToken:
    """The verified token; `InvalidToken` for anything the hub did not issue for `audience`.

    With a `cache`, a token verified before with the same key, algorithm, issuer
    and audience is taken from it while unexpired, without checking its
    signature again; any other outcome is the same as without one.
    """
    now = _utc(now)
    slot = None if cache is None else cache.slot(token, algorithm, issuer, audience)
    if cache is not None and slot is not None:
        known = cache.get(slot, keys=keys, now=now)
        if known is not None:
            return known
    claims, key = _verified_claims(token, keys=keys, algorithm=algorithm)
    access = _check_claims(claims, issuer=issuer, audience=audience, now=now)
    if cache is not None and slot is not None:
        cache.put(slot, access, exp=float(claims["exp"]), key=key)
    return access


def _key_for(keys: KeySet, kid: object) -> Key | None:
    return next((k for k in keys if k.kid == kid), None) if isinstance(kid, str) else None


def _verified_claims(token: str, *, keys: KeySet, algorithm: str) -> tuple[dict[str, Any], Key]:
    """The payload of a token whose header and signature check out, and the key that signed it."""
    try:
        unverified = jws.extract_compact(token.encode("ascii"))
        header = unverified.headers()
    except (JoseError, ValueError, UnicodeError) as exc:
        raise InvalidToken(f"malformed token: {exc}") from exc
    if header.get("alg") != algorithm:
        raise InvalidToken(f"alg {header.get('alg')!r} is not the hub's {algorithm}", BAD_SIGNATURE)
    kid = header.get("kid")
    key = _key_for(keys, kid)
    if key is None:
        raise UnknownKeyId(f"unknown kid {kid!r}", BAD_SIGNATURE)
    try:
        verified = jws.deserialize_compact(token, key, algorithms=[algorithm])
    except BadSignatureError as exc:
        raise InvalidToken("bad signature", BAD_SIGNATURE) from exc
    except (JoseError, ValueError) as exc:
        raise InvalidToken(f"not verifiable: {exc}", BAD_SIGNATURE) from exc
    try:
        claims = json.loads(verified.payload)
    except ValueError as exc:
        raise InvalidToken(f"payload is not JSON: {exc}") from exc
    if not isinstance(claims, dict):
        raise InvalidToken("payload is not a JSON object")
    return claims, key


def _check_claims(
    claims: dict[str, Any], *, issuer: str, audience: str, now: datetime
) -> AccessToken:
    # The issuer is per domain too (`<public url>/<domain>/oauth2`).
    if claims.get("iss") != issuer:
        raise InvalidToken(f"iss {claims.get('iss')!r} is not {issuer}", NOT_FOR_THIS_DOMAIN)
    aud = claims.get("aud")
    if audience not in (aud if isinstance(aud, list) else [aud]):
        raise InvalidToken(
            f"aud {aud!r} is not {audience} (a token of another domain?)", NOT_FOR_THIS_DOMAIN
        )
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        raise InvalidToken(f"exp missing or not a NumericDate: {exp!r}")
    if exp <= now.timestamp():
        raise InvalidToken(f"expired at {exp}", EXPIRED)
    client_id, scope, jti = claims.get("azp"), claims.get("scope"), claims.get("jti")
    if not isinstance(client_id, str) or not isinstance(scope, str) or not isinstance(jti, str):
        raise InvalidToken("azp, scope or jti missing")
    try:
        scopes = parse_scopes(scope)
    except ScopeError as exc:
        raise InvalidToken(f"unreadable scope: {exc}") from exc
    return AccessToken(client_id, scopes, datetime.fromtimestamp(exp, UTC), jti)


# --- the verified-token cache --------------------------------------------------------------

# What a verification depends on besides the keys: the token's SHA-256 (so the cache
# holds no bearer token), the algorithm, the issuer and the audience (the domain).
_Slot = tuple[bytes, str, str, str]


@dataclass(frozen=True, eq=False)
class _Verified:
    access: AccessToken
    exp: float  # the raw NumericDate, compared exactly as `_check_claims` does
    kid: str
    key: Key  # the very key object whose signature check passed


class VerifiedTokens:
    """A bounded, least-recently-used cache of verified access tokens (claims only).

    An entry says: this token's signature was checked with key object K and its
    claims were valid for this algorithm, issuer and audience. It is used only
    while that still holds without a signature check:

    - `exp` is compared with `now` on every hit, so an entry never outlives its
      token; an expired entry is dropped and the token verified (and refused) anew;
    - the audience, issuer and algorithm are part of the lookup key, so a token of
      domain A verified on A is a miss, and then refused, on domain B;
    - the header's `kid` must still name the same key object in the current
      `KeySet`. A key that was pruned, or a KeySet rebuilt because the keys on disk
      changed, makes every entry a miss: the token is verified as if never seen,
      so a removed key's tokens are refused exactly as before.

    Only the token's claims are kept: whether the client may still do something is
    decided per request from the current configuration, so a revoked right or an
    unregistered app takes effect at the next request, cached token or not.
    Invalid tokens are never cached. Safe to share between threads.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("a token cache holds at least one entry")
        self.max_entries = max_entries
        self._entries: OrderedDict[_Slot, _Verified] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def slot(token: str, algorithm: str, issuer: str, audience: str) -> _Slot | None:
        """The lookup key of a token verified for this audience; None for a non-ASCII token.

        A token that is not ASCII is malformed: it is never cached and is refused by
        verification as before.
        """
        try:
            digest = hashlib.sha256(token.encode("ascii")).digest()
        except UnicodeError:
            return None
        return (digest, algorithm, issuer, audience)

    def get(self, slot: _Slot, *, keys: KeySet, now: datetime) -> AccessToken | None:
        """The cached claims while the token is unexpired and its verifying key still current."""
        with self._lock:
            entry = self._entries.get(slot)
            if entry is None:
                return None
            if entry.exp <= now.timestamp() or _key_for(keys, entry.kid) is not entry.key:
                del self._entries[slot]
                return None
            self._entries.move_to_end(slot)
            return entry.access

    def put(self, slot: _Slot, access: AccessToken, *, exp: float, key: Key) -> None:
        """Remember a token that just verified; the least recently used entry makes room."""
        entry = _Verified(access, exp, str(key.kid), key)
        with self._lock:
            self._entries[slot] = entry
            self._entries.move_to_end(slot)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


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
