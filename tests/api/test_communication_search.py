"""`patient-identifier`: a portal finds a patient's notifications by BSN.

The hub's own search parameter on Communication, over the identifiers of the contained
Patient that `recipient` references. One definition serves the CapabilityStatement,
search, and Subscription matching alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hub.rules.bsn import BSN_SYSTEM
from hub.store import outbox
from hub.store.db import Database
from tests.api.common import entries
from tests.support.https_receiver import HttpsReceiver, LocalCA
from tests.support.hub import AppKeys, HubServer, hub_settings, running_hub, write_apps_file
from tests.support.notifications import audit_events, notification
from tests.support.waiting import eventually

BSN = "123456782"
OTHER_BSN = "111222333"
DEFINITION = "http://koppeltaal.nl/fhir/SearchParameter/communication-patient-identifier"


async def send(hub: HubServer, bsn: str) -> str:
    async with hub.client("xis") as xis:
        response = await xis.post("/Communication", json=notification(bsn=bsn))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def search(hub: HubServer, client_id: str, **params: str) -> list[dict[str, Any]]:
    async with hub.client(client_id) as client:
        response = await client.get("/Communication", params=params)
    assert response.status_code == 200, response.text
    return entries(response.json())


async def test_the_capability_statement_lists_it(module_hub: HubServer) -> None:
    async with module_hub.client() as anonymous:
        response = await anonymous.get("/metadata")
    assert response.status_code == 200
    [communication] = [
        resource
        for resource in response.json()["rest"][0]["resource"]
        if resource["type"] == "Communication"
    ]
    assert {
        "name": "patient-identifier",
        "definition": DEFINITION,
        "type": "token",
    } in communication["searchParam"]


async def test_a_portal_finds_a_patients_notifications_by_bsn(module_hub: HubServer) -> None:
    # The module's hub is shared: these BSNs are used by no other test of the module.
    mine = [await send(module_hub, "100000009"), await send(module_hub, "100000009")]
    theirs = await send(module_hub, "100000010")

    by_system_and_value = await search(
        module_hub, "portal", **{"patient-identifier": f"{BSN_SYSTEM}|100000009"}
    )
    by_value = await search(module_hub, "portal", **{"patient-identifier": "100000009"})
    other_system = await search(
        module_hub, "portal", **{"patient-identifier": "urn:oid:2.16.528.1.1007.3.3|100000009"}
    )
    combined = await search(
        module_hub,
        "portal",
        **{"patient-identifier": f"{BSN_SYSTEM}|100000010", "category": "melding"},
    )
    as_the_xis = await search(module_hub, "xis", **{"patient-identifier": "100000009"})

    assert sorted(r["id"] for r in by_system_and_value) == sorted(mine)
    assert sorted(r["id"] for r in by_value) == sorted(mine)
    assert other_system == []
    assert [r["id"] for r in combined] == [theirs]
    assert sorted(r["id"] for r in as_the_xis) == sorted(mine)  # its own, it may read


async def test_a_subscription_on_a_patients_bsn_hears_only_of_that_patient(
    tmp_path: Path,
    database_url: str,
    app_keys: dict[str, AppKeys],
    https_receiver: HttpsReceiver,
    local_ca: LocalCA,
) -> None:
    apps_file = write_apps_file(tmp_path / "apps.yaml", app_keys)
    settings = hub_settings(tmp_path, database_url, apps_file, ca_bundle=local_ca.bundle)
    criteria = f"Communication?patient-identifier={BSN_SYSTEM}|{BSN}"
    with running_hub(settings, app_keys) as hub:
        async with hub.client("portal") as portal:
            created = await portal.post(
                "/Subscription",
                json={
                    "resourceType": "Subscription",
                    "status": "requested",
                    "reason": "notifications of one patient",
                    "criteria": criteria,
                    "channel": {"type": "rest-hook", "endpoint": https_receiver.url()},
                },
            )
        assert created.status_code == 201, created.text
        subscription = created.json()["id"]

        other = await send(hub, OTHER_BSN)
        wanted = await send(hub, BSN)
        [request] = await https_receiver.wait_for_async(1, timeout=60)

        async def transmitted() -> list[dict[str, Any]] | None:
            events = await audit_events(hub, type="transmit", entity=f"Subscription/{subscription}")
            return events or None

        events = await eventually(transmitted)
        # A row is only ever removed together with its transmit AuditEvent, so an empty
        # outbox and this one event mean nothing was ever queued for the other patient.
        queued = await outbox_size(database_url)

    assert request.method == "POST" and request.body == b""
    assert [event["entity"][0]["what"]["reference"] for event in events] == [
        f"Communication/{wanted}/_history/1"
    ]
    assert queued == 0
    assert other != wanted and len(https_receiver.requests) == 1


async def outbox_size(database_url: str) -> int:
    """Rows in the delivery queue, of any state."""
    database = Database(database_url, pool_size=1)
    try:
        return len(await database.read(outbox.entries()))
    finally:
        await database.dispose()
