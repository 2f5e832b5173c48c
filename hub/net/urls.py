"""Which webhook and JWKS URLs the hub accepts, and how they are shown in error texts.

`check_url` runs when a Subscription is created or updated; the same address check runs
again on every connection (`hub.net.webhooks`, `hub.net.httpx_transport`), so passing here
grants nothing later.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from hub.addresses import Resolver, UnsafeDestination, resolve_public, system_resolver
from hub.settings import IPNetwork


def redacted(url: str) -> str:
    """`url` without user info, query or fragment, which may carry secrets.

    Error texts mention URLs and end up in Subscription.error and AuditEvents.
    """
    base = url.split("#", 1)[0].split("?", 1)[0]
    scheme, separator, rest = base.partition("://")
    if not separator:
        return base
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def parse_https(url: str) -> httpx.URL:
    """The URL, if it is an absolute https URL with a host and without credentials.

    Raises `UnsafeDestination` otherwise, with the URL redacted.
    """
    shown = repr(redacted(url))
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UnsafeDestination(f"{shown} is not a valid URL: {exc}") from exc
    if parsed.scheme != "https":
        raise UnsafeDestination(f"{shown} is not an https URL")
    if parsed.userinfo:
        raise UnsafeDestination(f"{shown} must not contain a user name or password")
    if not parsed.host:
        raise UnsafeDestination(f"{shown} has no host")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise UnsafeDestination(f"{shown} is not a valid URL: port out of range")
    return parsed


def _comparable_path(path: str) -> str:
    """A decoded path with dot segments resolved, as a lenient server would see it."""
    segments: list[str] = []
    parts = path.replace("\\", "/").split("/")
    for part in parts[1:]:
        if part == "..":
            if segments:
                segments.pop()
        elif part != ".":
            segments.append(part)
    if parts[-1] in (".", ".."):
        segments.append("")
    return "/" + "/".join(segments)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.raw_host.decode("ascii").rstrip("."), url.port


def endpoint_within(url: str, prefix: str) -> bool:
    """Whether `url` lies under the registered endpoint `prefix`.

    Scheme, host and port must be equal (so `https://a.example.evil.com/` is not
    under `https://a.example`). Paths are compared after percent-decoding and
    resolving dot segments. A prefix path ending in `/` admits everything below it;
    one that does not admits itself and everything below `<path>/`, never a
    sibling: `https://a.example/hooks` admits `/hooks` and `/hooks/x` but not
    `/hooks-evil`. Query strings are not compared.
    """
    try:
        candidate, allowed = httpx.URL(url), httpx.URL(prefix)
    except (httpx.InvalidURL, TypeError):
        return False
    if _origin(candidate) != _origin(allowed):
        return False
    path, base = _comparable_path(candidate.path), _comparable_path(allowed.path)
    if base.endswith("/"):
        return path.startswith(base)
    return path == base or path.startswith(base + "/")


async def check_url(
    url: str,
    *,
    allow_networks: Sequence[IPNetwork],
    allowed_prefixes: Sequence[str],
    resolver: Resolver = system_resolver,
) -> None:
    """Refuse (`UnsafeDestination`) a webhook URL at Subscription create/update time.

    https only, no credentials, within one of the app's registered endpoint prefixes
    when it has any, and resolving to allowed addresses now. The same address check
    runs again on every connection, so passing here grants nothing later.
    """
    parsed = parse_https(url)
    if allowed_prefixes and not any(endpoint_within(url, p) for p in allowed_prefixes):
        raise UnsafeDestination(
            f"{redacted(url)!r} is not within the application's registered endpoints"
        )
    host = parsed.raw_host.decode("ascii")
    try:
        await resolve_public(
            host, parsed.port or 443, allow_networks=allow_networks, resolver=resolver
        )
    except OSError as exc:
        raise UnsafeDestination(f"{host} does not resolve ({exc})") from exc
