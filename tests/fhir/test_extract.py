from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from hub.fhir.extract import (
    MAX_CODE,
    MAX_DATE,
    MAX_NORM,
    MIN_DATE,
    DateRow,
    IndexValues,
    ReferenceRow,
    StringRow,
    TokenRow,
    UriRow,
    date_range,
    extract,
    instant,
    normalize,
)
from tests.fhir.corpus import origin


def of(param: str, rows: tuple[Any, ...]) -> list[Any]:
    return [row for row in rows if row.param == param]


def test_token_kinds() -> None:
    values = extract(
        {
            "resourceType": "Patient",
            "active": True,
            "gender": "male",
            "identifier": [{"system": "bsn", "value": "1", "type": {"text": "BSN nummer"}}],
            "telecom": [{"system": "email", "value": "a@b.nl", "use": "home"}],
            "communication": [
                {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "nl",
                                          "display": "Nederlands"}], "text": "Dútch"}}
            ],
            "meta": {"tag": [{"system": "s", "code": "t"}]},
        }
    )  # fmt: skip
    assert of("active", values.tokens) == [TokenRow("active", None, "true", None)]
    assert of("gender", values.tokens) == [TokenRow("gender", None, "male", None)]
    assert of("identifier", values.tokens) == [TokenRow("identifier", "bsn", "1", "bsn nummer")]
    assert of("email", values.tokens) == [TokenRow("email", "email", "a@b.nl", None)]
    assert of("language", values.tokens) == [
        TokenRow("language", "urn:ietf:bcp:47", "nl", "nederlands"),
        TokenRow("language", None, None, "dutch"),
    ]
    assert of("_tag", values.tokens) == [TokenRow("_tag", "s", "t", None)]
    assert of("phone", values.tokens) == []


def test_strings_of_names_and_addresses_are_normalised() -> None:
    values = extract(
        {
            "resourceType": "Patient",
            "name": [{"use": "official", "family": "Çelik", "given": ["Zoë"], "prefix": ["Dr."]}],
            "address": [{"line": ["Straße 1"], "city": "Den Haag", "use": "home"}],
        }
    )
    assert {row.norm for row in of("name", values.strings)} == {"celik", "zoe", "dr."}
    assert StringRow("family", "celik", "Çelik") in values.strings
    assert {row.exact for row in of("address", values.strings)} == {"Straße 1", "Den Haag"}
    assert StringRow("address-city", "den haag", "Den Haag") in values.strings


def test_normalize() -> None:
    assert normalize("ÉMILE Müller-Lüdenscheidt") == "emile muller-ludenscheidt"
    assert normalize("Straße") == "strasse"
    assert len(normalize("x" * 2000)) == MAX_NORM


def test_references() -> None:
    values = extract(
        {
            "resourceType": "Task",
            "for": {"reference": "Patient/p1"},
            "owner": {"reference": "https://other.example/fhir/Practitioner/x/_history/3"},
            "basedOn": [{"reference": "#contained"}, {"reference": "urn:uuid:123"},
                        {"identifier": {"value": "only an identifier"}}],
            "extension": [origin("dev-a")],
        }
    )  # fmt: skip
    assert of("subject", values.references) == [ReferenceRow("subject", "Patient", "p1", None)]
    assert of("patient", values.references) == [ReferenceRow("patient", "Patient", "p1", None)]
    assert of("owner", values.references) == [
        ReferenceRow(
            "owner", "Practitioner", "x", "https://other.example/fhir/Practitioner/x/_history/3"
        )
    ]
    assert of("based-on", values.references) == [
        ReferenceRow("based-on", None, None, "urn:uuid:123")
    ]
    assert of("resource-origin", values.references) == [
        ReferenceRow("resource-origin", "Device", "dev-a", None)
    ]


def test_canonical_references_drop_the_version() -> None:
    values = extract(
        {
            "resourceType": "Communication",
            "instantiatesCanonical": ["http://modules.example/fhir/ActivityDefinition/ad1|2.0"],
        }
    )
    assert values.references == (
        ReferenceRow(
            "instantiates-canonical",
            "ActivityDefinition",
            "ad1",
            "http://modules.example/fhir/ActivityDefinition/ad1",
        ),
    )


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2024", datetime(2024, 1, 1), datetime(2025, 1, 1)),
        ("2024-12", datetime(2024, 12, 1), datetime(2025, 1, 1)),
        ("2024-02-29", datetime(2024, 2, 29), datetime(2024, 3, 1)),
        ("2024-01-15T10:00", datetime(2024, 1, 15, 10), datetime(2024, 1, 15, 10, 1)),
        ("2024-01-15T10:00:05Z", datetime(2024, 1, 15, 10, 0, 5), datetime(2024, 1, 15, 10, 0, 6)),
        ("2024-01-15T10:00:05+02:00", datetime(2024, 1, 15, 8, 0, 5),
         datetime(2024, 1, 15, 8, 0, 6)),
        ("2024-01-01T00:30:00-01:00", datetime(2024, 1, 1, 1, 30), datetime(2024, 1, 1, 1, 30, 1)),
        ("2024-01-15T10:00:05.5Z", datetime(2024, 1, 15, 10, 0, 5, 500000),
         datetime(2024, 1, 15, 10, 0, 5, 600000)),
        ("2024-01-15T10:00:05.123Z", datetime(2024, 1, 15, 10, 0, 5, 123000),
         datetime(2024, 1, 15, 10, 0, 5, 124000)),
        ("2024-01-15T10:00:05.1234567Z", datetime(2024, 1, 15, 10, 0, 5, 123456),
         datetime(2024, 1, 15, 10, 0, 5, 123457)),
        ("9999", datetime(9999, 1, 1), MAX_DATE),
    ],
)  # fmt: skip
def test_date_range_precision(text: str, low: datetime, high: datetime) -> None:
    assert date_range(text) == (low, high)


@pytest.mark.parametrize("text", ["2024-13", "2024-02-30", "24", "2024-01-15T25:00", "today", ""])
def test_malformed_dates(text: str) -> None:
    assert date_range(text) is None


def test_dates_and_periods() -> None:
    values = extract(
        {
            "resourceType": "Task",
            "authoredOn": "2024-01-15",
            "executionPeriod": {"start": "2024-01-01T10:00:00Z"},
            "lastModified": "not a date",
        }
    )
    assert values.dates == (
        DateRow("authored-on", datetime(2024, 1, 15), datetime(2024, 1, 16)),
        DateRow("period", datetime(2024, 1, 1, 10), MAX_DATE),
    )
    ended = extract({"resourceType": "CareTeam", "period": {"end": "2024"}})
    assert ended.dates == (DateRow("date", MIN_DATE, datetime(2025, 1, 1)),)


def test_uris_and_clipping() -> None:
    values = extract(
        {
            "resourceType": "Endpoint",
            "identifier": [{"value": "v" * (MAX_CODE + 10)}],
            "meta": {"profile": ["http://koppeltaal.nl/fhir/StructureDefinition/KT2Endpoint"]},
        }
    )
    assert values.uris == (
        UriRow("_profile", "http://koppeltaal.nl/fhir/StructureDefinition/KT2Endpoint"),
    )
    assert values.tokens[0].code == "v" * MAX_CODE


def test_id_and_last_updated_are_not_index_rows() -> None:
    values = extract(
        {"resourceType": "Device", "id": "d1", "meta": {"lastUpdated": "2024-01-01T00:00:00Z"}}
    )
    assert not values.has("_id")
    assert not values.has("_lastUpdated")
    assert values == IndexValues()


def test_koppeltaal_extensions() -> None:
    kt = "http://koppeltaal.nl/fhir/StructureDefinition"
    event = extract(
        {
            "resourceType": "AuditEvent",
            "extension": [
                {"url": f"{kt}/trace-id", "valueId": "t1"},
                {"url": f"{kt}/request-id", "valueId": "r1"},
                {"url": f"{kt}/correlation-id", "valueId": "c1"},
            ],
        }
    )
    assert {(row.param, row.code) for row in event.tokens} == {
        ("traceId", "t1"), ("requestId", "r1"), ("correlationId", "c1"),
    }  # fmt: skip
    definition = extract(
        {
            "resourceType": "ActivityDefinition",
            "extension": [{"url": f"{kt}/KT2PublisherId", "valueId": "pub"}],
            "participant": [{"type": "patient"}, {"type": "practitioner"}],
        }
    )
    assert of("publisherId", definition.tokens) == [TokenRow("publisherId", None, "pub", None)]
    assert [row.code for row in of("participant", definition.tokens)] == ["patient", "practitioner"]


def test_instant() -> None:
    assert instant("2024-01-01T12:00:00.123+02:00") == datetime(2024, 1, 1, 10, 0, 0, 123000)
    assert instant("2024-01-01T12:00:00Z") == datetime(2024, 1, 1, 12)
    assert instant("yesterday") is None
