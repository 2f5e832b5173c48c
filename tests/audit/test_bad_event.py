"""One bad AuditEvent never fails the others stored in the same moment.

An unauthenticated request for an unknown type with a long multi-byte path
(`/ht:tp/<CJK…>`) once produced an index value over PostgreSQL's b-tree limit:
the group-committed batch of read events failed and every read in it answered
500, while the attacker left no trace. Index values are now clipped in bytes,
and a failed batch is stored event by event, a bad event truncated (with the
SHA-256 of what was cut) rather than lost.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import pytest

from hub.audit import writer
from hub.audit.events import MAX_TRUNCATED_TEXT, Entity, truncated
from hub.store.audit import append_events
from hub.store.resources import NewVersion
from hub.store.sql import Work
from tests.audit.trail import REQUEST_ID, TraceHeaders, event_of, extension
from tests.support.hub import HubServer

CJK = "".join(chr(0x4E00 + n % 20000) for n in range(3000))  # 3 bytes each in UTF-8


async def _attack(hub: HubServer, ids: TraceHeaders) -> httpx.Response:
    async with hub.client() as anonymous:
        return await anonymous.get(f"/ht:tp/{CJK}", headers=ids.headers)


async def _read(hub: HubServer, app: str, domain: str) -> int:
    async with hub.client(app, domain) as client:
        statuses = []
        for _ in range(5):
            response = await client.get("/Patient", params={"_count": "1"})
            statuses.append(response.status_code)
        return max(statuses)


async def test_a_huge_multi_byte_path_fails_no_other_read(shared_hub: HubServer) -> None:
    attackers = [TraceHeaders.new() for _ in range(4)]
    readers = [("xis", "test"), ("module", "test"), ("other-xis", "other")] * 4
    results: list[Any] = await asyncio.gather(
        *(_attack(shared_hub, ids) for ids in attackers),
        *(_read(shared_hub, app, domain) for app, domain in readers),
    )
    attacks, reads = results[: len(attackers)], results[len(attackers) :]
    assert [response.status_code for response in attacks] == [401] * len(attackers)
    assert reads == [200] * len(readers)

    for ids, response in zip(attackers, attacks, strict=True):
        event = await event_of(shared_hub, ids.request_id)
        assert event["outcome"] == "4"
        assert response.json()["resourceType"] == "OperationOutcome"
        [entity] = event["entity"]
        what = entity["what"]["reference"]
        wanted = f"ht:tp/{CJK}"
        if what != wanted:  # stored truncated: a prefix, and the digest of the whole
            assert wanted.startswith(what.removesuffix("…"))
            digest = hashlib.sha256(wanted.encode()).hexdigest()
            assert any(digest in detail["valueString"] for detail in entity.get("detail", []))


async def test_a_huge_query_is_audited(shared_hub: HubServer) -> None:
    ids = TraceHeaders.new()
    query = "name=" + CJK
    async with shared_hub.client() as anonymous:
        response = await anonymous.get(f"/Patient?{query}", headers=ids.headers)
    assert response.status_code == 401
    event = await event_of(shared_hub, ids.request_id)
    [entity] = event["entity"]
    assert base64.b64decode(entity["query"]).decode().startswith("name=")


async def test_a_reference_type_longer_than_any_is_refused_and_audited(
    shared_hub: HubServer,
) -> None:
    ids = TraceHeaders.new()
    async with shared_hub.client() as anonymous:
        response = await anonymous.get("/A" + "a" * 300 + "/x", headers=ids.headers)
    assert response.status_code == 401
    event = await event_of(shared_hub, ids.request_id)
    assert event["outcome"] == "4"


async def test_a_search_with_a_long_multi_byte_value_finds_its_resource(
    shared_hub: HubServer,
) -> None:
    # Far over the index's byte caps, yet within the 16 kB a `_search` body may hold.
    long = CJK[:600]
    family = f"{uuid.uuid4().hex}{long}"
    identifier = f"{uuid.uuid4().hex}{long}"
    async with shared_hub.client("xis") as xis:
        created = await xis.post(
            "/Patient",
            json={
                "resourceType": "Patient",
                "identifier": [{"system": f"urn:{long}", "value": identifier}],
                "name": [{"family": family}],
            },
        )
        assert created.status_code == 201, created.text
        patient_id = created.json()["id"]
        for params in (
            {"family": family},
            {"family": family[:400]},
            {"family:exact": family},
            {"identifier": identifier},
            {"identifier": f"urn:{long}|{identifier}"},
        ):
            found = await xis.post("/Patient/_search", data=params)
            assert found.status_code == 200, found.text
            ids = [entry["resource"]["id"] for entry in found.json().get("entry", [])]
            assert ids == [patient_id], list(params)


def _refusing(limit: int, *, marker: str | None = None) -> Any:
    """`append_events` failing any unit with an event over `limit` bytes (or with `marker`)."""

    def append(events: Sequence[NewVersion], key: bytes) -> Work[list[int]]:
        for event in events:
            if len(event.content.encode()) > limit or (marker and marker in event.content):
                raise ValueError("this event cannot be stored")
        return (yield from append_events(events, key))

    return append


async def _moment(hub: HubServer, attackers: list[TraceHeaders]) -> tuple[list[int], list[int]]:
    readers = [("xis", "test"), ("module", "test"), ("other-xis", "other")] * 4
    results: list[Any] = await asyncio.gather(
        *(_attack(hub, ids) for ids in attackers),
        *(_read(hub, app, domain) for app, domain in readers),
    )
    attacks = [response.status_code for response in results[: len(attackers)]]
    return attacks, results[len(attackers) :]


async def test_an_event_that_cannot_be_stored_whole_is_stored_truncated(
    shared_hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "append_events", _refusing(8000))
    attackers = [TraceHeaders.new() for _ in range(4)]
    attacks, reads = await _moment(shared_hub, attackers)
    assert attacks == [401] * len(attackers)
    assert reads == [200] * len(reads)

    wanted = f"ht:tp/{CJK}".encode()
    for ids in attackers:
        event = await event_of(shared_hub, ids.request_id)
        assert event["outcome"] == "4"
        assert extension(event, REQUEST_ID)["valueId"] == ids.request_id
        [entity] = event["entity"]
        what = entity["what"]["reference"]
        assert what.endswith("…") and wanted.startswith(what.removesuffix("…").encode())
        assert len(what.encode()) <= MAX_TRUNCATED_TEXT
        [detail] = [d for d in entity["detail"] if d["type"] == "truncated-what"]
        assert hashlib.sha256(wanted).hexdigest() in detail["valueString"]
        assert f"of {len(wanted)} bytes" in detail["valueString"]


async def test_an_event_that_cannot_be_stored_at_all_fails_only_its_request(
    shared_hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "append_events", _refusing(10**9, marker="ht:tp"))
    attackers = [TraceHeaders.new() for _ in range(2)]
    attacks, reads = await _moment(shared_hub, attackers)
    assert attacks == [500] * len(attackers)
    assert reads == [200] * len(reads)


def test_truncated_cuts_what_a_request_made_long() -> None:
    query = f"name={CJK}"
    event = {
        "resourceType": "AuditEvent",
        "outcome": "4",
        "outcomeDesc": f"No type {CJK}",
        "agent": [{"network": {"address": "x" * 5000}}],
        "entity": [
            Entity(what=f"ht:tp/{CJK}").to_json(),
            Entity(query=query, role="24", detail=(("kind", "y" * 100),)).to_json(),
        ],
    }
    cut = truncated(event)
    assert cut is not None and event["outcomeDesc"] == f"No type {CJK}"  # a copy
    assert cut["outcomeDesc"].startswith(f"No type {CJK[:100]}")
    assert hashlib.sha256(event["outcomeDesc"].encode()).hexdigest() in cut["outcomeDesc"]
    assert len(cut["outcomeDesc"].encode()) <= MAX_TRUNCATED_TEXT
    assert len(cut["agent"][0]["network"]["address"]) <= MAX_TRUNCATED_TEXT
    what, asked = cut["entity"]
    assert len(what["what"]["reference"].encode()) <= MAX_TRUNCATED_TEXT
    assert [d["type"] for d in what["detail"]] == ["truncated-what"]
    stored_query = base64.b64decode(asked["query"]).decode()  # still base64 of UTF-8
    assert query.startswith(stored_query) and len(stored_query.encode()) <= MAX_TRUNCATED_TEXT
    assert asked["detail"][0] == {"type": "kind", "valueString": "y" * 100}
    digest = hashlib.sha256(query.encode()).hexdigest()
    assert asked["detail"][1] == {
        "type": "truncated-query",
        "valueString": f"SHA-256 {digest} of {len(query.encode())} bytes",
    }
    assert truncated(cut) is None  # everything now fits


def test_a_short_event_is_not_truncated() -> None:
    event = {"resourceType": "AuditEvent", "entity": [Entity(what="Patient/1").to_json()]}
    assert truncated(event) is None
