"""Required bindings and primitive JSON types at the API, and codes in search criteria.

A coded element with a REQUIRED binding in R4 holds a code of its value set, and a
primitive has its JSON type: anything else is a 400 naming the element (and the
allowed codes), and nothing is stored. A token search on such an element refuses a
code outside the value set (400), unless the caller asks `Prefer: handling=lenient`;
a Subscription's criteria always do (422).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.common import QUIET_ENDPOINT, entries, expressions, outcome
from tests.support import schema
from tests.support.hub import HubServer

pytestmark = pytest.mark.xdist_group("test_required_bindings")

# A test app whose role may create (and read) the type.
CREATOR = {"Patient": "xis", "Task": "portal"}

# Each body breaks one rule; the element the 400 names, and a word of its diagnostics.
REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"resourceType": "Patient", "gender": "xx"}, "Patient.gender", "male, female, other"),
    ({"resourceType": "Patient", "active": "yes"}, "Patient.active", "boolean"),
    ({"resourceType": "Patient", "active": 1}, "Patient.active", "boolean"),
    ({"resourceType": "Patient", "multipleBirthInteger": "2"}, "Patient.multipleBirthInteger",
     "number without a fraction"),
    ({"resourceType": "Patient", "birthDate": 20200101}, "Patient.birthDate", "JSON string"),
    ({"resourceType": "Patient", "name": [{"use": "nick"}]}, "Patient.name[0].use", "nickname"),
    ({"resourceType": "Patient", "telecom": [{"system": "mail", "value": "a@b.nl"}]},
     "Patient.telecom[0].system", "email"),
    ({"resourceType": "Patient", "contact": [{"gender": "M"}]}, "Patient.contact[0].gender",
     "male, female"),
    ({"resourceType": "Task", "status": "bogus", "intent": "order"}, "Task.status", "requested"),
    ({"resourceType": "Task", "status": "requested", "intent": "command"}, "Task.intent",
     "order"),
    ({"resourceType": "Task", "status": "requested", "intent": "order", "priority": "high"},
     "Task.priority", "urgent"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "element", "words"), REFUSED, ids=[element for _, element, _ in REFUSED]
)
async def test_a_value_outside_its_binding_or_json_type_is_refused(
    module_hub: HubServer, body: dict[str, Any], element: str, words: str
) -> None:
    rtype = body["resourceType"]
    async with module_hub.client(CREATOR[rtype]) as app:
        before = (await app.get(f"/{rtype}", params={"_summary": "count"})).json()
        response = await app.post(f"/{rtype}", json=body)
        after = (await app.get(f"/{rtype}", params={"_summary": "count"})).json()
    refusal = outcome(response, 400)
    assert expressions(refusal) == [element]
    assert words in refusal["issue"][0]["diagnostics"]
    assert after["total"] == before["total"]  # nothing was stored


async def test_the_boundaries_are_accepted(module_hub: HubServer) -> None:
    """Every code of the value set, both booleans, integers and a bound code in `contained`."""
    async with module_hub.client("xis") as xis:
        for gender in ("male", "female", "other", "unknown"):
            created = await xis.post(
                "/Patient",
                json={"resourceType": "Patient", "gender": gender, "active": gender == "male"},
            )
            assert created.status_code == 201, created.text
        twins = {"resourceType": "Patient", "multipleBirthInteger": 2, "name": [{"use": "old"}]}
        assert (await xis.post("/Patient", json=twins)).status_code == 201
        contained = {
            "resourceType": "Patient",
            "contained": [{"resourceType": "Patient", "id": "p", "gender": "M"}],
            "link": [{"other": {"reference": "#p"}, "type": "seealso"}],
        }
        refused = await xis.post("/Patient", json=contained)
    assert expressions(outcome(refused, 400)) == ["Patient.contained[0].gender"]


async def test_an_update_is_checked_as_a_create(module_hub: HubServer) -> None:
    async with module_hub.client("xis") as xis:
        created = (await xis.post("/Patient", json={"resourceType": "Patient"})).json()
        changed = created | {"gender": "vrouw"}
        refused = await xis.put(
            f"/Patient/{created['id']}", json=changed, headers={"If-Match": 'W/"1"'}
        )
        stored = (await xis.get(f"/Patient/{created['id']}")).json()
    assert expressions(outcome(refused, 400)) == ["Patient.gender"]
    assert "gender" not in stored


async def test_a_search_refuses_a_code_outside_the_binding_unless_lenient(
    module_hub: HubServer,
) -> None:
    async with module_hub.client("xis") as xis:
        created = await xis.post("/Patient", json={"resourceType": "Patient", "gender": "other"})
        patient_id = created.json()["id"]
        misspelt = await xis.get("/Patient", params={"gender": "othr"})
        negated = await xis.get("/Patient", params={"gender:not": "othr"})
        system = await xis.get(
            "/Patient", params={"gender": "http://hl7.org/fhir/administrative-gender|othr"}
        )
        strict = await xis.get(
            "/Patient", params={"gender": "othr"}, headers={"Prefer": "handling=strict"}
        )
        lenient = await xis.get(
            "/Patient",
            params={"gender": "othr", "_id": patient_id},
            headers={"Prefer": "handling=lenient"},
        )
        valid = await xis.get("/Patient", params={"gender": "other", "_id": patient_id})
        text = await xis.get("/Patient", params={"gender:text": "othr", "_id": patient_id})
    for refused, name in ((misspelt, "gender"), (negated, "gender:not"), (system, "gender")):
        body = outcome(refused, 400)
        assert expressions(body) == [name]
        diagnostics = body["issue"][0]["diagnostics"]
        assert "male, female, other, unknown" in diagnostics
        assert "handling=lenient" in diagnostics
    outcome(strict, 400)
    assert lenient.status_code == 200, lenient.text
    assert entries(lenient.json()) == []
    assert [resource["id"] for resource in entries(valid.json())] == [patient_id]
    assert text.status_code == 200  # :text searches the display text, not the code


async def test_criteria_with_a_code_outside_the_binding_are_refused(module_hub: HubServer) -> None:
    subscription = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "completed tasks",
        "criteria": "Task?status=compleeted",
        "channel": {"type": "rest-hook", "endpoint": QUIET_ENDPOINT},
    }
    async with module_hub.client("portal") as portal:
        refused = await portal.post(
            "/Subscription", json=subscription, headers={"Prefer": "handling=lenient"}
        )
        accepted = await portal.post(
            "/Subscription", json=subscription | {"criteria": "Task?status=completed"}
        )
    body = outcome(refused, 422)
    assert expressions(body) == ["Subscription.criteria"]
    assert "completed" in body["issue"][0]["diagnostics"]
    assert "lenient" not in body["issue"][0]["diagnostics"]  # criteria cannot be lenient
    assert accepted.status_code == 201, accepted.text


async def test_a_subscription_status_outside_the_binding_is_refused(
    module_hub: HubServer,
) -> None:
    subscription = {
        "resourceType": "Subscription",
        "status": "on",
        "reason": "patients",
        "criteria": "Patient?identifier=urn:test:never|none",
        "channel": {"type": "rest-hook", "endpoint": QUIET_ENDPOINT},
    }
    async with module_hub.client("xis") as xis:
        refused = await xis.post("/Subscription", json=subscription)
    assert expressions(outcome(refused, 400)) == ["Subscription.status"]


def test_httpx_is_checked_against_the_schema() -> None:
    """The session's schema check (tests/support/schema.py) sees every client's responses."""
    if schema.schema_path() is None:
        pytest.skip(f"{schema.ENVIRONMENT}=off: this run goes without the schema check")
    served = {"resourceType": "Patient", "gender": "xx", "active": "yes"}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=served, headers={"content-type": "application/fhir+json"})

    refused = pytest.raises(AssertionError, match=r"\$\.gender: 'xx' is not one of")
    with httpx.Client(transport=httpx.MockTransport(handler)) as client, refused:
        client.get("http://hub.invalid/Patient/1")


def test_a_missing_schema_fails_the_check_unless_switched_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """CI has ../shared: the check must never quietly stop because the file moved."""
    patient = {"resourceType": "Patient", "gender": "xx"}
    switched_off = schema.schema_path() is None  # this run was asked to go without
    monkeypatch.setenv(schema.ENVIRONMENT, str(tmp_path / "fhir.schema.json"))
    with pytest.raises(schema.SchemaMissing, match="HUB_TEST_FHIR_SCHEMA=off"):
        schema.problems(patient)
    monkeypatch.setenv(schema.ENVIRONMENT, "off")
    assert schema.problems(patient) == []
    monkeypatch.delenv(schema.ENVIRONMENT)
    if not switched_off:
        assert schema.problems(patient)  # the default: ../shared beside the clone
