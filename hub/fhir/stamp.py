"""Server-set fields: `id`, `meta.versionId`, `meta.lastUpdated`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from hub.fhir.bundle import format_instant


def stamp(
    resource: Mapping[str, Any], *, id: str, version_id: int, last_updated: datetime
) -> dict[str, Any]:
    """A copy of `resource` with the server's id and meta, in the conventional key order.

    The client's other `meta` elements (profile, tag, security, source) are kept.
    """
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = format_instant(last_updated)
    stamped: dict[str, Any] = {"resourceType": resource["resourceType"], "id": id, "meta": meta}
    for key, value in resource.items():
        if key not in stamped:
            stamped[key] = value
    return stamped
