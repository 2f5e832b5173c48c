"""Domains and their registered applications (`apps.yaml`), and the reloadable access config.

Everything an operator can get wrong is refused at load time with a message that
names the file, the entry (`domain` or `domain/client_id`) and the problem, so a
mistake never surfaces later as a puzzling 401 or 403.

`AccessConfig` holds the matrix and the registry as ONE snapshot: a reload reads
and validates both files and swaps the snapshot in a single assignment, so a
request never sees a new registry with an old matrix, and a bad file leaves the
running configuration as it was.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, KeySet, RSAKey

from hub.access import ConfigError, read_yaml
from hub.access.matrix import FHIR_ID, RESOURCE_TYPES, Matrix, Scopes, load_matrix
from hub.access.ratelimit import AppLimits

logger = logging.getLogger(__name__)

# The id of the hub's own Device in every domain; no application may take it.
HUB_DEVICE = "koppeltaal-hub"
DOMAIN_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
MIN_RSA_BITS = 2048
# Members that only a private (or symmetric) JWK has: RFC 7518 §6.2.2, §6.3.2, §6.4.
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
EC_CURVES = ("P-256", "P-384", "P-521")


class JwksError(ValueError):
    """A JWKS document that the hub will not use to verify client assertions."""


@dataclass(frozen=True, eq=False)
class App:
    """One registered application; `client_id` is also the id of its Device."""

    client_id: str
    name: str
    role: str
    domain: str
    jwks: KeySet | None = None
    jwks_uri: str | None = None
    # Webhook URL prefixes the app may use; empty = any https URL.
    endpoints: tuple[str, ...] = ()
    # Per resource type, the client_ids whose resources a GRANTED right covers.
    grants: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    # The app's own rate limits (`rate_limit:`); None = the hub's settings.
    rate_limit: AppLimits | None = None

    def endpoint_allowed(self, url: str) -> bool:
        """May this app subscribe with `url` as its webhook endpoint?"""
        if urlsplit(url).scheme != "https":
            return False
        return not self.endpoints or any(url.startswith(prefix) for prefix in self.endpoints)


@dataclass(frozen=True, eq=False)
class Domain:
    name: str
    apps: Mapping[str, App]


@dataclass(frozen=True, eq=False)
class Registry:
    domains: Mapping[str, Domain]

    def app(self, domain: str, client_id: str) -> App | None:
        found = self.domains.get(domain)
        return found.apps.get(client_id) if found else None


# --- public keys ---------------------------------------------------------------------------


def parse_public_jwks(data: object) -> KeySet:
    """Validate a JWKS of an application's PUBLIC signing keys; raises `JwksError`.

    Used for inline `jwks` and for documents fetched from a `jwks_uri` alike.
    """
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwksError('a JWKS must be a mapping with a "keys" list')
    if not data["keys"]:
        raise JwksError("the JWKS holds no keys")
    keys: list[RSAKey | ECKey] = []
    seen: set[str] = set()
    for index, member in enumerate(data["keys"]):
        key = _public_key(member, f"key {index + 1}")
        kid = str(key.kid)
        if kid in seen:
            raise JwksError(f"kid {kid!r} appears twice")
        seen.add(kid)
        keys.append(key)
    return KeySet(list(keys))


def _public_key(member: object, label: str) -> RSAKey | ECKey:
    if not isinstance(member, dict):
        raise JwksError(f"{label}: must be a JWK mapping")
    kid = member.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JwksError(f"{label}: has no kid (every key needs one to be chosen by)")
    label = f"key {kid!r}"
    private = sorted(name for name in PRIVATE_MEMBERS if name in member)
    if private:
        members = ", ".join(private)
        raise JwksError(
            f"{label}: holds PRIVATE key material ({members}); publish the public key only"
        )
    if member.get("use", "sig") != "sig":
        raise JwksError(f"{label}: use must be 'sig'")
    kty = member.get("kty")
    try:
        # joserfc warns (rather than fails) on a short RSA key; the size check below decides.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)
            if kty == "RSA":
                rsa_key = RSAKey.import_key(dict(member))
                bits = rsa_key.raw_value.key_size
                if bits < MIN_RSA_BITS:
                    raise JwksError(f"{label}: RSA key of {bits} bits, {MIN_RSA_BITS} at least")
                return rsa_key
            if kty == "EC":
                if member.get("crv") not in EC_CURVES:
                    raise JwksError(f"{label}: curve must be one of {', '.join(EC_CURVES)}")
                return ECKey.import_key(dict(member))
    except (JoseError, ValueError, TypeError) as exc:
        if isinstance(exc, JwksError):
            raise
        raise JwksError(f"{label}: not a usable {kty} key ({exc})") from exc
    raise JwksError(f"{label}: kty must be RSA or EC, not {kty!r}")


# --- loading -------------------------------------------------------------------------------

_Fail = Callable[[str], ConfigError]
_APP_KEYS = frozenset(
    {"client_id", "name", "role", "jwks", "jwks_uri", "endpoints", "grants", "rate_limit"}
)
_RATE_LIMIT_KEYS = ("token_per_minute", "writes_per_second")


def load_registry(apps_path: Path, matrix: Matrix) -> Registry:
    """Read and validate the apps file against `matrix`; any problem raises `ConfigError`."""
    return parse_registry(read_yaml(apps_path), matrix, source=apps_path)


def parse_registry(data: object, matrix: Matrix, *, source: Path | str) -> Registry:
    if not isinstance(data, dict):
        raise ConfigError(source, "", "must be a mapping with a 'domains' list")
    for key in data:
        if key != "domains":
            raise ConfigError(source, str(key), "unknown key (only 'domains' is allowed)")
    domains = data.get("domains")
    if not isinstance(domains, list) or not domains:
        raise ConfigError(source, "domains", "must be a non-empty list of domains")
    parsed: dict[str, Domain] = {}
    for index, item in enumerate(domains):
        domain = _domain(source, index, item, matrix)
        if domain.name in parsed:
            raise ConfigError(source, domain.name, "domain name appears twice")
        parsed[domain.name] = domain
    return Registry(MappingProxyType(parsed))


def _domain(source: Path | str, index: int, item: object, matrix: Matrix) -> Domain:
    entry = f"domains[{index}]"
    if not isinstance(item, dict):
        raise ConfigError(source, entry, "must be a mapping with 'name' and 'apps'")
    name = item.get("name")
    if not isinstance(name, str) or not DOMAIN_NAME.fullmatch(name):
        raise ConfigError(source, entry, f"name {name!r} must be 1-63 of [a-z0-9-], not '-' first")
    for key in item:
        if key not in ("name", "apps"):
            raise ConfigError(source, f"{name}.{key}", "unknown key (allowed: name, apps)")
    apps = item.get("apps")
    if not isinstance(apps, list):
        raise ConfigError(source, name, "'apps' must be a list of applications")
    parsed: dict[str, App] = {}
    for position, raw in enumerate(apps):
        app = _app(source, name, position, raw, matrix)
        if app.client_id in parsed:
            raise ConfigError(source, f"{name}/{app.client_id}", "client_id appears twice")
        parsed[app.client_id] = app
    for app in parsed.values():
        for rtype, client_ids in app.grants.items():
            for granted in client_ids:
                if granted not in parsed:
                    raise ConfigError(
                        source,
                        f"{name}/{app.client_id}",
                        f"grants.{rtype} names {granted!r}, which is no app of this domain",
                    )
    return Domain(name, MappingProxyType(parsed))


def _app(source: Path | str, domain: str, position: int, raw: object, matrix: Matrix) -> App:
    if not isinstance(raw, dict):
        raise ConfigError(source, f"{domain}/apps[{position}]", "must be a mapping")
    client_id = raw.get("client_id")
    if not isinstance(client_id, str) or not FHIR_ID.fullmatch(client_id):
        raise ConfigError(
            source,
            f"{domain}/apps[{position}]",
            f"client_id {client_id!r} must be a FHIR id (1-64 of A-Za-z0-9-.): it is a Device id",
        )
    if client_id == HUB_DEVICE:
        raise ConfigError(
            source,
            f"{domain}/apps[{position}]",
            f"client_id {client_id!r} is the hub's own Device id",
        )
    entry = f"{domain}/{client_id}"

    def fail(problem: str) -> ConfigError:
        return ConfigError(source, entry, problem)

    unknown = sorted(str(key) for key in raw if key not in _APP_KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_APP_KEYS))})")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise fail("'name' is required")
    role = raw.get("role")
    if role not in matrix.roles:
        raise fail(f"role {role!r} is not a role of {matrix.source} ({', '.join(matrix.roles)})")
    jwks, jwks_uri = raw.get("jwks"), raw.get("jwks_uri")
    if (jwks is None) == (jwks_uri is None):
        raise fail("give exactly one of 'jwks' (inline public keys) and 'jwks_uri'")
    key_set = None
    if jwks is not None:
        try:
            key_set = parse_public_jwks(jwks)
        except JwksError as exc:
            raise fail(f"jwks: {exc}") from exc
    if jwks_uri is not None and not _is_https_url(jwks_uri):
        raise fail(f"jwks_uri {jwks_uri!r} must be an https URL")
    return App(
        client_id=client_id,
        name=name,
        role=str(role),
        domain=domain,
        jwks=key_set,
        jwks_uri=jwks_uri,
        endpoints=_endpoints(raw.get("endpoints"), fail),
        grants=_grants(raw.get("grants"), fail),
        rate_limit=_rate_limit(raw.get("rate_limit"), fail),
    )


def _is_https_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme == "https" and bool(parts.hostname) and not parts.username


def _endpoints(value: object, fail: _Fail) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise fail("endpoints must be a non-empty list of https URL prefixes (or absent)")
    prefixes: list[str] = []
    for prefix in value:
        if not _is_https_url(prefix):
            raise fail(f"endpoint {prefix!r} must be an https URL prefix")
        # "https://host" would also admit "https://host.evil.example/": end the host part.
        if urlsplit(prefix).path == "":
            prefix += "/"
        prefixes.append(prefix)
    return tuple(prefixes)


def _grants(value: object, fail: _Fail) -> Mapping[str, tuple[str, ...]]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict):
        raise fail("grants must be a mapping of resource type → list of client_ids")
    grants: dict[str, tuple[str, ...]] = {}
    for rtype, client_ids in value.items():
        if rtype not in RESOURCE_TYPES:
            raise fail(f"grants: unknown resource type {rtype!r}")
        if not isinstance(client_ids, list) or not all(isinstance(c, str) for c in client_ids):
            raise fail(f"grants.{rtype} must be a list of client_ids")
        grants[rtype] = tuple(dict.fromkeys(client_ids))
    return MappingProxyType(grants)


def _rate_limit(value: object, fail: _Fail) -> AppLimits | None:
    """`rate_limit: {token_per_minute: N, writes_per_second: N}`, either may be left out."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise fail(f"rate_limit must be a mapping with {' and/or '.join(_RATE_LIMIT_KEYS)}")
    unknown = sorted(str(key) for key in value if key not in _RATE_LIMIT_KEYS)
    if unknown:
        raise fail(
            f"rate_limit: unknown key {unknown[0]!r} (allowed: {', '.join(_RATE_LIMIT_KEYS)})"
        )
    limits: dict[str, float] = {}
    for name, number in value.items():
        # YAML's `true` is an int to Python: a limit is a number, never a flag.
        if (
            isinstance(number, bool)
            or not isinstance(number, int | float)
            or not math.isfinite(number)
            or number < 0
        ):
            raise fail(
                f"rate_limit.{name} must be a number of 0 (no limit) or more, not {number!r}"
            )
        limits[name] = float(number)
    return AppLimits(**limits)


# --- the reloadable holder -----------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """A matrix and the registry validated against it: always used together."""

    matrix: Matrix
    registry: Registry
    # Every request and every matched notification asks for an app's scopes: computed
    # once per app for this snapshot. A reload of either file makes a new snapshot, so
    # an answer never outlives the configuration it came from.
    _scopes: dict[tuple[str, str], Scopes | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def scopes_of(self, domain: str, client_id: str) -> Scopes | None:
        """What the app's role grants it; None when it is not registered in `domain`."""
        key = (domain, client_id)
        if key not in self._scopes:
            app = self.registry.app(domain, client_id)
            self._scopes[key] = (
                None if app is None else self.matrix.scopes(app.role, app.client_id, app.grants)
            )
        return self._scopes[key]


@dataclass(frozen=True)
class _Fingerprint:
    mtime_ns: int
    size: int
    sha256: str


def _fingerprint(path: Path) -> _Fingerprint:
    try:
        stat = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot be read ({exc.strerror or exc})") from exc
    return _Fingerprint(stat.st_mtime_ns, stat.st_size, digest)


class AccessConfig:
    """The current matrix and registry, reloadable from their files.

    The first load raises `ConfigError` (the hub must not start on a bad file).
    `reload()` keeps the old snapshot when the new files are bad, logs, and raises.
    `reload_if_changed()` is for a file watcher or SIGHUP handler: it re-reads only
    when a file's content changed, and complains about one bad content only once.
    """

    def __init__(self, apps_path: Path, matrix_path: Path) -> None:
        self.apps_path = apps_path
        self.matrix_path = matrix_path
        self._lock = threading.Lock()
        self._snapshot, self._prints = self._read()
        self._rejected: tuple[_Fingerprint, _Fingerprint] | None = None

    @property
    def snapshot(self) -> Snapshot:
        """Take this once per request: its matrix and registry belong together."""
        return self._snapshot

    @property
    def matrix(self) -> Matrix:
        return self._snapshot.matrix

    @property
    def registry(self) -> Registry:
        return self._snapshot.registry

    def _read(self) -> tuple[Snapshot, tuple[_Fingerprint, _Fingerprint]]:
        # Fingerprint before parsing: a write racing the read is then seen as a change next time.
        prints = (_fingerprint(self.matrix_path), _fingerprint(self.apps_path))
        matrix = load_matrix(self.matrix_path)
        return Snapshot(matrix, load_registry(self.apps_path, matrix)), prints

    def reload(self) -> None:
        """Re-read both files; on any problem keep the current config and raise `ConfigError`."""
        with self._lock:
            self._reload()

    def _reload(self) -> None:
        try:
            snapshot, prints = self._read()
        except ConfigError as exc:
            logger.error("access configuration not reloaded, the old one stays: %s", exc)
            raise
        self._snapshot, self._prints, self._rejected = snapshot, prints, None
        logger.info(
            "access configuration reloaded from %s and %s", self.matrix_path, self.apps_path
        )

    def reload_if_changed(self) -> bool:
        """Reload when either file changed since the last load; True when it did reload."""
        with self._lock:
            try:
                current = (
                    self._cheap_print(self.matrix_path, 0),
                    self._cheap_print(self.apps_path, 1),
                )
            except (OSError, ConfigError) as exc:
                # Mid-replace by an editor, perhaps: try again on the next call.
                logger.warning("access configuration files cannot be read: %s", exc)
                return False
            if current == self._prints or current == self._rejected:
                return False
            try:
                self._reload()
            except ConfigError:
                self._rejected = current
                raise
            return True

    def _cheap_print(self, path: Path, index: int) -> _Fingerprint:
        """The file's fingerprint, hashing only when mtime or size moved (a touch is no change)."""
        known = self._prints[index]
        stat = path.stat()
        if (stat.st_mtime_ns, stat.st_size) == (known.mtime_ns, known.size):
            return known
        fresh = _fingerprint(path)
        if fresh.sha256 == known.sha256:
            # Same content: remember the new stat so we do not hash it again next time.
            prints = list(self._prints)
            prints[index] = fresh
            self._prints = (prints[0], prints[1])
        return fresh
