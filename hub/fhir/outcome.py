"""OperationOutcome: the shape of every error the hub returns.

`FhirError` carries an HTTP status and one or more `Issue`s; the API layer turns
it into an `OperationOutcome` body. Raising it anywhere below the API aborts the
interaction (and its transaction) with a clear, located message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["fatal", "error", "warning", "information"]

# An answer lists at most this many issues, each text cut at these lengths: a body with
# thousands of faults (or one 800 kB property name) must not come back many times its size.
MAX_ISSUES = 100
MAX_DIAGNOSTICS = 1000
MAX_EXPRESSION = 300


def shortened(text: str, limit: int) -> str:
    """`text`, or its start and a note of its length when it is longer than `limit`."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


# Whitespace other than space, tab, CR and LF, and control characters: a FHIR string
# (R4 §2.24.0.1, regex `[ \r\n\t\S]+`) holds none of them.
_NOT_IN_STRING = re.compile(r"[^ \r\n\t\S]|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def fhir_string(text: str) -> str:
    """`text` with what a FHIR string may not hold written as `\\uXXXX` (a name a client sent)."""
    return _NOT_IN_STRING.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: what went wrong (`code`, `diagnostics`) and where."""

    code: str
    diagnostics: str
    expression: tuple[str, ...] = ()
    severity: Severity = "error"

    def to_json(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": fhir_string(self.diagnostics),
        }
        # A FHIR string is never empty: an empty parameter name (`?=x`) is named by the
        # diagnostics alone.
        expression = [fhir_string(text) for text in self.expression if text]
        if expression:
            issue["expression"] = expression
        return issue


@dataclass
class FhirError(Exception):
    """An error answered with `status` and an OperationOutcome of `issues`."""

    status: int
    issues: Sequence[Issue]
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.issues = _bounded(self.issues)
        super().__init__(self.text)

    @classmethod
    def single(
        cls,
        status: int,
        code: str,
        diagnostics: str,
        *expression: str,
        headers: dict[str, str] | None = None,
    ) -> FhirError:
        return cls(status, [Issue(code, diagnostics, tuple(expression))], headers or {})

    @property
    def text(self) -> str:
        """The diagnostics joined into one line (used for AuditEvent.outcomeDesc)."""
        return "; ".join(issue.diagnostics for issue in self.issues)

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def _bounded(issues: Sequence[Issue]) -> Sequence[Issue]:
    """At most `MAX_ISSUES` issues with texts of bounded length; a last one counts the rest."""
    if len(issues) <= MAX_ISSUES and all(
        len(i.diagnostics) <= MAX_DIAGNOSTICS
        and all(len(e) <= MAX_EXPRESSION for e in i.expression)
        for i in issues
    ):
        return issues
    kept = [
        Issue(
            issue.code,
            shortened(issue.diagnostics, MAX_DIAGNOSTICS),
            tuple(shortened(e, MAX_EXPRESSION) for e in issue.expression),
            issue.severity,
        )
        for issue in issues[:MAX_ISSUES]
    ]
    if len(issues) > MAX_ISSUES:
        kept.append(
            Issue(
                "too-costly",
                f"{len(issues) - MAX_ISSUES:,} more issues are not listed; fix these and try again",
                severity="information",
            )
        )
    return kept


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def information(diagnostics: str) -> dict[str, Any]:
    """An OperationOutcome that reports success (for `Prefer: return=OperationOutcome`)."""
    return operation_outcome([Issue("informational", diagnostics, severity="information")])


# Shorthands for the status codes of README.md ("HTTP surface"), so call sites read as intent.
def bad_request(diagnostics: str, *expression: str, code: str = "invalid") -> FhirError:
    return FhirError.single(400, code, diagnostics, *expression)


def not_found(diagnostics: str) -> FhirError:
    return FhirError.single(404, "not-found", diagnostics)


def forbidden(diagnostics: str = "Access denied") -> FhirError:
    return FhirError.single(403, "forbidden", diagnostics)


def unprocessable(diagnostics: str, *expression: str, code: str = "business-rule") -> FhirError:
    return FhirError.single(422, code, diagnostics, *expression)
