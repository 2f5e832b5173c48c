"""The `receive` AuditEvent a receiving application records for each notification.

Koppeltaal asks the receiver, not the hub, to record that a notification arrived: an
iso-21089-lifecycle `receive` event (KT2AuditEvent) carrying the notification's own
X-Request-Id and X-Trace-Id, so that an auditor following one trace id finds the write,
the hub's `transmit`, this `receive` and the receiver's follow-up requests. Both example
receivers (examples/receiver.py and the demo portal) build it here.
"""

from __future__ import annotations

import base64
import socket
from datetime import datetime
from typing import Any

KT = "http://koppeltaal.nl/fhir/StructureDefinition"
LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"


def receive_event(
    *,
    client_id: str,
    endpoint: str,
    criteria: str,
    subscription_id: str | None,
    request_id: str,
    correlation_id: str | None,
    trace_id: str,
    received: datetime,
) -> dict[str, Any]:
    """The KT2AuditEvent of one notification received by `client_id` at `endpoint`.

    The receiving application is the only agent and the observer: the hub refuses an
    event that names another application (or itself) in either role. The entity is the
    Subscription that brought the notification (role Subscriber, its criteria as query).
    """
    subscriber: dict[str, Any] = {
        "type": {"system": RESOURCE_TYPES, "code": "Subscription", "display": "Subscription"},
        "role": {"system": OBJECT_ROLE, "code": "9", "display": "Subscriber"},
        "query": base64.b64encode(criteria.encode()).decode("ascii"),
    }
    if subscription_id is not None:
        subscriber["what"] = {"reference": f"Subscription/{subscription_id}"}
    # The ids of the notification itself: the event records its receipt.
    extensions = [
        {"url": f"{KT}/trace-id", "valueId": trace_id},
        {"url": f"{KT}/request-id", "valueId": request_id},
    ]
    if correlation_id:
        extensions.append({"url": f"{KT}/correlation-id", "valueId": correlation_id})
    return {
        "resourceType": "AuditEvent",
        "meta": {"profile": [f"{KT}/KT2AuditEvent"]},
        "extension": extensions,
        "type": {
            "system": LIFECYCLE,
            "code": "receive",
            "display": "Receive Record Lifecycle Event",
        },
        "action": "E",
        "recorded": received.isoformat().replace("+00:00", "Z"),
        "outcome": "0",
        "agent": [
            {
                "type": {
                    "coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]
                },
                "who": {"reference": f"Device/{client_id}"},
                "requestor": True,
                "network": {"address": endpoint, "type": "5"},
            },
        ],
        "source": {"site": socket.gethostname(), "observer": {"reference": f"Device/{client_id}"}},
        "entity": [subscriber],
    }
