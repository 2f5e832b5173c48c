"""The authorisation matrix end to end: every role, type and action, as authz_matrix.yaml says.

The expected answers are computed here from the YAML file itself (read with plain
`yaml`, not with the hub's loader) and the test apps' grants; the actual answers
come from the real hub over HTTP. Each role's whole table is compared at once, so
a failure lists every cell that differs.

One hub per backend serves the module. Every type gets one resource of every test
app's origin: made through the API by that app where the matrix lets it create the
type, inserted into the database otherwise (the only way to get, say, a Patient
whose origin is the portal). Cells that would change a shared resource (an
allowed update or delete) get a fresh resource of their own.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from hub.fhir.origin import with_origin
from hub.fhir.search_params import SUPPORTED_TYPES
from hub.runtime import utcnow
from hub.store import resources
from hub.store.db import Database
from tests.api.common import APPS, ROLES, SAMPLES, ids, may_create, origin_of, origins
from tests.support.hub import TEST_APPS, HubServer

# One hub per backend for the module (`module_hub`): keep the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_access_matrix")

TYPES = sorted(SAMPLES)
# AuditEvents are append-only: updating or deleting one is 405 for everyone.
APPEND_ONLY = {"AuditEvent"}


def probes(client_id: str, allowed: frozenset[str]) -> list[str]:
    """Origins worth trying: the caller's own, the allowed ones, and one that is not allowed.

    With no right at all, the caller's own resource is the one to try: a right that
    is wrongly granted for some origin is granted for that one too.
    """
    if not allowed:
        return [client_id]
    if allowed == frozenset(APPS):
        allowed = frozenset({client_id, next(a for a in APPS if a != client_id)})
    outside = [app for app in APPS if app not in allowed][:1]
    return sorted({client_id, *allowed, *outside})


def test_the_matrix_covers_what_the_hub_serves() -> None:
    """The table below would silently skip a type that has no sample."""
    assert set(TYPES) == set(SUPPORTED_TYPES)
    assert set(TEST_APPS.values()) == set(ROLES)


class Seeder:
    """Makes a resource of a given origin: through the API when that app may, else directly."""

    def __init__(self, hub: HubServer) -> None:
        self.hub = hub
        self.database = Database(hub.settings.database_url)

    async def seed(self, rtype: str, origin: str) -> dict[str, Any]:
        body = SAMPLES[rtype](origin)
        if may_create(origin, rtype):
            async with self.hub.client(origin) as client:
                response = await client.post(f"/{rtype}", json=body)
            assert response.status_code == 201, response.text
            created: dict[str, Any] = response.json()
            return created
        new = resources.prepare(
            "test",
            with_origin(body, origin),
            id=str(uuid.uuid4()),
            version_id=1,
            now=utcnow(),
            origin=origin,
            method="POST",
        )
        await self.database.write(resources.write(new, previous=None))
        return dict(new.resource)

    async def close(self) -> None:
        await self.database.dispose()


Seeds = dict[tuple[str, str], dict[str, Any]]


@pytest.fixture(scope="module")
def seeds(module_hub: HubServer) -> Seeds:
    """One resource of every type for every test app's origin, shared by the module."""

    async def make() -> Seeds:
        seeder = Seeder(module_hub)
        try:
            pairs = [(rtype, origin) for rtype in TYPES for origin in APPS]
            made = await asyncio.gather(*(seeder.seed(*pair) for pair in pairs))
        finally:
            await seeder.close()
        return dict(zip(pairs, made, strict=True))

    return asyncio.run(make())


Cell = tuple[str, str, str]  # (type, action, origin or "")


def expected_table(client_id: str) -> dict[Cell, int]:
    table: dict[Cell, int] = {}
    for rtype in TYPES:
        table[(rtype, "create", "")] = 201 if may_create(client_id, rtype) else 403
        readable = origins(client_id, rtype, "read")
        table[(rtype, "search", "")] = 200 if readable else 403
        for action in ("read", "update", "delete"):
            allowed = origins(client_id, rtype, action)
            for origin in probes(client_id, allowed):
                if action != "read" and rtype in APPEND_ONLY:
                    table[(rtype, action, origin)] = 405
                else:
                    table[(rtype, action, origin)] = 200 if origin in allowed else 403
    return table


async def _write(
    client: httpx.AsyncClient, seeder: Seeder, seeds: Seeds, cell: Cell, expected: int
) -> int:
    """Try an update or delete; an allowed one works on a fresh resource, not a shared one."""
    rtype, action, origin = cell
    target = seeds[(rtype, origin)] if expected != 200 else await seeder.seed(rtype, origin)
    url = f"/{rtype}/{target['id']}"
    if action == "delete":
        return (await client.delete(url)).status_code
    # Without resource-origin: the hub keeps the stored one.
    body = {key: value for key, value in target.items() if key not in ("meta", "extension")}
    response = await client.put(url, json=body, headers={"If-Match": 'W/"1"'})
    if response.status_code == 200:
        assert origin_of(response.json()) == origin, "resource-origin changed on update"
    return response.status_code


async def _search(
    client: httpx.AsyncClient, seeds: Seeds, client_id: str, rtype: str
) -> tuple[int, list[str]]:
    """Search by the ids of all seeds; also check an open search shows only readable origins."""
    wanted = ",".join(seeds[(rtype, origin)]["id"] for origin in APPS)
    response = await client.get(f"/{rtype}", params={"_id": wanted, "_count": "50"})
    if response.status_code != 200:
        return response.status_code, []
    bundle = response.json()
    assert bundle["total"] == len(ids(bundle)), bundle
    readable = origins(client_id, rtype, "read")
    if readable != frozenset(APPS):
        everything = (await client.get(f"/{rtype}", params={"_count": "200"})).json()
        shown = {origin_of(entry["resource"]) for entry in everything.get("entry", ())}
        assert shown <= readable, f"{client_id} sees {rtype} of {shown - readable}"
    return 200, sorted(ids(bundle))


@pytest.mark.parametrize("client_id", APPS)
async def test_rights_of_each_role(module_hub: HubServer, seeds: Seeds, client_id: str) -> None:
    expected = expected_table(client_id)
    actual: dict[Cell, int] = {}
    found: dict[str, list[str]] = {}
    seeder = Seeder(module_hub)

    async def check_type(client: httpx.AsyncClient, rtype: str) -> None:
        created = await client.post(f"/{rtype}", json=SAMPLES[rtype](client_id))
        actual[(rtype, "create", "")] = created.status_code
        if created.status_code == 201:
            assert origin_of(created.json()) == client_id
        actual[(rtype, "search", "")], found[rtype] = await _search(client, seeds, client_id, rtype)
        for cell, status in expected.items():
            if cell[0] != rtype or cell[1] in ("create", "search"):
                continue
            if cell[1] == "read":
                response = await client.get(f"/{rtype}/{seeds[(rtype, cell[2])]['id']}")
                actual[cell] = response.status_code
            else:
                actual[cell] = await _write(client, seeder, seeds, cell, status)

    try:
        async with module_hub.client(client_id) as client:
            await asyncio.gather(*(check_type(client, rtype) for rtype in TYPES))
    finally:
        await seeder.close()
    assert actual == expected
    # Search is narrowed to exactly the readable origins, never more.
    for rtype in TYPES:
        readable = origins(client_id, rtype, "read")
        want = sorted(seeds[(rtype, o)]["id"] for o in APPS if o in readable) if readable else []
        assert found[rtype] == want, rtype
