"""Search-index rows of the AuditEvents the hub builds, without the FHIRPath evaluator.

Every read stores an AuditEvent, so its index rows are on the hot path of
every request. `extract()` evaluates all 25 AuditEvent search parameters
through FHIRPath, which costs more than the rest of a read; the events of
`hub.audit.events` have one known shape, so `event_index` reads the few
elements they use directly. It produces exactly the rows `extract()` does
for those events (tests compare the two for every kind of event the hub
writes); AuditEvents that applications post still go through `extract()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from hub.audit.events import CORRELATION_ID_EXTENSION, REQUEST_ID_EXTENSION, TRACE_ID_EXTENSION
from hub.fhir.extract import (
    MAX_CODE,
    MAX_URL,
    DateRow,
    IndexValues,
    ReferenceRow,
    StringRow,
    TokenRow,
    UriRow,
    clip,
    date_range,
    normalize,
    reference_row,
)
from hub.fhir.fhirpath import reference_target
from hub.fhir.origin import RESOURCE_ORIGIN

# The token parameters carried as a valueId extension.
_ID_EXTENSIONS = {
    TRACE_ID_EXTENSION: "traceId",
    REQUEST_ID_EXTENSION: "requestId",
    CORRELATION_ID_EXTENSION: "correlationId",
}

# The same few Devices, codes and displays recur in every event: remember their rows.
_normalize = lru_cache(maxsize=512)(normalize)
_reference_row = lru_cache(maxsize=4096)(reference_row)
_reference_target = lru_cache(maxsize=4096)(reference_target)

# Every AuditEvent search parameter and whether `event_index` fills it. The ones
# marked False read elements the hub never writes (or are `resources` columns);
# a parameter added to the table fails the tests until it is listed here.
COVERED_PARAMS: Mapping[str, bool] = {
    "_id": False, "_lastUpdated": False, "_profile": True, "_security": False, "_source": False,
    "_tag": False, "action": True, "address": True, "agent": True, "agent-name": False,
    "agent-role": False, "altid": False, "date": True, "entity": True, "entity-name": False,
    "entity-role": True, "entity-type": True, "outcome": True, "patient": True, "policy": False,
    "site": True, "source": True, "subtype": True, "type": True, "traceId": True,
    "requestId": True, "correlationId": True, "resource-origin": True,
}  # fmt: skip


def _code(param: str, value: Any) -> Iterable[TokenRow]:
    if isinstance(value, str) and value:
        yield TokenRow(param, None, clip(value, MAX_CODE), None)


def _coding(param: str, coding: Any) -> Iterable[TokenRow]:
    if not isinstance(coding, Mapping):
        return
    display = coding.get("display")
    row = TokenRow(
        param,
        clip(coding.get("system"), MAX_CODE),
        clip(coding.get("code"), MAX_CODE),
        _normalize(display) if isinstance(display, str) else None,
    )
    if row.system or row.code or row.text:
        yield row


def _reference(param: str, value: Any) -> Iterable[ReferenceRow]:
    reference = value.get("reference") if isinstance(value, Mapping) else None
    if isinstance(reference, str):
        row = _reference_row(param, reference)
        if row is not None:
            yield row


def _is_patient(value: Any) -> bool:
    reference = value.get("reference") if isinstance(value, Mapping) else None
    target = _reference_target(reference) if isinstance(reference, str) else None
    return target is not None and target[0] == "Patient"


def event_index(event: Mapping[str, Any]) -> IndexValues:
    """The index rows of an AuditEvent built by `hub.audit.events`."""
    agents = [a for a in event.get("agent") or () if isinstance(a, Mapping)]
    entities = [e for e in event.get("entity") or () if isinstance(e, Mapping)]
    source = event.get("source") or {}
    extensions = [e for e in event.get("extension") or () if isinstance(e, Mapping)]

    tokens: list[TokenRow] = []
    tokens += _coding("type", event.get("type"))
    for subtype in event.get("subtype") or ():
        tokens += _coding("subtype", subtype)
    tokens += _code("action", event.get("action"))
    tokens += _code("outcome", event.get("outcome"))
    tokens += _code("site", source.get("site"))
    for entity in entities:
        tokens += _coding("entity-type", entity.get("type"))
    for entity in entities:
        tokens += _coding("entity-role", entity.get("role"))
    for extension in extensions:
        param = _ID_EXTENSIONS.get(extension.get("url", ""))
        if param is not None:
            tokens += _code(param, extension.get("valueId"))

    strings = [
        StringRow("address", _normalize(address), address)
        for agent in agents
        if isinstance(address := (agent.get("network") or {}).get("address"), str) and address
    ]

    references: list[ReferenceRow] = []
    for agent in agents:
        references += _reference("agent", agent.get("who"))
    for entity in entities:
        references += _reference("entity", entity.get("what"))
    references += _reference("source", source.get("observer"))
    for agent in agents:
        if _is_patient(agent.get("who")):
            references += _reference("patient", agent.get("who"))
    for entity in entities:
        if _is_patient(entity.get("what")):
            references += _reference("patient", entity.get("what"))
    for extension in extensions:
        if extension.get("url") == RESOURCE_ORIGIN:
            references += _reference("resource-origin", extension.get("valueReference"))

    recorded = event.get("recorded")
    found = date_range(recorded) if isinstance(recorded, str) else None
    dates = [DateRow("date", *found)] if found else []
    uris = [
        UriRow("_profile", clip(profile, MAX_URL) or "")
        for profile in (event.get("meta") or {}).get("profile") or ()
        if isinstance(profile, str) and profile
    ]
    return IndexValues(
        tuple(dict.fromkeys(tokens)),
        tuple(dict.fromkeys(strings)),
        tuple(dict.fromkeys(references)),
        tuple(dict.fromkeys(dates)),
        tuple(dict.fromkeys(uris)),
    )
