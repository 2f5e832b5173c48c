"""The search parameters the hub supports, per resource type.

Two sources, merged per type:

- the FHIR R4 parameters, generated from the HL7 definitions into
  `search_parameters.json` by `tools/gen_search_params.py`;
- the Koppeltaal parameters below (`KOPPELTAAL_PARAMS`), one entry each: add a
  `CustomParam` to support a new one.

Every expression is compiled before use: the generated ones by the generator,
the Koppeltaal ones when this module is imported. A parameter whose FHIRPath the
evaluator does not understand so fails loudly instead of quietly matching nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Literal, cast

from hub.fhir.fhirpath import Expression, compile_path

ParamType = Literal["token", "reference", "string", "date", "uri"]
PARAM_TYPES: tuple[ParamType, ...] = ("token", "reference", "string", "date", "uri")
# How a parameter is indexed and matched: its FHIR type, but for `phonetic`.
MatchKind = Literal["token", "reference", "string", "date", "uri", "phonetic"]

SUPPORTED_TYPES: tuple[str, ...] = (
    "Communication", "Subscription", "AuditEvent", "Patient", "Task", "Device",
    "Organization", "Practitioner", "RelatedPerson", "CareTeam", "Endpoint",
    "ActivityDefinition",
)  # fmt: skip

# Parameters answered from columns of `resources` rather than index rows.
_COLUMNS = {"_id": "id", "_lastUpdated": "last_updated"}
# Parameters matched otherwise than their FHIR type says. R4's `phonetic` (Patient,
# Practitioner, RelatedPerson, Organization) is a string parameter, but matches by the
# phonetic key of each word of a name (`hub.fhir.phonetic`), indexed as a token.
_KINDS: dict[str, MatchKind] = {"phonetic": "phonetic"}

GENERATED = Path(__file__).with_name("search_parameters.json")


@dataclass(frozen=True)
class SearchParam:
    """One search parameter of one resource type."""

    code: str
    type: ParamType
    base: str
    expression: str
    url: str
    targets: tuple[str, ...] = ()
    description: str = ""
    compiled: Expression = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise ValueError(f"{self.base}.{self.code}: unsupported parameter type {self.type}")
        object.__setattr__(self, "compiled", compile_path(self.expression))

    @property
    def column(self) -> str | None:
        """The `resources` column this parameter reads (`_id`, `_lastUpdated`), if any."""
        return _COLUMNS.get(self.code)

    @property
    def kind(self) -> MatchKind:
        """How the hub indexes and matches it: its FHIR `type`, or `phonetic`."""
        return _KINDS.get(self.code, self.type)


@dataclass(frozen=True)
class CustomParam:
    """A Koppeltaal search parameter; `{base}` in the expression becomes each base type."""

    code: str
    type: ParamType
    bases: tuple[str, ...]
    expression: str
    url: str
    targets: tuple[str, ...] = ()
    description: str = ""


_KT = "http://koppeltaal.nl/fhir/StructureDefinition"
_KT_SEARCH = "http://koppeltaal.nl/fhir/SearchParameter"

KOPPELTAAL_PARAMS: tuple[CustomParam, ...] = (
    CustomParam(
        "resource-origin", "reference", SUPPORTED_TYPES,
        f"{{base}}.extension('{_KT}/resource-origin').value",
        f"{_KT_SEARCH}/resource-origin-extension", ("Device",),
        "The Device (application) that created the resource",
    ),
    CustomParam(
        "traceId", "token", ("AuditEvent",),
        f"AuditEvent.extension('{_KT}/trace-id').value",
        f"{_KT_SEARCH}/trace-id", description="X-Trace-Id of the audited request",
    ),
    CustomParam(
        "requestId", "token", ("AuditEvent",),
        f"AuditEvent.extension('{_KT}/request-id').value",
        f"{_KT_SEARCH}/request-id", description="X-Request-Id of the audited request",
    ),
    CustomParam(
        "correlationId", "token", ("AuditEvent",),
        f"AuditEvent.extension('{_KT}/correlation-id').value",
        f"{_KT_SEARCH}/correlation-id", description="X-Correlation-Id of the audited request",
    ),
    CustomParam(
        "instantiates", "reference", ("Task",),
        "Task.extension('http://vzvz.nl/fhir/StructureDefinition/instantiates').value",
        f"{_KT_SEARCH}/task-instantiates", ("ActivityDefinition",),
        "The ActivityDefinition the Task instantiates",
    ),
    CustomParam(
        "publisherId", "token", ("ActivityDefinition",),
        f"ActivityDefinition.extension('{_KT}/KT2PublisherId').value",
        f"{_KT_SEARCH}/publisherId-extension", description="The publisher of the module",
    ),
    CustomParam(
        "participant", "token", ("ActivityDefinition",),
        "ActivityDefinition.participant.type",
        f"{_KT_SEARCH}/participant", description="The type of participant in the activity",
    ),
    # A patient portal finds a patient's notifications by BSN. The patient is the
    # contained Patient that `recipient` references (`#id`); a reference to a stored
    # Patient resolves to a stub without identifiers, so it adds nothing.
    CustomParam(
        "patient-identifier", "token", ("Communication",),
        "Communication.recipient.resolve().ofType(Patient).identifier",
        f"{_KT_SEARCH}/communication-patient-identifier",
        description="An identifier (e.g. the BSN) of the recipient Patient contained in the "
        "Communication",
    ),
)  # fmt: skip


for _custom in KOPPELTAAL_PARAMS:
    compile_path(_custom.expression.replace("{base}", _custom.bases[0]))


@cache
def _table() -> Mapping[str, Mapping[str, SearchParam]]:
    # Loaded on first use, not at import, so the generator can import this module.
    generated = json.loads(GENERATED.read_text(encoding="utf-8"))
    table: dict[str, Mapping[str, SearchParam]] = {}
    for resource_type in SUPPORTED_TYPES:
        params: dict[str, SearchParam] = {}
        for entry in generated["types"][resource_type]:
            params[entry["code"]] = SearchParam(
                code=entry["code"],
                type=cast(ParamType, entry["type"]),
                base=resource_type,
                expression=entry["expression"],
                url=entry["url"],
                targets=tuple(entry.get("targets", ())),
                description=entry.get("description", ""),
            )
        for custom in KOPPELTAAL_PARAMS:
            if resource_type in custom.bases:
                params[custom.code] = SearchParam(
                    code=custom.code,
                    type=custom.type,
                    base=resource_type,
                    expression=custom.expression.replace("{base}", resource_type),
                    url=custom.url,
                    targets=custom.targets,
                    description=custom.description,
                )
        table[resource_type] = MappingProxyType(params)
    return MappingProxyType(table)


_EMPTY: Mapping[str, SearchParam] = MappingProxyType({})


def params_for(resource_type: str) -> Mapping[str, SearchParam]:
    """The search parameters of `resource_type` by code (empty for unsupported types)."""
    return _table().get(resource_type, _EMPTY)
