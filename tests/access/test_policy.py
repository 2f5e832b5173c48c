"""`Access.refusal`: a 403 that names the role, the interaction and what it was refused on."""

from __future__ import annotations

from hub.access.matrix import parse_scopes
from hub.access.policy import Access, Caller

SCOPES = parse_scopes("system/Patient.rs")
ACCESS = Access(Caller("test", "portal", SCOPES), SCOPES, "Clientportaal")


def test_a_refusal_names_role_interaction_and_target() -> None:
    refused = ACCESS.refusal("update", "Task/t1")
    assert refused.status == 403
    [issue] = refused.issues
    assert (issue.code, issue.diagnostics) == (
        "forbidden",
        "Access denied: the role 'Clientportaal' does not allow 'update' on Task/t1",
    )


def test_a_refusal_may_add_why() -> None:
    refused = ACCESS.refusal("read", "Device", "_has looks into Device resources")
    assert refused.text == (
        "Access denied: the role 'Clientportaal' does not allow 'read' on Device: "
        "_has looks into Device resources"
    )
