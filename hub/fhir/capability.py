"""The CapabilityStatement, generated from what the server really supports.

Types, interactions and search parameters come from the same tables the
server uses to route and search, so the statement cannot drift from the code.
It promises only what some role of the loaded authorisation matrix may do
(`performable`): a type no role may touch is left out, and so is an interaction
(or operation) that no role may perform on its type.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from datetime import UTC, datetime
from typing import Any

from hub.fhir.bundle import format_instant
from hub.fhir.search_params import SUPPORTED_TYPES, params_for

KOPPELTAAL_IG = "http://koppeltaal.nl/fhir/ImplementationGuide"
SMART_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"

# AuditEvents are append-only (Koppeltaal: never updated or deleted by anyone).
_APPEND_ONLY = {"AuditEvent"}
_RESULT_PARAMETERS = ("_count", "_sort", "_total", "_summary", "_format")
_BACKPORT_STATUS = (
    "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status"
)
_HUB_OPERATIONS = "http://koppeltaal.nl/fhir/hub/OperationDefinition"
# The operations of hub.interactions.subscription_state (README "Operations").
OPERATIONS: dict[str, list[dict[str, str]]] = {
    "Subscription": [
        {
            "name": "status",
            "definition": _BACKPORT_STATUS,
            "documentation": "GET Subscription/{id}/$status: its status and delivery state (a "
            "Parameters: pending, in-flight, gave-up, oldest-pending, next-attempt, last-attempt, "
            "error), for whoever may read the Subscription",
        },
        {
            "name": "resend",
            "definition": f"{_HUB_OPERATIONS}/Subscription-resend",
            "documentation": "POST Subscription/{id}/$resend: every pending notification due now; "
            "with resource=Type/id, a fresh notification of that resource if it matches the "
            "criteria and the owner may read it (422 otherwise). For whoever may update the "
            "Subscription; audited",
        },
    ],
    "AuditEvent": [
        {
            "name": "chain-head",
            "definition": f"{_HUB_OPERATIONS}/AuditEvent-chain-head",
            "documentation": "GET AuditEvent/$chain-head: the domain's audit chain head "
            "(SEQ:DIGEST, as `hub audit verify --expect-head` takes it), for a role that may "
            "read every AuditEvent",
        }
    ],
}


# The matrix action (hub.access.matrix) each interaction and operation needs.
_INTERACTIONS: tuple[tuple[str, str], ...] = (
    ("read", "read"),
    ("vread", "read"),
    ("update", "update"),
    ("delete", "delete"),
    ("create", "create"),
    ("search-type", "search"),
    ("history-instance", "read"),
)
_OPERATION_NEEDS = {"status": "read", "resend": "update", "chain-head": "read"}


def interactions_for(resource_type: str, actions: Set[str]) -> list[str]:
    """The interaction codes on `resource_type` that the matrix `actions` allow."""
    return [
        code
        for code, action in _INTERACTIONS
        if action in actions
        and not (resource_type in _APPEND_ONLY and action in ("update", "delete"))
    ]


def capability_statement(
    fhir_base: str, token_url: str, version: str, *, performable: Mapping[str, Set[str]]
) -> dict[str, Any]:
    """The statement; `performable` = per type, the actions some role may perform."""
    resources = []
    for resource_type in SUPPORTED_TYPES:
        actions = performable.get(resource_type, frozenset())
        interactions = interactions_for(resource_type, actions)
        if not interactions:
            continue
        params = params_for(resource_type)
        resources.append(
            {
                "type": resource_type,
                "profile": f"http://koppeltaal.nl/fhir/StructureDefinition/KT2{resource_type}",
                "interaction": [{"code": code} for code in interactions],
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": False,
                "conditionalCreate": False,
                "conditionalUpdate": False,
                "conditionalDelete": "not-supported",
                "searchParam": [
                    {"name": code, "definition": param.url, "type": param.type}
                    for code, param in sorted(params.items())
                ],
            }
        )
        operations = [
            operation
            for operation in OPERATIONS.get(resource_type, [])
            if _OPERATION_NEEDS.get(operation["name"], "read") in actions
        ]
        if operations:
            resources[-1]["operation"] = operations
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": format_instant(datetime.now(UTC)),
        "publisher": "Koppeltaal Hub",
        "kind": "instance",
        "software": {"name": "Koppeltaal Hub", "version": version},
        "implementation": {"description": "Koppeltaal 2.0 FHIR hub", "url": fhir_base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/json"],
        "implementationGuide": [KOPPELTAAL_IG],
        "rest": [
            {
                "mode": "server",
                "documentation": "Search result parameters: "
                + ", ".join(_RESULT_PARAMETERS)
                + "; paging links are keyset cursors (_cursor).",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "extension": [
                        {
                            "url": SMART_EXTENSION,
                            "extension": [{"url": "token", "valueUri": token_url}],
                        }
                    ],
                },
                "resource": resources,
            }
        ],
    }
