from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hub.fhir.model import parse_body, validate
from hub.fhir.outcome import FhirError, Issue

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


# -- a type's own rules, reported with the structure ------------------------------------


def active_and_gender_rules(resource: Mapping[str, Any]) -> list[Issue]:
    """Rules of a made-up contract: `active` must be true and `gender` 'female'."""
    issues = []
    if resource.get("active") is not True:
        issues.append(Issue("value", "active must be true", ("Patient.active",)))
    if resource.get("gender") != "female":
        issues.append(Issue("value", "gender must be 'female'", ("Patient.gender",)))
    return issues


def refusal(resource: dict[str, Any]) -> list[tuple[str, str]]:
    """(expression, diagnostics) of every issue of the one 400."""
    with pytest.raises(FhirError) as raised:
        validate(resource, rules=active_and_gender_rules)
    assert raised.value.status == 400
    return sorted((issue.expression[0], issue.diagnostics) for issue in raised.value.issues)


def test_rules_and_structure_are_reported_in_one_400() -> None:
    issues = refusal({"resourceType": "Patient", "birthDate": 1980, "unknownElement": True})
    assert [expression for expression, _ in issues] == [
        "Patient.active",
        "Patient.birthDate",
        "Patient.gender",
        "Patient.unknownElement",
    ]


def test_rules_alone_are_a_400_too() -> None:
    assert refusal({"resourceType": "Patient", "active": False, "gender": "female"}) == [
        ("Patient.active", "active must be true")
    ]
    validate({"resourceType": "Patient", "active": True, "gender": "female"}, rules=lambda _: [])


@pytest.mark.parametrize(
    "value",
    [None, "maybe", 3, [True], {"value": True}],
    ids=["null", "a string", "a number", "an array", "an object"],
)
def test_a_rule_says_it_instead_of_the_model_when_both_refuse_the_json(value: Any) -> None:
    """Missing, null, empty or of the wrong JSON type: one issue, the rule's."""
    issues = refusal({"resourceType": "Patient", "active": value, "gender": "female"})
    assert issues == [("Patient.active", "active must be true")]


def test_an_empty_value_is_said_once() -> None:
    issues = refusal({"resourceType": "Patient", "active": True, "gender": ""})
    assert issues == [("Patient.gender", "gender must be 'female'")]


def test_what_the_model_says_of_a_values_characters_is_kept() -> None:
    """The rule does not check a code's whitespace, so both issues stand."""
    issues = refusal({"resourceType": "Patient", "active": True, "gender": "fe  male"})
    assert [expression for expression, _ in issues] == ["Patient.gender", "Patient.gender"]
    assert "gender must be 'female'" in [diagnostics for _, diagnostics in issues]


def test_without_rules_the_structure_alone_decides() -> None:
    validate({"resourceType": "Patient", "active": False})


@pytest.mark.parametrize("name", ["Foo", "", None, 3, ["Patient"], "patient"])
def test_a_contained_resource_of_no_known_type_is_a_400_not_a_crash(name: Any) -> None:
    # The model looks the class up by resourceType and raises on an unknown one.
    organization = {
        "resourceType": "Organization",
        "id": "o",
        "contained": [{"resourceType": name}],
    }
    with pytest.raises(FhirError) as raised:
        validate({"resourceType": "Patient", "contained": [organization]})
    assert raised.value.status == 400
    assert [
        issue.expression for issue in raised.value.issues if "null" not in issue.diagnostics
    ] == [("Patient.contained[0].contained[0].resourceType",)]


def test_bindings_and_json_types_speak_instead_of_the_model_on_their_element() -> None:
    """What the model coerces or lets through is refused; where it complains too, once."""
    with pytest.raises(FhirError) as raised:
        validate(
            {
                "resourceType": "Patient",
                "gender": "xx",
                "active": "yes",
                "photo": [{"size": 12.5}],  # the model says "a valid integer" too
                "name": [{"family": 5}],  # and "a valid string"
            }
        )
    found = sorted((issue.expression[0], issue.code) for issue in raised.value.issues)
    assert found == [
        ("Patient.active", "structure"),
        ("Patient.gender", "code-invalid"),
        ("Patient.name[0].family", "structure"),
        ("Patient.photo[0].size", "structure"),
    ]
    assert "male, female, other, unknown" in raised.value.text
