"""The TLS trust every outbound connection of the hub verifies against."""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi

from hub.settings import SettingsError


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """Verify against the system trust store, certifi's, and the operator's extra CAs.

    certifi covers hosts whose system store is empty or absent (slim containers).
    Host name checking stays on (the default): callers pass the URL's host name as
    `server_hostname`, never the address they connected to.
    """
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=certifi.where())
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            # A start-up error an operator can act on, not a traceback.
            raise SettingsError(
                f"HUB_CA_BUNDLE: {ca_bundle} holds no usable CA certificates ({exc})"
            ) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
