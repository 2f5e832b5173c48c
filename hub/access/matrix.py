"""The authorisation matrix: roles → per resource type what an application may do.

`authz_matrix.yaml` gives, per role and resource type, `create: true|false` and
`read`/`update`/`delete`: `all`, `own` or `granted` (absent = not allowed).
Search follows read.

Access tokens carry these rights as SMART v2 system scopes. The rule, per type:

1. Each of read, update, delete gets an origin set: ALL → no restriction, OWN →
   the app itself, GRANTED → the app's `grants` for that type, exactly as listed
   (an app sees its own resources under GRANTED only if it lists itself).
   A GRANTED right with no grants for that type gives nothing and is left out.
2. Actions with the same origin set share one scope string; `s` goes with `r`.
   Letters are in the order c r u d s; no restriction = no suffix, otherwise
   `?resource-origin=Device/a,Device/b` (in the order of the grants).
3. `c` has no origin of its own: the hub stamps every created resource with the
   caller's origin. So `c` joins the first string (in letter order) whose origin
   set admits the caller, or stands alone without suffix when none does.
4. Strings are emitted per type in alphabetical type order, and within a type in
   the order of their first letter.

Examples: `system/Patient.crus?resource-origin=Device/epd` (C, R(OWN), U(OWN)),
`system/Task.crs?resource-origin=Device/p,Device/m` + `system/Task.u?resource-origin=Device/p`
(C, R(GRANTED), U(OWN) where p grants itself and m).

`parse_scopes` reads such strings back (also `*` as type and the SMART v1
suffixes `read`, `write`, `*`) so enforcement can check that a request stays
within the token's scope, and the token endpoint can narrow a requested scope.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from hub.access import ConfigError, read_yaml

# The KT2 profiled types plus Communication (the Spreekuur.nl notification contract).
RESOURCE_TYPES = frozenset(
    {
        "ActivityDefinition",
        "AuditEvent",
        "CareTeam",
        "Communication",
        "Device",
        "Endpoint",
        "Organization",
        "Patient",
        "Practitioner",
        "RelatedPerson",
        "Subscription",
        "Task",
    }
)

Action = Literal["create", "read", "update", "delete", "search"]
LETTER: Mapping[Action, str] = MappingProxyType(
    {"create": "c", "read": "r", "update": "u", "delete": "d", "search": "s"}
)
LETTER_ORDER = "cruds"
# A FHIR id: what a client_id must look like to be a Device id.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class Scope(StrEnum):
    ALL = "all"
    OWN = "own"
    GRANTED = "granted"


@dataclass(frozen=True)
class Permission:
    """What one role may do with one resource type; `None` = not allowed."""

    create: bool = False
    read: Scope | None = None
    update: Scope | None = None
    delete: Scope | None = None

    def scope(self, action: Action) -> Scope | None:
        """The scope of `action` (search follows read); `create` has none: see `create`."""
        if action == "create":
            return None
        return self.read if action == "search" else getattr(self, action)


NO_PERMISSION = Permission()


class ScopeError(ValueError):
    """A scope string that is malformed or asks for more than may be given."""


@dataclass(frozen=True)
class ScopeGrant:
    """One SMART v2 system scope: `system/<rtype>.<letters>[?resource-origin=...]`.

    `origins` holds Device ids in the order written; `None` means any origin.
    """

    rtype: str
    letters: frozenset[str]
    origins: tuple[str, ...] | None = None

    def __str__(self) -> str:
        letters = "".join(letter for letter in LETTER_ORDER if letter in self.letters)
        text = f"system/{self.rtype}.{letters}"
        if self.origins is not None:
            text += "?resource-origin=" + ",".join(f"Device/{o}" for o in self.origins)
        return text

    def admits(self, origin: str | None) -> bool:
        return self.origins is None or (origin is not None and origin in self.origins)

    def covers(self, rtype: str) -> bool:
        return self.rtype in ("*", rtype)

    def intersect(self, other: ScopeGrant) -> ScopeGrant | None:
        """What both scopes allow; `None` when that is nothing. Keeps `other`'s origin order."""
        if self.rtype == "*":
            rtype = other.rtype
        elif other.rtype in ("*", self.rtype):
            rtype = self.rtype
        else:
            return None
        letters = self.letters & other.letters
        origins: tuple[str, ...] | None
        if self.origins is None:
            origins = other.origins
        elif other.origins is None:
            origins = self.origins
        else:
            origins = tuple(o for o in other.origins if o in self.origins)
        if not letters or origins == ():
            return None
        return ScopeGrant(rtype, letters, origins)


@dataclass(frozen=True)
class Scopes:
    """A parsed scope string: the union of its grants."""

    grants: tuple[ScopeGrant, ...] = ()

    def __str__(self) -> str:
        return " ".join(str(grant) for grant in self.grants)

    def allows(self, action: Action, rtype: str, origin_device_id: str | None) -> bool:
        """May `action` be done on a `rtype` whose resource-origin is `Device/<origin_device_id>`?

        For `create` pass the caller's own id (the origin the hub will stamp).
        A resource without origin is allowed only by an unrestricted scope.
        """
        letter = LETTER[action]
        return any(
            grant.covers(rtype) and letter in grant.letters and grant.admits(origin_device_id)
            for grant in self.grants
        )

    def origins(self, action: Action, rtype: str) -> frozenset[str] | None:
        """The origins `action` is allowed for: `None` = any, empty = none (narrows a search)."""
        letter = LETTER[action]
        allowed: set[str] = set()
        for grant in self.grants:
            if grant.covers(rtype) and letter in grant.letters:
                if grant.origins is None:
                    return None
                allowed.update(grant.origins)
        return frozenset(allowed)

    def narrow(self, requested: Scopes) -> Scopes:
        """The part of these scopes that `requested` asks for.

        Raises `ScopeError` for a requested scope that none of these grant at all.
        """
        pieces: list[tuple[int, ScopeGrant]] = []
        for wanted in requested.grants:
            found = False
            for index, grant in enumerate(self.grants):
                piece = wanted.intersect(grant)
                if piece is not None:
                    pieces.append((index, piece))
                    found = True
            if not found:
                raise ScopeError(f"scope {wanted} is not granted to this client")
        # Pieces with the same type and origins become one string again, in the granted order.
        merged: dict[tuple[str, frozenset[str] | None], ScopeGrant] = {}
        for _, piece in sorted(pieces, key=lambda item: item[0]):
            key = (piece.rtype, None if piece.origins is None else frozenset(piece.origins))
            previous = merged.get(key)
            letters = piece.letters if previous is None else previous.letters | piece.letters
            merged[key] = ScopeGrant(piece.rtype, letters, piece.origins)
        return Scopes(tuple(merged.values()))


def _dedupe(grants: Iterable[ScopeGrant]) -> list[ScopeGrant]:
    seen: set[str] = set()
    unique: list[ScopeGrant] = []
    for grant in grants:
        if str(grant) not in seen:
            seen.add(str(grant))
            unique.append(grant)
    return unique


_SCOPE = re.compile(
    r"system/(?P<rtype>\*|[A-Z][A-Za-z]{0,63})\.(?P<letters>[a-z*]+)"
    r"(?:\?resource-origin=(?P<origins>[^\s?&]+))?"
)
_V1_LETTERS = {"read": "rs", "write": "cud", "*": LETTER_ORDER}
_V2_LETTERS = re.compile(r"c?r?u?d?s?")


def parse_scope(token: str) -> ScopeGrant:
    """Parse one scope; raises `ScopeError` for anything but a system scope the hub knows."""
    match = _SCOPE.fullmatch(token)
    if match is None:
        raise ScopeError(f"scope {token!r} is not a SMART system scope the hub supports")
    rtype, letters, origins_text = match["rtype"], match["letters"], match["origins"]
    if rtype != "*" and rtype not in RESOURCE_TYPES:
        raise ScopeError(f"scope {token!r} names an unknown resource type")
    letters = _V1_LETTERS.get(letters, letters)
    if not letters or not _V2_LETTERS.fullmatch(letters):
        raise ScopeError(f"scope {token!r}: permissions must be letters of 'cruds' in that order")
    origins: tuple[str, ...] | None = None
    if origins_text is not None:
        origins = tuple(_device_id(token, part) for part in origins_text.split(","))
    return ScopeGrant(rtype, frozenset(letters), origins)


def _device_id(token: str, reference: str) -> str:
    kind, _, device_id = reference.partition("/")
    if kind != "Device" or not FHIR_ID.fullmatch(device_id):
        raise ScopeError(f"scope {token!r}: resource-origin must list Device/<id> references")
    return device_id


def parse_scopes(scope_string: str) -> Scopes:
    """Parse a space-separated scope string (as in a token, or a token request)."""
    return Scopes(tuple(_dedupe(parse_scope(token) for token in scope_string.split())))


@dataclass(frozen=True)
class Matrix:
    """The loaded matrix. `roles[role][rtype]` is that role's `Permission` on `rtype`."""

    roles: Mapping[str, Mapping[str, Permission]]
    source: str = field(default="authz_matrix.yaml", compare=False)

    def permission(self, role: str, rtype: str) -> Permission:
        """The role's rights on a type (none when the type is absent). Unknown role: KeyError."""
        return self.roles[role].get(rtype, NO_PERMISSION)

    def performable(self) -> Mapping[str, frozenset[Action]]:
        """Per resource type, every action at least one role may perform (types none may: absent).

        What the CapabilityStatement may promise. Search follows read.
        """
        found: dict[str, set[Action]] = {}
        scoped: tuple[Action, ...] = ("read", "update", "delete", "search")
        for permissions in self.roles.values():
            for rtype, permission in permissions.items():
                actions = found.setdefault(rtype, set())
                if permission.create:
                    actions.add("create")
                for action in scoped:
                    if permission.scope(action) is not None:
                        actions.add(action)
        return MappingProxyType(
            {rtype: frozenset(actions) for rtype, actions in found.items() if actions}
        )

    def scopes(self, role: str, client_id: str, grants: Mapping[str, Sequence[str]]) -> Scopes:
        """The role's rights for one app as structured scopes (see the module rule)."""
        result: list[ScopeGrant] = []
        for rtype in sorted(self.roles[role]):
            permission = self.roles[role][rtype]
            result.extend(_type_scopes(rtype, permission, client_id, grants.get(rtype, ())))
        return Scopes(tuple(result))

    def smart_scopes(
        self, role: str, client_id: str, grants: Mapping[str, Sequence[str]]
    ) -> list[str]:
        """The role's rights for one app as SMART v2 scope strings (see the module rule)."""
        return [str(grant) for grant in self.scopes(role, client_id, grants).grants]


def _type_scopes(
    rtype: str, permission: Permission, client_id: str, granted: Sequence[str]
) -> list[ScopeGrant]:
    # Keyed by the origin set (None = unrestricted); values keep first-seen order.
    groups: dict[frozenset[str] | None, tuple[tuple[str, ...] | None, set[str]]] = {}
    for action, letter in (("read", "r"), ("update", "u"), ("delete", "d")):
        scope: Scope | None = getattr(permission, action)
        if scope is None:
            continue
        origins: tuple[str, ...] | None
        if scope is Scope.ALL:
            origins = None
        elif scope is Scope.OWN:
            origins = (client_id,)
        else:
            origins = tuple(dict.fromkeys(granted))
            if not origins:
                continue
        key = None if origins is None else frozenset(origins)
        letters = groups.setdefault(key, (origins, set()))[1]
        letters.update("rs" if letter == "r" else letter)
    scopes = [
        ScopeGrant(rtype, frozenset(letters), origins) for origins, letters in groups.values()
    ]
    if permission.create:
        for index, grant in enumerate(scopes):
            if grant.admits(client_id):
                scopes[index] = ScopeGrant(rtype, grant.letters | {"c"}, grant.origins)
                break
        else:
            scopes.append(ScopeGrant(rtype, frozenset("c")))
    return sorted(scopes, key=lambda g: min(LETTER_ORDER.index(letter) for letter in g.letters))


# --- loading -------------------------------------------------------------------------------

_ROLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_ACTIONS = ("create", "read", "update", "delete")
_SCOPE_VALUES = tuple(scope.value for scope in Scope)


def load_matrix(path: Path) -> Matrix:
    """Read and validate `authz_matrix.yaml`; any problem raises `ConfigError`."""
    return parse_matrix(read_yaml(path), source=path)


def parse_matrix(data: object, *, source: Path | str) -> Matrix:
    if not isinstance(data, dict):
        raise ConfigError(source, "", "must be a mapping with a 'roles' key")
    unknown = sorted(str(key) for key in data if key != "roles")
    if unknown:
        raise ConfigError(source, unknown[0], "unknown key (only 'roles' is allowed)")
    roles = data.get("roles")
    if not isinstance(roles, dict) or not roles:
        raise ConfigError(source, "roles", "must be a non-empty mapping of role → types")
    parsed: dict[str, Mapping[str, Permission]] = {}
    for role, types in roles.items():
        entry = f"roles.{role}"
        if not isinstance(role, str) or not _ROLE_NAME.fullmatch(role):
            raise ConfigError(source, entry, "a role name is letters, digits, '-' or '_'")
        if types is None:
            types = {}
        if not isinstance(types, dict):
            raise ConfigError(source, entry, "must be a mapping of resource type → permission")
        parsed[role] = MappingProxyType(
            {
                str(rtype): _permission(source, f"{entry}.{rtype}", rtype, rights)
                for rtype, rights in types.items()
            }
        )
    return Matrix(MappingProxyType(parsed), source=str(source))


def _permission(source: Path | str, entry: str, rtype: object, rights: object) -> Permission:
    if rtype not in RESOURCE_TYPES:
        known = ", ".join(sorted(RESOURCE_TYPES))
        raise ConfigError(source, entry, f"unknown resource type (known: {known})")
    if rights is None:
        rights = {}
    if not isinstance(rights, dict):
        raise ConfigError(source, entry, "must be a mapping of create/read/update/delete")
    for key in rights:
        if key not in _ACTIONS:
            raise ConfigError(
                source, f"{entry}.{key}", "unknown key (allowed: create, read, update, delete)"
            )
    create = rights.get("create", False)
    if not isinstance(create, bool):
        raise ConfigError(source, f"{entry}.create", f"must be true or false, not {create!r}")
    scopes: dict[str, Scope | None] = {}
    for action in ("read", "update", "delete"):
        value = rights.get(action)
        if action in rights and value not in _SCOPE_VALUES:
            raise ConfigError(
                source, f"{entry}.{action}", f"{value!r} is not one of all, own, granted"
            )
        scopes[action] = Scope(value) if value is not None else None
    if rtype == "AuditEvent" and (scopes["update"] or scopes["delete"]):
        raise ConfigError(source, entry, "AuditEvents are append-only: no update or delete")
    return Permission(create, scopes["read"], scopes["update"], scopes["delete"])
