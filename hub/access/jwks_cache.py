"""The public keys that verify an application's client assertions.

An app registers its keys inline (`jwks`) or by URL (`jwks_uri`). Fetched key
sets are cached per URL. An assertion whose `kid` is not in the cached set may
mean the app rotated its keys, so the set is fetched again, but at most once per
`min_refresh_interval` per URL: otherwise anyone could make the hub hammer an
app's server by sending assertions with made-up kids. A cached set is also
refetched after `max_age`, so a key the app withdrew stops working.

Fetched documents are validated exactly like inline ones (public keys only,
`kid` required, RSA ≥ 2048 bits). The HTTP request itself is injected
(`fetch_json`): the hub has one module that talks HTTP, and this is not it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import KeySet

from hub.access.apps import App, JwksError, parse_public_jwks

logger = logging.getLogger(__name__)

FetchJson = Callable[[str], Awaitable[Mapping[str, Any]]]


@dataclass
class _Entry:
    keys: KeySet | None = None
    fetched_at: float = 0.0  # of the last successful fetch
    attempted_at: float | None = None  # of the last attempt, successful or not
    error: str = "not fetched yet"  # why the last attempt failed, for the log


class JwksCache:
    """`keys_for(app, kid)` gives the keys to verify one of `app`'s assertions."""

    def __init__(
        self,
        fetch_json: FetchJson,
        *,
        min_refresh_interval: float = 60.0,
        max_age: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch_json = fetch_json
        self._min_refresh_interval = min_refresh_interval
        self._max_age = max_age
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def keys_for(self, app: App, kid: str | None) -> KeySet:
        """The app's keys; raises `JwksError` when a jwks_uri cannot give any."""
        if app.jwks is not None:
            return app.jwks
        if app.jwks_uri is None:  # apps.py guarantees one of the two
            raise JwksError(f"app {app.client_id} has no keys")
        uri = app.jwks_uri
        entry = self._entries.setdefault(uri, _Entry())
        if self._fresh_enough(entry, kid):
            assert entry.keys is not None
            return entry.keys
        # One fetch per URL at a time: concurrent assertions wait for it instead of adding more.
        async with self._locks.setdefault(uri, asyncio.Lock()):
            if not self._fresh_enough(entry, kid) and self._may_fetch(entry):
                await self._fetch(uri, entry)
        if entry.keys is None:
            raise JwksError(f"no keys could be fetched from {uri} ({entry.error})")
        return entry.keys

    def _fresh_enough(self, entry: _Entry, kid: str | None) -> bool:
        if entry.keys is None or self._clock() - entry.fetched_at >= self._max_age:
            return False
        return kid is None or any(key.kid == kid for key in entry.keys)

    def _may_fetch(self, entry: _Entry) -> bool:
        if entry.attempted_at is None:
            return True
        return self._clock() - entry.attempted_at >= self._min_refresh_interval

    async def _fetch(self, uri: str, entry: _Entry) -> None:
        entry.attempted_at = self._clock()
        try:
            document = await self._fetch_json(uri)
            keys = parse_public_jwks(dict(document))
        except Exception as exc:
            # The old keys (if any) stay in use: a flaky JWKS server must not lock the app out.
            logger.warning("JWKS of %s not refreshed: %s", uri, exc)
            entry.error = f"{type(exc).__name__}: {exc}"
            return
        entry.keys, entry.fetched_at = keys, self._clock()
