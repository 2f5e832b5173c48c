"""The apps file: validation with located messages, the registry, the reloadable config."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from joserfc.jwk import ECKey, KeySet, RSAKey

from hub.access import ConfigError
from hub.access.apps import (
    AccessConfig,
    JwksError,
    load_registry,
    parse_public_jwks,
    parse_registry,
)
from hub.access.matrix import Matrix
from hub.access.ratelimit import AppLimits
from tests.access.conftest import ROOT, public_jwk

Mutation = Callable[[dict[str, Any]], None]


def app(data: dict[str, Any], client_id: str = "epd") -> dict[str, Any]:
    for candidate in data["domains"][0]["apps"]:
        if candidate["client_id"] == client_id:
            return candidate  # type: ignore[no-any-return]
    raise LookupError(client_id)


def set_key(name: str, value: object) -> Mutation:
    return lambda data: app(data).__setitem__(name, value)


def set_jwk(name: str, value: object) -> Mutation:
    return lambda data: app(data)["jwks"]["keys"][0].__setitem__(name, value)


def drop_jwk(name: str) -> Mutation:
    return lambda data: app(data)["jwks"]["keys"][0].pop(name)


def duplicate_app(data: dict[str, Any]) -> None:
    data["domains"][0]["apps"].append(copy.deepcopy(app(data)))


def both_key_sources(data: dict[str, Any]) -> None:
    app(data)["jwks_uri"] = "https://epd.example/jwks"


def no_key_source(data: dict[str, Any]) -> None:
    del app(data)["jwks"]


def duplicate_domain(data: dict[str, Any]) -> None:
    data["domains"][1]["name"] = "demo"


def short_rsa_key(data: dict[str, Any]) -> None:
    import warnings

    from joserfc.errors import SecurityWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        small = RSAKey.generate_key(1024, parameters={"kid": "small"})
    app(data)["jwks"] = {"keys": [public_jwk(small)]}


def secp256k1_key(data: dict[str, Any]) -> None:
    key = ECKey.generate_key("secp256k1", parameters={"kid": "k1"})
    app(data)["jwks"] = {"keys": [public_jwk(key)]}


def same_kid_twice(data: dict[str, Any]) -> None:
    keys = app(data)["jwks"]["keys"]
    keys.append(dict(keys[0]))


BAD_APPS: list[tuple[str, Mutation, str, str]] = [
    ("unknown role", set_key("role", "Admin"), "demo/epd", "role 'Admin' is not a role of"),
    ("duplicate client_id", duplicate_app, "demo/epd", "client_id appears twice"),
    ("key without kid", drop_jwk("kid"), "demo/epd", "has no kid"),
    *[
        (f"private member {m}", set_jwk(m, "AQAB"), "demo/epd", f"PRIVATE key material ({m})")
        for m in ("d", "p", "q", "dp", "dq", "qi", "k")
    ],
    ("RSA under 2048 bits", short_rsa_key, "demo/epd", "RSA key of 1024 bits"),
    ("EC curve", secp256k1_key, "demo/epd", "curve must be one of"),
    ("kty OKP", set_jwk("kty", "OKP"), "demo/epd", "kty must be RSA or EC"),
    ("use enc", set_jwk("use", "enc"), "demo/epd", "use must be 'sig'"),
    ("broken modulus", set_jwk("n", "!!"), "demo/epd", "not a usable RSA key"),
    ("same kid twice", same_kid_twice, "demo/epd", "kid 'rsa-1' appears twice"),
    ("both jwks and jwks_uri", both_key_sources, "demo/epd", "exactly one of 'jwks'"),
    ("neither jwks nor jwks_uri", no_key_source, "demo/epd", "exactly one of 'jwks'"),
    ("jwks not a JWKS", set_key("jwks", ["key"]), "demo/epd", '"keys" list'),
    ("http jwks_uri", set_key("jwks_uri", "http://x.example/j"), "demo/epd", "exactly one"),
    ("unknown app key", set_key("secret", "x"), "demo/epd", "unknown key 'secret'"),
    ("missing name", set_key("name", ""), "demo/epd", "'name' is required"),
    ("http endpoint", set_key("endpoints", ["http://epd.example/"]), "demo/epd", "https URL"),
    ("endpoints not a list", set_key("endpoints", "https://e.x/"), "demo/epd", "non-empty list"),
    ("grant of unknown type", set_key("grants", {"Banana": []}), "demo/epd", "unknown resource"),
    ("grant of unknown app", set_key("grants", {"Task": ["ghost"]}), "demo/epd", "'ghost'"),
    ("grants not lists", set_key("grants", {"Task": "module"}), "demo/epd", "must be a list"),
    *[
        (f"rate_limit {name}", set_key("rate_limit", value), "demo/epd", problem)
        for name, value, problem in [
            ("not a mapping", 10, "rate_limit must be a mapping"),
            ("empty", {}, "rate_limit must be a mapping"),
            ("unknown key", {"reads_per_second": 5}, "rate_limit: unknown key 'reads_per_second'"),
            ("text", {"token_per_minute": "many"}, "rate_limit.token_per_minute must be a number"),
            ("negative", {"writes_per_second": -1}, "rate_limit.writes_per_second must be a"),
            ("a flag", {"writes_per_second": True}, "rate_limit.writes_per_second must be a"),
            ("infinite", {"token_per_minute": float("inf")}, "rate_limit.token_per_minute must"),
        ]
    ],
    ("bad client_id", set_key("client_id", "e pd"), "demo/apps[0]", "must be a FHIR id"),
    ("hub's client_id", set_key("client_id", "koppeltaal-hub"), "demo/apps[0]", "hub's own"),
    ("duplicate domain", duplicate_domain, "demo", "domain name appears twice"),
]


@pytest.mark.parametrize(
    ("mutate", "entry", "problem"),
    [pytest.param(m, e, p, id=name) for name, m, e, p in BAD_APPS],
)
def test_a_bad_apps_file_names_file_entry_and_problem(
    tmp_path: Path,
    matrix: Matrix,
    registry_data: Callable[[], dict[str, Any]],
    mutate: Mutation,
    entry: str,
    problem: str,
) -> None:
    data = registry_data()
    mutate(data)
    path = tmp_path / "apps.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_registry(path, matrix)
    assert caught.value.file == str(path)
    assert caught.value.entry == entry
    assert problem in caught.value.problem
    assert str(caught.value) == f"{path}: {entry}: {caught.value.problem}"


@pytest.mark.parametrize(
    ("text", "entry", "problem"),
    [
        ("[]\n", "", "must be a mapping"),
        ("domains: []\n", "domains", "non-empty list"),
        ("domains: [{name: demo, apps: []}]\nextra: 1\n", "extra", "unknown key"),
        ("domains: [{name: Demo, apps: []}]\n", "domains[0]", "[a-z0-9-]"),
        ("domains: [{name: de_mo, apps: []}]\n", "domains[0]", "[a-z0-9-]"),
        ("domains: [{name: -x, apps: []}]\n", "domains[0]", "[a-z0-9-]"),
        ("domains: [{name: demo, apps: {}}]\n", "demo", "must be a list"),
        ("domains: [{name: demo, apps: [], owner: x}]\n", "demo.owner", "unknown key"),
        ("domains: [{name: demo, apps: [7]}]\n", "demo/apps[0]", "must be a mapping"),
    ],
)
def test_bad_domains(tmp_path: Path, matrix: Matrix, text: str, entry: str, problem: str) -> None:
    path = tmp_path / "apps.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_registry(path, matrix)
    assert (caught.value.entry, caught.value.file) == (entry, str(path))
    assert problem in caught.value.problem


def test_a_valid_registry(registry_data: Callable[[], dict[str, Any]], matrix: Matrix) -> None:
    registry = parse_registry(registry_data(), matrix, source="apps.yaml")
    assert list(registry.domains) == ["demo", "other"]
    module = registry.domains["demo"].apps["module"]
    assert (module.role, module.domain, module.grants["Task"]) == (
        "eHealthModule",
        "demo",
        ("module", "epd"),
    )
    assert isinstance(module.jwks, KeySet)
    assert [k.kid for k in module.jwks] == ["ec-1"]
    remote = registry.domains["demo"].apps["remote"]
    assert (remote.jwks, remote.jwks_uri) == (None, "https://remote.example/jwks.json")
    assert registry.app("other", "stranger") is not None
    assert registry.app("other", "epd") is None  # client_ids are per domain
    assert registry.app("nowhere", "epd") is None
    with pytest.raises(AttributeError):
        module.role = "Beheerportaal"  # type: ignore[misc]
    with pytest.raises(TypeError):
        registry.domains["demo"].apps["x"] = module  # type: ignore[index]


def test_endpoint_prefixes(registry_data: Callable[[], dict[str, Any]], matrix: Matrix) -> None:
    data = registry_data()
    app(data)["endpoints"] = ["https://epd.example", "https://hooks.example/epd/"]
    epd = parse_registry(data, matrix, source="apps.yaml").domains["demo"].apps["epd"]
    assert epd.endpoints == ("https://epd.example/", "https://hooks.example/epd/")
    assert epd.endpoint_allowed("https://epd.example/notify")
    assert epd.endpoint_allowed("https://hooks.example/epd/x?y=1")
    # A host-only prefix must not admit a look-alike host.
    assert not epd.endpoint_allowed("https://epd.example.evil.example/notify")
    assert not epd.endpoint_allowed("https://hooks.example/other/")
    assert not epd.endpoint_allowed("http://epd.example/notify")


def test_an_apps_own_rate_limits(
    registry_data: Callable[[], dict[str, Any]], matrix: Matrix
) -> None:
    data = registry_data()
    app(data)["rate_limit"] = {"token_per_minute": 600, "writes_per_second": 0}
    app(data, "module")["rate_limit"] = {"writes_per_second": 2.5}
    apps = parse_registry(data, matrix, source="apps.yaml").domains["demo"].apps
    assert apps["epd"].rate_limit == AppLimits(token_per_minute=600, writes_per_second=0)
    assert apps["module"].rate_limit == AppLimits(writes_per_second=2.5)
    assert apps["remote"].rate_limit is None  # the hub's settings apply


def test_no_endpoints_means_any_https_url(registry: Any) -> None:
    epd = registry.domains["demo"].apps["epd"]
    assert epd.endpoint_allowed("https://anywhere.example/hook")
    assert not epd.endpoint_allowed("http://anywhere.example/hook")


def test_parse_public_jwks_refuses_a_private_key(rsa_key: RSAKey) -> None:
    with pytest.raises(JwksError, match="PRIVATE"):
        parse_public_jwks({"keys": [{**rsa_key.as_dict(private=True), "kid": "x"}]})


# --- the shipped example -------------------------------------------------------------------


def test_the_example_apps_file_loads_with_the_shipped_matrix(matrix: Matrix) -> None:
    registry = load_registry(ROOT / "examples" / "apps.yaml", matrix)
    demo = registry.domains["demo"].apps
    roles = {client_id: a.role for client_id, a in demo.items()}
    assert roles == {
        "epd-demo": "Zorgondersteuning",
        "portal-demo": "Clientportaal",
        "module-demo": "eHealthModule",
        "admin-demo": "Beheerportaal",
        "auditor-demo": "Auditor",
    }
    assert set(demo["portal-demo"].grants["Task"]) >= {"module-demo"}
    assert set(demo["module-demo"].grants["Task"]) >= {"portal-demo"}
    assert list(registry.domains["other"].apps) == ["epd-other"]


def test_every_example_private_key_matches_its_published_key(matrix: Matrix) -> None:
    registry = load_registry(ROOT / "examples" / "apps.yaml", matrix)
    for domain in registry.domains.values():
        for client_id, registered in domain.apps.items():
            pem = (ROOT / "examples" / "keys" / f"{client_id}.pem").read_bytes()
            private = RSAKey.import_key(pem)
            assert registered.jwks is not None
            (published,) = list(registered.jwks)
            assert published.thumbprint() == private.thumbprint()
            assert published.get("alg") == "RS512"
    readme = (ROOT / "examples" / "keys" / "README.md").read_text()
    assert "DEMO ONLY" in readme


# --- AccessConfig --------------------------------------------------------------------------


@pytest.fixture
def config_files(tmp_path: Path, registry_data: Callable[[], dict[str, Any]]) -> tuple[Path, Path]:
    apps_path, matrix_path = tmp_path / "apps.yaml", tmp_path / "authz_matrix.yaml"
    apps_path.write_text(yaml.safe_dump(registry_data()))
    matrix_path.write_bytes((ROOT / "authz_matrix.yaml").read_bytes())
    return apps_path, matrix_path


def bump_mtime(path: Path) -> None:
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))


def test_reload_swaps_matrix_and_registry_together(config_files: tuple[Path, Path]) -> None:
    apps_path, matrix_path = config_files
    config = AccessConfig(apps_path, matrix_path)
    before = config.snapshot
    matrix_path.write_text(matrix_path.read_text() + "  Viewer:\n    Patient: {read: all}\n")
    apps_path.write_text(apps_path.read_text().replace("role: Clientportaal", "role: Viewer"))
    config.reload()
    assert config.snapshot is not before
    assert "Viewer" in config.matrix.roles
    assert config.registry.domains["demo"].apps["remote"].role == "Viewer"
    assert before.registry.domains["demo"].apps["remote"].role == "Clientportaal"


def test_a_bad_reload_keeps_the_old_config(
    config_files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    apps_path, matrix_path = config_files
    config = AccessConfig(apps_path, matrix_path)
    before = config.snapshot
    # Valid on its own, but the apps file still uses the role it drops: the pair is refused.
    matrix_path.write_text(matrix_path.read_text().replace("  Clientportaal:", "  Portal:"))
    with pytest.raises(ConfigError, match="role 'Clientportaal' is not a role"):
        config.reload()
    assert config.snapshot is before
    assert "not reloaded" in caplog.text


def test_reload_if_changed(config_files: tuple[Path, Path]) -> None:
    apps_path, matrix_path = config_files
    config = AccessConfig(apps_path, matrix_path)
    assert config.reload_if_changed() is False
    bump_mtime(apps_path)  # touched, same content: no reload
    assert config.reload_if_changed() is False
    apps_path.write_text(apps_path.read_text().replace("name: EHR", "name: New EHR"))
    bump_mtime(apps_path)
    assert config.reload_if_changed() is True
    assert config.registry.domains["demo"].apps["epd"].name == "New EHR"
    assert config.reload_if_changed() is False


def test_reload_if_changed_reports_a_bad_file_once(config_files: tuple[Path, Path]) -> None:
    apps_path, matrix_path = config_files
    config = AccessConfig(apps_path, matrix_path)
    before = config.snapshot
    apps_path.write_text("domains: nope\n")
    bump_mtime(apps_path)
    with pytest.raises(ConfigError, match="non-empty list"):
        config.reload_if_changed()
    assert config.reload_if_changed() is False  # the same bad content is not re-reported
    assert config.snapshot is before
    apps_path.write_text(yaml.safe_dump({"domains": [{"name": "solo", "apps": []}]}))
    bump_mtime(apps_path)
    assert config.reload_if_changed() is True
    assert list(config.registry.domains) == ["solo"]


def test_the_first_load_of_a_bad_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        AccessConfig(tmp_path / "apps.yaml", ROOT / "authz_matrix.yaml")
