"""Periodic chores (APScheduler). Deliveries and retries are NOT here: they live in the outbox.

- re-read the apps file and matrix when they change on disk (also on SIGHUP),
  creating the Devices of new apps (every process);
- pick up signing keys rotated by another process, and drop expired ones (API role);
- forget client-assertion `jti`s past their expiry (delivery role);
- turn Subscriptions `off` when their `end` has passed (delivery role).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
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

# How long a stopping process waits for a job under way before cancelling it.
STOP_SECONDS = 5.0


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


class Housekeeping:
    """The scheduled jobs of one process; `stop()` lets a job that is running finish.

    Quiet, for an operator: APScheduler's own shutdown cancels a coroutine job that
    is running (or was started a moment before and has not begun yet), which it
    then logs as an error with a `CancelledError` traceback from the middle of a
    database call, just before the database closes. So `stop()` pauses the
    scheduler, lets every run it started begin and finish (or cancels one that
    overruns `STOP_SECONDS`, saying so in one line), and only then shuts it down,
    with nothing left to cancel. A run that fails is one line too (the traceback
    under debug logging): the next run tries again.
    """

    def __init__(self) -> None:
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._running: set[asyncio.Task[Any]] = set()
        self._stopping = False

    def add(
        self, job: Callable[[Runtime], Awaitable[object]], runtime: Runtime, seconds: float
    ) -> None:
        name = job.__name__

        async def run() -> None:
            task = asyncio.current_task()
            assert task is not None
            self._running.add(task)
            try:
                await job(runtime)
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
                log.warning(
                    "%s did not finish within %g s of the stop: cancelled", name, STOP_SECONDS
                )
            except Exception as exc:
                log.error(
                    "%s failed: %s",
                    name,
                    str(exc) or type(exc).__name__,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
            finally:
                self._running.discard(task)

        self._scheduler.add_job(
            run,
            "interval",
            seconds=seconds,
            id=job.__name__,
            name=job.__name__,
            max_instances=1,
            coalesce=True,
            # However late a busy event loop starts a run, it runs: no "missed" warnings.
            misfire_grace_time=None,
            next_run_time=datetime.now(UTC),
        )

    def start(self) -> None:
        self._scheduler.start()

    async def stop(self) -> None:
        """Start no more runs; wait a few seconds for those under way (they are short)."""
        self._stopping = True
        if self._scheduler.running:
            self._scheduler.pause()
        # A run started just before the pause is a task that has not begun: one turn of
        # the loop and it has, and is in `_running`.
        await asyncio.sleep(0)
        if self._running:
            _, overrunning = await asyncio.wait(set(self._running), timeout=STOP_SECONDS)
            for task in overrunning:
                task.cancel()
            if overrunning:
                await asyncio.wait(overrunning)
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)


def scheduler(runtime: Runtime) -> Housekeeping:
    """The jobs of this process's role (docs/architecture.md §6).

    Every process re-reads the access configuration, since each decides on rights in
    its own memory: an API process answers requests, a delivering one re-checks the
    subscriber's right before each send. Picking up rotated signing keys matters only
    where tokens are issued and verified (the API). The database chores need running
    somewhere, not everywhere: the delivery role does them.
    """
    settings = runtime.settings
    every = settings.housekeeping_seconds
    jobs = Housekeeping()
    jobs.add(reload_access, runtime, every)
    if settings.serves_api:
        jobs.add(refresh_keys, runtime, every)
    if settings.delivers:
        jobs.add(end_subscriptions, runtime, every)
        jobs.add(forget_used_assertions, runtime, 600)
    return jobs
