"""A small corpus of resources and searches with their expected results.

The same cases run in memory (`tests/fhir/test_match.py`) and in SQL on both
backends (`tests/store/test_search.py`), so each rule is pinned in one place
and both implementations are held to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from hub.fhir.extract import IndexValues, extract
from hub.fhir.match import Target
from hub.fhir.origin import origin_device
from hub.fhir.query import Query, parse_search

KT = "http://koppeltaal.nl/fhir/StructureDefinition"
Resource = dict[str, Any]


def origin(device: str) -> dict[str, Any]:
    return {"url": f"{KT}/resource-origin", "valueReference": {"reference": f"Device/{device}"}}


def resource(resource_type: str, id_: str, updated: str, device: str, **fields: Any) -> Resource:
    extensions = [origin(device), *fields.pop("extension", [])]
    meta: dict[str, Any] = {"versionId": "1", "lastUpdated": updated}
    if "profile" in fields:
        meta["profile"] = fields.pop("profile")
    return {"resourceType": resource_type, "id": id_, "meta": meta, "extension": extensions} | {
        key.rstrip("_"): value for key, value in fields.items() if value is not None
    }


def instantiates(target: str) -> dict[str, Any]:
    return {
        "url": "http://vzvz.nl/fhir/StructureDefinition/instantiates",
        "valueReference": {"reference": target},
    }


def publisher(publisher_id: str) -> dict[str, Any]:
    return {"url": f"{KT}/KT2PublisherId", "valueId": publisher_id}


PATIENTS = [
    resource(
        "Patient", "p1", "2024-01-01T10:00:00Z", "dev-a",
        profile=[f"{KT}/KT2Patient"],
        active=True, gender="male", birthDate="1980-05-17", deceasedBoolean=False,
        name=[{"family": "Jansen", "given": ["Jan", "Pieter"]}],
        identifier=[{"system": "bsn", "value": "111"}],
        telecom=[{"system": "email", "value": "jan@example.nl"},
                 {"system": "phone", "value": "0612345678"}],
        address=[{"city": "Den Haag", "line": ["Plein 1"]}],
        managingOrganization={"reference": "Organization/org1"},
        generalPractitioner=[{"reference": "http://other.example/fhir/Practitioner/gp1"}],
    ),
    resource(
        "Patient", "p2", "2024-02-01T00:00:00.5Z", "dev-b",
        active=False, gender="female", birthDate="1990",
        deceasedDateTime="2020-02-02T10:00:00+01:00",
        name=[{"family": "Müller", "given": ["Émile"]}],
        identifier=[{"system": "bsn", "value": "222"}, {"system": "other", "value": "x"}],
    ),
    resource(
        "Patient", "p3", "2024-03-01T12:30:00+02:00", "dev-a",
        birthDate="1980-05",
        name=[{"text": "Anna de Vries", "family": "de Vries"}],
        identifier=[{"system": "urn:a,b", "value": "x|y"}],
    ),
]  # fmt: skip

TASKS = [
    resource(
        "Task", "t1", "2024-01-10T00:00:00Z", "dev-a",
        extension=[instantiates("ActivityDefinition/ad1")],
        status="ready", intent="order", for_={"reference": "Patient/p1"},
        authoredOn="2024-01-15T10:00:00Z", executionPeriod={"start": "2024-01-01"},
        code={"coding": [{"system": "sys", "code": "c1", "display": "Eerste"}]},
    ),
    resource(
        "Task", "t2", "2024-01-11T00:00:00Z", "dev-b",
        extension=[instantiates("ActivityDefinition/ad2")],
        status="completed", intent="order", for_={"reference": "Patient/p2"},
        authoredOn="2024-02-01", executionPeriod={"start": "2024-02-01", "end": "2024-02-10"},
    ),
    resource(
        "Task", "t3", "2024-01-12T00:00:00Z", "dev-a",
        status="ready", intent="order",
        for_={"reference": "https://hub.example/demo/fhir/Patient/p1"},
    ),
    resource(
        "Task", "t4", "2024-01-13T00:00:00Z", "dev-c",
        extension=[instantiates("ActivityDefinition/ad3")],
        status="cancelled", intent="order",
    ),
]  # fmt: skip

ACTIVITY_DEFINITIONS = [
    resource(
        "ActivityDefinition", "ad1", "2024-01-01T00:00:00Z", "dev-m",
        extension=[publisher("pubA")], status="active", url="http://modules.example/ad/1",
        title="Stress Module", participant=[{"type": "patient"}],
    ),
    resource(
        "ActivityDefinition", "ad2", "2024-01-01T00:00:00Z", "dev-m",
        extension=[publisher("pubB")], status="draft", url="http://modules.example/ad/2/sub",
        title="Slaap",
    ),
]  # fmt: skip

# Stored as deleted: searches and chains must not see it.
DELETED = [
    resource(
        "ActivityDefinition", "ad3", "2024-01-01T00:00:00Z", "dev-m",
        extension=[publisher("pubA")], status="active",
    ),
]  # fmt: skip

AUDIT_EVENTS = [
    resource(
        "AuditEvent", "ae1", "2024-01-01T00:00:00Z", "dev-a",
        extension=[{"url": f"{KT}/trace-id", "valueId": "trace1"},
                   {"url": f"{KT}/request-id", "valueId": "req1"}],
        type={"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        recorded="2024-01-01T00:00:00Z", entity=[{"what": {"reference": "Task/t1"}}],
    ),
]  # fmt: skip

LIVE = PATIENTS + TASKS + ACTIVITY_DEFINITIONS + AUDIT_EVENTS

# (resource type, query string, ids expected)
CASES: list[tuple[str, str, set[str]]] = [
    ("Patient", "gender=male", {"p1"}),
    ("Patient", "gender:missing=true", {"p3"}),
    ("Patient", "gender:missing=false", {"p1", "p2"}),
    ("Patient", "gender:not=male", {"p2", "p3"}),
    ("Patient", "gender=male,female", {"p1", "p2"}),
    ("Patient", "gender=male&gender=female", set()),
    ("Patient", "active=true", {"p1"}),
    ("Patient", "deceased=true", {"p2"}),
    ("Patient", "deceased=false", {"p1", "p3"}),
    ("Patient", "identifier=bsn|111", {"p1"}),
    ("Patient", "identifier=111", {"p1"}),
    ("Patient", "identifier=bsn|", {"p1", "p2"}),
    ("Patient", "identifier=|111", set()),
    ("Patient", "identifier=other|111", set()),
    ("Patient", r"identifier=urn:a\,b|x\|y", {"p3"}),
    ("Patient", "email=jan@example.nl", {"p1"}),
    ("Patient", "telecom=phone|0612345678", {"p1"}),
    ("Patient", "phone=jan@example.nl", set()),
    ("Patient", "family=jan", {"p1"}),
    ("Patient", "family=MUL", {"p2"}),
    ("Patient", "family=mül", {"p2"}),
    ("Patient", "family:exact=Müller", {"p2"}),
    ("Patient", "family:exact=muller", set()),
    ("Patient", "name:contains=vrie", {"p3"}),
    ("Patient", "name=anna", {"p3"}),
    ("Patient", "name=ries", set()),
    ("Patient", "given=jan,emile", {"p1", "p2"}),
    ("Patient", "given=jan&family=muller", set()),
    ("Patient", "address-city=den", {"p1"}),
    ("Patient", "address=plein", {"p1"}),
    ("Patient", "birthdate=1980", {"p1", "p3"}),
    ("Patient", "birthdate=1980-05", {"p1", "p3"}),
    ("Patient", "birthdate=1980-05-17", {"p1"}),
    ("Patient", "birthdate=eq1980-05-17", {"p1"}),
    ("Patient", "birthdate=ne1980-05-17", {"p2", "p3"}),
    ("Patient", "birthdate=ne1980", {"p2"}),
    ("Patient", "birthdate=gt1980-05-17", {"p2", "p3"}),
    ("Patient", "birthdate=lt1980-05-17", {"p3"}),
    ("Patient", "birthdate=ge1980-05-17", {"p1", "p2", "p3"}),
    ("Patient", "birthdate=le1980-05-17", {"p1", "p3"}),
    ("Patient", "birthdate=sa1980-05-17", {"p2"}),
    ("Patient", "birthdate=eb1990", {"p1", "p3"}),
    ("Patient", "birthdate=gt1990", set()),
    ("Patient", "birthdate=ge1990-06", {"p2"}),
    ("Patient", "birthdate=ge1980-05-31", {"p2"}),  # p3 ends with, but does not pass, the day
    ("Patient", "birthdate=le1980-05-01", set()),  # p3 starts on, not before, the day
    ("Patient", "birthdate=1980-05-17T00:00:00Z", set()),
    ("Patient", "death-date=2020-02-02", {"p2"}),
    ("Patient", "death-date=2020-02-02T09:00:00Z", {"p2"}),
    ("Patient", "death-date=2020-02-02T10:00+01:00", {"p2"}),
    ("Patient", "death-date=2020-02-02T10:00:00", set()),
    ("Patient", "death-date:missing=true", {"p1", "p3"}),
    ("Patient", "organization=Organization/org1", {"p1"}),
    ("Patient", "organization=org1", {"p1"}),
    ("Patient", "organization:Organization=org1", {"p1"}),
    ("Patient", "general-practitioner=Practitioner/gp1", {"p1"}),
    ("Patient", "general-practitioner=gp1", {"p1"}),
    ("Patient", "general-practitioner=http://other.example/fhir/Practitioner/gp1", {"p1"}),
    ("Patient", "general-practitioner=http://elsewhere.example/fhir/Practitioner/gp1", set()),
    ("Patient", "general-practitioner:missing=true", {"p2", "p3"}),
    ("Patient", "_id=p1,p3", {"p1", "p3"}),
    ("Patient", "_id:not=p1", {"p2", "p3"}),
    ("Patient", "_id=p1&_id=p2", set()),
    ("Patient", "_lastUpdated=2024-03-01", {"p3"}),
    ("Patient", "_lastUpdated=2024-03-01T10:30:00Z", {"p3"}),
    ("Patient", "_lastUpdated=gt2024-02-01T00:00:00Z", {"p3"}),
    ("Patient", "_lastUpdated=ge2024-02-01T00:00:00Z", {"p2", "p3"}),
    ("Patient", "_lastUpdated=lt2024-02-01T00:00:00.5Z", {"p1"}),
    ("Patient", "_lastUpdated=le2024-02-01T00:00:00.5Z", {"p1", "p2"}),
    ("Patient", "_lastUpdated=eb2024-02-01T00:00:00.6Z", {"p1", "p2"}),
    ("Patient", "_lastUpdated=sa2024-02", {"p3"}),
    ("Patient", "_lastUpdated=ne2024-02", {"p1", "p3"}),
    ("Patient", "_profile=http://koppeltaal.nl/fhir/StructureDefinition/KT2Patient", {"p1"}),
    ("Patient", "resource-origin=Device/dev-a", {"p1", "p3"}),
    ("Patient", "resource-origin=dev-b", {"p2"}),
    ("Patient", "resource-origin:Device=dev-b", {"p2"}),
    ("Patient", "status=whatever", {"p1", "p2", "p3"}),  # unknown: ignored (lenient)
    ("Task", "status=ready", {"t1", "t3"}),
    ("Task", "status=ready,completed", {"t1", "t2", "t3"}),
    ("Task", "status=ready&status=completed", set()),
    ("Task", "status:not=ready,completed", {"t4"}),
    ("Task", "instantiates=ActivityDefinition/ad1", {"t1"}),
    ("Task", "instantiates:missing=true", {"t3"}),
    ("Task", "instantiates.publisherId=pubA", {"t1"}),
    ("Task", "instantiates:ActivityDefinition.publisherId=pubA,pubB", {"t1", "t2"}),
    ("Task", "instantiates.publisherId=pubA&instantiates.publisherId=pubB", set()),
    ("Task", "instantiates.participant=patient", {"t1"}),
    ("Task", "instantiates.title=slaap", {"t2"}),
    ("Task", "instantiates.publisherId:missing=true", set()),
    ("Task", "instantiates.publisherId=pubA&status=ready", {"t1"}),
    ("Task", "patient=Patient/p1", {"t1", "t3"}),
    ("Task", "patient=p2", {"t2"}),
    ("Task", "subject:Patient=p1", {"t1", "t3"}),
    ("Task", "subject:Group=p1", set()),
    ("Task", "subject=Patient/p1", {"t1", "t3"}),
    ("Task", "patient=https://hub.example/demo/fhir/Patient/p1", {"t1", "t3"}),
    ("Task", "code=sys|c1", {"t1"}),
    ("Task", "code:text=eer", {"t1"}),
    ("Task", "code:text=tweede", set()),
    ("Task", "authored-on:missing=true", {"t3", "t4"}),
    ("Task", "authored-on=2024-01-15T10:00:00Z", {"t1"}),
    ("Task", "authored-on=2024-01-15T11:00:00+01:00", {"t1"}),
    ("Task", "authored-on=2024-01-15T11:00:00 01:00", {"t1"}),  # `+` arrived as a space
    ("Task", "authored-on=2024-01-15T10:00:00.000Z", set()),
    ("Task", "authored-on=2024-01", {"t1"}),
    ("Task", "period=ge2024-02-05", {"t1", "t2"}),
    ("Task", "period=sa2024-01-15", {"t2"}),
    ("Task", "period=eb2024-03", {"t2"}),
    ("Task", "period=2024-02", {"t2"}),
    ("Task", "period=lt2024-01-01", set()),
    ("Task", "resource-origin=Device/dev-a&status=ready", {"t1", "t3"}),
    ("ActivityDefinition", "url=http://modules.example/ad/1", {"ad1"}),
    ("ActivityDefinition", "url:below=http://modules.example/ad/", {"ad1", "ad2"}),
    ("ActivityDefinition", "url:above=http://modules.example/ad/2/sub/deeper", {"ad2"}),
    ("ActivityDefinition", "url:above=http://modules.example/", set()),
    ("ActivityDefinition", "title:contains=MODULE", {"ad1"}),
    ("ActivityDefinition", "publisherId=pubA", {"ad1"}),
    ("ActivityDefinition", "status:not=active", {"ad2"}),
    ("ActivityDefinition", "participant=patient", {"ad1"}),
    ("AuditEvent", "traceId=trace1", {"ae1"}),
    ("AuditEvent", "requestId=req1&traceId=trace1", {"ae1"}),
    ("AuditEvent", "correlationId:missing=true", {"ae1"}),
    ("AuditEvent", "entity=Task/t1", {"ae1"}),
    ("AuditEvent", "type=rest", {"ae1"}),
    ("AuditEvent", "date=2024-01-01", {"ae1"}),
]


def case_query(resource_type: str, query_string: str) -> Query:
    return parse_search(resource_type, parse_qsl(query_string, keep_blank_values=True))


def index_of(resources: list[Resource]) -> Mapping[tuple[str, str], IndexValues]:
    return {(r["resourceType"], r["id"]): extract(r) for r in resources}


def targets_of(resources: list[Resource]) -> Mapping[tuple[str, str], Target]:
    """The resources as chain targets (`hub.fhir.match.Resolver` answers)."""
    return {(r["resourceType"], r["id"]): Target(extract(r), origin_device(r)) for r in resources}
