"""The verified-token cache: a known token skips its signature check, and nothing else changes.

The cache may only save the RS512 check. Expiry, the audience (a token of domain A
on domain B), the issuer, a key no longer published and a key replaced under the
same kid must all be refused exactly as without it, and the access decision must
still come from the configuration as it is at the request.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import KeySet, RSAKey
from starlette.requests import Request

from hub.access.apps import AccessConfig
from hub.access.keys import SigningKey, SigningKeys
from hub.access.tokens import (
    AccessToken,
    InvalidToken,
    UnknownKeyId,
    VerifiedTokens,
    issue_access_token,
    verify_access_token,
)
from hub.api.auth import authenticate
from hub.fhir.outcome import FhirError
from hub.runtime import Runtime
from hub.settings import Settings
from tests.access.conftest import NOW, ROOT

ISSUER = "https://hub.example/demo/oauth2"
DEMO_FHIR = "https://hub.example/demo/fhir"
OTHER_FHIR = "https://hub.example/other/fhir"
SCOPE = "system/Patient.crus?resource-origin=Device/epd system/AuditEvent.crs"
LATER = NOW + timedelta(seconds=1)


@dataclass
class SignatureChecks:
    """How often a JWS signature was actually checked (the cost the cache saves)."""

    count: int = 0


@pytest.fixture
def signature_checks(monkeypatch: pytest.MonkeyPatch) -> SignatureChecks:
    checks = SignatureChecks()
    real = jws.deserialize_compact

    def counting(*args: Any, **kwargs: Any) -> Any:
        checks.count += 1
        return real(*args, **kwargs)

    # `hub.access.tokens` calls it as `jws.deserialize_compact`: patch the module attribute.
    monkeypatch.setattr(jws, "deserialize_compact", counting)
    return checks


@pytest.fixture(scope="module")
def hub_keys(tmp_path_factory: pytest.TempPathFactory) -> SigningKeys:
    keys = SigningKeys(tmp_path_factory.mktemp("keys"), rsa_bits=2048)
    keys.load(NOW)
    return keys


def issue(key: SigningKey, *, audience: str = DEMO_FHIR, lifetime: int = 900) -> str:
    token, _ = issue_access_token(
        key=key,
        issuer=ISSUER,
        audience=audience,
        client_id="epd",
        scopes=SCOPE,
        lifetime=lifetime,
        now=NOW,
    )
    return token


def check(token: str, keys: KeySet, cache: VerifiedTokens | None, **changes: Any) -> AccessToken:
    options: dict[str, Any] = {
        "keys": keys,
        "algorithm": "RS512",
        "issuer": ISSUER,
        "audience": DEMO_FHIR,
        "now": LATER,
        "cache": cache,
    }
    options.update(changes)
    return verify_access_token(token, **options)


# --- hits and misses ----------------------------------------------------------------------


def test_a_known_token_skips_the_signature_check(
    hub_keys: SigningKeys, signature_checks: SignatureChecks
) -> None:
    cache = VerifiedTokens()
    token = issue(hub_keys.current_key())
    keys = hub_keys.verification_keys()
    first = check(token, keys, cache)
    assert (signature_checks.count, len(cache)) == (1, 1)
    again = check(token, keys, cache, now=LATER + timedelta(seconds=60))
    assert signature_checks.count == 1
    assert again == first
    assert (again.client_id, str(again.scopes)) == ("epd", SCOPE)


def test_without_a_cache_every_verification_checks_the_signature(
    hub_keys: SigningKeys, signature_checks: SignatureChecks
) -> None:
    token = issue(hub_keys.current_key())
    for _ in range(3):
        check(token, hub_keys.verification_keys(), None)
    assert signature_checks.count == 3


def test_the_cache_holds_no_bearer_token(hub_keys: SigningKeys) -> None:
    cache = VerifiedTokens()
    token = issue(hub_keys.current_key())
    check(token, hub_keys.verification_keys(), cache)
    assert token not in repr(cache._entries)


def test_refused_tokens_are_not_cached(
    hub_keys: SigningKeys, signature_checks: SignatureChecks
) -> None:
    cache = VerifiedTokens()
    header, payload, signature = issue(hub_keys.current_key()).split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
    for _ in range(2):
        with pytest.raises(InvalidToken, match="bad signature"):
            check(tampered, hub_keys.verification_keys(), cache)
    assert (signature_checks.count, len(cache)) == (2, 0)


@pytest.mark.parametrize("token", ["", "a.b.c", "é.é.é"])
def test_malformed_tokens_are_refused_with_a_cache_too(hub_keys: SigningKeys, token: str) -> None:
    cache = VerifiedTokens()
    with pytest.raises(InvalidToken, match="malformed"):
        check(token, hub_keys.verification_keys(), cache)
    assert len(cache) == 0


# --- what must still be refused -----------------------------------------------------------


def test_a_cached_token_is_refused_once_expired(
    hub_keys: SigningKeys, signature_checks: SignatureChecks
) -> None:
    cache = VerifiedTokens()
    token = issue(hub_keys.current_key(), lifetime=60)
    keys = hub_keys.verification_keys()
    check(token, keys, cache, now=NOW + timedelta(seconds=59))
    with pytest.raises(InvalidToken, match="expired"):
        check(token, keys, cache, now=NOW + timedelta(seconds=60))
    assert len(cache) == 0  # dropped, not kept for a clock that goes back
    assert signature_checks.count == 2


def test_a_cached_token_of_domain_a_is_refused_on_domain_b(hub_keys: SigningKeys) -> None:
    cache = VerifiedTokens()
    token = issue(hub_keys.current_key())
    keys = hub_keys.verification_keys()
    check(token, keys, cache)
    with pytest.raises(InvalidToken, match="aud"):
        check(token, keys, cache, audience=OTHER_FHIR)
    with pytest.raises(InvalidToken, match="iss"):
        check(token, keys, cache, issuer="https://hub.example/other/oauth2")
    with pytest.raises(InvalidToken, match="alg 'RS512'"):
        check(token, keys, cache, algorithm="ES256")
    assert check(token, keys, cache).client_id == "epd"  # still good where it belongs


def test_a_token_of_domain_b_cached_there_is_refused_on_domain_a(hub_keys: SigningKeys) -> None:
    cache = VerifiedTokens()
    token = issue(hub_keys.current_key(), audience=OTHER_FHIR)
    keys = hub_keys.verification_keys()
    check(token, keys, cache, audience=OTHER_FHIR)
    with pytest.raises(InvalidToken, match="aud"):
        check(token, keys, cache)


def test_a_cached_token_of_a_removed_key_is_refused(tmp_path: Path) -> None:
    keys = SigningKeys(tmp_path, rsa_bits=2048, max_token_lifetime=900)
    keys.load(NOW)
    old = issue(keys.current_key())
    cache = VerifiedTokens()
    check(old, keys.verification_keys(), cache)
    keys.rotate(NOW + timedelta(seconds=10))
    # Rotated: the old key is still published, so its token still verifies.
    assert check(old, keys.verification_keys(), cache).client_id == "epd"
    keys.prune(NOW + timedelta(seconds=10 + 900))
    # Pruned: refused as without a cache (asked at a time the token itself would still be
    # valid, so only the missing key can refuse it).
    with pytest.raises(UnknownKeyId):
        check(old, keys.verification_keys(), cache)
    with pytest.raises(UnknownKeyId):
        check(old, keys.verification_keys(), None)


def test_a_cached_token_is_refused_when_its_kid_names_another_key(
    rsa_key: RSAKey, other_rsa_key: RSAKey
) -> None:
    assert rsa_key.kid == other_rsa_key.kid
    signing = SigningKey(1, rsa_key, "RS512", NOW)
    token = issue(signing)
    cache = VerifiedTokens()
    check(token, KeySet([rsa_key]), cache)
    with pytest.raises(InvalidToken, match="bad signature"):
        check(token, KeySet([other_rsa_key]), cache)


def test_a_rebuilt_key_set_costs_one_check_then_hits_again(
    tmp_path: Path, signature_checks: SignatureChecks
) -> None:
    keys = SigningKeys(tmp_path, rsa_bits=2048)
    keys.load(NOW)
    token = issue(keys.current_key())
    cache = VerifiedTokens()
    check(token, keys.verification_keys(), cache)
    keys.rotate(NOW + timedelta(seconds=10))  # a new KeySet object, new key objects
    for _ in range(3):
        check(token, keys.verification_keys(), cache)
    assert signature_checks.count == 2


# --- the bound ------------------------------------------------------------------------------


def test_the_cache_keeps_at_most_its_bound_evicting_the_least_recently_used(
    hub_keys: SigningKeys, signature_checks: SignatureChecks
) -> None:
    cache = VerifiedTokens(max_entries=3)
    keys = hub_keys.verification_keys()
    first, second, third, fourth = (issue(hub_keys.current_key()) for _ in range(4))
    for token in (first, second, third):
        check(token, keys, cache)
    check(first, keys, cache)  # a hit: `first` is now the most recently used
    check(fourth, keys, cache)  # evicts `second`
    assert len(cache) == 3
    assert signature_checks.count == 4
    for token in (first, third, fourth):
        check(token, keys, cache)
    assert signature_checks.count == 4
    check(second, keys, cache)  # evicted: checked again (and now evicts `first`)
    assert (signature_checks.count, len(cache)) == (5, 3)


def test_a_cache_needs_room_for_one_entry() -> None:
    with pytest.raises(ValueError, match="at least one"):
        VerifiedTokens(max_entries=0)


def test_the_hubs_cache_is_bounded_at_ten_thousand(hub: Hub) -> None:
    assert hub.runtime.verified_tokens.max_entries == 10_000


# --- the access decision stays per request ------------------------------------------------


@dataclass
class Hub:
    """Just enough of a running hub for `authenticate`: real keys, real matrix and apps."""

    runtime: Runtime
    matrix_file: Path
    apps_file: Path

    def request(self, token: str) -> Request:
        headers = [(b"authorization", f"Bearer {token}".encode())]
        return Request({"type": "http", "method": "GET", "path": "/", "headers": headers})


@pytest.fixture
def hub(
    tmp_path: Path,
    hub_keys: SigningKeys,
    registry_data: Callable[[], dict[str, Any]],
) -> Hub:
    matrix_file = tmp_path / "authz_matrix.yaml"
    shutil.copy(ROOT / "authz_matrix.yaml", matrix_file)
    apps_file = tmp_path / "apps.yaml"
    apps_file.write_text(json.dumps(registry_data()))  # JSON is YAML
    unused: Any = None  # authenticate needs no database, audit or subscriptions
    runtime = Runtime(
        settings=Settings(public_url="https://hub.example"),
        database=unused,
        access=AccessConfig(apps_file, matrix_file),
        keys=hub_keys,
        jwks=unused,
        audit=unused,
        chain_key=b"",
        subscriptions=unused,
    )
    return Hub(runtime, matrix_file, apps_file)


def live_token(hub_keys: SigningKeys) -> str:
    """A token valid now (`authenticate` verifies against the wall clock)."""
    token, _ = issue_access_token(
        key=hub_keys.current_key(),
        issuer=ISSUER,
        audience=DEMO_FHIR,
        client_id="epd",
        scopes=SCOPE,
        lifetime=900,
        now=datetime.now(UTC),
    )
    return token


def test_a_right_revoked_in_the_matrix_is_gone_at_the_next_request_of_a_cached_token(
    hub: Hub, hub_keys: SigningKeys, signature_checks: SignatureChecks
) -> None:
    token = live_token(hub_keys)
    before = authenticate(hub.runtime, hub.request(token), "demo")
    assert before.may_create("Patient")

    revoked = hub.matrix_file.read_text().replace(
        "Patient: {create: true, read: own, update: own}",
        "Patient: {read: own, update: own}",
    )
    assert revoked != hub.matrix_file.read_text()
    hub.matrix_file.write_text(revoked)
    hub.runtime.access.reload()

    after = authenticate(hub.runtime, hub.request(token), "demo")
    assert signature_checks.count == 1  # the second request was a cache hit...
    assert not after.may_create("Patient")  # ...and the revocation applies all the same
    assert after.allows("update", "Patient", "epd")


def test_an_unregistered_app_is_refused_though_its_token_is_cached(
    hub: Hub, hub_keys: SigningKeys, registry_data: Callable[[], dict[str, Any]]
) -> None:
    token = live_token(hub_keys)
    assert authenticate(hub.runtime, hub.request(token), "demo").caller.client_id == "epd"
    document = registry_data()
    demo = document["domains"][0]
    demo["apps"] = [app for app in demo["apps"] if app["client_id"] != "epd"]
    for app in demo["apps"]:
        app.pop("grants", None)  # the module granted epd, which must now go too
    hub.apps_file.write_text(json.dumps(document))
    hub.runtime.access.reload()
    with pytest.raises(FhirError) as refused:
        authenticate(hub.runtime, hub.request(token), "demo")
    assert refused.value.status == 401


def test_a_cached_token_is_refused_on_another_domain_of_the_hub(
    hub: Hub, hub_keys: SigningKeys
) -> None:
    token = live_token(hub_keys)
    authenticate(hub.runtime, hub.request(token), "demo")
    with pytest.raises(FhirError) as refused:
        authenticate(hub.runtime, hub.request(token), "other")
    assert refused.value.status == 401
