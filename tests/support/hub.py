"""A real hub for end-to-end tests: uvicorn on a loopback port, real keys, real tokens.

`running_hub(...)` starts `hub.app.create_app` under uvicorn in a background
thread (its own event loop), on a socket bound before the app is built, so the
hub's public URL (token `aud`, `Location`, paging links) is the real one. Test
applications of every role get fresh key pairs; `HubServer.client(app)` is an
httpx client carrying a real access token obtained from the token endpoint.

    async def test_x(hub_server: HubServer) -> None:
        async with hub_server.client("xis") as xis:
            response = await xis.post("/Patient", json={...})
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from starlette.applications import Starlette

from hub.access.assertion import CLIENT_ASSERTION_TYPE, generate_app_keypair, make_client_assertion
from hub.api.connections import GuardedHttpToolsProtocol
from hub.app import create_app
from hub.runtime import Runtime
from hub.settings import Settings
from tests.conftest import BACKENDS

REPOSITORY = Path(__file__).resolve().parents[2]
MATRIX = REPOSITORY / "authz_matrix.yaml"

# client_id → role, in domain "test"; "other" is a second domain for isolation tests.
TEST_APPS: Mapping[str, str] = {
    "xis": "Zorgondersteuning",
    "portal": "Clientportaal",
    "module": "eHealthModule",
    "practitioner-portal": "Behandelaarsportaal",
    "admin": "Beheerportaal",
    "auditor": "Auditor",
}
OTHER_DOMAIN_APPS: Mapping[str, str] = {"other-xis": "Zorgondersteuning"}
# GRANTED rights: whose resources each app may see, per type (the app lists itself).
TEST_GRANTS: Mapping[str, Mapping[str, list[str]]] = {
    "portal": {"Task": ["portal", "module", "practitioner-portal"], "Practitioner": ["xis"]},
    "module": {
        "Task": ["module", "portal", "practitioner-portal"],
        "Patient": ["xis"],
        "Practitioner": ["xis"],
        "RelatedPerson": ["xis", "portal"],
    },
    "practitioner-portal": {"Task": ["practitioner-portal", "portal", "module"]},
}


@dataclass(frozen=True)
class AppKeys:
    client_id: str
    kid: str
    private_pem: bytes
    jwks: dict[str, Any]


@pytest.fixture(scope="session")
def app_keys() -> dict[str, AppKeys]:
    """One RSA key pair per test application, made once per test run (2048 bits: fast)."""
    keys = {}
    for client_id in (*TEST_APPS, *OTHER_DOMAIN_APPS):
        kid = f"{client_id}-1"
        private_pem, jwks = generate_app_keypair(kid, rsa_bits=2048)
        keys[client_id] = AppKeys(client_id, kid, private_pem, jwks)
    return keys


def write_apps_file(
    path: Path,
    keys: Mapping[str, AppKeys],
    *,
    endpoints: Mapping[str, list[str]] | None = None,
    roles: Mapping[str, str] | None = None,
    jwks_uris: Mapping[str, str] | None = None,
) -> Path:
    """An apps file with the test applications (roles and endpoints may be overridden).

    An app named in `jwks_uris` registers that URL instead of its inline keys; an
    app named in `roles` but not in TEST_APPS is added (it needs an entry in `keys`
    unless it has a jwks_uri).
    """
    roles = {**TEST_APPS, **(roles or {})}

    def app(client_id: str, role: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"client_id": client_id, "name": f"Test {client_id}", "role": role}
        if jwks_uris and client_id in jwks_uris:
            entry["jwks_uri"] = jwks_uris[client_id]
        else:
            entry["jwks"] = keys[client_id].jwks
        if endpoints and client_id in endpoints:
            entry["endpoints"] = endpoints[client_id]
        if client_id in TEST_GRANTS:
            entry["grants"] = TEST_GRANTS[client_id]
        return entry

    document = {
        "domains": [
            {"name": "test", "apps": [app(c, r) for c, r in roles.items()]},
            {"name": "other", "apps": [app(c, r) for c, r in OTHER_DOMAIN_APPS.items()]},
        ]
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@dataclass
class HubServer:
    url: str
    settings: Settings
    keys: Mapping[str, AppKeys]
    _tokens: dict[tuple[str, str], str] = field(default_factory=dict)
    app: Starlette | None = None

    @property
    def runtime(self) -> Runtime:
        """The running hub's services (for tests that must reach behind the HTTP API)."""
        assert self.app is not None, "this HubServer was made without its app"
        runtime: Runtime = self.app.state.runtime
        return runtime

    def reload_access(self) -> None:
        """Re-read the apps file and matrix now, as the housekeeping job does on a change."""
        self.runtime.access.reload()

    def fhir(self, domain: str = "test") -> str:
        return f"{self.url}/{domain}/fhir"

    def token_url(self, domain: str = "test") -> str:
        return f"{self.url}/{domain}/oauth2/token"

    def assertion(self, client_id: str, domain: str = "test", **overrides: Any) -> str:
        keys = self.keys[client_id]
        return make_client_assertion(
            keys.private_pem,
            client_id=client_id,
            token_url=self.token_url(domain),
            kid=keys.kid,
            **overrides,
        )

    def token_form(self, client_id: str, domain: str = "test", **overrides: Any) -> dict[str, str]:
        return {
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self.assertion(client_id, domain, **overrides),
        }

    def token(self, client_id: str, domain: str = "test") -> str:
        """An access token from the hub's token endpoint (cached per app and domain)."""
        cached = self._tokens.get((client_id, domain))
        if cached is None:
            response = httpx.post(self.token_url(domain), data=self.token_form(client_id, domain))
            response.raise_for_status()
            cached = self._tokens[(client_id, domain)] = response.json()["access_token"]
        return cached

    def client(
        self, client_id: str | None = None, domain: str = "test", **kwargs: Any
    ) -> httpx.AsyncClient:
        """An async client on the domain's FHIR base, authenticated as `client_id` if given."""
        headers = {"Accept": "application/fhir+json"}
        if client_id is not None:
            headers["Authorization"] = f"Bearer {self.token(client_id, domain)}"
        headers.update(kwargs.pop("headers", {}))
        return httpx.AsyncClient(base_url=self.fhir(domain), headers=headers, timeout=30, **kwargs)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def running_hub(settings: Settings, keys: Mapping[str, AppKeys]) -> Iterator[HubServer]:
    """Serve the hub with `settings` (its public_url is replaced by the real address)."""
    sock = free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = replace(settings, public_url=url)
    app = create_app(settings)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", http=GuardedHttpToolsProtocol)
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)

    thread = threading.Thread(target=serve, name="hub-under-test", daemon=True)
    thread.start()
    try:
        while not server.started:
            if failure or not thread.is_alive():
                raise RuntimeError(f"the hub did not start: {failure}")
            threading.Event().wait(0.02)
        yield HubServer(url, settings, keys, app=app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def hub_settings(tmp_path: Path, database_url: str, apps_file: Path, **overrides: Any) -> Settings:
    """Settings for a test hub: fast polls, loopback webhooks allowed."""
    import ipaddress

    base = Settings(
        database_url=database_url,
        # Small, so two xdist workers' hubs stay far below PostgreSQL's max_connections.
        database_pool_size=4,
        apps_file=apps_file,
        authz_matrix=MATRIX,
        keys_dir=tmp_path / "keys",
        webhook_allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        delivery_poll_seconds=2.0,
        housekeeping_seconds=1.0,
        site="test-site",
    )
    return replace(base, **overrides)


@pytest.fixture
def hub_server(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys]
) -> Iterator[HubServer]:
    """A hub on the parametrised database backend, with the test applications."""
    apps_file = write_apps_file(tmp_path / "apps.yaml", app_keys)
    with running_hub(hub_settings(tmp_path, database_url, apps_file), app_keys) as server:
        yield server


@pytest.fixture(scope="module", params=BACKENDS)
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Like `database_url`, but one database for a whole test module (see `module_hub`)."""
    from tests import conftest

    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("module-db") / "hub.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    template = request.getfixturevalue("postgres_template")
    name = f"hub_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(conftest._pg_execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield conftest._pg_url(name)
    asyncio.run(conftest._pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def module_hub(
    tmp_path_factory: pytest.TempPathFactory,
    module_database_url: str,
    app_keys: dict[str, AppKeys],
) -> Iterator[HubServer]:
    """One hub per test module and backend, for tests that share it without changing it.

    Tests that use it must not depend on what the others stored: they find their
    own resources by the ids they made, never by counting everything.
    """
    directory = tmp_path_factory.mktemp("module-hub")
    apps_file = write_apps_file(directory / "apps.yaml", app_keys)
    with running_hub(hub_settings(directory, module_database_url, apps_file), app_keys) as server:
        yield server
