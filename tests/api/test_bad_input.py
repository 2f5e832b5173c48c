"""No 500 for bad input: each request below is refused with a 4xx OperationOutcome.

Every refusal names what was wrong and, where there is a place to name, where
(`expression`); a refused write stores nothing. The property tests at the end
throw random query strings and JSON bodies at the hub and accept anything but a 5xx.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.common import FHIR_JSON
from tests.support.hub import HubServer

# One hub per backend for the module (`module_hub`): keep the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_bad_input")

MARKER_SYSTEM = "urn:test:bad-input"
LONG_NUMBER = "9" * 5000  # beyond int()'s 4,300 digits
OVERSIZED = "9" * 20  # beyond a 64-bit integer


def _marker() -> str:
    return uuid.uuid4().hex


def _patient(marker: str, **elements: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": MARKER_SYSTEM, "value": marker}],
        **elements,
    }


def _refused(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    outcome: dict[str, Any] = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error"
    assert outcome["issue"][0]["diagnostics"]
    return outcome


def _expressions(outcome: dict[str, Any]) -> list[str]:
    return [e for issue in outcome["issue"] for e in issue.get("expression", [])]


async def _stored(client: httpx.AsyncClient, marker: str) -> int:
    response = await client.get(
        "/Patient", params={"identifier": f"{MARKER_SYSTEM}|{marker}", "_summary": "count"}
    )
    assert response.status_code == 200, response.text
    total: int = response.json()["total"]
    return total


async def _post_patient(xis: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await xis.post("/Patient", content=body, headers={"Content-Type": FHIR_JSON})


async def _create(xis: httpx.AsyncClient, marker: str) -> dict[str, Any]:
    response = await xis.post("/Patient", json=_patient(marker))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# --- JSON ----------------------------------------------------------------------------------


async def test_deeply_nested_json(module_hub: HubServer) -> None:
    marker = _marker()
    head = json.dumps(_patient(marker))[:-1]
    body = f'{head}, "extension": {"[" * 100_000}{"]" * 100_000}}}'.encode()
    async with module_hub.client("xis") as xis:
        outcome = _refused(await _post_patient(xis, body))
        assert "deep" in outcome["issue"][0]["diagnostics"]
        assert await _stored(xis, marker) == 0


# --- integers: _count, _cursor, versions, If-Match ----------------------------------------


@pytest.mark.parametrize("count", ["²", "٣", LONG_NUMBER, OVERSIZED, " 5", "+5", "-1"])
async def test_bad_search_count(module_hub: HubServer, count: str) -> None:
    async with module_hub.client("xis") as xis:
        outcome = _refused(await xis.get("/Patient", params={"_count": count}))
        assert _expressions(outcome) == ["_count"]


@pytest.mark.parametrize("name", ["_count", "_cursor"])
@pytest.mark.parametrize("value", ["²", "٣", LONG_NUMBER, OVERSIZED])
async def test_bad_history_numbers(module_hub: HubServer, name: str, value: str) -> None:
    async with module_hub.client("xis") as xis:
        patient = await _create(xis, _marker())
        response = await xis.get(f"/Patient/{patient['id']}/_history", params={name: value})
        assert _expressions(_refused(response)) == [name]


@pytest.mark.parametrize("version", ["²", "٣", LONG_NUMBER, OVERSIZED])
async def test_bad_vread_version(module_hub: HubServer, version: str) -> None:
    async with module_hub.client("xis") as xis:
        patient = await _create(xis, _marker())
        response = await xis.get(f"/Patient/{patient['id']}/_history/{quote(version)}")
        _refused(response, 404)


@pytest.mark.parametrize("version", ["²", "٣", LONG_NUMBER, OVERSIZED])
async def test_bad_if_match(module_hub: HubServer, version: str) -> None:
    marker = _marker()
    async with module_hub.client("xis") as xis:
        patient = await _create(xis, marker)
        changed = {**patient, "gender": "other"}
        response = await xis.put(
            f"/Patient/{patient['id']}",
            json=changed,
            headers={b"If-Match": f'W/"{version}"'.encode()},
        )
        assert _expressions(_refused(response)) == ["If-Match"]
        current = (await xis.get(f"/Patient/{patient['id']}")).json()
        assert current["meta"]["versionId"] == "1"
        assert "gender" not in current


# --- paging cursors ------------------------------------------------------------------------


def _forged(resource_type: str, filters: list[Any], payload: Any) -> str:
    """A cursor whose check is right (it is not secret) but whose content is not the hub's."""
    text = json.dumps(payload).encode()
    fingerprint = json.dumps([resource_type, filters, []]).encode()
    check = hashlib.blake2b(fingerprint + b"\0" + text, digest_size=12).digest()

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{b64(text)}.{b64(check)}"


@pytest.mark.parametrize(
    "payload",
    [
        {"d": "next", "k": ["not a number"]},
        {"d": "next", "k": [int(OVERSIZED)]},
        {"d": "next", "k": [-(2**70)]},
        {"d": "next", "k": [[1, 2]]},
        {"d": "next", "k": [{"t": "2020-01-01T00:00:00"}]},
        {"d": "next", "k": [True]},
        {"d": "next", "k": [1.5]},
        {"d": "next", "k": [None]},
        {"d": ["next"], "k": [1]},
        [1],
    ],
    ids=str,
)
async def test_forged_cursor(module_hub: HubServer, payload: Any) -> None:
    async with module_hub.client("xis") as xis:
        response = await xis.get("/Patient", params={"_cursor": _forged("Patient", [], payload)})
        assert _expressions(_refused(response)) == ["_cursor"]


@pytest.mark.parametrize(
    "cursor", ["abc.def", "é.é", "x" * 10_000, "\u0000", "[" * 5000 + ".", "....", "a.b.c"]
)
async def test_undecodable_cursor(module_hub: HubServer, cursor: str) -> None:
    async with module_hub.client("xis") as xis:
        response = await xis.get("/Patient", params={"_cursor": cursor})
        assert _expressions(_refused(response)) == ["_cursor"]


async def test_forged_cursor_with_deep_json(module_hub: HubServer) -> None:
    # Deeper than Python's recursion limit, short enough for the cursor and body limits.
    payload_text = "[" * 1_400 + "]" * 1_400
    check = hashlib.blake2b(
        json.dumps(["Patient", [], []]).encode() + b"\0" + payload_text.encode(), digest_size=12
    ).digest()
    cursor = ".".join(
        base64.urlsafe_b64encode(part).rstrip(b"=").decode()
        for part in (payload_text.encode(), check)
    )
    async with module_hub.client("xis") as xis:
        response = await xis.post(
            "/Patient/_search",
            content=urlencode({"_cursor": cursor}),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert _expressions(_refused(response)) == ["_cursor"]


# --- POST _search body -----------------------------------------------------------------------


async def test_search_body_not_utf8(module_hub: HubServer) -> None:
    async with module_hub.client("xis") as xis:
        response = await xis.post(
            "/Patient/_search",
            content=b"name=\xff\xfe",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        outcome = _refused(response)
        assert "UTF-8" in outcome["issue"][0]["diagnostics"]


# --- NUL and other characters no database text can hold --------------------------------------


@pytest.mark.parametrize(
    ("elements", "expression"),
    [
        ({"name": [{"family": "a\u0000b"}]}, "Patient.name[0].family"),
        ({"gender": "\u0000"}, "Patient.gender"),
        ({"extension": [{"url": "urn:x\u0000", "valueString": "x"}]}, "Patient.extension[0].url"),
        ({"name": [{"family": "a\ud800b"}]}, "Patient.name[0].family"),
    ],
    ids=["family", "gender", "extension-url", "lone-surrogate"],
)
async def test_unstorable_character_in_resource(
    module_hub: HubServer, elements: dict[str, Any], expression: str
) -> None:
    marker = _marker()
    async with module_hub.client("xis") as xis:
        response = await _post_patient(xis, json.dumps(_patient(marker, **elements)).encode())
        assert expression in _expressions(_refused(response))
        assert await _stored(xis, marker) == 0


async def test_nul_in_property_name(module_hub: HubServer) -> None:
    marker = _marker()
    body = json.dumps(_patient(marker, **{"gen\u0000der": "male"})).encode()
    async with module_hub.client("xis") as xis:
        _refused(await _post_patient(xis, body))
        assert await _stored(xis, marker) == 0


@pytest.mark.parametrize(
    ("query", "expression"),
    [
        ("name=a%00b", "name"),
        ("identifier=urn:x%00|1", "identifier"),
        ("_id=a%00", "_id"),
        ("general-practitioner=Practitioner/a%00", "general-practitioner"),
        ("_profile=urn:a%00", "_profile"),
        ("_count=1%00", "_count"),
        ("_sort=_id%00", "_sort"),
        ("name%00=x", "name\u0000"),  # named escaped: 'name\x00'
        ("name=a%ED%A0%80b", None),  # an encoded surrogate: not UTF-8, read as U+FFFD
    ],
)
async def test_nul_in_search(module_hub: HubServer, query: str, expression: str | None) -> None:
    async with module_hub.client("xis") as xis:
        response = await xis.get(f"/Patient?{query}")
        if expression is None:
            assert response.status_code == 200, response.text
            return
        (named,) = _expressions(_refused(response))
        assert named == expression or (expression.startswith(named[1:5]) and "\\x00" in named)
        post = await xis.post(
            "/Patient/_search",
            content=query,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        _refused(post)


# --- values longer than their columns ------------------------------------------------------


async def test_long_reference_type(module_hub: HubServer) -> None:
    marker = _marker()
    reference = {"reference": "A" + "b" * 100 + "/x"}
    async with module_hub.client("xis") as xis:
        response = await xis.post(
            "/Patient", json=_patient(marker, generalPractitioner=[reference])
        )
        assert response.status_code in (201, 400), response.text
        if response.status_code == 400:
            assert await _stored(xis, marker) == 0
        search = await xis.get("/Patient", params={"general-practitioner": reference["reference"]})
        assert search.status_code in (200, 400), search.text


def _multibyte(count: int, start: int = 0x4E00) -> str:
    """`count` varied 3-byte characters (varied, so PostgreSQL cannot compress them away)."""
    return "".join(chr(start + (index * 7919) % 20_000) for index in range(count))


async def test_multibyte_index_values(module_hub: HubServer) -> None:
    marker = _marker()
    long = _multibyte(1200)
    patient = _patient(
        marker,
        identifier=[
            {"system": MARKER_SYSTEM, "value": marker},
            {"system": "urn:" + long, "value": long},
        ],
        name=[{"family": long}],
        meta={"profile": ["urn:" + long]},
        generalPractitioner=[{"reference": "https://example.org/" + long + "/Practitioner/1"}],
    )
    async with module_hub.client("xis") as xis:
        response = await xis.post("/Patient", json=patient)
        assert response.status_code in (201, 400), response.text
        for name, value in [
            ("identifier", f"urn:{long}|{long}"),
            ("family", long),
            ("_profile", "urn:" + long),
            ("general-practitioner", "https://example.org/" + long + "/Practitioner/1"),
        ]:
            found = await xis.get("/Patient", params={name: value})
            assert found.status_code == 200, found.text


# --- random input: never a 5xx ---------------------------------------------------------------

_DIGITS = st.text(alphabet="0123456789²٣߃\U0001d7d8", max_size=6) | st.sampled_from(
    [LONG_NUMBER, OVERSIZED, "", "-1"]
)
_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.just("\u0000"),
    max_size=12,
)
_NAMES = st.sampled_from(
    ["_count", "_cursor", "_sort", "_total", "_summary", "_id", "name", "name:exact",
     "identifier", "birthdate", "general-practitioner", "general-practitioner.name",
     "_profile", "gender:not", "_lastUpdated"]
) | _TEXT  # fmt: skip
_PARAMS = st.lists(st.tuples(_NAMES, _TEXT | _DIGITS), max_size=5)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(_TEXT | st.sampled_from(["name", "gender", "identifier"]), children,
                      max_size=3),
    max_leaves=12,
)  # fmt: skip

_QUICK = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_QUICK
@given(params=_PARAMS)
def test_random_search_never_fails(module_hub: HubServer, params: list[tuple[str, str]]) -> None:
    with httpx.Client(
        base_url=module_hub.fhir(),
        headers={"Authorization": f"Bearer {module_hub.token('xis')}"},
        timeout=30,
    ) as xis:
        response = xis.get(f"/Patient?{urlencode(params)}")
        assert response.status_code < 500, (params, response.text)
        assert response.status_code in (200, 400), (params, response.text)


@_QUICK
@given(elements=st.dictionaries(_TEXT | st.sampled_from(["name", "gender"]), _JSON, max_size=4))
def test_random_json_never_fails(module_hub: HubServer, elements: dict[str, Any]) -> None:
    body = json.dumps({"resourceType": "Patient", **elements}).encode()
    with httpx.Client(
        base_url=module_hub.fhir(),
        headers={"Authorization": f"Bearer {module_hub.token('xis')}"},
        timeout=30,
    ) as xis:
        response = xis.post("/Patient", content=body, headers={"Content-Type": FHIR_JSON})
        assert response.status_code < 500, (elements, response.text)
