"""The Subscription rules (TOP-KT-006) as an application meets them at the API.

Every refusal is a 422 whose OperationOutcome names the offending element, except a
subscription on a type the creator may not read, which is 403. The hub owns
`status` and `error`; only the owner sees, changes or deletes its Subscription.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.hub import (
    REPOSITORY,
    AppKeys,
    HubServer,
    hub_settings,
    running_hub,
    write_apps_file,
)
from tests.support.subscriptions import read, subscription

ENDPOINT = "https://127.0.0.1:8443/hook"
OFFICIAL_EXAMPLE = REPOSITORY / "tests/fixtures/fhir-r4/subscription-example.json"


def expressions(response: httpx.Response) -> list[str]:
    assert response.json()["resourceType"] == "OperationOutcome"
    return [e for issue in response.json()["issue"] for e in issue.get("expression", ())]


def diagnostics(response: httpx.Response) -> str:
    return " ".join(issue.get("diagnostics", "") for issue in response.json()["issue"])


async def post(server: HubServer, resource: dict[str, Any], app: str = "xis") -> httpx.Response:
    async with server.client(app) as client:
        return await client.post("/Subscription", json=resource)


def with_channel(**channel: Any) -> dict[str, Any]:
    resource = subscription("Patient", ENDPOINT)
    resource["channel"] |= channel
    return resource


CRLF_INJECTION = "X-Evil: a\r\nX-Injected: b"

# Each case breaks exactly one rule, so exactly one element is named.
RULE_BREAKERS: list[tuple[dict[str, Any], str]] = [
    (with_channel(type="websocket"), "Subscription.channel.type"),
    (with_channel(endpoint="http://127.0.0.1:8443/hook"), "Subscription.channel.endpoint"),
    (with_channel(endpoint="hook"), "Subscription.channel.endpoint"),
    (with_channel(payload="application/fhir+json"), "Subscription.channel.payload"),
    (with_channel(header=["X-Ok: 1", CRLF_INJECTION]), "Subscription.channel.header[1]"),
    (with_channel(header=["X-Evil: a\nX-Injected: b"]), "Subscription.channel.header[0]"),
    (with_channel(header=["X-Evil: a\x00"]), "Subscription.channel.header[0]"),
    (with_channel(header=["Content-Type: text/plain"]), "Subscription.channel.header[0]"),
    (with_channel(header=["content-length: 3"]), "Subscription.channel.header[0]"),
    (with_channel(header=["X-Trace-Id: mine"]), "Subscription.channel.header[0]"),
    (with_channel(header=["X-Request-Id: mine"]), "Subscription.channel.header[0]"),
    (with_channel(header=["X-Correlation-Id: mine"]), "Subscription.channel.header[0]"),
    (with_channel(header=["Host: elsewhere.example"]), "Subscription.channel.header[0]"),
    (with_channel(header=["Transfer-Encoding: chunked"]), "Subscription.channel.header[0]"),
    (with_channel(header=["no colon here"]), "Subscription.channel.header[0]"),
    (subscription("Patient", ENDPOINT, end="2020-01-01T00:00:00Z"), "Subscription.end"),
]  # fmt: skip

# Criteria the hub cannot evaluate, and the word the diagnostics must name.
UNEVALUABLE_CRITERIA = [
    ("Observation?code=1975-2", "Observation"),
    ("Patient?shoe-size=44", "shoe-size"),
    ("Patient?gender:fuzzy=male", "fuzzy"),
    ("Task?instantiates.nonsense=x", "nonsense"),
]


async def test_a_rule_breaking_subscription_is_422_naming_the_element(
    hub_server: HubServer,
) -> None:
    wrong = []
    async with hub_server.client("xis") as xis:
        for resource, element in RULE_BREAKERS:
            response = await xis.post("/Subscription", json=resource)
            if response.status_code != 422 or expressions(response) != [element]:
                wrong.append((element, response.status_code, response.text))
        # Nothing was stored along the way.
        assert (await xis.get("/Subscription")).json()["total"] == 0
    assert not wrong


async def test_criteria_the_hub_cannot_evaluate_are_422_naming_the_culprit(
    hub_server: HubServer,
) -> None:
    wrong = []
    async with hub_server.client("module") as module:
        for criteria, named in UNEVALUABLE_CRITERIA:
            response = await module.post("/Subscription", json=subscription(criteria, ENDPOINT))
            if (
                response.status_code != 422
                or expressions(response) != ["Subscription.criteria"]
                or named not in diagnostics(response)
            ):
                wrong.append((criteria, response.status_code, response.text))
    assert not wrong


async def test_the_official_fhir_example_is_refused_for_every_koppeltaal_rule_it_breaks(
    hub_server: HubServer,
) -> None:
    example = json.loads(OFFICIAL_EXAMPLE.read_text())
    response = await post(hub_server, example)
    assert response.status_code == 422
    assert sorted(expressions(response)) == [
        "Subscription.channel.payload",
        "Subscription.criteria",
        "Subscription.end",
    ]
    # The header's value is a shared secret: never echoed into the outcome (or the audit).
    assert "secret-token" not in response.text

    # With only the payload left to object to, the payload alone is named.
    example.pop("end")
    example["criteria"] = "Patient"
    response = await post(hub_server, example)
    assert response.status_code == 422
    assert expressions(response) == ["Subscription.channel.payload"]


async def test_subscribing_to_what_the_creator_may_not_read_is_403(
    hub_server: HubServer,
) -> None:
    # A Zorgondersteuning app (the XIS) has no rights on Task at all.
    response = await post(hub_server, subscription("Task?status=completed", ENDPOINT))
    assert response.status_code == 403
    # ... the same criteria are fine for a module, which may read (GRANTED) Tasks.
    response = await post(hub_server, subscription("Task?status=completed", ENDPOINT), "module")
    assert response.status_code == 201, response.text


async def test_the_hub_owns_status_and_error(hub_server: HubServer) -> None:
    async with hub_server.client("xis") as xis:
        created = await xis.post(
            "/Subscription",
            json=subscription("Patient", ENDPOINT, error="I say it failed", status="requested"),
        )
        assert created.status_code == 201, created.text
        stored = created.json()
        assert stored["status"] == "active"
        assert "error" not in stored

        # Writing back `error` (and asking for status error) changes neither.
        stored |= {"status": "error", "error": "still mine"}
        updated = await xis.put(
            f"/Subscription/{stored['id']}", json=stored, headers={"If-Match": 'W/"1"'}
        )
        assert updated.status_code == 200, updated.text
        assert updated.json()["status"] == "active"
        assert "error" not in updated.json()
        assert "error" not in await read(xis, f"/Subscription/{stored['id']}")

        # `off` is the client's to choose: it pauses.
        paused = updated.json() | {"status": "off"}
        updated = await xis.put(
            f"/Subscription/{stored['id']}", json=paused, headers={"If-Match": 'W/"2"'}
        )
        assert updated.json()["status"] == "off"


async def test_only_the_owner_reads_updates_and_deletes_a_subscription(
    hub_server: HubServer,
) -> None:
    async with hub_server.client("module") as owner, hub_server.client("xis") as other:
        created = await owner.post("/Subscription", json=subscription("Patient", ENDPOINT))
        assert created.status_code == 201, created.text
        resource = created.json()
        path = f"/Subscription/{resource['id']}"

        assert (await other.get(path)).status_code == 403
        changed = copy.deepcopy(resource) | {"criteria": "Patient?gender=male"}
        put = await other.put(path, json=changed, headers={"If-Match": 'W/"1"'})
        assert put.status_code == 403
        assert (await other.delete(path)).status_code == 403
        listed = await other.get("/Subscription")
        assert listed.json()["total"] == 0

        # Nothing of the refused attempts stuck; the owner still has it as created.
        assert (await read(owner, path))["criteria"] == "Patient"
        assert (await owner.delete(path)).status_code in (200, 204)
        assert (await owner.get(path)).status_code == 410


# --- the endpoint: registered prefixes and reachable addresses -------------------------


@pytest.fixture
def registered_hub(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys]
) -> Iterator[HubServer]:
    """The XIS may only use webhooks under https://127.0.0.1:8443/hooks/."""
    apps = write_apps_file(
        tmp_path / "apps.yaml", app_keys, endpoints={"xis": ["https://127.0.0.1:8443/hooks/"]}
    )
    with running_hub(hub_settings(tmp_path, database_url, apps), app_keys) as server:
        yield server


async def test_an_endpoint_outside_the_registered_prefixes_is_422(
    registered_hub: HubServer,
) -> None:
    outside = [
        "https://127.0.0.1:8443/elsewhere",
        "https://127.0.0.1:8443/hooks-evil/x",
        "https://127.0.0.1:8443/hooks/../admin",
        "https://127.0.0.1:8443/hooks/%2e%2e/admin",
        "https://127.0.0.1:9443/hooks/x",
        "https://localhost:8443/hooks/x",
    ]
    wrong = []
    async with registered_hub.client("xis") as xis:
        for endpoint in outside:
            response = await xis.post("/Subscription", json=subscription("Patient", endpoint))
            if (
                response.status_code != 422
                or expressions(response) != ["Subscription.channel.endpoint"]
                or "registered endpoints" not in diagnostics(response)
            ):
                wrong.append((endpoint, response.status_code, response.text))
    assert not wrong


async def test_an_endpoint_inside_the_registered_prefixes_is_accepted(
    registered_hub: HubServer,
) -> None:
    response = await post(
        registered_hub, subscription("Patient", ENDPOINT.replace("/hook", "/hooks/a"))
    )
    assert response.status_code == 201, response.text
    # Apps without registered endpoints may use any (reachable) https URL.
    response = await post(registered_hub, subscription("Patient", ENDPOINT), app="module")
    assert response.status_code == 201, response.text


@pytest.fixture
def public_only_hub(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys]
) -> Iterator[HubServer]:
    """A hub whose webhooks may reach public addresses only (HUB_WEBHOOK_ALLOW_NETWORKS empty)."""
    apps = write_apps_file(tmp_path / "apps.yaml", app_keys)
    settings = hub_settings(tmp_path, database_url, apps, webhook_allow_networks=())
    with running_hub(settings, app_keys) as server:
        yield server


async def test_an_endpoint_resolving_to_a_non_public_address_is_422(
    public_only_hub: HubServer,
) -> None:
    cases = [
        ("https://127.0.0.1:8443/hook", "loopback"),
        ("https://localhost:8443/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("https://[::ffff:192.168.0.1]/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
    ]
    wrong = []
    async with public_only_hub.client("xis") as xis:
        for endpoint, reason in cases:
            response = await xis.post("/Subscription", json=subscription("Patient", endpoint))
            if (
                response.status_code != 422
                or expressions(response) != ["Subscription.channel.endpoint"]
                or reason not in diagnostics(response)
            ):
                wrong.append((endpoint, response.status_code, response.text))
    assert not wrong


async def test_allow_networks_admit_exactly_the_listed_private_networks(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys]
) -> None:
    apps = write_apps_file(tmp_path / "apps.yaml", app_keys)
    allowed = (ipaddress.ip_network("10.1.0.0/16"),)
    settings = hub_settings(tmp_path, database_url, apps, webhook_allow_networks=allowed)
    with running_hub(settings, app_keys) as server:
        inside = await post(server, subscription("Patient", "https://10.1.2.3/hook"))
        outside = await post(server, subscription("Patient", "https://10.2.0.1/hook"))
    assert inside.status_code == 201, inside.text
    assert outside.status_code == 422
