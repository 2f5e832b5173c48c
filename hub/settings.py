"""Settings: the one module that reads `HUB_*` environment variables.

Everything else receives a `Settings` instance; command-line flags override the
environment by building a new instance with `dataclasses.replace`.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# What one hub process runs (docs/architecture.md §6): `all` = the API and delivery
# (`hub serve`), `api` = the API only (`hub serve --role api`), `worker` = delivery and
# housekeeping without an HTTP server (`hub worker`).
ROLES = ("all", "api", "worker")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class SettingsError(ValueError):
    """A `HUB_*` variable holds a value the hub cannot use."""


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite+aiosqlite:///./var/hub.db"
    # PostgreSQL connections one hub process may hold (plus its LISTEN connection);
    # requests wait for a free one rather than exhaust the server's max_connections.
    database_pool_size: int = 10
    # PostgreSQL cancels a statement that runs longer (seconds), so one costly search
    # cannot hold a pooled connection for everyone else; SQLite has no such limit.
    database_statement_timeout: float = 5.0
    public_url: str = "http://127.0.0.1:8080"
    apps_file: Path = Path("examples/apps.yaml")
    authz_matrix: Path = Path("authz_matrix.yaml")
    keys_dir: Path = Path("var/keys")
    ca_bundle: Path | None = None
    webhook_allow_networks: tuple[IPNetwork, ...] = ()
    smtp_url: str | None = None
    smtp_from: str = "Koppeltaal Hub <no-reply@localhost>"
    portal_url: str = "http://127.0.0.1:8090"
    registration_url: str = "http://127.0.0.1:8090/register"
    max_body_bytes: int = 10 * 1024 * 1024
    # The connection guard (hub.api.connections): how long a request's headers and its
    # body may take to arrive, how large the headers may be, connections per address.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 32 * 1024
    connections_per_address: int = 128
    access_token_lifetime: int = 900
    token_algorithm: str = "RS512"  # noqa: S105 (an algorithm name, not a secret)
    default_page_size: int = 50
    max_page_size: int = 500
    delivery_poll_seconds: float = 10.0
    delivery_lease_seconds: float = 60.0
    # The first retry delay of a failed notification; the later steps keep their ratio
    # to it (5 s → 30 s, 2 min, …). Shorter only for tests and demos.
    retry_base_seconds: float = 5.0
    delivery_concurrency: int = 32
    endpoint_concurrency: int = 4
    # The share of `delivery_concurrency` the endpoints of one app may hold at once: a
    # slow app (many slow endpoints) never takes every place from the others.
    delivery_app_share: float = 0.5
    webhook_connect_timeout: float = 5.0
    webhook_timeout: float = 15.0
    housekeeping_seconds: float = 30.0
    site: str = field(default_factory=lambda: os.uname().nodename)
    role: str = "all"
    # Rate limits (hub.access.ratelimit), in memory per process; 0 turns one off. Token
    # requests per client address and per claimed client_id, a minute's worth at once.
    rate_limit_token_per_minute: float = 120.0
    # FHIR writes per app: off by default, so throughput benchmarks are not throttled.
    rate_limit_writes_per_second: float = 0.0
    # Refused requests of callers without a valid token, per client address, before its
    # requests are answered 429 for the rest of the minute (audited once, not each).
    rate_limit_refused_per_minute: int = 60
    # What the hub's log lines look like and how many there are (hub.logs): `text` for a
    # terminal, `json` (one object a line) for a log shipper.
    log_format: str = "text"
    log_level: str = "info"
    # A bearer secret `GET /metrics` requires; None: the metrics are public.
    metrics_token: str | None = None
    # Where the processes of `hub serve --workers N` keep their counters, so that a scrape
    # of any of them reports them all (prometheus-client's multiprocess mode). Read from
    # PROMETHEUS_MULTIPROC_DIR, the variable that library reads itself; `hub serve` sets
    # it to a fresh directory when it starts several workers.
    metrics_dir: Path | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def serves_api(self) -> bool:
        """Whether this process answers HTTP (roles `all` and `api`)."""
        return self.role != "worker"

    @property
    def delivers(self) -> bool:
        """Whether this process runs the dispatcher (roles `all` and `worker`)."""
        return self.role != "api"

    def fhir_base(self, domain: str) -> str:
        return f"{self.public_url.rstrip('/')}/{domain}/fhir"

    def token_endpoint(self, domain: str) -> str:
        return f"{self.public_url.rstrip('/')}/{domain}/oauth2/token"


def _networks(raw: str, name: str) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for part in raw.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise SettingsError(f"{name}: {part!r} is not a CIDR network ({exc})") from exc
    return tuple(networks)


def _http_url(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name) or default
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"{name}: {value!r} is not an http(s) URL")
    return value


def _smtp_url(env: Mapping[str, str]) -> str | None:
    value = env.get("HUB_SMTP_URL") or None
    if value is not None:
        parts = urlsplit(value)
        # hub.notify.mail parses it in full; here the scheme, host and TLS option, so that
        # a typo stops the start instead of sending in clear (the password never echoed).
        shown = _without_password(value)
        if parts.scheme not in ("smtp", "submission", "smtps") or not parts.hostname:
            raise SettingsError(
                f"HUB_SMTP_URL: {shown!r} is not an smtp://, submission:// or smtps:// URL"
            )
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when asked
        except ValueError:
            raise SettingsError(f"HUB_SMTP_URL: {shown!r} has an invalid port") from None
        options = {"smtp": ("starttls=true", "starttls=false"), "submission": ("starttls=true",)}
        if parts.query and parts.query.lower() not in options.get(parts.scheme, ()):
            raise SettingsError(
                f"HUB_SMTP_URL: {shown!r}: only smtp:// takes a parameter, "
                "?starttls=true or ?starttls=false (submission:// always uses STARTTLS)"
            )
    return value


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def _number(
    env: Mapping[str, str], name: str, default: float, *, zero_allowed: bool = False
) -> float:
    """A finite number above 0 (or 0 too, where `zero_allowed` says 0 means "off")."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: {raw!r} is not a number") from exc
    if not math.isfinite(value):
        raise SettingsError(f"{name}: {raw!r} is not a finite number")
    if zero_allowed and value < 0:
        raise SettingsError(f"{name}: must be 0 (no limit) or more, got {raw!r}")
    if not zero_allowed and value <= 0:
        raise SettingsError(f"{name}: must be greater than zero, got {raw!r}")
    return value


def _share(env: Mapping[str, str], name: str, default: float) -> float:
    """A fraction above 0, at most 1."""
    value = _number(env, name, default)
    if value > 1:
        raise SettingsError(f"{name}: a share is at most 1, got {env[name]!r}")
    return value


def _rate(env: Mapping[str, str], name: str, default: float) -> float:
    """A rate limit: a finite number, 0 (no limit) or more."""
    return _number(env, name, default, zero_allowed=True)


# PostgreSQL's largest statement_timeout: 2^31 - 1 milliseconds.
_MAX_STATEMENT_TIMEOUT = (2**31 - 1) // 1000


def _statement_timeout(env: Mapping[str, str], default: float) -> float:
    name = "HUB_DATABASE_STATEMENT_TIMEOUT"
    value = _number(env, name, default)
    if value > _MAX_STATEMENT_TIMEOUT:
        raise SettingsError(f"{name}: at most {_MAX_STATEMENT_TIMEOUT} seconds, got {value:g}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    """One of `choices` (case-insensitive), or `default` when unset."""
    value = (env.get(name) or default).lower()
    if value not in choices:
        raise SettingsError(f"{name}: {env[name]!r} is not one of {', '.join(choices)}")
    return value


# A shorter secret can be guessed; spaces and control characters cannot travel in a header.
_MIN_SECRET = 16


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """A bearer secret: None when unset; at least 16 visible ASCII characters otherwise.

    The error never repeats the value: it is a secret.
    """
    value = env.get(name) or None
    if value is None:
        return None
    if len(value) < _MIN_SECRET:
        raise SettingsError(f"{name}: at least {_MIN_SECRET} characters, got {len(value)}")
    if not all("!" <= character <= "~" for character in value):
        raise SettingsError(f"{name}: only visible ASCII characters (no spaces)")
    return value


def _directory(env: Mapping[str, str], name: str) -> Path | None:
    """An existing directory, or None when unset."""
    value = env.get(name) or None
    if value is None:
        return None
    if not Path(value).is_dir():
        raise SettingsError(f"{name}: {value!r} is not a directory")
    return Path(value)


def _role(env: Mapping[str, str]) -> str:
    value = env.get("HUB_ROLE") or "all"
    if value not in ROLES:
        raise SettingsError(f"HUB_ROLE: {value!r} is not one of {', '.join(ROLES)}")
    return value


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from `HUB_*` variables; unset ones keep their defaults."""
    env = os.environ if env is None else env
    defaults = Settings()

    def text(name: str, default: str) -> str:
        value = env.get(name, "")
        return value if value else default

    ca_bundle = env.get("HUB_CA_BUNDLE") or None
    return Settings(
        database_url=text("HUB_DATABASE_URL", defaults.database_url),
        database_pool_size=int(_number(env, "HUB_DATABASE_POOL_SIZE", defaults.database_pool_size)),
        database_statement_timeout=_statement_timeout(env, defaults.database_statement_timeout),
        public_url=_http_url(env, "HUB_PUBLIC_URL", defaults.public_url).rstrip("/"),
        apps_file=Path(text("HUB_APPS", str(defaults.apps_file))),
        authz_matrix=Path(text("HUB_AUTHZ_MATRIX", str(defaults.authz_matrix))),
        keys_dir=Path(text("HUB_KEYS_DIR", str(defaults.keys_dir))),
        ca_bundle=Path(ca_bundle) if ca_bundle else None,
        webhook_allow_networks=_networks(
            env.get("HUB_WEBHOOK_ALLOW_NETWORKS", ""), "HUB_WEBHOOK_ALLOW_NETWORKS"
        ),
        smtp_url=_smtp_url(env),
        smtp_from=text("HUB_SMTP_FROM", defaults.smtp_from),
        portal_url=_http_url(env, "HUB_PORTAL_URL", defaults.portal_url).rstrip("/"),
        registration_url=_http_url(env, "HUB_REGISTRATION_URL", defaults.registration_url),
        max_body_bytes=int(_number(env, "HUB_MAX_BODY_BYTES", defaults.max_body_bytes)),
        header_timeout=_number(env, "HUB_HEADER_TIMEOUT", defaults.header_timeout),
        body_timeout=_number(env, "HUB_BODY_TIMEOUT", defaults.body_timeout),
        max_header_bytes=int(_number(env, "HUB_MAX_HEADER_BYTES", defaults.max_header_bytes)),
        connections_per_address=int(
            _number(
                env,
                "HUB_CONNECTIONS_PER_ADDRESS",
                defaults.connections_per_address,
                zero_allowed=True,
            )
        ),
        access_token_lifetime=int(
            _number(env, "HUB_ACCESS_TOKEN_LIFETIME", defaults.access_token_lifetime)
        ),
        token_algorithm=text("HUB_TOKEN_ALGORITHM", defaults.token_algorithm),
        default_page_size=int(_number(env, "HUB_PAGE_SIZE", defaults.default_page_size)),
        max_page_size=int(_number(env, "HUB_MAX_PAGE_SIZE", defaults.max_page_size)),
        delivery_poll_seconds=_number(
            env, "HUB_DELIVERY_POLL_SECONDS", defaults.delivery_poll_seconds
        ),
        delivery_lease_seconds=_number(
            env, "HUB_DELIVERY_LEASE_SECONDS", defaults.delivery_lease_seconds
        ),
        retry_base_seconds=_number(env, "HUB_RETRY_BASE_SECONDS", defaults.retry_base_seconds),
        delivery_concurrency=int(
            _number(env, "HUB_DELIVERY_CONCURRENCY", defaults.delivery_concurrency)
        ),
        endpoint_concurrency=int(
            _number(env, "HUB_ENDPOINT_CONCURRENCY", defaults.endpoint_concurrency)
        ),
        delivery_app_share=_share(env, "HUB_DELIVERY_APP_SHARE", defaults.delivery_app_share),
        webhook_connect_timeout=_number(
            env, "HUB_WEBHOOK_CONNECT_TIMEOUT", defaults.webhook_connect_timeout
        ),
        webhook_timeout=_number(env, "HUB_WEBHOOK_TIMEOUT", defaults.webhook_timeout),
        housekeeping_seconds=_number(
            env, "HUB_HOUSEKEEPING_SECONDS", defaults.housekeeping_seconds
        ),
        site=text("HUB_SITE", defaults.site),
        role=_role(env),
        rate_limit_token_per_minute=_rate(
            env, "HUB_RATE_LIMIT_TOKEN_PER_MINUTE", defaults.rate_limit_token_per_minute
        ),
        rate_limit_writes_per_second=_rate(
            env, "HUB_RATE_LIMIT_WRITES_PER_SECOND", defaults.rate_limit_writes_per_second
        ),
        rate_limit_refused_per_minute=math.ceil(
            _rate(env, "HUB_RATE_LIMIT_REFUSED_PER_MINUTE", defaults.rate_limit_refused_per_minute)
        ),
        log_format=_choice(env, "HUB_LOG_FORMAT", LOG_FORMATS, defaults.log_format),
        log_level=_choice(env, "HUB_LOG_LEVEL", LOG_LEVELS, defaults.log_level),
        metrics_token=_secret(env, "HUB_METRICS_TOKEN"),
        metrics_dir=_directory(env, "PROMETHEUS_MULTIPROC_DIR"),
    )
