"""Fixtures for access-control tests: real keys, the shipped matrix, a small registry."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey, RSAKey

from hub.access.apps import Registry, parse_registry
from hub.access.matrix import Matrix, load_matrix

ROOT = Path(__file__).resolve().parents[2]
TOKEN_URL = "https://hub.example/demo/oauth2/token"
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def public_jwk(key: RSAKey | ECKey, **extra: Any) -> dict[str, Any]:
    return {**key.as_dict(private=False), "kid": key.kid, **extra}


@pytest.fixture(scope="session")
def matrix() -> Matrix:
    return load_matrix(ROOT / "authz_matrix.yaml")


@pytest.fixture(scope="session")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})


@pytest.fixture(scope="session")
def other_rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})  # same kid, different key


@pytest.fixture(scope="session")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "ec-1"})


@pytest.fixture(scope="session")
def registry_data(rsa_key: RSAKey, ec_key: ECKey) -> Callable[[], dict[str, Any]]:
    """A fresh, valid apps document each call (tests mutate it)."""

    def make() -> dict[str, Any]:
        return {
            "domains": [
                {
                    "name": "demo",
                    "apps": [
                        {
                            "client_id": "epd",
                            "name": "EHR",
                            "role": "Zorgondersteuning",
                            "jwks": {"keys": [public_jwk(rsa_key)]},
                        },
                        {
                            "client_id": "module",
                            "name": "Module",
                            "role": "eHealthModule",
                            "jwks": {"keys": [public_jwk(ec_key)]},
                            "grants": {"Task": ["module", "epd"]},
                        },
                        {
                            "client_id": "remote",
                            "name": "Keys by URL",
                            "role": "Clientportaal",
                            "jwks_uri": "https://remote.example/jwks.json",
                        },
                    ],
                },
                {
                    "name": "other",
                    "apps": [
                        {
                            "client_id": "stranger",
                            "name": "Another provider's EHR",
                            "role": "Zorgondersteuning",
                            "jwks": {"keys": [public_jwk(rsa_key)]},
                        }
                    ],
                },
            ]
        }

    return make


@pytest.fixture
def registry(registry_data: Callable[[], dict[str, Any]], matrix: Matrix) -> Registry:
    return parse_registry(registry_data(), matrix, source="apps.yaml")
