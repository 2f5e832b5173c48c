"""Preparing AuditEvents for the trail: stamped, serialised and indexed, ready to chain.

Every request stores one, so this is the hub's hottest write path. An event is
prepared in its caller's task, outside any transaction: the events of
`hub.audit.events` have one known shape, so their index rows come from
`hub.audit.index` rather than the FHIRPath evaluator. Storing and chaining
them is `hub.store.audit.append_events`, inside the caller's unit of work: a
write and its AuditEvent commit together. The rows are the ones any resource
gets: the event is found, read and paged like any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from hub.audit.index import event_index
from hub.fhir.origin import origin_device
from hub.store.resources import NewVersion
from hub.store.resources import prepare as prepare_version
from hub.trace import new_id


def prepare(domain: str, event: Mapping[str, Any], now: datetime) -> NewVersion:
    """Everything about storing `event` that needs no database (done outside any transaction)."""
    return prepare_version(
        domain,
        event,
        id=new_id(),
        version_id=1,
        now=now,
        origin=origin_device(event),
        method="POST",
        index=event_index,
    )
