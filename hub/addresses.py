"""Which addresses the hub may connect to on an application's behalf.

Webhook endpoints and `jwks_uri`s are URLs chosen by applications. Their hosts
may resolve only to public addresses, unless an operator allow-lists a network
(`HUB_WEBHOOK_ALLOW_NETWORKS`, for development and tests): no loopback, private,
link-local, multicast, reserved or carrier-grade NAT address, also not dressed
up as an IPv6 address (mapped, 6to4, NAT64). `hub.net` applies these rules at
Subscription time and again to the very address it connects to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

from hub.settings import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""Answers the addresses of `(host, port)`; raises OSError when there are none."""

_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # CGNAT, RFC 6598
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052


class UnsafeDestination(Exception):
    """A URL, or an address its host resolves to, that the hub will not contact."""


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the event loop's getaddrinfo (non-blocking, honours /etc/hosts)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, when it is one of the mapped forms."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64_WELL_KNOWN:
        # On a DNS64 network every IPv4-only receiver resolves to this prefix, so
        # judge the IPv4 address inside rather than refusing the prefix as reserved.
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why a webhook may not reach `address` (ignoring allow-lists), or None when public."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return refusal_reason(embedded)
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED_ADDRESS_SPACE:
        return "a carrier-grade NAT address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "not a public address"
    return None


def _allowed(address: IPAddress, allow_networks: Sequence[IPNetwork]) -> bool:
    candidates = [address]
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        candidates.append(embedded)
    return any(
        candidate.version == network.version and candidate in network
        for candidate in candidates
        for network in allow_networks
    )


async def resolve_public(
    host: str,
    port: int,
    *,
    allow_networks: Sequence[IPNetwork],
    resolver: Resolver = system_resolver,
) -> list[IPAddress]:
    """The addresses of `host`, all of them safe to connect to.

    Raises `UnsafeDestination` when ANY address is private, loopback, etc. and not
    allow-listed: a name that mixes public and private answers is an attack, not a
    configuration to make the best of. Raises OSError when the name does not resolve.
    """
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        answers = await resolver(host, port)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} has no addresses") from None
        addresses = [ipaddress.ip_address(answer) for answer in answers]
    for address in addresses:
        reason = refusal_reason(address)
        if reason is not None and not _allowed(address, allow_networks):
            embedded = _embedded_ipv4(address)
            shown = f"{address} ({embedded})" if embedded else str(address)
            if host != str(address):
                shown = f"{host} resolves to {shown}, which"
            raise UnsafeDestination(f"{shown} is {reason}")
    return addresses
