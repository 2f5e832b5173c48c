"""Bundles the hub returns: searchset and history.

Entries hold resources as stored JSON text, so a Bundle is assembled as text
around them rather than parsing every resource only to serialise it again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hub.fhir import jsonio
from hub.trace import new_id


@dataclass(frozen=True)
class Entry:
    full_url: str
    resource_json: str | None  # None for a deleted version in a history bundle
    search_mode: str | None = None  # "match" | "outcome"
    request_method: str | None = None  # history: POST | PUT | DELETE
    request_url: str | None = None
    response_status: str | None = None
    response_etag: str | None = None
    response_last_modified: str | None = None


def _entry_json(entry: Entry) -> str:
    extra: dict[str, Any] = {"fullUrl": entry.full_url}
    if entry.search_mode:
        extra["search"] = {"mode": entry.search_mode}
    if entry.request_method:
        extra["request"] = {"method": entry.request_method, "url": entry.request_url}
        response: dict[str, str] = {"status": entry.response_status or "200"}
        if entry.response_etag:
            response["etag"] = entry.response_etag
        if entry.response_last_modified:
            response["lastModified"] = entry.response_last_modified
        extra["response"] = response
    head = jsonio.dumps(extra)[:-1]
    if entry.resource_json is None:
        return head + "}"
    return f'{head},"resource":{entry.resource_json}}}'


def bundle(
    bundle_type: str,
    entries: Iterable[Entry],
    *,
    total: int | None = None,
    links: Sequence[tuple[str, str]] = (),
) -> str:
    """The Bundle as JSON text; `links` are (relation, url) pairs."""
    header: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": new_id(),
        "meta": {"lastUpdated": format_instant(datetime.now(UTC))},
        "type": bundle_type,
    }
    if total is not None:
        header["total"] = total
    if links:
        header["link"] = [{"relation": relation, "url": url} for relation, url in links]
    head = json.dumps(header, separators=(",", ":"))
    body = ",".join(_entry_json(entry) for entry in entries)
    # FHIR forbids empty arrays: an empty Bundle has no `entry` at all.
    return f'{head[:-1]},"entry":[{body}]}}' if body else head


def format_instant(moment: datetime) -> str:
    """A FHIR instant in UTC with microseconds, e.g. 2026-11-22T10:00:00.123456Z."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"
