"""Access rules beyond the matrix table: resource-origin, revocation, JWKS by URL, Devices.

resource-origin: the hub sets it, a client never does, and it never changes. A
revoked right is gone for the very next request, old token or not. Search counts
and pages only what the caller may read. Every app's Device exists from start-up.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.access.assertion import generate_app_keypair
from tests.api.common import (
    CLIENT_ID_SYSTEM,
    RESOURCE_ORIGIN,
    expressions,
    ids,
    link,
    origin_of,
    outcome,
)
from tests.support.https_receiver import HttpsReceiver, LocalCA
from tests.support.hub import (
    OTHER_DOMAIN_APPS,
    TEST_APPS,
    AppKeys,
    HubServer,
    hub_settings,
    running_hub,
    write_apps_file,
)

# One hub per backend for the module (`module_hub`): keep the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_access_rules")

PATIENT = {"resourceType": "Patient", "gender": "female"}


def origin(device: str) -> dict[str, Any]:
    return {"url": RESOURCE_ORIGIN, "valueReference": {"reference": f"Device/{device}"}}


async def test_resource_origin(module_hub: HubServer) -> None:
    async with module_hub.client("xis") as xis:
        created = (await xis.post("/Patient", json=PATIENT)).json()
        url = f"/Patient/{created['id']}"
        supplied = await xis.post("/Patient", json={**PATIENT, "extension": [origin("xis")]})
        # On update: omitted → kept; the same → accepted; another → 403.
        without = {key: value for key, value in created.items() if key != "extension"}
        omitted = await xis.put(url, json=without, headers={"If-Match": 'W/"1"'})
        same = await xis.put(url, json=created, headers={"If-Match": 'W/"2"'})
        changed = {**created, "extension": [origin("admin")]}
        moved = await xis.put(url, json=changed, headers={"If-Match": 'W/"3"'})
        added = {**created, "extension": [origin("xis"), origin("admin")]}
        doubled = await xis.put(url, json=added, headers={"If-Match": 'W/"3"'})
        by_origin = await xis.get(
            "/Patient", params={"resource-origin": "Device/xis", "_id": created["id"]}
        )
    assert created["extension"] == [origin("xis")]
    assert expressions(outcome(supplied, 422)) == ["Patient.extension"]
    assert omitted.status_code == 200
    assert origin_of(omitted.json()) == "xis"
    assert omitted.json()["extension"] == [origin("xis")]
    assert same.status_code == 200
    assert same.json()["extension"] == [origin("xis")]
    outcome(moved, 403)
    outcome(doubled, 403)
    assert ids(by_origin.json()) == [created["id"]]


async def test_devices_exist_from_start_up(module_hub: HubServer) -> None:
    async with module_hub.client("admin") as admin:
        devices = {
            client_id: await admin.get(f"/Device/{client_id}")
            for client_id in (*TEST_APPS, "koppeltaal-hub")
        }
        by_identifier = await admin.get(
            "/Device", params={"identifier": f"{CLIENT_ID_SYSTEM}|module"}
        )
        foreign = await admin.get("/Device/other-xis")
    for client_id, response in devices.items():
        assert response.status_code == 200, client_id
        device = response.json()
        assert device["id"] == client_id
        if client_id != "koppeltaal-hub":
            assert device["identifier"] == [{"system": CLIENT_ID_SYSTEM, "value": client_id}]
        assert origin_of(device) == "koppeltaal-hub"
    assert ids(by_identifier.json()) == ["module"]
    # The other domain's app has a Device there, not here.
    outcome(foreign, 404)
    async with module_hub.client("other-xis", "other") as other:
        # Zorgondersteuning may not read Devices, but the id exists: 403, not 404.
        assert (await other.get("/Device/other-xis")).status_code == 403
        assert (await other.get("/Device/xis")).status_code == 404


async def test_domains_are_isolated(module_hub: HubServer) -> None:
    async with module_hub.client("xis") as xis, module_hub.client("other-xis", "other") as other:
        mine = (await xis.post("/Patient", json=PATIENT)).json()
        theirs = (await other.post("/Patient", json=PATIENT)).json()
        assert (await other.get(f"/Patient/{mine['id']}")).status_code == 404
        assert (await xis.get(f"/Patient/{theirs['id']}")).status_code == 404
        found = (await other.get("/Patient", params={"_id": f"{mine['id']},{theirs['id']}"})).json()
    assert ids(found) == [theirs["id"]]
    assert origin_of(theirs) == "other-xis"


async def test_narrowed_search_pages_count_only_what_may_be_read(module_hub: HubServer) -> None:
    """RelatedPersons of two origins: each reader's total and pages hold only its own share."""
    marker = f"narrowed-{time.monotonic_ns()}"
    body = {
        "resourceType": "RelatedPerson",
        "patient": {"reference": "Patient/p1"},
        "identifier": [{"system": "urn:test:narrowed", "value": marker}],
    }
    made: list[tuple[str, str]] = []  # (origin, id) in creation order
    async with module_hub.client("xis") as xis, module_hub.client("portal") as portal:
        for index in range(11):  # interleaved: every page of everything mixes origins
            author, client = ("xis", xis) if index % 3 == 0 else ("portal", portal)
            response = await client.post("/RelatedPerson", json=body)
            assert response.status_code == 201
            made.append((author, response.json()["id"]))

    async def walk(client_id: str) -> tuple[list[int], list[str]]:
        async with module_hub.client(client_id) as client:
            params = {"identifier": f"urn:test:narrowed|{marker}", "_count": "2"}
            page = (await client.get("/RelatedPerson", params=params)).json()
            totals, seen = [page["total"]], ids(page)
            while (following := link(page, "next")) is not None:
                page = (await client.get(following)).json()
                totals.append(page["total"])
                seen += ids(page)
        return totals, seen

    # xis and the portal read their own; the module is granted both; admin reads all.
    readers = {"xis": {"xis"}, "portal": {"portal"}, "module": {"xis", "portal"}, "admin": None}
    for reader, readable in readers.items():
        totals, seen = await walk(reader)
        expected = [id for author, id in made if readable is None or author in readable]
        assert seen == expected, reader
        assert totals == [len(expected)] * -(-len(expected) // 2), reader


async def test_revoked_rights_take_effect_at_once(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys]
) -> None:
    apps_file = write_apps_file(tmp_path / "apps.yaml", app_keys)
    with running_hub(hub_settings(tmp_path, database_url, apps_file), app_keys) as hub:
        async with hub.client("xis") as xis:  # the token is fetched now, under the old role
            assert (await xis.post("/Patient", json=PATIENT)).status_code == 201

            # A role change, applied by reload: the OLD token loses the right at once...
            write_apps_file(apps_file, app_keys, roles={"xis": "Beheerportaal"})
            hub.reload_access()
            outcome(await xis.post("/Patient", json=PATIENT), 403)
            # ...and gains none of the new role's: a token never carries more than its scope.
            outcome(await xis.get("/Device/xis"), 403)
            fresh = httpx.post(hub.token_url(), data=hub.token_form("xis")).json()["access_token"]
            async with hub.client(headers={"Authorization": f"Bearer {fresh}"}) as renewed:
                assert (await renewed.get("/Device/xis")).status_code == 200

            # Back again, this time by the housekeeping job that watches the file.
            write_apps_file(apps_file, app_keys)
            assert await eventually(lambda: xis.post("/Patient", json=PATIENT), 201)

            # Unregistered: the token no longer names a known client, 401.
            apps = {k: v for k, v in TEST_APPS.items() if k != "xis"}
            _write_without(apps_file, app_keys, apps)
            assert await eventually(lambda: xis.get("/Patient"), 401)


def _write_without(path: Path, keys: dict[str, AppKeys], apps: dict[str, str]) -> None:
    """An apps file holding only `apps` (plus the other domain)."""
    document = {
        "domains": [
            {
                "name": "test",
                "apps": [
                    {"client_id": c, "name": c, "role": r, "jwks": keys[c].jwks}
                    for c, r in apps.items()
                ],
            },
            {
                "name": "other",
                "apps": [
                    {"client_id": c, "name": c, "role": r, "jwks": keys[c].jwks}
                    for c, r in OTHER_DOMAIN_APPS.items()
                ],
            },
        ]
    }
    path.write_text(json.dumps(document))  # JSON is YAML


async def eventually(request: Any, status: int, timeout: float = 15.0) -> bool:
    """Whether `request()` answers `status` within `timeout` seconds (the job runs every 1 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response: httpx.Response = await request()
        if response.status_code == status:
            return True
        await asyncio.sleep(0.2)
    return False


async def test_app_with_jwks_uri(
    tmp_path: Path,
    database_url: str,
    app_keys: dict[str, AppKeys],
    https_receiver: HttpsReceiver,
    local_ca: LocalCA,
) -> None:
    private_pem, jwks = generate_app_keypair("remote-1", rsa_bits=2048)
    https_receiver.reply(
        200, headers=[("Content-Type", "application/json")], body=json.dumps(jwks).encode()
    )
    keys = {**app_keys, "remote": AppKeys("remote", "remote-1", private_pem, jwks)}
    apps_file = write_apps_file(
        tmp_path / "apps.yaml",
        keys,
        roles={"remote": "eHealthModule"},
        jwks_uris={"remote": https_receiver.url("/.well-known/jwks.json")},
    )
    settings = hub_settings(tmp_path, database_url, apps_file, ca_bundle=local_ca.bundle)
    with running_hub(settings, keys) as hub:
        async with hub.client("remote") as remote, hub.client("admin") as admin:
            created = await remote.post("/Endpoint", json=_endpoint())
            device = await admin.get("/Device/remote")
        token_requests = [
            r for r in https_receiver.requests if r.target == "/.well-known/jwks.json"
        ]
    assert created.status_code == 201, created.text
    assert origin_of(created.json()) == "remote"
    assert device.status_code == 200
    assert len(token_requests) == 1  # fetched once, then cached
    assert token_requests[0].method == "GET"


def _endpoint() -> dict[str, Any]:
    return {
        "resourceType": "Endpoint",
        "status": "active",
        "connectionType": {"code": "hl7-fhir-rest"},
        "payloadType": [{"text": "FHIR"}],
        "address": "https://remote.example/fhir",
    }
