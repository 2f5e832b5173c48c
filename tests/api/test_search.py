"""Search over HTTP: parameter types, modifiers, prefixes, result controls, paging.

The search engine itself is unit-tested in tests/store; this checks that the HTTP
layer gets queries to it and results back intact. Each test tags its Patients
with an identifier of its own, so the module's shared hub holds no surprises.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.api.common import entries, expressions, ids, link, outcome
from tests.support.hub import HubServer

# One hub per backend for the module (`module_hub`): keep the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_search")

RUN = "urn:test:run"


def tagged(tag: str, **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": RUN, "value": tag}], **fields}


async def create_all(client: httpx.AsyncClient, patients: Sequence[dict[str, Any]]) -> list[str]:
    made = []
    for patient in patients:  # in order: paging order is creation order
        response = await client.post("/Patient", json=patient)
        assert response.status_code == 201, response.text
        made.append(response.json()["id"])
    return made


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex


async def test_parameter_types_modifiers_and_prefixes(module_hub: HubServer, tag: str) -> None:
    async with module_hub.client("xis") as xis:
        ann, bob, cor = await create_all(
            xis,
            [
                tagged(tag, gender="female", birthDate="1980-05-01", name=[{"family": "Annink"}]),
                tagged(tag, gender="male", birthDate="1990-01-15", name=[{"family": "Bakker"}]),
                tagged(tag, gender="female", name=[{"family": "van Anrooij"}]),
            ],
        )
        mine = f"{RUN}|{tag}"

        async def find(**params: str | list[str]) -> list[str]:
            response = await xis.get("/Patient", params={"identifier": mine, **params})
            assert response.status_code == 200, response.text
            return sorted(ids(response.json()))

        cases = {
            "token": (await find(gender="female"), [ann, cor]),
            "token OR": (await find(gender="male,other"), [bob]),
            "token :not": (await find(**{"gender:not": "female"}), [bob]),
            "string prefix, case-insensitive": (await find(family="ann"), [ann]),
            "string :contains": (await find(**{"family:contains": "nro"}), [cor]),
            "string :exact": (await find(**{"family:exact": "annink"}), []),
            "date eq (year)": (await find(birthdate="1980"), [ann]),
            "date ge": (await find(birthdate="ge1985-01-01"), [bob]),
            "date lt": (await find(birthdate="lt1990-01-15"), [ann]),
            "date gt with lt (AND)": (await find(birthdate=["gt1970", "lt1985"]), [ann]),
            "date :missing": (await find(**{"birthdate:missing": "true"}), [cor]),
            "_id": (await find(_id=f"{bob},{cor}"), [bob, cor]),
            "_lastUpdated": (await find(_lastUpdated="gt2000-01-01"), [ann, bob, cor]),
            "unknown system": (await find(gender="http://example.org|female"), []),
        }
        related = await xis.post(
            "/RelatedPerson",
            json={"resourceType": "RelatedPerson", "patient": {"reference": f"Patient/{ann}"}},
        )
        assert related.status_code == 201
        by_reference = [
            ids((await xis.get("/RelatedPerson", params={"patient": value})).json())
            for value in (f"Patient/{ann}", ann, f"{module_hub.fhir()}/Patient/{ann}")
        ]
    for name, (found, expected) in cases.items():
        assert found == sorted(expected), name
    assert by_reference == [[related.json()["id"]]] * 3


async def test_result_controls(module_hub: HubServer, tag: str) -> None:
    dates = ["1970-01-01", "1999-12-31", "1985-06-15", "2001-03-03"]
    async with module_hub.client("xis") as xis:
        made = await create_all(xis, [tagged(tag, birthDate=d) for d in dates])
        mine = {"identifier": f"{RUN}|{tag}"}
        by_date = (await xis.get("/Patient", params={**mine, "_sort": "birthdate"})).json()
        by_date_desc = (await xis.get("/Patient", params={**mine, "_sort": "-birthdate"})).json()
        newest = (await xis.get("/Patient", params={**mine, "_sort": "-_lastUpdated"})).json()
        counted = (await xis.get("/Patient", params={**mine, "_count": "2"})).json()
        no_total = (await xis.get("/Patient", params={**mine, "_total": "none"})).json()
        summary = (await xis.get("/Patient", params={**mine, "_summary": "count"})).json()
        zero = (await xis.get("/Patient", params={**mine, "_count": "0"})).json()
        posted = await xis.post(
            "/Patient/_search?_sort=birthdate",
            content=f"identifier={RUN}%7C{tag}&birthdate=ge1980".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    order = sorted(range(len(dates)), key=lambda i: dates[i])
    assert ids(by_date) == [made[i] for i in order]
    assert ids(by_date_desc) == [made[i] for i in reversed(order)]
    assert ids(newest) == list(reversed(made))
    assert counted["total"] == 4
    assert ids(counted) == made[:2]
    assert "total" not in no_total
    assert ids(no_total) == made
    assert summary["total"] == 4
    assert "entry" not in summary
    assert zero["total"] == 4
    assert "entry" not in zero
    assert posted.status_code == 200, posted.text
    assert ids(posted.json()) == [made[2], made[1], made[3]]
    assert posted.json()["total"] == 3


async def test_unknown_parameter_is_reported(module_hub: HubServer, tag: str) -> None:
    async with module_hub.client("xis") as xis:
        [made] = await create_all(xis, [tagged(tag)])
        params = {"identifier": f"{RUN}|{tag}", "colour": "blue", "shoe-size": "44"}
        lenient = await xis.get("/Patient", params=params)
        strict = await xis.get("/Patient", params=params, headers={"Prefer": "handling=strict"})
        lenient_post = await xis.post(
            "/Patient/_search",
            data=params,
            headers={"Prefer": "handling=lenient"},
        )
    for response in (lenient, lenient_post):
        assert response.status_code == 200
        bundle = response.json()
        assert ids(bundle) == [made]  # the known parameter still filters
        assert bundle["total"] == 1  # outcome entries are not counted
        [warning] = entries(bundle, "outcome")
        assert warning["resourceType"] == "OperationOutcome"
        assert [i["severity"] for i in warning["issue"]] == ["warning", "warning"]
        assert expressions(warning) == ["colour", "shoe-size"]
        # The self link says what was searched for: the ignored parameters are not in it.
        assert "colour" not in (link(bundle, "self") or "")
    assert expressions(outcome(strict, 400)) == ["colour"]


def _cursor_free(url: str) -> dict[str, list[str]]:
    query = parse_qs(urlsplit(url).query)
    query.pop("_cursor", None)
    return query


async def test_paging_links(module_hub: HubServer, tag: str) -> None:
    async with module_hub.client("xis") as xis:
        made = await create_all(xis, [tagged(tag, gender="other") for _ in range(5)])
        params = {"identifier": f"{RUN}|{tag}", "gender": "other", "_count": "2"}
        first = (await xis.get("/Patient", params=params)).json()
        pages = [first]
        while (following := link(pages[-1], "next")) is not None:
            assert following.startswith(f"{module_hub.fhir()}/Patient?")
            # The link is absolute: fetched as is, not relative to the client's base.
            async with httpx.AsyncClient(headers=xis.headers) as plain:
                pages.append((await plain.get(following)).json())
        backwards = [pages[-1]]
        while (preceding := link(backwards[-1], "previous")) is not None:
            assert preceding.startswith(f"{module_hub.fhir()}/Patient?")
            backwards.append((await xis.get(preceding)).json())
        # Links come from the configured public URL, not from what the client called.
        proxied = await xis.get("/Patient", params=params, headers={"Host": "proxy.example"})
    for relation in ("self", "next"):
        assert (link(proxied.json(), relation) or "").startswith(f"{module_hub.fhir()}/Patient?")
    assert [ids(page) for page in pages] == [made[0:2], made[2:4], made[4:5]]
    assert [ids(page) for page in backwards] == [made[4:5], made[2:4], made[0:2]]
    assert link(first, "previous") is None
    for page in pages:
        assert page["total"] == 5
        self_link = link(page, "self")
        assert self_link is not None
        assert self_link.startswith(f"{module_hub.fhir()}/Patient?")
        # Every link repeats the query; only the cursor differs.
        for relation in ("self", "next", "previous"):
            url = link(page, relation)
            if url is not None:
                assert _cursor_free(url) == {key: [value] for key, value in params.items()}


async def test_paging_while_others_write(module_hub: HubServer, tag: str) -> None:
    """A walk through all pages sees everything that existed when it began, exactly once."""
    async with module_hub.client("xis") as xis, module_hub.client("xis") as writer:
        existing = await create_all(xis, [tagged(tag) for _ in range(24)])
        params = {"identifier": f"{RUN}|{tag}", "_count": "5"}
        done = asyncio.Event()

        async def write_meanwhile() -> list[str]:
            made: list[str] = []
            for index in range(40):
                if done.is_set():
                    break
                made += await create_all(writer, [tagged(tag)])
                if index % 4 == 0:  # and touch an existing one: updates must not move it
                    target = existing[index % len(existing)]
                    current = (await writer.get(f"/Patient/{target}")).json()
                    version = current["meta"]["versionId"]
                    updated = await writer.put(
                        f"/Patient/{target}", json=current, headers={"If-Match": f'W/"{version}"'}
                    )
                    assert updated.status_code == 200
            return made

        async def walk() -> list[str]:
            seen: list[str] = []
            page = (await xis.get("/Patient", params=params)).json()
            while True:
                seen += ids(page)
                await asyncio.sleep(0.01)  # let the writer in between pages
                following = link(page, "next")
                if following is None:
                    done.set()
                    return seen
                page = (await xis.get(following)).json()

        added, seen = await asyncio.gather(write_meanwhile(), walk())
    assert len(seen) == len(set(seen)), "a resource was returned twice"
    assert set(existing) <= set(seen), "a resource that existed all along was skipped"
    assert set(seen) <= set(existing) | set(added)
    assert added, "the writer never ran during the walk"
    # Creation order holds across pages, whatever was written meanwhile.
    order = existing + added
    assert seen == sorted(seen, key=order.index)
