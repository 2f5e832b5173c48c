"""The running hub's shared services, built once by the app's lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from hub.access.apps import HUB_DEVICE as HUB_DEVICE
from hub.access.apps import AccessConfig
from hub.access.jwks_cache import JwksCache
from hub.access.keys import SigningKeys
from hub.access.tokens import VerifiedTokens
from hub.audit.writer import AuditWriter
from hub.notify.registry import SubscriptionIndex
from hub.settings import Settings
from hub.store.clock import utcnow as utcnow
from hub.store.db import Database


@dataclass
class Runtime:
    settings: Settings
    database: Database
    access: AccessConfig
    keys: SigningKeys
    jwks: JwksCache
    audit: AuditWriter
    chain_key: bytes
    subscriptions: SubscriptionIndex
    # The claims of recently verified access tokens, so a client's every request does not
    # pay for a signature check; what the client may do is still decided per request.
    verified_tokens: VerifiedTokens = field(
        default_factory=lambda: VerifiedTokens(max_entries=10_000)
    )
    # Large request bodies are worked on in a thread, one at a time (hub.interactions.offload).
    heavy_work: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    # Called after a commit that queued deliveries: wakes the dispatcher at once.
    wake_dispatcher: Callable[[], None] = field(default=lambda: None)
    version: str = "0.1.0"

    def fhir_base(self, domain: str) -> str:
        return self.settings.fhir_base(domain)

    def issuer(self, domain: str) -> str:
        return f"{self.settings.public_url}/{domain}/oauth2"
