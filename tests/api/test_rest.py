"""The FHIR REST interactions over HTTP: create, read, vread, update, delete, history.

One hub per backend serves the whole module (`module_hub`): every test works on
resources it made itself.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from tests.api.common import FHIR_JSON, entries, expressions, origin_of, outcome
from tests.support.hub import HubServer

# One hub per backend for the module (`module_hub`): keep the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_rest")

PATIENT = {"resourceType": "Patient", "gender": "female", "birthDate": "1980-02-29"}


async def test_create_assigns_id_version_and_headers(module_hub: HubServer) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    async with module_hub.client("xis") as xis:
        created = await xis.post("/Patient", json={**PATIENT, "id": "client-chosen"})
    assert created.status_code == 201, created.text
    body = created.json()
    # The server assigns a UUID and ignores the client's id.
    assert body["id"] != "client-chosen"
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert body["meta"]["versionId"] == "1"
    last_updated = datetime.fromisoformat(body["meta"]["lastUpdated"].replace("Z", "+00:00"))
    assert before <= last_updated <= datetime.now(UTC) + timedelta(seconds=1)
    assert body["gender"] == "female"
    assert body["birthDate"] == "1980-02-29"
    assert origin_of(body) == "xis"
    assert created.headers["etag"] == 'W/"1"'
    assert created.headers["location"] == f"{module_hub.fhir()}/Patient/{body['id']}/_history/1"
    assert parsedate_to_datetime(created.headers["last-modified"]) == last_updated.replace(
        microsecond=0
    )
    assert created.headers["content-type"] == f"{FHIR_JSON}; charset=utf-8"


async def test_read_vread_update_and_history(module_hub: HubServer) -> None:
    async with module_hub.client("xis") as xis:
        created = (await xis.post("/Patient", json=PATIENT)).json()
        url = f"/Patient/{created['id']}"
        updated = await xis.put(
            url,
            json={**created, "gender": "male"},
            headers={"If-Match": 'W/"1"'},
        )
        assert updated.status_code == 200, updated.text
        assert updated.headers["etag"] == 'W/"2"'
        assert updated.headers["location"].endswith(f"{url}/_history/2")
        assert updated.json()["meta"]["versionId"] == "2"
        assert updated.json()["meta"]["lastUpdated"] >= created["meta"]["lastUpdated"]

        read = await xis.get(url)
        assert read.status_code == 200
        assert read.json() == updated.json()
        assert read.headers["etag"] == 'W/"2"'
        assert "location" not in read.headers
        assert read.headers["last-modified"]

        first = await xis.get(f"{url}/_history/1")
        assert first.status_code == 200
        assert first.json() == created
        assert first.headers["etag"] == 'W/"1"'
        assert (await xis.get(f"{url}/_history/3")).status_code == 404
        assert (await xis.get(f"{url}/_history/x")).status_code == 404

        history = await xis.get(f"{url}/_history")
    assert history.status_code == 200
    bundle = history.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in bundle["entry"]] == ["2", "1"]
    assert [e["request"]["method"] for e in bundle["entry"]] == ["PUT", "POST"]
    assert [e["response"]["etag"] for e in bundle["entry"]] == ['W/"2"', 'W/"1"']


async def test_delete_then_gone_with_history_kept(module_hub: HubServer) -> None:
    async with module_hub.client("admin") as admin, module_hub.client("xis") as xis:
        created = (await xis.post("/Patient", json=PATIENT)).json()
        url = f"/Patient/{created['id']}"
        deleted = await admin.delete(url)
        assert outcome(deleted, 200)["issue"][0]["severity"] == "information"
        assert "deleted" in deleted.json()["issue"][0]["diagnostics"]
        again = await admin.delete(url)  # idempotent
        assert again.status_code == 200
        assert "already deleted" in again.json()["issue"][0]["diagnostics"]

        gone = outcome(await admin.get(url), 410)
        assert gone["issue"][0]["code"] == "deleted"
        # The version before the delete stays readable; the delete itself is a version.
        kept = await admin.get(f"{url}/_history/1")
        assert kept.status_code == 200
        assert kept.json() == created
        outcome(await admin.get(f"{url}/_history/2"), 410)
        history = (await admin.get(f"{url}/_history")).json()
        outcome(
            await xis.put(url, json={**created}, headers={"If-Match": 'W/"1"'}),
            410,
        )
        search = (await admin.get("/Patient", params={"_id": created["id"]})).json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert "resource" not in history["entry"][0]
    assert history["entry"][1]["resource"] == created
    assert search["total"] == 0


async def test_head_is_a_read(module_hub: HubServer) -> None:
    """HEAD answers like GET without a body; it never changes anything (nor deletes)."""
    async with module_hub.client("admin") as admin, module_hub.client("xis") as xis:
        created = (await xis.post("/Patient", json=PATIENT)).json()
        url = f"/Patient/{created['id']}"
        # admin may delete Patients: a HEAD that fell through to DELETE would delete it.
        heads = [await admin.head(url), await xis.head(url), await xis.head("/Patient")]
        still_there = await xis.get(url)
    for head in heads:
        assert head.status_code == 200
        assert head.content == b""
    assert heads[0].headers["etag"] == 'W/"1"'
    assert still_there.status_code == 200
    assert still_there.json() == created


async def test_update_preconditions(module_hub: HubServer) -> None:
    async with module_hub.client("xis") as xis:
        created = (await xis.post("/Patient", json=PATIENT)).json()
        url = f"/Patient/{created['id']}"
        body = {**created, "gender": "other"}
        # A PUT needs If-Match (428); a stale one is refused (412), naming the header.
        assert "If-Match" in outcome(await xis.put(url, json=body), 428)["issue"][0]["diagnostics"]
        await xis.put(url, json=body, headers={"If-Match": 'W/"1"'})
        stale = outcome(await xis.put(url, json=body, headers={"If-Match": 'W/"1"'}), 412)
        assert expressions(stale) == ["If-Match"]
        # A strong ETag with the right version is accepted too.
        assert (await xis.put(url, json=body, headers={"If-Match": '"2"'})).status_code == 200
        malformed = outcome(await xis.put(url, json=body, headers={"If-Match": "2"}), 400)
        assert expressions(malformed) == ["If-Match"]
        # The id in the body must be the id in the URL.
        other_id = {**body, "id": "someone-else"}
        mismatch = outcome(await xis.put(url, json=other_id, headers={"If-Match": 'W/"3"'}), 400)
        assert expressions(mismatch) == ["Patient.id"]
        # Update is not create: an unknown id is 404.
        missing = {**PATIENT, "id": "does-not-exist"}
        outcome(
            await xis.put("/Patient/does-not-exist", json=missing, headers={"If-Match": 'W/"1"'}),
            404,
        )
        assert (await xis.get(url)).json()["meta"]["versionId"] == "3"


@pytest.mark.parametrize(
    ("prefer", "expected"),
    [
        ("return=minimal", None),
        ("return=representation", "Patient"),
        ("return=OperationOutcome", "OperationOutcome"),
        (None, "Patient"),
    ],
)
async def test_prefer_return(
    module_hub: HubServer, prefer: str | None, expected: str | None
) -> None:
    headers = {"Prefer": prefer} if prefer else {}
    async with module_hub.client("xis") as xis:
        created = await xis.post("/Patient", json=PATIENT, headers=headers)
        assert created.status_code == 201
        location = created.headers["location"]
        patient = (await xis.get(location)).json()
        updated = await xis.put(
            f"/Patient/{patient['id']}", json=patient, headers={**headers, "If-Match": 'W/"1"'}
        )
    for response, status in ((created, 201), (updated, 200)):
        assert response.status_code == status
        # Location and ETag tell where the result is, whatever the body.
        assert response.headers["location"]
        assert response.headers["etag"]
        if expected is None:
            assert response.content == b""
        else:
            assert response.json()["resourceType"] == expected


async def test_json_flavours(module_hub: HubServer) -> None:
    """Bodies in application/json are accepted; `_format` and Accept choose the answer's type."""
    async with module_hub.client("xis") as xis:
        created = await xis.post(
            "/Patient",
            content=b'{"resourceType": "Patient", "gender": "male"}',
            headers={"Content-Type": "application/json"},
        )
        assert created.status_code == 201
        url = f"/Patient/{created.json()['id']}"
        answers = {
            "accept json": await xis.get(url, headers={"Accept": "application/json"}),
            "accept fhir": await xis.get(url, headers={"Accept": FHIR_JSON}),
            "accept any": await xis.get(url, headers={"Accept": "*/*"}),
            "_format=json": await xis.get(url, params={"_format": "json"}),
            "_format=json wins": await xis.get(
                url, params={"_format": "json"}, headers={"Accept": "application/json"}
            ),
            "_format=application/json": await xis.get(url, params={"_format": "application/json"}),
        }
        refused = await xis.get(url, params={"_format": "xml"})
        not_acceptable = await xis.get(url, headers={"Accept": "application/fhir+xml"})
    expected = {
        "accept json": "application/json",
        "accept fhir": FHIR_JSON,
        "accept any": FHIR_JSON,
        "_format=json": FHIR_JSON,
        "_format=json wins": FHIR_JSON,
        "_format=application/json": "application/json",
    }
    for name, response in answers.items():
        assert response.status_code == 200, name
        assert response.headers["content-type"] == f"{expected[name]}; charset=utf-8", name
        assert response.json()["gender"] == "male"
    assert expressions(outcome(refused, 406)) == ["_format"]
    outcome(not_acceptable, 406)


async def test_decimal_precision_is_kept(module_hub: HubServer) -> None:
    body = (
        b'{"resourceType": "Task", "status": "requested", "intent": "order",'
        b' "input": [{"type": {"text": "score"}, "valueDecimal": 1.50},'
        b' {"type": {"text": "weight"}, "valueDecimal": 70.000}]}'
    )
    async with module_hub.client("module") as module:
        created = await module.post("/Task", content=body, headers={"Content-Type": FHIR_JSON})
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        with_id = body.replace(b"{", f'{{"id": "{task_id}", '.encode(), 1)
        answers = [
            await module.put(
                f"/Task/{task_id}",
                content=with_id,
                headers={"Content-Type": FHIR_JSON, "If-Match": 'W/"1"'},
            ),
            await module.get(f"/Task/{task_id}"),
            await module.get(f"/Task/{task_id}/_history/1"),
            await module.get("/Task", params={"_id": task_id}),
            await module.get(f"/Task/{task_id}/_history"),
        ]
    assert [response.status_code for response in answers] == [200] * len(answers)
    for response in [created, *answers]:
        # The exact text, not a float that would print 1.5 and 70.0.
        assert '"valueDecimal":1.50' in response.text.replace(" ", ""), response.text
        assert '"valueDecimal":70.000' in response.text.replace(" ", ""), response.text


async def test_activity_definition_subject_canonical_is_not_r4(module_hub: HubServer) -> None:
    definition: dict[str, Any] = {
        "resourceType": "ActivityDefinition",
        "status": "active",
        "subjectCanonical": "http://example.org/fhir/Group/1",
    }
    async with module_hub.client("module") as module:
        refused = outcome(await module.post("/ActivityDefinition", json=definition), 400)
        del definition["subjectCanonical"]
        accepted = await module.post("/ActivityDefinition", json=definition)
    assert expressions(refused) == ["ActivityDefinition.subjectCanonical"]
    assert accepted.status_code == 201


async def test_history_pages(module_hub: HubServer) -> None:
    async with module_hub.client("xis") as xis:
        patient = (await xis.post("/Patient", json=PATIENT)).json()
        url = f"/Patient/{patient['id']}"
        for version in range(1, 5):
            response = await xis.put(url, json=patient, headers={"If-Match": f'W/"{version}"'})
            assert response.status_code == 200
        versions: list[str] = []
        page = (await xis.get(f"{url}/_history", params={"_count": 2})).json()
        while True:
            versions += [e["resource"]["meta"]["versionId"] for e in page["entry"]]
            following = next((li["url"] for li in page["link"] if li["relation"] == "next"), None)
            if following is None:
                break
            assert following.startswith(module_hub.fhir())
            page = (await xis.get(following)).json()
    assert versions == ["5", "4", "3", "2", "1"]


async def test_search_bundle_entries_are_full_resources(module_hub: HubServer) -> None:
    async with module_hub.client("xis") as xis:
        created = (await xis.post("/Patient", json=PATIENT)).json()
        bundle = (await xis.get("/Patient", params={"_id": created["id"]})).json()
    assert entries(bundle) == [created]
    assert bundle["entry"][0]["fullUrl"] == f"{module_hub.fhir()}/Patient/{created['id']}"
