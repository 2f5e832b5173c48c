"""The matrix file against the Koppeltaal matrix, the scope-string rule, and bad files."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from hub.access import ConfigError
from hub.access.matrix import (
    RESOURCE_TYPES,
    Action,
    Matrix,
    Permission,
    Scope,
    ScopeError,
    load_matrix,
    parse_scope,
    parse_scopes,
)

# The rights as the facts file states them (Sept-2022 matrix, then the later changes:
# eHealthModule Endpoint C,R,U(ALL) and CareTeam R(ALL); own Subscriptions for every
# application role, Beheerportaal included; the hub's Communication rows and Auditor).
# Transcribed by hand, in the facts file's notation, so that a slip in the YAML shows.
EXPECTED: dict[str, dict[str, str]] = {
    "Clientportaal": {
        "ActivityDefinition": "R(ALL)",
        "Task": "C, R(GRANTED), U(GRANTED)",
        "Patient": "R(ALL)",
        "Practitioner": "R(GRANTED)",
        "RelatedPerson": "C, R(OWN), U(OWN)",
        "Endpoint": "R(ALL)",
        "Subscription": "C, R/U/D(OWN)",
        "CareTeam": "R(ALL)",
        "AuditEvent": "C",
        "Communication": "R(ALL)",
    },
    "Behandelaarsportaal": {
        "ActivityDefinition": "R(ALL)",
        "Task": "C, R(GRANTED), U(OWN)",
        "Patient": "R(ALL)",
        "Practitioner": "R(ALL)",
        "RelatedPerson": "R(ALL)",
        "Endpoint": "R(ALL)",
        "Subscription": "C, R/U/D(OWN)",
        "CareTeam": "R(ALL)",
        "AuditEvent": "C",
    },
    "Beheerportaal": {
        "ActivityDefinition": "C, R/U/D(ALL)",
        "Patient": "R(ALL), D(ALL)",
        "RelatedPerson": "R(ALL), D(ALL)",
        "Endpoint": "C, R/U/D(ALL)",
        "Subscription": "C, R/U/D(OWN)",
        "Device": "C, R/U/D(ALL)",
        "AuditEvent": "C, R(ALL)",
    },
    "Zorgondersteuning": {
        "Patient": "C, R(OWN), U(OWN)",
        "Practitioner": "C, R/U/D(OWN)",
        "RelatedPerson": "C, R(OWN), U(OWN)",
        "CareTeam": "C, R/U/D(OWN)",
        "AuditEvent": "C, R(ALL)",
        "Subscription": "C, R/U/D(OWN)",
        "Communication": "C, R(OWN)",
    },
    "eHealthModule": {
        "ActivityDefinition": "C, R(OWN), U(OWN)",
        "Task": "C, R(GRANTED), U(GRANTED)",
        "Patient": "R(GRANTED)",
        "Practitioner": "R(GRANTED)",
        "RelatedPerson": "R(GRANTED)",
        "Endpoint": "C, R/U(ALL)",
        "CareTeam": "R(ALL)",
        "AuditEvent": "C",
        "Subscription": "C, R/U/D(OWN)",
    },
    "Auditor": {"AuditEvent": "R(ALL)"},
}

ACTIONS: tuple[Action, ...] = ("create", "read", "update", "delete", "search")
ROLE_TYPES = list(itertools.product(sorted(EXPECTED), sorted(RESOURCE_TYPES)))


def expected_permission(role: str, rtype: str) -> Permission:
    rights: dict[str, object] = {}
    for part in filter(None, EXPECTED[role].get(rtype, "").split(", ")):
        if part == "C":
            rights["create"] = True
            continue
        match = re.fullmatch(r"([RUD/]+)\((ALL|OWN|GRANTED)\)", part)
        assert match, part
        for letter in match[1].split("/"):
            action = {"R": "read", "U": "update", "D": "delete"}[letter]
            rights[action] = Scope(match[2].lower())
    return Permission(**rights)  # type: ignore[arg-type]


def test_the_matrix_has_exactly_the_koppeltaal_roles_and_the_auditor(matrix: Matrix) -> None:
    assert set(matrix.roles) == set(EXPECTED)


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize(("role", "rtype"), ROLE_TYPES)
def test_every_right_is_the_one_the_facts_give(
    matrix: Matrix, role: str, rtype: str, action: Action
) -> None:
    expected = expected_permission(role, rtype)
    actual = matrix.permission(role, rtype)
    if action == "create":
        assert actual.create is expected.create
    else:
        assert actual.scope(action) is expected.scope(action)


def test_audit_events_are_never_updated_or_deleted(matrix: Matrix) -> None:
    for role in matrix.roles:
        permission = matrix.permission(role, "AuditEvent")
        assert permission.update is None
        assert permission.delete is None


def test_an_unknown_role_is_a_programming_error(matrix: Matrix) -> None:
    with pytest.raises(KeyError):
        matrix.permission("Nobody", "Task")


# --- scope strings -------------------------------------------------------------------------

# client_id "me"; GRANTED lists "me" and "peer" for Task, only "peer" elsewhere.
GRANTS = {
    "Task": ["me", "peer"],
    "Patient": ["peer"],
    "Practitioner": ["peer"],
    "RelatedPerson": ["peer"],
}
PEER = "?resource-origin=Device/peer"
ME = "?resource-origin=Device/me"
TASK_GRANTED = "?resource-origin=Device/me,Device/peer"

EXPECTED_SCOPES = {
    "Clientportaal": [
        "system/ActivityDefinition.rs",
        "system/AuditEvent.c",
        "system/CareTeam.rs",
        "system/Communication.rs",
        "system/Endpoint.rs",
        "system/Patient.rs",
        f"system/Practitioner.rs{PEER}",
        f"system/RelatedPerson.crus{ME}",
        f"system/Subscription.cruds{ME}",
        f"system/Task.crus{TASK_GRANTED}",
    ],
    "Behandelaarsportaal": [
        "system/ActivityDefinition.rs",
        "system/AuditEvent.c",
        "system/CareTeam.rs",
        "system/Endpoint.rs",
        "system/Patient.rs",
        "system/Practitioner.rs",
        "system/RelatedPerson.rs",
        f"system/Subscription.cruds{ME}",
        # Different origin sets for R and U: two strings; c joins the first that admits "me".
        f"system/Task.crs{TASK_GRANTED}",
        f"system/Task.u{ME}",
    ],
    "Beheerportaal": [
        "system/ActivityDefinition.cruds",
        "system/AuditEvent.crs",
        "system/Device.cruds",
        "system/Endpoint.cruds",
        "system/Patient.rds",
        "system/RelatedPerson.rds",
        f"system/Subscription.cruds{ME}",
    ],
    "Zorgondersteuning": [
        "system/AuditEvent.crs",
        f"system/CareTeam.cruds{ME}",
        f"system/Communication.crs{ME}",
        f"system/Patient.crus{ME}",
        f"system/Practitioner.cruds{ME}",
        f"system/RelatedPerson.crus{ME}",
        f"system/Subscription.cruds{ME}",
    ],
    "eHealthModule": [
        f"system/ActivityDefinition.crus{ME}",
        "system/AuditEvent.c",
        "system/CareTeam.rs",
        "system/Endpoint.crus",
        f"system/Patient.rs{PEER}",
        f"system/Practitioner.rs{PEER}",
        f"system/RelatedPerson.rs{PEER}",
        f"system/Subscription.cruds{ME}",
        f"system/Task.crus{TASK_GRANTED}",
    ],
    "Auditor": ["system/AuditEvent.rs"],
}


@pytest.mark.parametrize("role", sorted(EXPECTED_SCOPES))
def test_scope_strings_per_role(matrix: Matrix, role: str) -> None:
    assert matrix.smart_scopes(role, "me", GRANTS) == EXPECTED_SCOPES[role]


def test_granted_without_grants_gives_nothing_and_create_stands_alone(matrix: Matrix) -> None:
    scopes = matrix.smart_scopes("Clientportaal", "me", {})
    assert not any(s.startswith("system/Practitioner.") for s in scopes)
    # R/U(GRANTED) with no grants: only the unrestricted create is left.
    assert "system/Task.c" in scopes


def test_create_stands_alone_when_no_granted_set_admits_the_caller(matrix: Matrix) -> None:
    scopes = matrix.smart_scopes("eHealthModule", "me", {"Task": ["peer"]})
    assert [s for s in scopes if "/Task." in s] == ["system/Task.c", f"system/Task.rus{PEER}"]


def expected_allowed(permission: Permission, action: Action, origin: str | None) -> bool:
    if action == "create":
        return permission.create and origin == "me"
    scope = permission.scope(action)
    if scope is Scope.ALL:
        return True
    if scope is Scope.OWN:
        return origin == "me"
    if scope is Scope.GRANTED:
        return origin == "peer"
    return False


@pytest.mark.parametrize(("role", "rtype"), ROLE_TYPES)
def test_parsed_scopes_allow_exactly_what_the_matrix_allows(
    matrix: Matrix, role: str, rtype: str
) -> None:
    # Grants without the caller itself, so OWN and GRANTED can be told apart.
    grants = {t: ["peer"] for t in RESOURCE_TYPES}
    scopes = parse_scopes(" ".join(matrix.smart_scopes(role, "me", grants)))
    permission = matrix.permission(role, rtype)
    for action, origin in itertools.product(ACTIONS, ("me", "peer", "stranger", None)):
        if action == "create" and origin != "me":
            continue  # the hub stamps the caller's own origin on every create
        assert scopes.allows(action, rtype, origin) is expected_allowed(
            permission, action, origin
        ), (action, origin)


def test_origins_tell_a_search_what_to_narrow_to(matrix: Matrix) -> None:
    scopes = matrix.scopes("Behandelaarsportaal", "me", GRANTS)
    assert scopes.origins("search", "Task") == frozenset({"me", "peer"})
    assert scopes.origins("update", "Task") == frozenset({"me"})
    assert scopes.origins("search", "Patient") is None
    assert scopes.origins("delete", "Task") == frozenset()
    assert scopes.origins("read", "Device") == frozenset()


@pytest.mark.parametrize(
    ("text", "letters", "origins"),
    [
        ("system/Task.rs", "rs", None),
        ("system/Task.cruds?resource-origin=Device/a,Device/b.c", "cruds", ("a", "b.c")),
        ("system/Patient.read", "rs", None),
        ("system/Patient.write", "cud", None),
        ("system/*.*", "cruds", None),
    ],
)
def test_parse_scope(text: str, letters: str, origins: tuple[str, ...] | None) -> None:
    grant = parse_scope(text)
    assert grant.letters == frozenset(letters)
    assert grant.origins == origins


@pytest.mark.parametrize(
    "text",
    [
        "patient/Task.rs",
        "system/Task.sr",  # letters out of order
        "system/Task.rr",
        "system/Task.x",
        "system/Banana.rs",
        "system/Task.rs?resource-origin=Patient/1",
        "system/Task.rs?resource-origin=Device/",
        "system/Task.rs?status=ready",
        "openid",
    ],
)
def test_parse_scope_refuses_what_it_does_not_understand(text: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(text)


def test_scopes_render_back_to_the_same_string() -> None:
    text = "system/Task.crus?resource-origin=Device/a,Device/b system/Patient.rs"
    assert str(parse_scopes(text)) == text


def test_narrowing_intersects_letters_and_origins(matrix: Matrix) -> None:
    granted = matrix.scopes("Zorgondersteuning", "me", {})
    narrowed = granted.narrow(parse_scopes("system/Patient.rs system/AuditEvent.cruds"))
    assert str(narrowed) == f"system/AuditEvent.crs system/Patient.rs{ME}"


def test_narrowing_with_a_wildcard_keeps_everything(matrix: Matrix) -> None:
    granted = matrix.scopes("Beheerportaal", "me", {})
    assert str(granted.narrow(parse_scopes("system/*.cruds"))) == str(granted)


def test_narrowing_to_a_subset_of_origins() -> None:
    granted = parse_scopes("system/Task.rus?resource-origin=Device/a,Device/b")
    narrowed = granted.narrow(parse_scopes("system/Task.r?resource-origin=Device/b,Device/c"))
    assert str(narrowed) == "system/Task.r?resource-origin=Device/b"


@pytest.mark.parametrize(
    "requested",
    ["system/Device.rs", "system/Task.d", "system/Task.r?resource-origin=Device/z"],
)
def test_narrowing_refuses_a_scope_not_granted_at_all(requested: str) -> None:
    granted = parse_scopes("system/Task.rus?resource-origin=Device/a")
    with pytest.raises(ScopeError, match="not granted"):
        granted.narrow(parse_scopes(requested))


# --- bad files -----------------------------------------------------------------------------

BAD_MATRICES = [
    ("- just a list\n", "", "must be a mapping"),
    ("roles: {}\nversion: 2\n", "version", "unknown key"),
    ("roles: []\n", "roles", "non-empty mapping"),
    ("roles: {X: [Task]}\n", "roles.X", "must be a mapping of resource type"),
    ("roles: {'bad role': {}}\n", "roles.bad role", "a role name"),
    ("roles: {X: {Banana: {read: all}}}\n", "roles.X.Banana", "unknown resource type"),
    ("roles: {X: {Task: {read: all, search: all}}}\n", "roles.X.Task.search", "unknown key"),
    ("roles: {X: {Task: {read: some}}}\n", "roles.X.Task.read", "'some' is not one of"),
    ("roles: {X: {Task: {read: }}}\n", "roles.X.Task.read", "None is not one of"),
    ("roles: {X: {Task: {read: [all]}}}\n", "roles.X.Task.read", "is not one of"),
    ("roles: {X: {Task: {create: 'yes'}}}\n", "roles.X.Task.create", "true or false"),
    ("roles: {X: {Task: read}}\n", "roles.X.Task", "must be a mapping of create"),
    ("roles: {X: {AuditEvent: {update: all}}}\n", "roles.X.AuditEvent", "append-only"),
    ("roles: {X: {AuditEvent: {delete: own}}}\n", "roles.X.AuditEvent", "append-only"),
    ("roles:\n  X: {}\n  X: {}\n", "", "duplicate key 'X'"),
    ("roles: {X: {Task: {read: all}\n", "", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "entry", "problem"), BAD_MATRICES)
def test_a_bad_matrix_names_file_entry_and_problem(
    tmp_path: Path, text: str, entry: str, problem: str
) -> None:
    path = tmp_path / "authz_matrix.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_matrix(path)
    assert caught.value.file == str(path)
    assert caught.value.entry == entry
    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"{path}: ")


def test_a_missing_matrix_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_matrix(tmp_path / "absent.yaml")


def test_an_empty_type_entry_means_no_rights(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("roles: {X: {Task: {}}, Y: }\n")
    loaded = load_matrix(path)
    assert loaded.permission("X", "Task") == Permission()
    assert loaded.smart_scopes("Y", "me", {}) == []


def test_performable_is_what_some_role_may_do() -> None:
    matrix = Matrix(
        {
            "a": {"Task": Permission(create=True, read=Scope.OWN), "Patient": Permission()},
            "b": {"Task": Permission(update=Scope.GRANTED), "Device": Permission(read=Scope.ALL)},
        }
    )
    assert matrix.performable() == {
        "Task": frozenset({"create", "read", "search", "update"}),
        "Device": frozenset({"read", "search"}),
    }  # Patient: listed, but nothing allowed
