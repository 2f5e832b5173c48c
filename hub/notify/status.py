"""The hub's own verdicts on a Subscription's `status` (error, active again, off).

Stored as a new version of the Subscription like any update (history, index,
ETag), and the domain's subscription generation is bumped in the same unit of
work, so every process's index sees the change at its next write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from hub import logs
from hub.fhir import jsonio
from hub.store import resources
from hub.store.sql import Work
from hub.store.subscriptions import bump_generation

log = logging.getLogger("hub.subscriptions")


def set_status(
    domain: str,
    subscription_id: str,
    status: str,
    error: str | None,
    now: datetime,
    *,
    applies: Callable[[Mapping[str, Any]], bool] = lambda _resource: True,
) -> Work[bool]:
    """Give the Subscription `status` (and `error`, or none) if `applies` to its current state.

    A unit of work, to compose into the caller's write. A no-op when the Subscription
    is gone, already has that status, or `applies` says no (checked on the row locked
    here, so a concurrent change is seen). True when it changed.
    """
    row = yield from resources.current(domain, "Subscription", subscription_id, for_update=True)
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
    new = resources.prepare(
        domain,
        resource,
        id=row.id,
        version_id=row.version_id + 1,
        now=now,
        origin=row.origin,
        method="PUT",
    )
    yield from resources.write(new, previous=row)
    yield from bump_generation(domain)
    # Logged inside the unit (on SQLite, in the writer thread), so before the commit: a
    # unit that fails after this is reported by whoever awaited it.
    log.log(
        logging.INFO if status == "active" else logging.WARNING,
        "Subscription/%s is now %s%s",
        subscription_id,
        status,
        f": {error}" if error else "",
        extra=logs.fields(
            domain=domain, subscription=subscription_id, subscription_status=status, error=error
        ),
    )
    return True
