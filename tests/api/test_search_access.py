"""Search over HTTP: what a chain may look into, and parameters with an empty value.

A chained parameter (`Task?instantiates.publisherId=x`) tests fields of the referenced
resources, so it only looks into those the caller may read: otherwise a caller could
probe resources it gets 403 for. A chain into a type the caller may read nothing of is
refused, like a search of that type.

An empty value is ignored (FHIR), but only after its name was checked: `?foo=` is
still an unknown parameter.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.api.common import QUIET_ENDPOINT, entries, expressions, ids, outcome
from tests.support.hub import HubServer
from tests.support.subscriptions import activity, task

# One hub per backend for the module (`module_hub`): keep the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_search_access")

RUN = "urn:test:run"
STRICT = {"Prefer": "handling=strict"}


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex


def criteria(query: str) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test",
        "criteria": query,
        "channel": {"type": "rest-hook", "endpoint": QUIET_ENDPOINT},
    }


async def made(client: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    response = await client.post(f"/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def found(client: httpx.AsyncClient, path: str, **params: str) -> tuple[list[str], int]:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    bundle = response.json()
    return sorted(ids(bundle)), bundle["total"]


async def test_a_chain_cannot_probe_resources_the_caller_may_not_read(
    module_hub: HubServer, tag: str
) -> None:
    hidden, mine, other = f"hidden-{tag}", f"mine-{tag}", f"other-{tag}"
    async with (
        module_hub.client("admin") as admin,
        module_hub.client("module") as module,
        module_hub.client("portal") as portal,
    ):
        # An eHealthModule reads its own ActivityDefinitions only (R(OWN)).
        admins = await made(admin, activity(hidden))
        modules = await made(module, activity(mine))
        assert (await module.get(f"/ActivityDefinition/{admins}")).status_code == 403
        # Its Tasks may refer to any of them.
        to_hidden = await made(module, task(admins))
        to_mine = await made(module, task(modules))

        probes = {
            (name, value): await found(module, "/Task", **{name: value})
            for name in ("instantiates.publisherId", "instantiates:ActivityDefinition.publisherId")
            for value in (hidden, other)
        }
        counted = await module.get(
            "/Task", params={"instantiates.publisherId": hidden, "_summary": "count"}
        )
        own = await found(module, "/Task", **{"instantiates.publisherId": mine})
        # A Clientportaal reads all ActivityDefinitions and (granted) the module's Tasks.
        portal_hidden = await found(portal, "/Task", **{"instantiates.publisherId": hidden})
        portal_mine = await found(portal, "/Task", **{"instantiates.publisherId": mine})

    # The unreadable publisherId answers exactly as one that exists nowhere.
    assert list(probes.values()) == [([], 0)] * 4
    assert counted.json()["total"] == 0
    assert own == ([to_mine], 1)
    assert portal_hidden == ([to_hidden], 1)
    assert portal_mine == ([to_mine], 1)


async def test_a_chain_into_a_type_the_caller_may_not_read_is_refused(
    module_hub: HubServer,
) -> None:
    # An eHealthModule may read no Device at all: as `GET /Device`, the chain is a 403.
    chain = {"owner:Device.identifier": "urn:x|y"}
    async with module_hub.client("module") as module:
        direct = await module.get("/Device")
        lenient = await module.get("/Task", params=chain)
        strict = await module.get("/Task", params=chain, headers=STRICT)
        origin_chain = await module.get("/Task", params={"resource-origin.identifier": "x"})
        subscribed = await module.post(
            "/Subscription", json=criteria("Task?owner:Device.identifier=urn:x|y")
        )
        readable = await module.get("/Task", params={"instantiates.publisherId": "x"})
    assert direct.status_code == 403
    for response in (lenient, strict, origin_chain, subscribed):
        body = outcome(response, 403)
        assert "Device" in body["issue"][0]["diagnostics"]
    assert readable.status_code == 200  # a chain into a type it may read some of


async def test_an_empty_valued_unknown_parameter_is_still_unknown(
    module_hub: HubServer, tag: str
) -> None:
    params = {"identifier": f"{RUN}|{tag}", "foo": "", "gender:bogus": "", "gender": ""}
    async with module_hub.client("xis") as xis:
        patient = await made(
            xis, {"resourceType": "Patient", "identifier": [{"system": RUN, "value": tag}]}
        )
        lenient = await xis.get("/Patient", params=params)
        strict = await xis.get("/Patient", params=params, headers=STRICT)
        strict_modifier = await xis.get("/Patient", params={"gender:bogus": ""}, headers=STRICT)
        known_but_empty = await xis.get(
            "/Patient", params={"identifier": f"{RUN}|{tag}", "gender": ""}, headers=STRICT
        )
    assert lenient.status_code == 200, lenient.text
    bundle = lenient.json()
    assert ids(bundle) == [patient]
    [warning] = entries(bundle, "outcome")
    assert expressions(warning) == ["foo", "gender:bogus"]
    assert expressions(outcome(strict, 400)) == ["foo"]
    assert expressions(outcome(strict_modifier, 400)) == ["gender:bogus"]
    # A known parameter with an empty value is ignored, also in strict mode.
    assert known_but_empty.status_code == 200, known_but_empty.text
    assert ids(known_but_empty.json()) == [patient]
    assert entries(known_but_empty.json(), "outcome") == []


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("Patient?bogus=", "'bogus'"),
        ("Patient?gender:bogus=", "'gender:bogus'"),
        ("Patient?gender=female&_cursor=abc.def", "_cursor"),
        ("Patient?gender=female&_format=json", "_format"),
        ("Patient?_summary=count", "_summary=count"),
        ("Patient?gender=female&_count=0", "_count=0"),
    ],
)
async def test_criteria_refuse_what_a_search_would_not_use(
    module_hub: HubServer, query: str, named: str
) -> None:
    async with module_hub.client("xis") as xis:
        response = await xis.post("/Subscription", json=criteria(query))
    body = outcome(response, 422)
    assert expressions(body) == ["Subscription.criteria"]
    assert named in body["issue"][0]["diagnostics"]
