"""Telling a patient's browsers "you have a new message": Web Push from the portal.

pywebpush does the protocol: RFC 8030 delivery, RFC 8291 message encryption to the
browser's key, and an RFC 8292 VAPID token signed with the portal's key. This module
decides the rest:

- the key: a P-256 VAPID key pair made on the portal's first start and kept (mode
  0600) in its state directory; its public half is the page's `applicationServerKey`;
- what is sent: exactly what the hub's e-mail says ("you have a new message" and where
  to read it), never the message's subject, text or attachments;
- what a push service's answer means: 2xx delivered; 404 or 410 the subscription is
  gone (revoked, expired), so it is removed; anything else, or no answer, is retried
  with exponential backoff (Retry-After honoured), a bounded number of times.

pywebpush is synchronous (requests), so every attempt runs in a worker thread: the
portal's event loop never waits for a push service.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from pathlib import Path
from urllib.parse import quote

import requests
from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid, VapidException  # type: ignore[import-untyped]
from pywebpush import WebPushException, webpush  # type: ignore[import-untyped]

from examples.portal.push_store import KNOWN_PUSH_SERVICES, PushSubscription, SubscriptionStore

log = logging.getLogger("portal.push")

# The hub's e-mail says the same (hub/notify/mail.py): no medical content, only where to look.
NEW_MESSAGE_TITLE = "Nieuw bericht voor u / New message for you"
NEW_MESSAGE_BODY = (
    "Er staat een nieuw bericht van uw zorgverlener voor u klaar. / "
    "A new message from your healthcare provider is waiting for you."
)
# RFC 8030 section 5.4: a push service keeps only the newest message of a topic for a
# device that is offline, so a patient coming back online is told once, not ten times.
_TOPIC = "new-message"
_GONE = frozenset({404, 410})


@dataclass(frozen=True)
class PushConfig:
    state_dir: Path  # where the VAPID key and the subscriptions are kept
    subject: str  # VAPID `sub`: how a push service reaches the operator (mailto: or https:)
    push_hosts: tuple[str, ...] = KNOWN_PUSH_SERVICES  # endpoints the portal will send to
    ca_bundle: Path | None = None  # trust this CA instead of the system's (a local stand-in)
    attempts: int = 5
    backoff: float = 2.0  # seconds before the second attempt; doubled for each next one
    max_backoff: float = 300.0
    ttl: int = 24 * 3600  # how long a push service keeps the message for an offline device
    timeout: float = 10.0  # seconds per request to a push service

    @property
    def vapid_key_file(self) -> Path:
        return self.state_dir / "vapid-private-key.pem"

    @property
    def subscriptions_file(self) -> Path:
        return self.state_dir / "push-subscriptions.sqlite3"


@dataclass(frozen=True)
class PushMessage:
    """What the browser shows: the service worker turns it into a notification."""

    title: str
    body: str
    url: str  # a path on the portal: the service worker opens it on its own origin

    def payload(self) -> str:
        return json.dumps({"title": self.title, "body": self.body, "url": self.url})


def new_message(bsn: str) -> PushMessage:
    """ "You have a new message", with a link to the patient's inbox."""
    return PushMessage(NEW_MESSAGE_TITLE, NEW_MESSAGE_BODY, f"/patients/{quote(bsn, safe='')}")


class PushResult(StrEnum):
    DELIVERED = "delivered"
    REMOVED = "removed"  # the push service said the subscription is gone
    FAILED = "failed"  # every attempt failed; the subscription is kept


@dataclass(frozen=True)
class PushOutcome:
    bsn: str
    endpoint: str
    result: PushResult
    attempts: int
    status: int | None  # the last answer's status; None when there was none
    error: str | None = None


@dataclass(frozen=True)
class _Answer:
    status: int | None
    retry_after: float | None = None
    error: str | None = None


# -- the key ----------------------------------------------------------------------------


def load_or_create_vapid_key(path: Path) -> Vapid:
    """The portal's VAPID key pair from `path`; on first start it is made and written there.

    The key is written to a temporary file (mode 0600) and linked to its name: linking
    fails when the name exists, so of two portals starting at once on one state
    directory exactly one key wins and both use it. No partial files.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Vapid()
        key.generate_keys()
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".vapid-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(key.private_pem())
            try:
                os.link(temporary, path)
                log.info("made a new VAPID key pair: %s", path)
            except FileExistsError:
                pass  # another process made it first: use theirs
        finally:
            os.unlink(temporary)
    return Vapid.from_file(str(path))


def application_server_key(key: Vapid) -> str:
    """The public key as the page's `applicationServerKey`: base64url, uncompressed point."""
    raw = key.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


# -- sending ----------------------------------------------------------------------------


class PushSender:
    """Sends messages to subscriptions, retrying and pruning as the push service answers."""

    def __init__(self, config: PushConfig, key: Vapid, store: SubscriptionStore) -> None:
        self.config = config
        self.key = key
        self.store = store
        try:  # a subject the library refuses would fail every push: say so at start
            key.sign({"sub": config.subject, "aud": "https://push.example"})
        except VapidException:
            raise ValueError(
                f"the VAPID subject must be a mailto: address or an https: URL of a "
                f"public host, not {config.subject!r}"
            ) from None

    @classmethod
    def open(cls, config: PushConfig) -> PushSender:
        """The sender with the portal's key and subscriptions (both made on first start)."""
        key = load_or_create_vapid_key(config.vapid_key_file)
        return cls(config, key, SubscriptionStore(config.subscriptions_file))

    @property
    def public_key(self) -> str:
        return application_server_key(self.key)

    async def deliver(
        self, bsn: str, subscription: PushSubscription, message: PushMessage
    ) -> PushOutcome:
        """Push `message` to one subscription of `bsn`, until it is delivered or given up."""
        answer = _Answer(None)
        for attempt in range(1, self.config.attempts + 1):
            answer = await asyncio.to_thread(self._send, subscription, message)
            if answer.status is not None and 200 <= answer.status < 300:
                return self._outcome(bsn, subscription, PushResult.DELIVERED, attempt, answer)
            if answer.status in _GONE:
                await asyncio.to_thread(self.store.remove, bsn, subscription.endpoint)
                return self._outcome(bsn, subscription, PushResult.REMOVED, attempt, answer)
            if attempt < self.config.attempts:
                backoff = self.config.backoff * 2 ** (attempt - 1)
                delay = min(max(backoff, answer.retry_after or 0.0), self.config.max_backoff)
                log.info(
                    "push to %s failed (%s); attempt %d in %.1f s",
                    _origin(subscription.endpoint),
                    answer.error or answer.status,
                    attempt + 1,
                    delay,
                )
                await asyncio.sleep(delay)
        return self._outcome(bsn, subscription, PushResult.FAILED, self.config.attempts, answer)

    def _send(self, subscription: PushSubscription, message: PushMessage) -> _Answer:
        """One attempt (blocking: runs in a worker thread)."""
        with requests.Session() as session:
            if self.config.ca_bundle is not None:
                session.verify = str(self.config.ca_bundle)
                # Else REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from the environment would
                # override the session's `verify` (requests prefers them).
                session.trust_env = False
            try:
                response = webpush(
                    subscription.info(),
                    data=message.payload(),
                    vapid_private_key=self.key,
                    # A fresh dict each time: pywebpush writes `aud` (the push service's
                    # origin) and `exp` into it, and the next push may go elsewhere.
                    vapid_claims={"sub": self.config.subject},
                    ttl=self.config.ttl,
                    timeout=self.config.timeout,
                    headers={"Urgency": "normal", "Topic": _TOPIC},
                    requests_session=session,
                )
            except WebPushException as exc:
                if exc.response is None:
                    return _Answer(None, error=str(exc.message))
                return _Answer(
                    exc.status_code,
                    retry_after=_seconds(exc.retry_after),
                    error=f"{exc.status_code} {exc.response.reason}",
                )
            except requests.RequestException as exc:
                return _Answer(None, error=f"{type(exc).__name__}: {exc}")
            return _Answer(response.status_code)

    @staticmethod
    def _outcome(
        bsn: str,
        subscription: PushSubscription,
        result: PushResult,
        attempts: int,
        answer: _Answer,
    ) -> PushOutcome:
        return PushOutcome(
            bsn, subscription.endpoint, result, attempts, answer.status, answer.error
        )


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date (RFC 9110)."""
    if not retry_after:
        return None
    if retry_after.strip().isdigit():
        return float(retry_after)
    try:
        return max(parsedate_to_datetime(retry_after).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def _origin(endpoint: str) -> str:
    """Only the push service's origin goes to the log: the rest of an endpoint is a secret."""
    scheme, _, rest = endpoint.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"
