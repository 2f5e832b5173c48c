"""Periodic chores (APScheduler). Deliveries and retries are NOT here: they live in the outbox.

- re-read the apps file and matrix when they change on disk (also on SIGHUP),
  creating the Devices of new apps;
- pick up signing keys rotated by another process, and drop expired ones;
- forget client-assertion `jti`s past their expiry;
- turn Subscriptions `off` when their `end` has passed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from hub.access import ConfigError
from hub.fhir import jsonio
from hub.fhir.extract import instant
from hub.interactions.devices import ensure_devices
from hub.notify.status import set_status
from hub.runtime import Runtime, utcnow
from hub.store.assertions import purge_expired
from hub.store.subscriptions import subscriptions_with_end

log = logging.getLogger("hub.housekeeping")


async def reload_access(runtime: Runtime, *, force: bool = False) -> None:
    """Re-read the apps file and matrix: when they changed, or always (`force`, SIGHUP)."""
    try:
        if force:
            runtime.access.reload()
        if force or runtime.access.reload_if_changed():
            await ensure_devices(runtime.database, runtime.access.registry)
    except ConfigError as exc:
        log.error("the changed access configuration is refused; the old one stays: %s", exc)


async def refresh_keys(runtime: Runtime) -> None:
    runtime.keys.refresh()
    runtime.keys.prune()


async def forget_used_assertions(runtime: Runtime) -> None:
    removed = await runtime.database.write(purge_expired(utcnow()))
    if removed:
        log.debug("forgot %d expired client-assertion ids", removed)


def _has_ended(subscription: Mapping[str, Any], now: datetime) -> bool:
    end = subscription.get("end")
    moment = instant(end) if isinstance(end, str) else None
    return moment is not None and moment <= now


async def end_subscriptions(runtime: Runtime) -> int:
    """Turn off the Subscriptions whose `end` has passed; returns how many."""
    now = utcnow()
    rows = await runtime.database.read(subscriptions_with_end())
    ended = 0
    for domain, id, content in rows:
        resource = jsonio.loads(content)
        if resource.get("status") == "off" or not _has_ended(resource, now):
            continue
        # Checked again on the locked row: it may have changed meanwhile.
        changed = await runtime.database.write(
            set_status(domain, id, "off", None, now, applies=lambda s: _has_ended(s, now))
        )
        ended += changed
    return ended


def scheduler(runtime: Runtime) -> AsyncIOScheduler:
    every = runtime.settings.housekeeping_seconds
    jobs = AsyncIOScheduler(timezone=UTC)
    options = {"max_instances": 1, "coalesce": True, "next_run_time": datetime.now(UTC)}
    jobs.add_job(reload_access, "interval", seconds=every, args=[runtime], **options)
    jobs.add_job(refresh_keys, "interval", seconds=every, args=[runtime], **options)
    jobs.add_job(end_subscriptions, "interval", seconds=every, args=[runtime], **options)
    jobs.add_job(forget_used_assertions, "interval", minutes=10, args=[runtime], **options)
    return jobs
