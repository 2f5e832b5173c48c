"""Outbound HTTP: the one package of the hub that speaks HTTP to other servers.

Webhook endpoints and `jwks_uri`s are URLs chosen by applications, so every
connection the hub opens to them goes through a destination guard: the host name
is resolved, every address checked (public, or inside
`HUB_WEBHOOK_ALLOW_NETWORKS`; `hub.addresses`), and the socket is connected to
exactly the address that was checked, while SNI, the certificate check and the
Host header keep the URL's host name. Connections are pooled by host name, never
shared between names.

- `urls`: which URLs are accepted (`check_url`, at Subscription time), and
  `redacted` for error texts;
- `tls`: the trust every connection verifies against;
- `webhooks`: the notification POST, a lean HTTP/1.1 client on asyncio (hot path);
- `httpx_transport`: httpx on a guarded httpcore backend, for JWKS fetches;
- `client`: `OutboundClient`, which holds both and is what the rest of the hub uses.
"""

from hub.addresses import Resolver, UnsafeDestination, resolve_public
from hub.net.client import DeliveryResult, OutboundClient, OutboundError
from hub.net.tls import tls_context
from hub.net.urls import check_url, endpoint_within, redacted

__all__ = [
    "DeliveryResult",
    "OutboundClient",
    "OutboundError",
    "Resolver",
    "UnsafeDestination",
    "check_url",
    "endpoint_within",
    "redacted",
    "resolve_public",
    "tls_context",
]
