"""Helpers for the tests that drive subscriptions end to end: a real hub, real receivers.

Used by tests/api/test_subscription_*.py, tests/e2e and tests/examples. Nothing here
fakes the hub: every helper talks to it over HTTP as an application would.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

from hub.store.db import Database
from hub.store.outbox import Entry, entries
from tests.support.https_receiver import LocalCA, ReceivedRequest
from tests.support.hub import AppKeys, HubServer, hub_settings, running_hub, write_apps_file
from tests.support.waiting import eventually

T = TypeVar("T")

CONTENT_TYPE = "application/fhir+json; fhirVersion=4.0; charset=utf-8"
LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
KT = "http://koppeltaal.nl/fhir/StructureDefinition"

# Short enough that the three failures before `status = error` take about 1.5 s, and
# the fourth attempt comes some 5 s later (the steps keep the 5:30:120 s ratio).
FAST_RETRY_SECONDS = 0.04


@contextmanager
def notifying_hub(
    tmp_path: Path,
    database_url: str,
    keys: Mapping[str, AppKeys],
    ca: LocalCA,
    *,
    endpoints: Mapping[str, list[str]] | None = None,
    roles: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Iterator[HubServer]:
    """A running hub that trusts `ca` for webhooks and retries quickly."""
    apps = write_apps_file(tmp_path / "apps.yaml", keys, endpoints=endpoints, roles=roles)
    settings = hub_settings(
        tmp_path,
        database_url,
        apps,
        ca_bundle=ca.bundle,
        retry_base_seconds=overrides.pop("retry_base_seconds", FAST_RETRY_SECONDS),
        **overrides,
    )
    with running_hub(settings, keys) as server:
        yield server


def subscription(
    criteria: str, endpoint: str, *, headers: Sequence[str] = (), **elements: Any
) -> dict[str, Any]:
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint}
    if headers:
        channel["header"] = list(headers)
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test",
        "criteria": criteria,
        "channel": channel,
        **elements,
    }


async def subscribe(
    client: httpx.AsyncClient, criteria: str, endpoint: str, *, headers: Sequence[str] = ()
) -> str:
    """Create a Subscription; its id."""
    response = await client.post(
        "/Subscription", json=subscription(criteria, endpoint, headers=headers)
    )
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "active"
    return str(response.json()["id"])


async def create(
    client: httpx.AsyncClient, resource: Mapping[str, Any], *, trace: str | None = None
) -> httpx.Response:
    """POST `resource`; with `trace`, as request `<trace>-w` of trace `<trace>`."""
    headers = {"X-Request-Id": f"{trace}-w", "X-Trace-Id": trace} if trace else {}
    response = await client.post(f"/{resource['resourceType']}", json=resource, headers=headers)
    assert response.status_code == 201, response.text
    return response


async def update(
    client: httpx.AsyncClient, resource: Mapping[str, Any], *, trace: str | None = None
) -> httpx.Response:
    """PUT `resource` over its current version (its meta.versionId)."""
    headers = {"If-Match": f'W/"{resource["meta"]["versionId"]}"'}
    if trace:
        headers |= {"X-Request-Id": f"{trace}-w", "X-Trace-Id": trace}
    path = f"/{resource['resourceType']}/{resource['id']}"
    response = await client.put(path, json=resource, headers=headers)
    assert response.status_code == 200, response.text
    return response


async def search(client: httpx.AsyncClient, path: str, **params: str) -> list[dict[str, Any]]:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return [entry["resource"] for entry in response.json().get("entry", ())]


async def transmit_events(auditor: httpx.AsyncClient, subscription_id: str) -> list[dict[str, Any]]:
    """The `transmit` AuditEvents of a Subscription's notifications (Koppeltaal's query)."""
    return await search(
        auditor, "/AuditEvent", type="transmit", entity=f"Subscription/{subscription_id}"
    )


async def read(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


async def wait_for_status(
    client: httpx.AsyncClient, subscription_id: str, status: str, *, timeout: float = 15.0
) -> dict[str, Any]:
    """The Subscription once the hub has set `status` on it."""

    async def probe() -> dict[str, Any] | None:
        current = await read(client, f"/Subscription/{subscription_id}")
        return current if current["status"] == status else None

    return await eventually(probe, timeout=timeout, what=f"Subscription status {status}")


def extension(resource: Mapping[str, Any], name: str) -> Any:
    """The value of the Koppeltaal extension `name` (trace-id, request-id, ...)."""
    for item in resource.get("extension", ()):
        if item["url"] == f"{KT}/{name}":
            return next(v for k, v in item.items() if k.startswith("value"))
    return None


def decoded_query(entity: Mapping[str, Any]) -> str:
    return base64.b64decode(entity["query"]).decode("utf-8")


def correlation_ids(requests: Sequence[ReceivedRequest]) -> list[str]:
    """The X-Correlation-Id of each notification: the X-Request-Id of its write."""
    return [request.header("X-Correlation-Id") or "" for request in requests]


async def outbox(database_url: str) -> list[Entry]:
    """The delivery queue as stored: a row leaves it only once its POST has completed."""
    database = Database(database_url, pool_size=1)
    try:
        return await database.read(entries())
    finally:
        await database.dispose()


async def drained(database_url: str, *, timeout: float = 15.0) -> None:
    """Wait until nothing is queued or in flight: every notification has been tried."""

    async def empty() -> bool:
        return not await outbox(database_url)

    await eventually(empty, timeout=timeout, what="an empty outbox")


# --- Koppeltaal's typical chain: Task → ActivityDefinition (instantiates.publisherId) ---


def activity(publisher_id: str) -> dict[str, Any]:
    return {
        "resourceType": "ActivityDefinition",
        "status": "active",
        "extension": [{"url": f"{KT}/KT2PublisherId", "valueId": publisher_id}],
    }


def task(activity_id: str, status: str = "ready") -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "status": status,
        "intent": "order",
        "extension": [
            {
                "url": "http://vzvz.nl/fhir/StructureDefinition/instantiates",
                "valueReference": {"reference": f"ActivityDefinition/{activity_id}"},
            }
        ],
    }
