"""Client assertions (RFC 7523): every refusal, with real keys and real signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from hub.access.apps import App, Domain, Registry, parse_public_jwks
from hub.access.assertion import (
    OAuthError,
    generate_app_keypair,
    make_client_assertion,
    verify_client_assertion,
)
from hub.access.jwks_cache import JwksCache
from hub.store.assertions import remember_jti
from hub.store.db import Database
from tests.access.conftest import NOW, TOKEN_URL, public_jwk

Remember = Callable[[str, str, datetime], Awaitable[bool]]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(client_id: str = "epd", **changes: Any) -> dict[str, Any]:
    now = int(NOW.timestamp())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "iat": now,
        "exp": now + 60,
        "jti": f"jti-{now}-{sorted(changes.items())}",
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def signed(key: RSAKey | ECKey, claims: dict[str, Any], alg: str = "RS512", **header: Any) -> str:
    return jwt.encode({"alg": alg, "kid": key.kid, **header}, claims, key, algorithms=[alg])


class KeysFor:
    """`keys_for` over the apps' inline keys, counting lookups."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, app: App, kid: str | None) -> KeySet:
        self.calls += 1
        assert app.jwks is not None
        return app.jwks


class MemoryJtis:
    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()
        self.expiries: list[datetime] = []

    async def __call__(self, client_id: str, jti: str, expires_at: datetime) -> bool:
        self.expiries.append(expires_at)
        if (client_id, jti) in self.seen:
            return False
        self.seen.add((client_id, jti))
        return True


@pytest.fixture
def demo(registry: Registry) -> Domain:
    return registry.domains["demo"]


async def verify(
    assertion: str,
    domain: Domain,
    *,
    keys_for: Callable[[App, str | None], Awaitable[KeySet]] | None = None,
    remember: Remember | None = None,
    now: datetime = NOW,
) -> App:
    return await verify_client_assertion(
        assertion,
        domain=domain,
        token_url=TOKEN_URL,
        keys_for=keys_for or KeysFor(),
        remember_jti=remember or MemoryJtis(),
        now=now,
    )


async def refused(assertion: str, domain: Domain, detail: str, **options: Any) -> OAuthError:
    with pytest.raises(OAuthError) as caught:
        await verify(assertion, domain, **options)
    error = caught.value
    assert detail in error.log_detail
    # The client learns nothing about which check failed.
    assert error.to_json() == {
        "error": "invalid_client",
        "error_description": "client authentication failed",
    }
    assert error.status == 401
    return error


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512"])
async def test_a_valid_rsa_assertion(demo: Domain, rsa_key: RSAKey, alg: str) -> None:
    remember = MemoryJtis()
    app = await verify(signed(rsa_key, claims_for(), alg), demo, remember=remember)
    assert app.client_id == "epd"
    # The jti is kept until the last moment the assertion could still pass (exp + skew).
    assert remember.expiries == [NOW + timedelta(seconds=60 + 30)]


async def test_a_valid_ec_assertion(demo: Domain, ec_key: ECKey) -> None:
    app = await verify(signed(ec_key, claims_for("module"), "ES256"), demo)
    assert app.client_id == "module"


async def test_an_ec_key_with_the_wrong_curve_for_the_alg(demo: Domain, ec_key: ECKey) -> None:
    p384 = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})
    await refused(signed(p384, claims_for("module"), "ES384"), demo, "not verifiable")


async def test_alg_none_is_refused_before_any_key_use(demo: Domain) -> None:
    header = b64(json.dumps({"alg": "none", "kid": "rsa-1"}).encode())
    token = f"{header}.{b64(json.dumps(claims_for()).encode())}."
    keys_for = KeysFor()
    await refused(token, demo, "alg 'none'", keys_for=keys_for)
    assert keys_for.calls == 0


async def test_hs256_with_the_public_key_as_secret_is_refused(
    demo: Domain, rsa_key: RSAKey
) -> None:
    # The classic algorithm-confusion attack: HMAC keyed with the (public) RSA key.
    secret = rsa_key.as_pem(private=False)
    signing_input = (
        b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
        + "."
        + b64(json.dumps(claims_for()).encode())
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    keys_for = KeysFor()
    await refused(f"{signing_input}.{b64(signature)}", demo, "alg 'HS256'", keys_for=keys_for)
    assert keys_for.calls == 0


async def test_ps256_is_not_an_accepted_algorithm(demo: Domain, rsa_key: RSAKey) -> None:
    keys_for = KeysFor()
    await refused(signed(rsa_key, claims_for(), "PS256"), demo, "alg 'PS256'", keys_for=keys_for)
    assert keys_for.calls == 0


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "é.é.é", "x" * 20_000])
async def test_garbage_is_refused(demo: Domain, token: str) -> None:
    await refused(token, demo, "")


async def test_a_missing_kid_is_refused(demo: Domain, rsa_key: RSAKey) -> None:
    token = jwt.encode({"alg": "RS512"}, claims_for(), rsa_key, algorithms=["RS512"])
    await refused(token, demo, "no kid")


async def test_an_unknown_kid_is_refused(demo: Domain, rsa_key: RSAKey) -> None:
    await refused(signed(rsa_key, claims_for(), kid="rsa-2"), demo, "unknown kid 'rsa-2'")


async def test_a_signature_by_another_key_is_refused(demo: Domain, other_rsa_key: RSAKey) -> None:
    # Same kid as the registered key, different key: only the signature check can tell.
    await refused(signed(other_rsa_key, claims_for()), demo, "bad signature")


async def test_a_tampered_payload_is_refused(demo: Domain, rsa_key: RSAKey) -> None:
    header, _, signature = signed(rsa_key, claims_for()).split(".")
    forged = b64(json.dumps(claims_for(exp=int(NOW.timestamp()) + 240)).encode())
    await refused(f"{header}.{forged}.{signature}", demo, "bad signature")


async def test_a_key_registered_for_another_alg_is_refused(demo: Domain, rsa_key: RSAKey) -> None:
    pinned = Domain(
        "demo",
        {
            "epd": App(
                "epd",
                "EHR",
                "Zorgondersteuning",
                "demo",
                jwks=parse_public_jwks({"keys": [public_jwk(rsa_key, alg="RS256")]}),
            )
        },
    )
    await refused(signed(rsa_key, claims_for(), "RS512"), pinned, "is for RS256")
    assert (await verify(signed(rsa_key, claims_for(), "RS256"), pinned)).client_id == "epd"


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"iss": "ghost", "sub": "ghost"}, "no client 'ghost'"),
        ({"sub": "module"}, "must be the same client_id"),
        ({"sub": None}, "must be the same client_id"),
        ({"aud": "https://hub.example/other/oauth2/token"}, "not the token endpoint"),
        ({"aud": None}, "not the token endpoint"),
        ({"exp": None}, "exp missing"),
        ({"exp": "soon"}, "not a NumericDate"),
        ({"exp": int(NOW.timestamp()) - 31}, "expired"),
        ({"exp": int(NOW.timestamp()) + 300 + 31}, "more than 5 minutes ahead"),
        ({"iat": int(NOW.timestamp()) + 31}, "iat"),
        ({"nbf": int(NOW.timestamp()) + 31}, "nbf"),
        ({"jti": None}, "jti missing"),
        ({"jti": ""}, "jti missing"),
        ({"jti": "x" * 257}, "jti missing or longer"),
    ],
)
async def test_bad_claims_are_refused(
    demo: Domain, rsa_key: RSAKey, changes: dict[str, Any], detail: str
) -> None:
    await refused(signed(rsa_key, claims_for(**changes)), demo, detail)


@pytest.mark.parametrize(
    "changes",
    [
        {"aud": ["https://elsewhere.example", TOKEN_URL]},
        {"exp": int(NOW.timestamp()) - 29},  # within the 30 s clock skew
        {"exp": int(NOW.timestamp()) + 300 + 29},
        {"iat": int(NOW.timestamp()) + 29, "nbf": int(NOW.timestamp()) + 29},
        {"iat": None},
    ],
)
async def test_claims_within_the_rules_pass(
    demo: Domain, rsa_key: RSAKey, changes: dict[str, Any]
) -> None:
    assert (await verify(signed(rsa_key, claims_for(**changes)), demo)).client_id == "epd"


async def test_a_client_of_another_domain_is_refused(registry: Registry, rsa_key: RSAKey) -> None:
    token = signed(rsa_key, claims_for("stranger"))
    assert (await verify(token, registry.domains["other"])).client_id == "stranger"
    await refused(token, registry.domains["demo"], "no client 'stranger' in domain 'demo'")


async def test_a_replayed_jti_is_refused(demo: Domain, rsa_key: RSAKey) -> None:
    remember = MemoryJtis()
    token = signed(rsa_key, claims_for())
    await verify(token, demo, remember=remember)
    await refused(token, demo, "used before", remember=remember)


async def test_a_refused_assertion_does_not_use_up_its_jti(demo: Domain, rsa_key: RSAKey) -> None:
    remember = MemoryJtis()
    bad = signed(rsa_key, claims_for(aud="https://wrong.example", jti="one"))
    await refused(bad, demo, "not the token endpoint", remember=remember)
    assert remember.seen == set()


async def test_a_replay_is_refused_through_the_database(
    database: Database, demo: Domain, rsa_key: RSAKey, ec_key: ECKey
) -> None:
    async def remember(client_id: str, jti: str, expires_at: datetime) -> bool:
        return await database.write(remember_jti("demo", client_id, jti, expires_at))

    token = signed(rsa_key, claims_for(jti="once"))
    assert (await verify(token, demo, remember=remember)).client_id == "epd"
    await refused(token, demo, "jti 'once' was used before", remember=remember)
    # Another client may use the same jti value: jtis are per client.
    module = signed(ec_key, claims_for("module", jti="once"), "ES256")
    assert (await verify(module, demo, remember=remember)).client_id == "module"


async def test_keys_from_a_jwks_uri_follow_a_key_rotation(demo: Domain) -> None:
    old = RSAKey.generate_key(2048, parameters={"kid": "old"})
    new = RSAKey.generate_key(2048, parameters={"kid": "new"})
    served = {"keys": [public_jwk(old)]}
    calls: list[str] = []

    async def fetch_json(uri: str) -> dict[str, Any]:
        calls.append(uri)
        return served

    clock = [0.0]
    cache = JwksCache(fetch_json, clock=lambda: clock[0])
    remote = claims_for("remote")
    assert (await verify(signed(old, remote), demo, keys_for=cache.keys_for)).client_id == "remote"
    served = {"keys": [public_jwk(old), public_jwk(new)]}
    clock[0] += 10  # too soon after the last fetch: the new kid is not looked up yet
    too_soon = signed(new, claims_for("remote", jti="too-soon"))
    await refused(too_soon, demo, "unknown kid 'new'", keys_for=cache.keys_for)
    clock[0] += 50
    rotated = signed(new, claims_for("remote", jti="after-rotation"))
    assert (await verify(rotated, demo, keys_for=cache.keys_for)).client_id == "remote"
    assert calls == ["https://remote.example/jwks.json"] * 2


async def test_an_unreachable_jwks_uri_is_refused(demo: Domain, rsa_key: RSAKey) -> None:
    async def fetch_json(uri: str) -> dict[str, Any]:
        raise OSError("no route to host")

    token = signed(rsa_key, claims_for("remote"))
    await refused(token, demo, "no route to host", keys_for=JwksCache(fetch_json).keys_for)


# --- making assertions ---------------------------------------------------------------------


async def test_make_client_assertion_from_a_pem(demo: Domain, rsa_key: RSAKey) -> None:
    pem = rsa_key.as_pem(private=True)
    token = make_client_assertion(pem, client_id="epd", token_url=TOKEN_URL, kid="rsa-1", now=NOW)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert (header["alg"], header["kid"]) == ("RS512", "rsa-1")
    assert (await verify(token, demo)).client_id == "epd"
    other = make_client_assertion(pem, client_id="epd", token_url=TOKEN_URL, kid="rsa-1", now=NOW)
    assert other != token  # a fresh jti each time


async def test_make_client_assertion_with_an_ec_key(demo: Domain, ec_key: ECKey) -> None:
    token = make_client_assertion(
        ec_key, client_id="module", token_url=TOKEN_URL, kid="ec-1", alg="ES256", now=NOW
    )
    assert (await verify(token, demo)).client_id == "module"


async def test_a_generated_app_keypair_works_end_to_end() -> None:
    pem, jwks = generate_app_keypair("app-2025", rsa_bits=2048)
    (published,) = jwks["keys"]
    assert (published["kid"], published["alg"], published["use"]) == ("app-2025", "RS512", "sig")
    assert b"PRIVATE KEY" in pem
    key_set = parse_public_jwks(jwks)  # would refuse private members
    app = App("app", "App", "Auditor", "d", jwks=key_set)
    token = make_client_assertion(
        pem, client_id="app", token_url=TOKEN_URL, kid="app-2025", now=NOW
    )
    assert (await verify(token, Domain("d", {"app": app}))).client_id == "app"
