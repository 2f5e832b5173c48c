from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from hub.settings import Settings, SettingsError, from_env


def test_defaults_without_environment() -> None:
    settings = from_env({})
    assert settings == Settings(site=settings.site)
    assert settings.is_sqlite
    assert settings.database_statement_timeout == 5.0
    assert settings.fhir_base("demo") == "http://127.0.0.1:8080/demo/fhir"
    assert settings.role == "all"
    assert settings.serves_api and settings.delivers


def test_every_variable_is_read() -> None:
    settings = from_env(
        {
            "HUB_DATABASE_URL": "postgresql+asyncpg://hub@db/hub",
            "HUB_DATABASE_POOL_SIZE": "3",
            "HUB_DATABASE_STATEMENT_TIMEOUT": "2.5",
            "HUB_PUBLIC_URL": "https://hub.example.nl/",
            "HUB_APPS": "/etc/hub/apps.yaml",
            "HUB_AUTHZ_MATRIX": "/etc/hub/matrix.yaml",
            "HUB_KEYS_DIR": "/var/lib/hub/keys",
            "HUB_CA_BUNDLE": "/etc/hub/ca.pem",
            "HUB_WEBHOOK_ALLOW_NETWORKS": "10.0.0.0/8, 127.0.0.1",
            "HUB_SMTP_URL": "smtp://mail:25",
            "HUB_WEBHOOK_TIMEOUT": "7.5",
            "HUB_ENDPOINT_CONCURRENCY": "2",
            "HUB_DELIVERY_APP_SHARE": "0.25",
            "HUB_ROLE": "api",
        }
    )
    assert not settings.is_sqlite
    assert settings.database_pool_size == 3
    assert settings.database_statement_timeout == 2.5
    assert settings.public_url == "https://hub.example.nl"
    assert settings.token_endpoint("d") == "https://hub.example.nl/d/oauth2/token"
    assert settings.apps_file == Path("/etc/hub/apps.yaml")
    assert settings.ca_bundle == Path("/etc/hub/ca.pem")
    assert settings.webhook_allow_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
    )
    assert settings.smtp_url == "smtp://mail:25"
    assert settings.webhook_timeout == 7.5
    assert settings.endpoint_concurrency == 2
    assert settings.delivery_app_share == 0.25
    assert settings.role == "api"


@pytest.mark.parametrize(
    ("role", "serves_api", "delivers"),
    [("all", True, True), ("api", True, False), ("worker", False, True)],
)
def test_the_role_says_what_a_process_runs(role: str, serves_api: bool, delivers: bool) -> None:
    settings = from_env({"HUB_ROLE": role})
    assert (settings.serves_api, settings.delivers) == (serves_api, delivers)


@pytest.mark.parametrize(
    "url",
    [
        "smtp://mail:25?starttls=true",
        "submission://u:p@mail",
        "submission://mail?starttls=true",
        "smtps://mail:465",
    ],
)
def test_smtp_urls_with_tls(url: str) -> None:
    assert from_env({"HUB_SMTP_URL": url}).smtp_url == url


def test_a_bad_smtp_url_never_shows_its_password() -> None:
    with pytest.raises(SettingsError, match="not an smtp") as caught:
        from_env({"HUB_SMTP_URL": "imap://user:hunter2@mail.example.nl"})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("HUB_WEBHOOK_ALLOW_NETWORKS", "10.0.0.0/33", "not a CIDR"),
        ("HUB_WEBHOOK_TIMEOUT", "soon", "not a number"),
        ("HUB_PAGE_SIZE", "0", "greater than zero"),
        ("HUB_DATABASE_STATEMENT_TIMEOUT", "0", "greater than zero"),
        ("HUB_DATABASE_STATEMENT_TIMEOUT", "5s", "not a number"),
        ("HUB_DATABASE_STATEMENT_TIMEOUT", "nan", "not a finite number"),
        ("HUB_DATABASE_STATEMENT_TIMEOUT", "3000000", "at most 2147483 seconds"),
        ("HUB_PORTAL_URL", "portal.example.nl", "not an http"),
        ("HUB_PUBLIC_URL", "ftp://hub", "not an http"),
        ("HUB_SMTP_URL", "mail.example.nl:25", "not an smtp"),
        ("HUB_SMTP_URL", "smtp://mail.example.nl?starttls=yes", "starttls=true"),
        ("HUB_SMTP_URL", "smtps://mail.example.nl?starttls=true", "only smtp:// takes"),
        ("HUB_SMTP_URL", "submission://mail.example.nl?starttls=false", "only smtp:// takes"),
        ("HUB_SMTP_URL", "smtp://mail.example.nl:twentyfive", "invalid port"),
        ("HUB_ROLE", "delivery", "not one of all, api, worker"),
        ("HUB_RATE_LIMIT_TOKEN_PER_MINUTE", "lots", "not a number"),
        ("HUB_RATE_LIMIT_WRITES_PER_SECOND", "-1", "0 \\(no limit\\) or more"),
        ("HUB_RATE_LIMIT_REFUSED_PER_MINUTE", "inf", "not a finite number"),
        ("HUB_DELIVERY_APP_SHARE", "1.5", "a share is at most 1"),
        ("HUB_DELIVERY_APP_SHARE", "0", "greater than zero"),
        ("HUB_HEADER_TIMEOUT", "0", "greater than zero"),
        ("HUB_BODY_TIMEOUT", "never", "not a number"),
        ("HUB_MAX_HEADER_BYTES", "-5", "greater than zero"),
        ("HUB_CONNECTIONS_PER_ADDRESS", "-1", "0 \\(no limit\\) or more"),
        ("HUB_LOG_FORMAT", "xml", "not one of text, json"),
        ("HUB_LOG_LEVEL", "verbose", "not one of critical, error, warning, info, debug"),
        ("HUB_METRICS_TOKEN", "short", "at least 16 characters, got 5"),
        ("HUB_METRICS_TOKEN", "sixteen chars or more", "only visible ASCII"),
        ("PROMETHEUS_MULTIPROC_DIR", "/nonexistent/metrics", "not a directory"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=f"{variable}.*{message}"):
        from_env({variable: value})


def test_rate_limits() -> None:
    defaults = from_env({})
    assert (
        defaults.rate_limit_token_per_minute,
        defaults.rate_limit_writes_per_second,
        defaults.rate_limit_refused_per_minute,
    ) == (120, 0, 60)
    settings = from_env(
        {
            "HUB_RATE_LIMIT_TOKEN_PER_MINUTE": "30",
            "HUB_RATE_LIMIT_WRITES_PER_SECOND": "2.5",
            "HUB_RATE_LIMIT_REFUSED_PER_MINUTE": "0",
        }
    )
    assert settings.rate_limit_token_per_minute == 30
    assert settings.rate_limit_writes_per_second == 2.5
    assert settings.rate_limit_refused_per_minute == 0  # 0 = no limit


def test_connection_limits() -> None:
    defaults = from_env({})
    assert (
        defaults.header_timeout,
        defaults.body_timeout,
        defaults.max_header_bytes,
        defaults.connections_per_address,
    ) == (10, 30, 32768, 128)
    settings = from_env(
        {
            "HUB_HEADER_TIMEOUT": "2.5",
            "HUB_BODY_TIMEOUT": "60",
            "HUB_MAX_HEADER_BYTES": "16384",
            "HUB_CONNECTIONS_PER_ADDRESS": "0",
        }
    )
    assert (settings.header_timeout, settings.body_timeout) == (2.5, 60)
    assert (settings.max_header_bytes, settings.connections_per_address) == (16384, 0)


def test_logs_and_metrics(tmp_path: Path) -> None:
    defaults = from_env({})
    assert (defaults.log_format, defaults.log_level) == ("text", "info")
    assert defaults.metrics_token is None and defaults.metrics_dir is None
    secret = "s3cret-0f-the-scraper"
    settings = from_env(
        {
            "HUB_LOG_FORMAT": "JSON",
            "HUB_LOG_LEVEL": "Debug",
            "HUB_METRICS_TOKEN": secret,
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        }
    )
    assert (settings.log_format, settings.log_level) == ("json", "debug")
    assert settings.metrics_token == secret
    assert settings.metrics_dir == tmp_path


def test_a_refused_secret_is_not_repeated() -> None:
    with pytest.raises(SettingsError) as refused:
        from_env({"HUB_METRICS_TOKEN": "tooshort"})
    assert "tooshort" not in str(refused.value)
