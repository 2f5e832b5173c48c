"""The CapabilityStatement, generated from what the server really supports.

Types, interactions and search parameters come from the same tables the
server uses to route and search, so the statement cannot drift from the code.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hub.fhir.bundle import format_instant
from hub.fhir.search_params import SUPPORTED_TYPES, params_for

KOPPELTAAL_IG = "http://koppeltaal.nl/fhir/ImplementationGuide"
SMART_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"

# AuditEvents are append-only (Koppeltaal: never updated or deleted by anyone).
_APPEND_ONLY = {"AuditEvent"}
_RESULT_PARAMETERS = ("_count", "_sort", "_total", "_summary", "_format")


def interactions_for(resource_type: str) -> list[str]:
    codes = ["read", "vread", "create", "search-type", "history-instance"]
    if resource_type not in _APPEND_ONLY:
        codes[3:3] = ["update", "delete"]
    return codes


def capability_statement(fhir_base: str, token_url: str, version: str) -> dict[str, Any]:
    resources = []
    for resource_type in SUPPORTED_TYPES:
        params = params_for(resource_type)
        resources.append(
            {
                "type": resource_type,
                "profile": f"http://koppeltaal.nl/fhir/StructureDefinition/KT2{resource_type}",
                "interaction": [{"code": code} for code in interactions_for(resource_type)],
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
