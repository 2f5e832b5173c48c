"""The hub's own verdicts on a Subscription's `status` (error, active again, off).

Stored as a new version of the Subscription like any update (history, index,
ETag), and the domain's subscription generation is bumped so every process's
index sees the change at its next write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from hub.fhir import jsonio
from hub.fhir.extract import extract
from hub.fhir.stamp import stamp
from hub.notify.registry import bump_generation
from hub.store import resources

log = logging.getLogger("hub.subscriptions")


async def set_status(
    session: AsyncSession,
    domain: str,
    subscription_id: str,
    status: str,
    error: str | None,
    now: datetime,
    *,
    applies: Callable[[Mapping[str, Any]], bool] = lambda _resource: True,
) -> bool:
    """Give the Subscription `status` (and `error`, or none) if `applies` to its current state.

    A no-op when it is gone, already has that status, or `applies` says no (checked on
    the row locked here, so a concurrent change is seen). True when it changed.
    """
    row = await resources.current(session, domain, "Subscription", subscription_id, for_update=True)
    if row is None or row.deleted:
        return False
    resource = jsonio.loads(row.content)
    if resource.get("status") == status or not applies(resource):
        return False
    resource["status"] = status
    if error is None:
        resource.pop("error", None)
    else:
        resource["error"] = error
    stamped = stamp(resource, id=row.id, version_id=row.version_id + 1, last_updated=now)
    await resources.replace(
        session, row, content=jsonio.dumps(stamped), last_updated=now, values=extract(stamped)
    )
    await bump_generation(session, domain)
    log.info("Subscription/%s is now %s%s", subscription_id, status, f": {error}" if error else "")
    return True
