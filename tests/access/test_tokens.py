"""Access tokens (issue, verify, every refusal) and the token endpoint's exchange."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from hub.access.apps import App, Domain, Registry
from hub.access.assertion import CLIENT_ASSERTION_TYPE, OAuthError, make_client_assertion
from hub.access.keys import SigningKeys
from hub.access.matrix import Matrix, parse_scopes
from hub.access.tokens import (
    BAD_SIGNATURE,
    EXPIRED,
    MALFORMED,
    NOT_FOR_THIS_DOMAIN,
    InvalidToken,
    exchange,
    issue_access_token,
    token_response,
    verify_access_token,
)
from tests.access.conftest import NOW, TOKEN_URL

ISSUER = "https://hub.example"
DEMO_FHIR = "https://hub.example/demo/fhir"
OTHER_FHIR = "https://hub.example/other/fhir"
SCOPE = "system/Patient.crus?resource-origin=Device/epd system/AuditEvent.crs"


@pytest.fixture(scope="module")
def hub_keys(tmp_path_factory: pytest.TempPathFactory) -> SigningKeys:
    keys = SigningKeys(tmp_path_factory.mktemp("keys"), rsa_bits=2048)
    keys.load(NOW)
    return keys


def issue(hub_keys: SigningKeys, **changes: Any) -> str:
    options: dict[str, Any] = {
        "key": hub_keys.current_key(),
        "issuer": ISSUER,
        "audience": DEMO_FHIR,
        "client_id": "epd",
        "scopes": SCOPE,
        "lifetime": 900,
        "now": NOW,
    }
    options.update(changes)
    token, _ = issue_access_token(**options)
    return token


def check(token: str, keys: KeySet, **changes: Any) -> Any:
    options: dict[str, Any] = {
        "keys": keys,
        "algorithm": "RS512",
        "issuer": ISSUER,
        "audience": DEMO_FHIR,
        "now": NOW + timedelta(seconds=1),
    }
    options.update(changes)
    return verify_access_token(token, **options)


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return _decode(header), _decode(payload)


def _decode(part: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]


def test_an_issued_token_has_the_koppeltaal_claims(hub_keys: SigningKeys) -> None:
    token, expires_in = issue_access_token(
        key=hub_keys.current_key(),
        issuer=ISSUER,
        audience=DEMO_FHIR,
        client_id="epd",
        scopes=parse_scopes(SCOPE),
        lifetime=900,
        now=NOW,
    )
    header, claims = segments(token)
    assert (header["alg"], header["kid"]) == ("RS512", hub_keys.current_key().kid)
    assert expires_in == 900
    assert claims["iss"] == ISSUER
    assert claims["aud"] == DEMO_FHIR
    assert claims["azp"] == "epd"
    assert claims["scope"] == SCOPE
    assert claims["exp"] - claims["iat"] == 900
    assert claims["iat"] == int(NOW.timestamp())
    assert claims["jti"]
    assert "sub" not in claims
    # A client verifying with the published JWKS and RS512, as existing clients do.
    published = KeySet.import_key_set(hub_keys.public_jwks())  # type: ignore[arg-type]
    assert jwt.decode(token, published, algorithms=["RS512"]).claims["azp"] == "epd"


def test_a_token_verifies_into_an_access_token(hub_keys: SigningKeys) -> None:
    token = issue(hub_keys)
    access = check(token, hub_keys.verification_keys())
    assert access.client_id == "epd"
    assert str(access.scopes) == SCOPE
    assert access.scopes.allows("update", "Patient", "epd")
    assert access.exp == NOW + timedelta(seconds=900)
    assert access.jti == segments(token)[1]["jti"]


def test_every_token_has_its_own_jti(hub_keys: SigningKeys) -> None:
    assert segments(issue(hub_keys))[1]["jti"] != segments(issue(hub_keys))[1]["jti"]


def test_a_token_of_domain_a_is_refused_on_domain_b(hub_keys: SigningKeys) -> None:
    with pytest.raises(InvalidToken, match="aud"):
        check(issue(hub_keys), hub_keys.verification_keys(), audience=OTHER_FHIR)


def test_an_expired_token_is_refused(hub_keys: SigningKeys) -> None:
    token = issue(hub_keys)
    keys = hub_keys.verification_keys()
    check(token, keys, now=NOW + timedelta(seconds=899))
    with pytest.raises(InvalidToken, match="expired"):
        check(token, keys, now=NOW + timedelta(seconds=900))


def test_a_tampered_token_is_refused(hub_keys: SigningKeys) -> None:
    token = issue(hub_keys)
    header, _, signature = token.split(".")
    _, claims = segments(token)
    claims["scope"] = "system/Patient.cruds"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken, match="bad signature"):
        check(f"{header}.{forged}.{signature}", hub_keys.verification_keys())


def test_a_token_of_another_issuer_is_refused(hub_keys: SigningKeys) -> None:
    with pytest.raises(InvalidToken, match="iss"):
        check(issue(hub_keys, issuer="https://evil.example"), hub_keys.verification_keys())


def test_a_token_signed_by_another_key_is_refused(hub_keys: SigningKeys, tmp_path: Path) -> None:
    stranger = SigningKeys(tmp_path, rsa_bits=2048)
    stranger.load(NOW)
    with pytest.raises(InvalidToken, match="unknown kid"):
        check(issue(hub_keys, key=stranger.current_key()), hub_keys.verification_keys())


def test_another_alg_than_the_hubs_is_refused(hub_keys: SigningKeys) -> None:
    # HS256 keyed with the hub's public key: refused for its alg, before the key is used.
    current = hub_keys.current_key()
    header = {"alg": "HS256", "kid": current.kid, "typ": "JWT"}
    _, claims = segments(issue(hub_keys))
    signing_input = ".".join(
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()
        for part in (header, claims)
    )
    secret = json.dumps(current.public_jwk()).encode()
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with pytest.raises(InvalidToken, match="alg 'HS256'"):
        check(token, hub_keys.verification_keys())
    with pytest.raises(InvalidToken, match="alg 'RS512'"):
        check(issue(hub_keys), hub_keys.verification_keys(), algorithm="ES256")


@pytest.mark.parametrize("token", ["", "a", "a.b.c", "Bearer x.y.z", "é.é.é"])
def test_a_malformed_token_is_refused(hub_keys: SigningKeys, token: str) -> None:
    with pytest.raises(InvalidToken):
        check(token, hub_keys.verification_keys())


def test_a_token_without_scope_or_azp_is_refused(hub_keys: SigningKeys) -> None:
    current = hub_keys.current_key()
    claims = {"iss": ISSUER, "aud": DEMO_FHIR, "exp": int(NOW.timestamp()) + 60, "jti": "j"}
    token = jwt.encode({"alg": "RS512", "kid": current.kid}, claims, current.key, ["RS512"])
    with pytest.raises(InvalidToken, match="azp, scope or jti"):
        check(token, hub_keys.verification_keys())


def test_a_token_signed_before_a_rotation_still_verifies(tmp_path: Path) -> None:
    keys = SigningKeys(tmp_path, rsa_bits=2048, max_token_lifetime=900)
    keys.load(NOW)
    before = issue(keys)
    keys.rotate(NOW + timedelta(seconds=10))
    after = issue(keys)
    assert segments(before)[0]["kid"] != segments(after)[0]["kid"]
    for token in (before, after):
        assert check(token, keys.verification_keys(), now=NOW + timedelta(seconds=20)).client_id


# --- the exchange --------------------------------------------------------------------------


async def no_replays(client_id: str, jti: str, expires_at: datetime) -> bool:
    return True


async def inline_keys(app: App, kid: str | None) -> KeySet:
    assert app.jwks is not None
    return app.jwks


def form(
    key: RSAKey | ECKey, client: str = "epd", alg: str = "RS512", **fields: str
) -> dict[str, str]:
    """A token request form with an assertion of `client`; `fields` add or replace fields."""
    assertion = make_client_assertion(
        key, client_id=client, token_url=TOKEN_URL, kid=str(key.kid), alg=alg, now=NOW
    )
    base = {
        "grant_type": "client_credentials",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    base.update(fields)
    return {name: value for name, value in base.items() if value != "<absent>"}


async def run_exchange(
    fields: dict[str, str], domain: Domain, matrix: Matrix, hub_keys: SigningKeys
) -> dict[str, Any]:
    return await exchange(
        fields,
        domain=domain,
        matrix=matrix,
        token_url=TOKEN_URL,
        signing_key=hub_keys.current_key(),
        issuer=ISSUER,
        audience=DEMO_FHIR,
        lifetime=900,
        keys_for=inline_keys,
        remember_jti=no_replays,
        now=NOW,
    )


async def test_exchange_gives_everything_the_role_grants(
    registry: Registry, matrix: Matrix, hub_keys: SigningKeys, ec_key: ECKey
) -> None:
    demo = registry.domains["demo"]
    body = await run_exchange(form(ec_key, "module", "ES256"), demo, matrix, hub_keys)
    expected = " ".join(matrix.smart_scopes("eHealthModule", "module", demo.apps["module"].grants))
    assert body["scope"] == expected
    assert "system/Task.crus?resource-origin=Device/module,Device/epd" in expected
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 900)
    access = check(body["access_token"], hub_keys.verification_keys())
    assert (access.client_id, str(access.scopes)) == ("module", expected)


async def test_an_empty_scope_means_everything_and_unknown_fields_are_ignored(
    registry: Registry, matrix: Matrix, hub_keys: SigningKeys, rsa_key: RSAKey
) -> None:
    fields = form(rsa_key, scope="  ", client_id="epd", audience="whatever", resource="x")
    body = await run_exchange(fields, registry.domains["demo"], matrix, hub_keys)
    assert body["scope"] == " ".join(matrix.smart_scopes("Zorgondersteuning", "epd", {}))


async def test_a_requested_scope_narrows_the_token(
    registry: Registry, matrix: Matrix, hub_keys: SigningKeys, rsa_key: RSAKey
) -> None:
    fields = form(rsa_key, scope="system/Patient.rs system/AuditEvent.r")
    body = await run_exchange(fields, registry.domains["demo"], matrix, hub_keys)
    assert body["scope"] == "system/AuditEvent.r system/Patient.rs?resource-origin=Device/epd"
    access = check(body["access_token"], hub_keys.verification_keys())
    assert not access.scopes.allows("create", "Patient", "epd")


@pytest.mark.parametrize(
    "scope", ["system/Device.rs", "system/Patient.d", "openid", "system/Task.rs"]
)
async def test_a_scope_the_role_does_not_grant_is_invalid_scope(
    registry: Registry, matrix: Matrix, hub_keys: SigningKeys, rsa_key: RSAKey, scope: str
) -> None:
    with pytest.raises(OAuthError) as caught:
        await run_exchange(form(rsa_key, scope=scope), registry.domains["demo"], matrix, hub_keys)
    assert caught.value.error == "invalid_scope"
    assert caught.value.to_json()["error"] == "invalid_scope"


@pytest.mark.parametrize(
    ("fields", "error", "description"),
    [
        ({"grant_type": "<absent>"}, "invalid_request", "grant_type is required"),
        ({"grant_type": "password"}, "unsupported_grant_type", "client_credentials"),
        ({"grant_type": "authorization_code"}, "unsupported_grant_type", "client_credentials"),
        ({"client_assertion_type": "<absent>"}, "invalid_request", "client_assertion_type"),
        ({"client_assertion_type": "urn:x"}, "invalid_request", "client_assertion_type"),
        ({"client_assertion": "<absent>"}, "invalid_request", "client_assertion is required"),
        ({"client_assertion": "not-a-jwt"}, "invalid_client", "client authentication failed"),
        ({"client_id": "module"}, "invalid_client", "client authentication failed"),
    ],
)
async def test_bad_token_requests(
    registry: Registry,
    matrix: Matrix,
    hub_keys: SigningKeys,
    rsa_key: RSAKey,
    fields: dict[str, str],
    error: str,
    description: str,
) -> None:
    with pytest.raises(OAuthError) as caught:
        await run_exchange(form(rsa_key, **fields), registry.domains["demo"], matrix, hub_keys)
    body = caught.value.to_json()
    assert body["error"] == error
    assert description in body["error_description"]
    assert caught.value.status == (401 if error == "invalid_client" else 400)
    assert caught.value.headers["Cache-Control"] == "no-store"


async def test_an_assertion_for_another_domain_gets_no_token(
    registry: Registry, matrix: Matrix, hub_keys: SigningKeys, rsa_key: RSAKey
) -> None:
    with pytest.raises(OAuthError) as caught:
        await run_exchange(form(rsa_key, "stranger"), registry.domains["demo"], matrix, hub_keys)
    assert caught.value.error == "invalid_client"


def test_token_response_shape() -> None:
    assert token_response("t", 900, parse_scopes("system/Patient.rs")) == {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 900,
        "scope": "system/Patient.rs",
    }


async def test_a_client_id_field_must_name_the_asserted_client(
    registry: Registry, matrix: Matrix, hub_keys: SigningKeys, rsa_key: RSAKey
) -> None:
    with pytest.raises(OAuthError) as caught:
        await run_exchange(
            form(rsa_key, client_id="module"), registry.domains["demo"], matrix, hub_keys
        )
    assert (caught.value.error, caught.value.log_detail) == (
        "invalid_client",
        "client_id 'module' != epd",
    )


def _refusal(token: str, keys: KeySet, **changes: Any) -> InvalidToken:
    with pytest.raises(InvalidToken) as refused:
        check(token, keys, **changes)
    return refused.value


def test_each_refusal_says_why_in_one_of_four_texts(hub_keys: SigningKeys, tmp_path: Path) -> None:
    """RFC 6750 §3 `error_description`: the category only; the detail stays in `reason`."""
    keys = hub_keys.verification_keys()
    token = issue(hub_keys)
    header, payload, signature = token.split(".")
    stranger = SigningKeys(tmp_path, rsa_bits=2048)
    stranger.load(NOW)
    refusals = {
        "expired": (_refusal(token, keys, now=NOW + timedelta(seconds=900)), EXPIRED),
        "other domain": (_refusal(token, keys, audience=OTHER_FHIR), NOT_FOR_THIS_DOMAIN),
        "other issuer": (_refusal(issue(hub_keys, issuer="https://x"), keys), NOT_FOR_THIS_DOMAIN),
        "tampered": (_refusal(f"{header}.{payload}.{signature[::-1]}", keys), BAD_SIGNATURE),
        "stranger": (_refusal(issue(hub_keys, key=stranger.current_key()), keys), BAD_SIGNATURE),
        "other alg": (_refusal(token, keys, algorithm="ES256"), BAD_SIGNATURE),
        "garbage": (_refusal("a.b", keys), MALFORMED),
        "no scope": (
            _refusal(
                jwt.encode(
                    {"alg": "RS512", "kid": hub_keys.current_key().kid},
                    {"iss": ISSUER, "aud": DEMO_FHIR, "exp": int(NOW.timestamp()) + 60},
                    hub_keys.current_key().key,
                    ["RS512"],
                ),
                keys,
            ),
            MALFORMED,
        ),
    }
    for name, (refusal, description) in refusals.items():
        assert refusal.description == description, name
        assert refusal.reason not in description, name  # the detail is not in the text
    # RFC 6750 §3: the text may go in a quoted-string as is (no `"` or `\`, printable ASCII).
    for description in (EXPIRED, NOT_FOR_THIS_DOMAIN, BAD_SIGNATURE, MALFORMED):
        assert all(0x20 <= ord(c) <= 0x7E and c not in '"\\' for c in description)
