"""OperationOutcome bounds: many issues and long texts never make an answer huge."""

from __future__ import annotations

from hub.fhir.outcome import MAX_DIAGNOSTICS, MAX_EXPRESSION, MAX_ISSUES, FhirError, Issue


def test_issues_beyond_the_limit_are_counted_not_listed() -> None:
    error = FhirError(400, [Issue("structure", f"fault {n}") for n in range(MAX_ISSUES + 7)])
    issues = error.outcome()["issue"]
    assert [i["diagnostics"] for i in issues[:MAX_ISSUES]] == [
        f"fault {n}" for n in range(MAX_ISSUES)
    ]
    assert issues[-1] == {
        "severity": "information",
        "code": "too-costly",
        "diagnostics": "7 more issues are not listed; fix these and try again",
    }


def test_long_texts_are_cut_and_say_how_long_they_were() -> None:
    error = FhirError.single(400, "structure", "d" * 5000, "Patient." + "e" * 5000)
    [issue] = error.outcome()["issue"]
    assert issue["diagnostics"] == "d" * MAX_DIAGNOSTICS + "… (5,000 characters)"
    assert issue["expression"] == ["Patient." + "e" * (MAX_EXPRESSION - 8) + "… (5,008 characters)"]


def test_an_ordinary_error_is_left_as_it_is() -> None:
    issues = [Issue("invalid", "Patient.gender is not a code", ("Patient.gender",))]
    assert FhirError(400, issues).issues is issues
