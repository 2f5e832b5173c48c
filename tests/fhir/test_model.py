from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.fhir.model import parse_body, validate
from hub.fhir.outcome import FhirError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir-r4"


def test_parse_body_refuses_what_is_not_a_resource_of_the_type() -> None:
    for body, message in [
        (b"", "empty"),
        (b"[1]", "JSON object"),
        (b"{not json", "not valid JSON"),
        (b'{"resourceType":"Task"}', "Expected a Patient resource"),
    ]:
        with pytest.raises(FhirError) as raised:
            parse_body(body, expected_type="Patient")
        assert raised.value.status == 400
        assert message in raised.value.text


def test_validation_lists_every_problem_with_its_location() -> None:
    with pytest.raises(FhirError) as raised:
        validate(
            {
                "resourceType": "Patient",
                "birthDate": "2020-13-01",
                "name": [{"family": 1}],
                "unknownElement": True,
            }
        )
    expressions = {issue.expression for issue in raised.value.issues}
    assert {
        ("Patient.birthDate",),
        ("Patient.name[0].family",),
        ("Patient.unknownElement",),
    } <= expressions


def test_r4b_only_element_is_refused() -> None:
    activity = {"resourceType": "ActivityDefinition", "status": "active", "subjectCanonical": "x"}
    with pytest.raises(FhirError) as raised:
        validate(activity)
    assert ("ActivityDefinition.subjectCanonical",) in {i.expression for i in raised.value.issues}


def test_official_patient_example_is_valid() -> None:
    validate(json.loads((FIXTURES / "patient-example.json").read_text()))


def test_nulls_and_empty_arrays_or_objects_are_refused_where_they_are() -> None:
    with pytest.raises(FhirError) as raised:
        validate(
            {
                "resourceType": "Patient",
                "gender": None,
                "extension": [],
                "name": [{"family": "Jansen", "period": {}}],
            }
        )
    assert {issue.expression for issue in raised.value.issues} >= {
        ("Patient.gender",),
        ("Patient.extension",),
        ("Patient.name[0].period",),
    }


def test_a_null_inside_an_array_keeps_primitive_extensions_aligned() -> None:
    validate(
        {
            "resourceType": "Patient",
            "name": [{"given": ["Jan", "Piet"]}],
            "_birthDate": {"extension": [{"url": "http://example.org/x", "valueString": "y"}]},
            "birthDate": "1980-01-01",
        }
    )
    validate({"resourceType": "Patient", "name": [{"given": ["Jan"], "_given": [None]}]})
