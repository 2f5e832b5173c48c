"""The browsers that asked to be told of a patient's new messages: Web Push subscriptions.

A subscription is what `PushSubscription.toJSON()` gives the page: the push service's
endpoint URL, the browser's P-256 public key (`keys.p256dh`) and its 16-byte auth secret
(`keys.auth`), both base64url (RFC 8291 section 3). The portal checks all three before
it keeps them, and keeps them in a small SQLite file in its state directory, keyed by
the patient's BSN and the endpoint, so they survive a restart.

The endpoint is a URL the portal will POST to, given by whoever opens the page. Only
hosts of known push services are accepted (configurable), so the portal cannot be made
to send requests to anything else on its network.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

# The push services of the browsers in use today; a host matches itself and its subdomains.
KNOWN_PUSH_SERVICES: tuple[str, ...] = (
    "fcm.googleapis.com",  # Chrome, Edge on Android, Opera, Samsung Internet
    "updates.push.services.mozilla.com",  # Firefox
    "push.apple.com",  # Safari (web.push.apple.com)
    "notify.windows.com",  # Edge on Windows (*.notify.windows.com)
)
_MAX_ENDPOINT = 2048
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS push_subscription (
    bsn TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    p256dh TEXT NOT NULL,
    auth TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (bsn, endpoint)
)
"""


class InvalidSubscription(ValueError):
    """The page sent something that is not a usable push subscription; the text says why."""


@dataclass(frozen=True)
class PushSubscription:
    endpoint: str
    p256dh: str  # the browser's ECDH public key, base64url (uncompressed P-256 point)
    auth: str  # the browser's auth secret, base64url (16 bytes)

    def info(self) -> dict[str, Any]:
        """The `subscription_info` pywebpush takes (the shape of the page's JSON)."""
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}


def parse_subscription(body: Any, *, push_hosts: Sequence[str]) -> PushSubscription:
    """The subscription in a page's JSON, or InvalidSubscription saying what is wrong."""
    if not isinstance(body, Mapping):
        raise InvalidSubscription("the body must be a JSON object (PushSubscription.toJSON())")
    endpoint = body.get("endpoint")
    keys = body.get("keys")
    if not isinstance(endpoint, str):
        raise InvalidSubscription("endpoint: a string is required")
    _check_endpoint(endpoint, push_hosts)
    if not isinstance(keys, Mapping):
        raise InvalidSubscription("keys: an object with p256dh and auth is required")
    p256dh = _base64url(keys.get("p256dh"), "keys.p256dh")
    try:
        if len(p256dh) != 65:
            raise ValueError("not an uncompressed point")
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    except ValueError:
        raise InvalidSubscription(
            "keys.p256dh: not an uncompressed P-256 public key (65 bytes, base64url)"
        ) from None
    if len(_base64url(keys.get("auth"), "keys.auth")) != 16:
        raise InvalidSubscription("keys.auth: the auth secret has 16 bytes")
    return PushSubscription(endpoint, str(keys["p256dh"]), str(keys["auth"]))


def _check_endpoint(endpoint: str, push_hosts: Sequence[str]) -> None:
    if len(endpoint) > _MAX_ENDPOINT:
        raise InvalidSubscription(f"endpoint: longer than {_MAX_ENDPOINT} characters")
    try:
        url = urlsplit(endpoint)
        host = (url.hostname or "").lower()
        _ = url.port  # raises ValueError for a port that is not a number
    except ValueError:
        raise InvalidSubscription("endpoint: not a URL") from None
    if url.scheme != "https" or not host or url.username is not None or url.password is not None:
        raise InvalidSubscription("endpoint: an https URL without user information is required")
    if any(character.isspace() for character in endpoint) or url.fragment:
        raise InvalidSubscription("endpoint: no whitespace or fragment allowed")
    if not any(host == known or host.endswith(f".{known}") for known in push_hosts):
        raise InvalidSubscription(f"endpoint: {host} is not a known push service")


def _base64url(value: Any, where: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise InvalidSubscription(f"{where}: a base64url string is required")
    if not _BASE64URL.fullmatch(value):
        raise InvalidSubscription(f"{where}: not base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except binascii.Error:  # an impossible length
        raise InvalidSubscription(f"{where}: not base64url") from None


class SubscriptionStore:
    """The subscriptions, in a SQLite file. Blocking: call it from a worker thread.

    Each call opens its own connection, so calls from any thread are safe; SQLite's own
    locking orders concurrent writes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(_SCHEMA)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=10)
        try:
            with connection:  # one transaction: committed, or rolled back on an error
                yield connection
        finally:
            connection.close()

    def save(self, bsn: str, subscription: PushSubscription) -> None:
        """Keep `subscription` for `bsn`; the same endpoint again replaces its keys."""
        with self._connection() as connection:
            connection.execute(
                "INSERT INTO push_subscription (bsn, endpoint, p256dh, auth, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (bsn, endpoint) DO UPDATE SET "
                "p256dh = excluded.p256dh, auth = excluded.auth, updated_at = excluded.updated_at",
                (
                    bsn,
                    subscription.endpoint,
                    subscription.p256dh,
                    subscription.auth,
                    datetime.now(UTC).isoformat(),
                ),
            )

    def of_patient(self, bsn: str) -> list[PushSubscription]:
        with self._connection() as connection:
            rows = connection.execute(
                "SELECT endpoint, p256dh, auth FROM push_subscription WHERE bsn = ? "
                "ORDER BY updated_at",
                (bsn,),
            ).fetchall()
        return [PushSubscription(*row) for row in rows]

    def remove(self, bsn: str, endpoint: str) -> bool:
        """Forget one subscription; False when there was none."""
        with self._connection() as connection:
            cursor = connection.execute(
                "DELETE FROM push_subscription WHERE bsn = ? AND endpoint = ?", (bsn, endpoint)
            )
        return cursor.rowcount > 0
