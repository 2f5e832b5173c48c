"""The CapabilityStatement promises only what some role of the matrix may do."""

from __future__ import annotations

from typing import Any

from hub.fhir.capability import capability_statement, interactions_for
from hub.fhir.search_params import SUPPORTED_TYPES
from tests.support.schema import problems


def statement(performable: dict[str, frozenset[str]]) -> dict[str, Any]:
    return capability_statement(
        "https://hub.example/d/fhir", "https://hub.example/d/oauth2/token", "1.0",
        performable=performable,
    )  # fmt: skip


def resources(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {resource["type"]: resource for resource in document["rest"][0]["resource"]}


def codes(resource: dict[str, Any]) -> list[str]:
    return [interaction["code"] for interaction in resource["interaction"]]


def test_only_what_some_role_may_do_is_listed() -> None:
    listed = resources(
        statement(
            {
                "Patient": frozenset({"create", "read", "search", "update", "delete"}),
                "Task": frozenset({"create", "read", "search", "update"}),
                "Communication": frozenset({"read", "search"}),
                "Device": frozenset({"create"}),
                "AuditEvent": frozenset({"create", "read", "search", "update", "delete"}),
                "Organization": frozenset(),
            }
        )
    )
    assert set(listed) == {"Patient", "Task", "Communication", "Device", "AuditEvent"}
    assert codes(listed["Patient"]) == [
        "read", "vread", "update", "delete", "create", "search-type", "history-instance"
    ]  # fmt: skip
    assert "delete" not in codes(listed["Task"])
    assert codes(listed["Communication"]) == ["read", "vread", "search-type", "history-instance"]
    assert codes(listed["Device"]) == ["create"]
    assert listed["Device"]["searchParam"]  # the parameters stay: they describe the type
    # AuditEvents are append-only whatever a matrix says.
    assert {"update", "delete"} & set(codes(listed["AuditEvent"])) == set()


def test_operations_follow_the_interaction_they_need() -> None:
    read_only = resources(
        statement({"Subscription": frozenset({"read", "search"}), "AuditEvent": frozenset()})
    )
    assert [op["name"] for op in read_only["Subscription"]["operation"]] == ["status"]
    assert "AuditEvent" not in read_only
    full = resources(
        statement(
            {
                "Subscription": frozenset({"create", "read", "search", "update", "delete"}),
                "AuditEvent": frozenset({"create"}),
            }
        )
    )
    assert [op["name"] for op in full["Subscription"]["operation"]] == ["status", "resend"]
    assert "operation" not in full["AuditEvent"]  # $chain-head reads


def test_interactions_for() -> None:
    assert interactions_for("Task", {"read"}) == ["read", "vread", "history-instance"]
    assert interactions_for("Task", {"search"}) == ["search-type"]
    assert interactions_for("Task", set()) == []


def test_the_statement_is_valid_against_the_r4_json_schema() -> None:
    everything = frozenset({"create", "read", "search", "update", "delete"})
    document = statement(dict.fromkeys(SUPPORTED_TYPES, everything))
    assert problems(document) == []
