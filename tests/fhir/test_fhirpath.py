from __future__ import annotations

from typing import Any

import pytest

from hub.fhir.fhirpath import FhirPathError, _Node, compile_path, reference_target, split_union
from hub.fhir.search_params import SUPPORTED_TYPES, params_for

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [{"family": "Jansen", "given": ["Jan", "Piet"]}],
    "telecom": [{"system": "email", "value": "a@b.nl"}, {"system": "phone", "value": "06"}],
    "deceasedDateTime": "2020-01-01",
    "statusReason": "not a choice of status",
    "extension": [
        {"url": "http://x/a", "valueId": "one"},
        {"url": "http://x/b", "valueReference": {"reference": "Device/d1"}},
    ],
    "contained": [{"resourceType": "Patient", "id": "c1", "gender": "male"}],
    "link": [{"other": {"reference": "#c1"}}, {"other": {"reference": "RelatedPerson/r1"}}],
}


def evaluate(expression: str, resource: dict[str, Any] = PATIENT) -> list[Any]:
    return compile_path(expression).evaluate(resource)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("Patient.name.family", ["Jansen"]),
        ("Patient.name.given", ["Jan", "Piet"]),
        ("Task.status", []),
        ("Resource.id", ["p1"]),
        ("Patient.telecom.where(system='email').value", ["a@b.nl"]),
        ("Patient.telecom.where(system='fax')", []),
        ("Patient.deceased", ["2020-01-01"]),
        ("(Patient.deceased as dateTime)", ["2020-01-01"]),
        ("(Patient.deceased as boolean)", []),
        ("Patient.status", []),
        ("Patient.extension('http://x/a').value", ["one"]),
        ("Patient.extension.where(url='http://x/b').value", [{"reference": "Device/d1"}]),
        ("(Patient.extension.value as Reference)", [{"reference": "Device/d1"}]),
        ("Patient.name.family | Patient.name.given", ["Jansen", "Jan", "Piet"]),
        ("Patient.name.given | Patient.name.given", ["Jan", "Piet"]),
        (
            "Patient.link.other.where(resolve() is RelatedPerson)",
            [{"reference": "RelatedPerson/r1"}],
        ),
        ("Patient.link.other.where(resolve() is Patient)", [{"reference": "#c1"}]),
        ("Patient.link.other.resolve().gender", ["male"]),
        ("Patient.contained.ofType(Patient).id", ["c1"]),
        ("Patient.deceased.exists() and Patient.deceased != false", [True]),
        ("Patient.gender.exists() and Patient.gender != false", [False]),
    ],
)
def test_evaluate(expression: str, expected: list[Any]) -> None:
    assert evaluate(expression) == expected


def test_deceased_false_is_false() -> None:
    patient = {"resourceType": "Patient", "deceasedBoolean": False}
    assert evaluate("Patient.deceased.exists() and Patient.deceased != false", patient) == [False]


@pytest.mark.parametrize(
    "expression",
    [
        "Patient.name[0]",
        "Patient.name.first()",
        "Patient.active or Patient.deceased",
        "Patient.birthDate + 1",
        "Patient.name.where(use='official'",
        "Patient.extension(url)",
        "(Patient.value as FHIR.Quantity)",
        "Patient.name & 'x'",
    ],
)
def test_unsupported_syntax_fails_loudly(expression: str) -> None:
    with pytest.raises(FhirPathError):
        compile_path(expression)


def test_every_supported_parameter_compiles() -> None:
    for resource_type in SUPPORTED_TYPES:
        for param in params_for(resource_type).values():
            assert compile_path(param.expression).text == param.expression


def test_split_union_respects_parentheses_and_strings() -> None:
    assert split_union("A.x | (B.y as T) | C.where(z='a|b')") == [
        "A.x",
        "(B.y as T)",
        "C.where(z='a|b')",
    ]


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/1", ("Patient", "1")),
        ("Patient/1/_history/2", ("Patient", "1")),
        ("https://hub.example/demo/fhir/Task/a-b.c", ("Task", "a-b.c")),
        ("#c1", None),
        ("urn:uuid:0f9e", None),
        ("patient/1", None),
    ],
)
def test_reference_target(reference: str, expected: tuple[str, str] | None) -> None:
    assert reference_target(reference) == expected


def _without(resource: dict[str, Any], roots: tuple[str, ...]) -> dict[str, Any]:
    return {key: value for key, value in resource.items() if not key.startswith(roots)}


def test_roots_are_skipped_only_where_the_full_evaluation_finds_nothing() -> None:
    """The shortcut of `Expression.roots` never changes a result.

    For every search parameter of every type, on every corpus resource with the
    parameter's root elements removed, the full evaluation finds nothing (so
    skipping it is sound); and with the roots present, shortcut and full evaluation
    agree.
    """
    from tests.fhir.corpus import LIVE

    checked = 0
    for resource in LIVE:
        for param in params_for(resource["resourceType"]).values():
            expression = param.compiled
            full = [node.value for node in expression._evaluator([_Node(resource)], resource)]
            assert expression.evaluate(resource) == full, param.code
            if expression.roots is None:
                continue
            stripped = _without(resource, expression.roots)
            assert expression._evaluator([_Node(stripped)], stripped) == [], param.code
            assert expression.evaluate(stripped) == []
            checked += 1
    assert checked > 100


@pytest.mark.parametrize(
    ("expression", "roots"),
    [
        ("Task.owner", ("owner",)),
        ("Account.subject.where(resolve() is Patient) | Task.for", ("subject", "for")),
        ("(ActivityDefinition.useContext.value as CodeableConcept)", ("useContext",)),
        ("Patient.telecom.where(system='email')", ("telecom",)),
        # Something from nothing: `exists()` and `and` are false, not empty, when absent.
        ("Patient.deceased.exists() and Patient.deceased != false", None),
        ("Patient.active = true", None),
    ],
)
def test_roots(expression: str, roots: tuple[str, ...] | None) -> None:
    assert compile_path(expression).roots == roots
