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

from hub.audit.events import MAX_TRUNCATED_TEXT, truncated
from hub.audit.index import event_index
from hub.fhir.origin import origin_device
from hub.store.resources import NewVersion
from hub.store.resources import prepare as prepare_version
from hub.trace import new_id

# An event's JSON up to this size cannot hold a text over the cap; only a longer one is
# looked through (a search event naming a page of 500 resources is long, and legitimate).
_LOOK_ABOVE = MAX_TRUNCATED_TEXT + 1024


def prepare(domain: str, event: Mapping[str, Any], now: datetime) -> NewVersion:
    """Everything about storing `event` that needs no database (done outside any transaction).

    The trail is append-only and never purged, so what a request made long (its query
    string, the URL it asked for, the refusal's text) is cut to a few kB, with the
    SHA-256 of the whole noted (`hub.audit.events.truncated`): an attacker cannot fill
    the trail with one request.
    """
    id_ = new_id()

    def version(of: Mapping[str, Any]) -> NewVersion:
        return prepare_version(
            domain,
            of,
            id=id_,
            version_id=1,
            now=now,
            origin=origin_device(of),
            method="POST",
            index=event_index,
        )

    prepared = version(event)
    if len(prepared.content) > _LOOK_ABOVE and (shorter := truncated(event)) is not None:
        return version(shorter)
    return prepared
