"""Every application's Device, and the hub's own, exist in their domain from start-up on.

Koppeltaal identifies an application by its Device (id = client_id, with the
client-id identifier). The hub creates missing ones at start-up and after the
apps file is reloaded; their resource-origin is the hub's own Device.
"""

from __future__ import annotations

import logging
from typing import Any

from hub.access.apps import Registry
from hub.fhir.origin import with_origin
from hub.runtime import HUB_DEVICE, utcnow
from hub.store import resources
from hub.store.db import Database
from hub.store.sql import Conflict, Work

log = logging.getLogger("hub.devices")

CLIENT_ID_SYSTEM = "http://vzvz.nl/fhir/NamingSystem/koppeltaal-client-id"
KT2_DEVICE = "http://koppeltaal.nl/fhir/StructureDefinition/KT2Device"


def device_resource(client_id: str, name: str) -> dict[str, Any]:
    device: dict[str, Any] = {
        "resourceType": "Device",
        "meta": {"profile": [KT2_DEVICE]},
        "identifier": [{"system": CLIENT_ID_SYSTEM, "value": client_id}],
        "status": "active",
        "deviceName": [{"name": name, "type": "user-friendly-name"}],
    }
    return with_origin(device, HUB_DEVICE)


def wanted_devices(registry: Registry, domain: str) -> dict[str, str]:
    """Device id → name for the hub and every app of `domain`."""
    devices = {HUB_DEVICE: "Koppeltaal Hub"}
    devices.update({app.client_id: app.name for app in registry.domains[domain].apps.values()})
    return devices


async def ensure_devices(database: Database, registry: Registry) -> int:
    """Create the Devices that are missing; returns how many were created."""
    created = 0
    for domain in registry.domains:
        for _attempt in range(2):  # a second process may create the same ones at once
            try:
                created += await database.write(_ensure_domain(registry, domain))
                break
            except Conflict:
                log.info("Devices of %s were created concurrently; checking again", domain)
    return created


def _ensure_domain(registry: Registry, domain: str) -> Work[int]:
    wanted = wanted_devices(registry, domain)
    existing = yield from resources.existing_ids(domain, "Device", wanted)
    now = utcnow()
    missing = [
        resources.prepare(
            domain,
            device_resource(device_id, name),
            id=device_id,
            version_id=1,
            now=now,
            origin=HUB_DEVICE,
            method="POST",
        )
        for device_id, name in wanted.items()
        if device_id not in existing
    ]
    yield from resources.insert_new(missing)
    for device in missing:
        log.info("created Device/%s in %s", device.id, domain)
    return len(missing)
