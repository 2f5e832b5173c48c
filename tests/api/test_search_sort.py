"""Search features generic FHIR clients use, over HTTP: `_sort` on string, token and
reference parameters with paging, the R4 `phonetic` parameter, and `Accept` with a
`fhirVersion`.

The ordering and cursor rules are unit-tested in tests/store/test_search.py and the
phonetic keys in tests/fhir/test_phonetic.py; this checks that they reach clients intact.
Each test tags its resources with an identifier of its own, so the shared hub holds no
surprises.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import pytest

from tests.api.common import expressions, ids, link, outcome
from tests.support.hub import HubServer

# One hub per backend for the module (`module_hub`): keep the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_search_sort")

RUN = "urn:test:sort"


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex


def tagged(resource_type: str, tag: str, **fields: Any) -> dict[str, Any]:
    return {"resourceType": resource_type, "identifier": [{"system": RUN, "value": tag}], **fields}


def named(*families: str) -> list[dict[str, Any]]:
    return [{"family": family} for family in families]


async def create_all(client: httpx.AsyncClient, resources: Sequence[dict[str, Any]]) -> list[str]:
    made = []
    for resource in resources:  # in order: ties are broken by creation order
        response = await client.post(f"/{resource['resourceType']}", json=resource)
        assert response.status_code == 201, response.text
        made.append(response.json()["id"])
    return made


async def walk(client: httpx.AsyncClient, url: str, params: dict[str, str]) -> list[list[str]]:
    """Every page of a search, following `next`, then back again following `previous`."""
    pages: list[list[str]] = []
    response = await client.get(url, params=params)
    while True:
        assert response.status_code == 200, response.text
        pages.append(ids(response.json()))
        following = link(response.json(), "next")
        if following is None:
            break
        response = await client.get(following)
    back = [pages[-1]]
    while (previous := link(response.json(), "previous")) is not None:
        response = await client.get(previous)
        assert response.status_code == 200, response.text
        back.append(ids(response.json()))
    assert list(reversed(back)) == pages, "walking back gives the same pages"
    return pages


async def test_sort_by_string_pages_through_ties(module_hub: HubServer, tag: str) -> None:
    async with module_hub.client("xis") as xis:
        made = await create_all(
            xis,
            [
                tagged("Patient", tag, name=named("Visser")),  # 0
                tagged("Patient", tag, name=named("bakker")),  # 1: case is ignored
                tagged("Patient", tag, name=named("Visser")),  # 2: a tie with 0
                tagged("Patient", tag),  # 3: no name, last either way
                tagged("Patient", tag, name=named("Zwart", "Andriessen")),  # 4: two names
                tagged("Patient", tag, name=named("de Boer")),  # 5
                tagged("Patient", tag, name=named("Visser")),  # 6: a tie with 0 and 2
            ],
        )
        mine = {"identifier": f"{RUN}|{tag}", "_count": "2"}
        up = await walk(xis, "/Patient", {**mine, "_sort": "family"})
        down = await walk(xis, "/Patient", {**mine, "_sort": "-family"})
        self_link = link(
            (await xis.get("/Patient", params={**mine, "_sort": "-family"})).json(), "self"
        )
    order = [4, 1, 5, 0, 2, 6, 3]  # Andriessen (4's lowest), bakker, de Boer, Visser x3, none
    assert [id_ for page in up for id_ in page] == [made[i] for i in order]
    assert [len(page) for page in up] == [2, 2, 2, 1]
    # Going down each Patient sorts by its highest name: Zwart first; ties stay in creation order.
    reverse = [4, 0, 2, 6, 5, 1, 3]
    assert [id_ for page in down for id_ in page] == [made[i] for i in reverse]
    assert self_link is not None and "_sort=-family" in self_link


async def test_sort_by_token_then_string(module_hub: HubServer, tag: str) -> None:
    async with module_hub.client("xis") as xis:
        made = await create_all(
            xis,
            [
                tagged("Patient", tag, gender="male", name=named("Bakker")),
                tagged("Patient", tag, gender="female", name=named("Smit")),
                tagged("Patient", tag, gender="male", name=named("Aalders")),
                tagged("Patient", tag, gender="female", name=named("Jansen")),
            ],
        )
        mine = {"identifier": f"{RUN}|{tag}", "_count": "3"}
        pages = await walk(xis, "/Patient", {**mine, "_sort": "gender,-family"})
    assert [id_ for page in pages for id_ in page] == [made[1], made[3], made[0], made[2]]


async def test_sort_by_reference(module_hub: HubServer, tag: str) -> None:
    async with module_hub.client("xis") as xis:
        made = await create_all(
            xis,
            [
                tagged("Patient", tag, managingOrganization={"reference": "Organization/b2"}),
                tagged("Patient", tag),
                tagged("Patient", tag, managingOrganization={"reference": "Organization/a1"}),
            ],
        )
        mine = {"identifier": f"{RUN}|{tag}"}
        up = await walk(xis, "/Patient", {**mine, "_sort": "organization"})
        down = await walk(xis, "/Patient", {**mine, "_sort": "-organization"})
    assert up == [[made[2], made[0], made[1]]]
    assert down == [[made[0], made[2], made[1]]]


@pytest.mark.parametrize("sort", ["bogus", "phonetic", "family:exact", "_profile"])
async def test_sort_on_what_cannot_be_sorted_is_a_400(module_hub: HubServer, sort: str) -> None:
    async with module_hub.client("xis") as xis:
        refused = await xis.get("/Patient", params={"_sort": sort})
    assert expressions(outcome(refused, 400)) == ["_sort"]


async def test_phonetic_finds_names_that_sound_alike(module_hub: HubServer, tag: str) -> None:
    async with module_hub.client("xis") as xis:
        meijer, meyer, janssen, berg, other = await create_all(
            xis,
            [
                tagged("Patient", tag, name=[{"family": "Meijer", "given": ["Anne"]}]),
                tagged("Patient", tag, name=[{"family": "Meyer", "given": ["Kees"]}]),
                tagged("Patient", tag, name=[{"family": "Janssen", "given": ["Sanne"]}]),
                tagged("Patient", tag, name=[{"family": "van der Berg", "given": ["Daan"]}]),
                tagged("Patient", tag, name=[{"family": "Bakker", "given": ["Claes"]}]),
            ],
        )
        [claessen] = await create_all(
            xis, [tagged("Practitioner", tag, name=[{"family": "Claessen", "given": ["Joop"]}])]
        )
        [schouten] = await create_all(
            xis,
            [
                tagged(
                    "RelatedPerson",
                    tag,
                    patient={"reference": f"Patient/{meijer}"},
                    name=[{"text": "Pieter Schouten"}],
                )
            ],
        )
        mine = f"{RUN}|{tag}"

        async def found(resource_type: str, value: str) -> list[str]:
            response = await xis.get(
                f"/{resource_type}", params={"identifier": mine, "phonetic": value}
            )
            assert response.status_code == 200, response.text
            return sorted(ids(response.json()))

        assert await found("Patient", "Maier") == sorted([meijer, meyer])
        assert await found("Patient", "Jansen") == [janssen]
        assert await found("Patient", "Berg") == [berg]
        assert await found("Patient", "Vanderberg") == [berg]
        assert await found("Patient", "Klaas") == [other]  # a given name: Claes
        assert await found("Patient", "Jansen,Mayer") == sorted([meijer, meyer, janssen])
        assert await found("Patient", "Smit") == []
        assert await found("Practitioner", "Klaasen") == [claessen]
        assert await found("RelatedPerson", "Souten") == [schouten]
        missing = await xis.get("/Patient", params={"identifier": mine, "phonetic:missing": "true"})
        no_letters = await xis.get("/Patient", params={"phonetic": "1234"})
        exact = await xis.get("/Patient", params={"phonetic:exact": "Meijer"})
    assert ids(missing.json()) == []
    assert expressions(outcome(no_letters, 400)) == ["phonetic"]
    assert expressions(outcome(exact, 400)) == ["phonetic:exact"]


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("application/fhir+json; fhirVersion=3.0", 406),
        ("application/fhir+json;fhirVersion=5.0, application/json; fhirVersion=1.0.2", 406),
        ("application/fhir+json; fhirVersion=4.0", 200),
        ('application/fhir+json; fhirVersion="4.0.1"', 200),
        ("application/fhir+json; fhirVersion=3.0, application/json", 200),
        ("application/fhir+json; fhirversion=3.0, */*; fhirVersion=4.0", 200),
    ],
)
async def test_accept_with_another_fhir_version_is_a_406(
    module_hub: HubServer, accept: str, status: int
) -> None:
    async with module_hub.client("xis", headers={"Accept": accept}) as xis:
        response = await xis.get("/Patient", params={"_count": "1"})
    if status == 200:
        assert response.status_code == 200, response.text
        assert response.json()["resourceType"] == "Bundle"
    else:
        text = outcome(response, 406)["issue"][0]["diagnostics"]
        assert "fhirVersion" in text
        assert "R4" in text
