"""A push service on loopback, and the browser's half of Web Push, to check what is pushed.

A real browser subscribes through its vendor's push service (FCM, Mozilla's, Apple's),
which is not reachable from the tests. This stands in for both ends the sender cannot
see:

- `PushServiceStandIn`: an HTTPS server (tests/support/https_receiver.py, a trustme CA)
  that records every push and answers like a push service: 201 Created, or whatever a
  test queues (410 Gone, 503, ...);
- `Subscriber`: the browser's keys (RFC 8291 section 3: a P-256 key pair and a 16-byte
  auth secret); `subscription()` is what `PushSubscription.toJSON()` would give the
  page, and `decrypt()` opens an `aes128gcm` message with the private key (http_ece);
- `check_vapid`: what a push service checks of the sender (RFC 8292): the
  `Authorization: vapid t=<JWT>, k=<public key>` header, the JWT signed (ES256) by
  exactly that key, `aud` the push service's origin, `sub` a contact, `exp` within 24 h.

Nothing here shares code with the portal's sender: the checks use joserfc and http_ece
directly, so a mistake in how the portal uses pywebpush shows.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import http_ece  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt
from joserfc.jwk import ECKey

from tests.support.https_receiver import HttpsReceiver, LocalCA, ReceivedRequest, Reply

__all__ = [
    "PushServiceStandIn",
    "ReceivedPush",
    "Reply",
    "Subscriber",
    "VapidClaims",
    "b64url",
    "check_vapid",
]

_VAPID = re.compile(r"vapid\s+(?P<params>.+)", re.IGNORECASE)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Subscriber:
    """A browser's push keys: the private half stays here, as it stays in the browser."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.auth_secret = secrets.token_bytes(16)

    @property
    def p256dh(self) -> str:
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64url(point)

    def subscription(self, endpoint: str) -> dict[str, Any]:
        """What `PushSubscription.toJSON()` gives the page for this browser."""
        return {
            "endpoint": endpoint,
            "expirationTime": None,
            "keys": {"p256dh": self.p256dh, "auth": b64url(self.auth_secret)},
        }

    def decrypt(self, body: bytes) -> bytes:
        """An `aes128gcm` push message (RFC 8188 + RFC 8291) opened with this browser's key."""
        plaintext: bytes = http_ece.decrypt(
            body, private_key=self.private_key, auth_secret=self.auth_secret, version="aes128gcm"
        )
        return plaintext


@dataclass(frozen=True)
class VapidClaims:
    aud: str
    sub: str
    exp: int
    public_key: str  # the `k` parameter: the sender's VAPID public key, base64url


def check_vapid(authorization: str | None, *, audience: str) -> VapidClaims:
    """The VAPID token's claims, after every check a push service makes (AssertionError)."""
    assert authorization is not None, "no Authorization header"
    found = _VAPID.fullmatch(authorization.strip())
    assert found is not None, f"not a vapid Authorization: {authorization!r}"
    params = dict(part.strip().split("=", 1) for part in found["params"].split(",") if "=" in part)
    assert set(params) == {"t", "k"}, f"vapid wants t= and k=, got {sorted(params)}"
    point = _unb64url(params["k"])
    public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    # The signature must verify with exactly the key the header names (ES256 only).
    token = jwt.decode(params["t"], ECKey.import_key(public_key), algorithms=["ES256"])
    assert token.header.get("alg") == "ES256"
    now = int(time.time())
    jwt.JWTClaimsRegistry(
        now=now,
        aud={"essential": True, "value": audience},
        sub={"essential": True},
        exp={"essential": True},
    ).validate(token.claims)
    claims = token.claims
    assert str(claims["sub"]).startswith(("mailto:", "https:")), claims["sub"]
    assert int(claims["exp"]) <= now + 24 * 3600, "exp more than 24 h ahead (RFC 8292 s. 2)"
    return VapidClaims(str(claims["aud"]), str(claims["sub"]), int(claims["exp"]), params["k"])


@dataclass(frozen=True)
class ReceivedPush:
    request: ReceivedRequest
    vapid: VapidClaims
    plaintext: bytes

    @property
    def message(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.plaintext)
        return document


class PushServiceStandIn:
    """A push service's HTTPS front on loopback: records pushes, answers 201 by default."""

    def __init__(self, ca: LocalCA) -> None:
        self.receiver = HttpsReceiver(ca, hostnames=("127.0.0.1",))
        self.ca = ca

    def __enter__(self) -> PushServiceStandIn:
        self.receiver.start()
        self.receiver.reply(201, headers=[("Location", "/message/1")])
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.receiver.stop()

    @property
    def origin(self) -> str:
        """What a VAPID token's `aud` must be: scheme, host and port of the push service."""
        return f"https://127.0.0.1:{self.receiver.port}"

    def endpoint(self, name: str | None = None) -> str:
        """A fresh subscription endpoint, as a push service hands one to a browser."""
        return f"{self.origin}/push/{name or secrets.token_urlsafe(16)}"

    def queue(self, *replies: Reply) -> None:
        """Answer the next pushes with these (then 201 again)."""
        self.receiver.queue(*replies)

    def requests_to(self, endpoint: str) -> list[ReceivedRequest]:
        path = endpoint.removeprefix(self.origin)
        return [r for r in self.receiver.requests if r.target == path]

    def open(self, request: ReceivedRequest, subscriber: Subscriber) -> ReceivedPush:
        """Check a push as the push service and the browser would, and return what it says."""
        assert request.method == "POST"
        assert request.header("Content-Encoding") == "aes128gcm"
        assert int(request.header("TTL") or "-1") >= 0, "TTL is required (RFC 8030 s. 5.2)"
        vapid = check_vapid(request.header("Authorization"), audience=self.origin)
        return ReceivedPush(request, vapid, subscriber.decrypt(request.body))
