"""Keys of apps that publish a jwks_uri: fetched, validated, cached, refreshed sparingly."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from joserfc.jwk import RSAKey

from hub.access.apps import App, JwksError, Registry
from hub.access.jwks_cache import JwksCache
from tests.access.conftest import public_jwk

URI = "https://remote.example/jwks.json"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeJwksServer:
    """Stands in for the HTTP client: serves `document`, counts requests."""

    def __init__(self, *keys: RSAKey) -> None:
        self.document: Any = {"keys": [public_jwk(k) for k in keys]}
        self.calls = 0
        self.fail: Exception | None = None
        self.delay = 0.0

    async def __call__(self, uri: str) -> Mapping[str, Any]:
        assert uri == URI
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return self.document  # type: ignore[no-any-return]


@pytest.fixture
def remote(registry: Registry) -> App:
    return registry.domains["demo"].apps["remote"]


@pytest.fixture
def key_a() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "a"})


@pytest.fixture
def key_b() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "b"})


async def test_inline_keys_are_used_as_they_are(registry: Registry) -> None:
    server = FakeJwksServer()
    epd = registry.domains["demo"].apps["epd"]
    assert await JwksCache(server).keys_for(epd, "rsa-1") is epd.jwks
    assert server.calls == 0


async def test_keys_are_fetched_once_and_cached(remote: App, key_a: RSAKey) -> None:
    server, clock = FakeJwksServer(key_a), Clock()
    cache = JwksCache(server, clock=clock)
    assert [k.kid for k in await cache.keys_for(remote, "a")] == ["a"]
    clock.now += 59
    await cache.keys_for(remote, "a")
    await cache.keys_for(remote, None)
    assert server.calls == 1


async def test_an_unknown_kid_refreshes_at_most_once_a_minute(
    remote: App, key_a: RSAKey, key_b: RSAKey
) -> None:
    server, clock = FakeJwksServer(key_a), Clock()
    cache = JwksCache(server, clock=clock)
    await cache.keys_for(remote, "a")
    server.document = {"keys": [public_jwk(key_a), public_jwk(key_b)]}  # the app rotates

    clock.now += 30
    for _ in range(5):  # made-up or too-early kids do not reach the app's server
        keys = await cache.keys_for(remote, "b")
        assert [k.kid for k in keys] == ["a"]
    assert server.calls == 1

    clock.now += 30  # a minute after the last fetch
    assert [k.kid for k in await cache.keys_for(remote, "b")] == ["a", "b"]
    assert server.calls == 2
    await cache.keys_for(remote, "nope")
    assert server.calls == 2


async def test_concurrent_misses_share_one_fetch(remote: App, key_a: RSAKey) -> None:
    server = FakeJwksServer(key_a)
    server.delay = 0.05
    cache = JwksCache(server, clock=Clock())
    results = await asyncio.gather(*(cache.keys_for(remote, "a") for _ in range(10)))
    assert server.calls == 1
    assert all([k.kid for k in keys] == ["a"] for keys in results)


async def test_the_cache_expires_after_max_age(remote: App, key_a: RSAKey) -> None:
    server, clock = FakeJwksServer(key_a), Clock()
    cache = JwksCache(server, clock=clock, max_age=3600)
    await cache.keys_for(remote, "a")
    clock.now += 3600
    await cache.keys_for(remote, "a")
    assert server.calls == 2


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"keys": [{"kty": "RSA", "e": "AQAB", "n": "AQAB"}]}, "has no kid"),
        ("private", "PRIVATE"),
        ([], "JWKS"),
        ({"keys": []}, "no keys"),
    ],
)
async def test_fetched_keys_are_validated_like_inline_ones(
    remote: App, key_a: RSAKey, document: Any, problem: str
) -> None:
    server = FakeJwksServer()
    server.document = (
        {"keys": [{**key_a.as_dict(private=True), "kid": "a"}]}
        if document == "private"
        else document
    )
    with pytest.raises(JwksError, match=problem):
        await JwksCache(server, clock=Clock()).keys_for(remote, "a")


async def test_a_failing_server_keeps_the_old_keys(remote: App, key_a: RSAKey) -> None:
    server, clock = FakeJwksServer(key_a), Clock()
    cache = JwksCache(server, clock=clock, max_age=120)
    await cache.keys_for(remote, "a")
    server.fail = OSError("connection refused")
    clock.now += 200  # stale: refetch is attempted, fails, old keys still serve
    assert [k.kid for k in await cache.keys_for(remote, "a")] == ["a"]
    assert server.calls == 2


async def test_no_keys_at_all_is_an_error_naming_the_cause(remote: App) -> None:
    server, clock = FakeJwksServer(), Clock()
    server.fail = OSError("connection refused")
    cache = JwksCache(server, clock=clock)
    with pytest.raises(JwksError, match="connection refused"):
        await cache.keys_for(remote, "a")
    with pytest.raises(JwksError):  # and the failure is rate-limited too
        await cache.keys_for(remote, "a")
    assert server.calls == 1
