"""For `make demo`: a push service stand-in on loopback, and the browser's half of Web Push.

No browser vendor's push service (FCM, Mozilla's, Apple's) is reachable in an offline
demo, so this stands in for the two ends the portal does not own:

- `PushCatcher`: an HTTPS server (a throwaway trustme CA, which the portal is told to
  trust) that keeps every push it is sent and answers 201 Created, as a push service
  does before it forwards the message to the device;
- `DemoBrowser`: the keys a browser makes when a page subscribes (RFC 8291: a P-256
  key pair and a 16-byte auth secret); its `subscription()` is what
  `PushSubscription.toJSON()` hands the page, and `open()` does what the browser does
  with a push: checks nothing, decrypts it with the private key.

`VapidToken.read` shows what the push service checks of the sender (RFC 8292): the JWT
in `Authorization: vapid t=…, k=…`, verified with the key `k` names. This is not part of
the portal; the tests use their own, stricter stand-in (tests/support/push_service.py).
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import http_ece  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt
from joserfc.jwk import ECKey

from examples.portal.server import local_certificate


@dataclass(frozen=True)
class CaughtPush:
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass(frozen=True)
class VapidToken:
    claims: dict[str, Any]
    public_key: str  # `k`: the sender's VAPID public key, base64url

    @classmethod
    def read(cls, authorization: str) -> VapidToken:
        """The claims of `vapid t=<JWT>, k=<key>`, after checking the signature with `k`."""
        scheme, _, parameters = authorization.partition(" ")
        if scheme.lower() != "vapid":
            raise ValueError(f"not a VAPID authorization: {authorization[:20]!r}")
        fields = dict(part.strip().split("=", 1) for part in parameters.split(","))
        point = _unb64url(fields["k"])
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        token = jwt.decode(fields["t"], ECKey.import_key(key), algorithms=["ES256"])
        return cls(dict(token.claims), fields["k"])


class DemoBrowser:
    """A browser's push keys; the private half never leaves it."""

    def __init__(self) -> None:
        self._private_key = ec.generate_private_key(ec.SECP256R1())
        self._auth_secret = secrets.token_bytes(16)

    def subscription(self, endpoint: str) -> dict[str, Any]:
        """What `PushSubscription.toJSON()` would hand the inbox page."""
        point = self._private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": endpoint,
            "expirationTime": None,
            "keys": {"p256dh": _b64url(point), "auth": _b64url(self._auth_secret)},
        }

    def open(self, push: CaughtPush) -> dict[str, Any]:
        """The message in a push (RFC 8291 `aes128gcm`), as the service worker gets it."""
        plaintext = http_ece.decrypt(
            push.body,
            private_key=self._private_key,
            auth_secret=self._auth_secret,
            version="aes128gcm",
        )
        message: dict[str, Any] = json.loads(plaintext)
        return message


class PushCatcher:
    """An HTTPS push service stand-in on 127.0.0.1 that keeps every push it accepts."""

    def __init__(self, directory: Path) -> None:
        certificate = local_certificate(directory, "127.0.0.1")
        assert certificate.ca_bundle is not None
        self.ca_bundle: Path = certificate.ca_bundle
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificate.certfile, certificate.keyfile)
        self._caught: list[CaughtPush] = []
        self._changed = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="push-catcher", daemon=True
        )

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def endpoint(self) -> str:
        """A new subscription endpoint, as a push service hands one to a browser."""
        return f"{self.origin}/push/{secrets.token_urlsafe(12)}"

    def wait_for(self, count: int, timeout: float = 60.0) -> list[CaughtPush]:
        """Block until `count` pushes arrived; TimeoutError after `timeout` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._caught) >= count, timeout):
                raise TimeoutError(f"expected {count} pushes, got {len(self._caught)}")
            return list(self._caught)

    def __enter__(self) -> PushCatcher:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def _keep(self, push: CaughtPush) -> None:
        with self._changed:
            self._caught.append(push)
            self._changed.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        keep = self._keep

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                keep(CaughtPush(self.path, list(self.headers.items()), body))
                self.send_response(201)
                self.send_header("Location", f"{self.path}/message")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the demo prints what it caught instead

        return Handler


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
