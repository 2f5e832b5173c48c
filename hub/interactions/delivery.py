"""The delivery interaction, run by the hub itself: re-check, send, record, schedule.

Before sending, the Subscription and the subscriber's right to read the
resource are checked again against the CURRENT state, from memory: the
process's subscription index (brought up to date with the domain's
generation in the unit that claimed the row, and again after a wait for a
busy endpoint) and the current access snapshot, with the resource's origin
carried on the outbox row. Fail closed: a row whose subscriber lost its right,
or whose Subscription is gone, off or ended, is dropped unsent.

After the attempt, the outcome joins the others that finished meanwhile and
they are recorded together, in ONE unit of work (`Recorder`): delivered and
dropped rows removed in one statement, failed rows rescheduled, each
Subscription's failure count and status (`error` after 3 failures in a row,
`active` again on success, `off` on 410 Gone) touched only when they change,
and the `transmit` AuditEvents appended to the chain last, in order. A crash
between the POST and that unit sends again (at-least-once); the unit commits
whole or not at all, so nothing is recorded twice.

Should that batch fail, each of its outcomes is recorded on its own, so only
a bad one fails; and should one outcome's bookkeeping fail (a value its
arithmetic cannot hold, an event that cannot be prepared, the unit of work),
it is recorded instead as a counted, audited failed attempt and the row
rescheduled on the normal backoff: a failure there never turns into a row
sent again at every lease, silently, for ever (`Deliverer._record`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from hub import logs, metrics
from hub.access.policy import subscriber_may_read
from hub.audit.events import transmit_event
from hub.audit.store import prepare as prepare_event
from hub.net import DeliveryResult, OutboundClient
from hub.notify.mail import (
    MailError,
    compose_invitation,
    compose_new_message_notice,
    mail_tls_context,
    send_mail,
)
from hub.notify.registry import LiveSubscription, SubscriptionIndex
from hub.notify.retry import FAILURES_BEFORE_ERROR, SCHEDULE, describe_failure, next_attempt_delay
from hub.notify.status import set_status
from hub.notify.webhook import EndpointLimiter, KeyedLimiter, notification_headers
from hub.runtime import HUB_DEVICE, Runtime, utcnow
from hub.store import outbox
from hub.store.audit import append_events
from hub.store.health import count_failure, reset_failures_of
from hub.store.outbox import Entry
from hub.store.resources import NewVersion
from hub.store.sql import Work
from hub.trace import TraceIds

log = logging.getLogger("hub.delivery")

_MAX_DESCRIPTION = 500
# The most outcomes one bookkeeping unit records: bounds how long it holds the writer.
_MAX_BATCH = 512

EventFor = Callable[[bool, str | None], dict[str, Any]]
"""Builds an attempt's `transmit` AuditEvent from its outcome: (success, description)."""


@dataclass(frozen=True)
class Attempt:
    """The outcome of one send, in the terms the bookkeeping needs."""

    success: bool
    description: str | None
    retry_after: str | None = None
    gone: bool = False  # the receiver answered 410: it wants no more notifications
    permanent: bool = False  # retrying cannot help (e.g. the mail server refused the address)
    http_status: int | None = None  # the receiver's answer, if one came
    seconds: float | None = None  # how long the send took, if one was made


@dataclass(frozen=True)
class Outcome:
    """One finished attempt at one row, waiting to be recorded."""

    row: Entry
    attempt: Attempt
    event: EventFor
    subscription: LiveSubscription | None  # None for an e-mail


@dataclass(frozen=True)
class _Recordable:
    """An outcome with what its record needs computed, outside the unit of work."""

    outcome: Outcome
    next_attempt_at: datetime | None
    event: NewVersion


class Deliverer:
    def __init__(self, runtime: Runtime, client: OutboundClient, *, owner: str) -> None:
        self.runtime = runtime
        self.client = client
        self.owner = owner
        settings = runtime.settings
        self.limiter = EndpointLimiter(settings.endpoint_concurrency)
        # However many endpoints one app registers, its deliveries hold at most its share
        # of the places: a slow app never takes every place from the others.
        self.app_limiter: KeyedLimiter[tuple[str, str]] = KeyedLimiter(
            max(1, int(settings.delivery_concurrency * settings.delivery_app_share))
        )
        # Rows (pk → subscription id) waiting for a slot of their busy endpoint. The
        # dispatcher neither counts them against its capacity nor claims more rows of
        # those subscriptions, so a slow receiver never holds back the others.
        self.waiting: dict[int, str] = {}
        self.on_waiting: Callable[[], None] = lambda: None
        self._random = random.Random()
        self._recorder = Recorder(self)

    @property
    def subscriptions(self) -> SubscriptionIndex:
        """The index the pre-send check reads; the dispatcher refreshes it as it claims."""
        return self.runtime.subscriptions

    async def deliver(self, row: Entry) -> None:
        """Deliver one claimed row; returns once its outcome is recorded."""
        if row.channel == "email":
            outcome = await self._deliver_mail(row)
        else:
            outcome = await self._deliver_webhook(row)
        if outcome is not None:
            await self._recorder.record(outcome)

    # --- webhooks ---------------------------------------------------------------------

    async def _current_index(self, domain: str, *, refresh: bool) -> None:
        """Load the domain's index if this process has none (or, with `refresh`, re-check it)."""
        if refresh or self.subscriptions.loaded(domain) is None:
            await self.runtime.database.read(self.subscriptions.ensure_current(domain))

    def _still_wanted(self, row: Entry) -> LiveSubscription | None:
        """The Subscription, if it still exists, is live, and its owner may read the resource.

        From memory: the index as last brought up to date, the current access snapshot.
        """
        index = self.subscriptions.loaded(row.domain)
        subscription = None if index is None else index.by_id.get(row.subscription_id or "")
        if subscription is None or subscription.owner is None or not subscription.is_live(utcnow()):
            return None
        snapshot = self.runtime.access.snapshot
        if not subscriber_may_read(
            snapshot, row.domain, subscription.owner, row.resource_type, row.origin
        ):
            log.info(
                "Subscription/%s may no longer read %s/%s: not sent",
                subscription.id,
                row.resource_type,
                row.resource_id,
            )
            return None
        return subscription

    async def _deliver_webhook(self, row: Entry) -> Outcome | None:
        await self._current_index(row.domain, refresh=False)
        subscription = self._still_wanted(row)
        if subscription is None:
            await self._recorder.drop(row)
            return None
        sent = await self._send(row, subscription)
        if sent is None:
            return None  # dropped after waiting, or the lease was lost to another worker
        subscription, attempt, trace = sent
        event = _transmit(
            row,
            destination_device=subscription.owner,
            destination=subscription.endpoint,
            subscription=(subscription.id, subscription.criteria),
            site=self.runtime.settings.site,
            trace=trace,
        )
        return Outcome(row, attempt, event, subscription)

    async def _send(
        self, row: Entry, subscription: LiveSubscription
    ) -> tuple[LiveSubscription, Attempt, TraceIds] | None:
        """Send within the app's and the endpoint's concurrency limits; None if nothing was sent.

        A row that must wait for either is `waiting`: the dispatcher does not count it
        against its capacity, so the places go to other apps' and endpoints' rows.
        """
        app = (row.domain, subscription.owner or "")
        waits = self.app_limiter.busy(app) or self.limiter.busy(subscription.endpoint)
        if waits:
            self.waiting[row.pk] = subscription.id
            self.on_waiting()
        try:
            # The endpoint first: a row waiting behind its own slow endpoint must not
            # hold one of its app's places, or the app's other endpoints wait too.
            async with self.limiter.slot(subscription.endpoint), self.app_limiter.slot(app):
                self.waiting.pop(row.pk, None)
                if waits:
                    # Behind a slow receiver the wait can be long: the Subscription may
                    # have been turned off, or its owner lost the right to read, meanwhile.
                    await self._current_index(row.domain, refresh=True)
                    rechecked = self._still_wanted(row)
                    if rechecked is None:
                        await self._recorder.drop(row)
                        return None
                    subscription = rechecked
                # Waiting for a busy receiver's slot may have used up much of the lease.
                if not await self._keep_lease(row):
                    return None
                trace = TraceIds.new(correlation_id=row.request_id, trace_id=row.trace_id)
                return subscription, await self._post(row, subscription, trace), trace
        finally:
            self.waiting.pop(row.pk, None)

    async def _post(self, row: Entry, subscription: LiveSubscription, trace: TraceIds) -> Attempt:
        try:
            headers = notification_headers(
                channel_headers=subscription.headers,
                request_id=trace.request_id,
                correlation_id=row.request_id,
                trace_id=row.trace_id,
            )
        except ValueError as exc:
            # Stored before the header rules tightened: retrying cannot help, so say so once.
            return Attempt(False, f"unusable channel.header: {exc}", permanent=True)
        _first_send(row)
        return _webhook_attempt(await self.client.post_notification(subscription.endpoint, headers))

    async def _keep_lease(self, row: Entry) -> bool:
        """Extend the lease to cover the whole send; False if it was lost.

        Never shorter than the send may take, whatever `delivery_lease_seconds` says:
        a lease that runs out mid-send lets another worker send the row again.
        """
        settings = self.runtime.settings
        now = utcnow()
        needed = timedelta(seconds=settings.webhook_timeout + 5)
        if row.lease_until is not None and row.lease_until - now > needed:
            return True
        kept = await self.runtime.database.write(
            outbox.renew(
                row,
                owner=self.owner,
                until=now + max(timedelta(seconds=settings.delivery_lease_seconds), needed),
            )
        )
        if not kept:
            log.warning("lost the lease of outbox row %s; another worker delivers it", row.pk)
        return kept

    # --- patient e-mail ---------------------------------------------------------------

    async def _deliver_mail(self, row: Entry) -> Outcome | None:
        settings = self.runtime.settings
        assert row.recipient is not None
        if settings.smtp_url is None:
            attempt = Attempt(False, "e-mail is off (HUB_SMTP_URL is unset)", permanent=True)
        elif not await self._keep_lease(row):
            return None  # another worker sends it
        else:
            _first_send(row)
            started = time.perf_counter()
            attempt = await self._send_mail(row.recipient, row.kind, settings.smtp_url)
            attempt = replace(attempt, seconds=time.perf_counter() - started)
        event = _transmit(
            row,
            destination_device=None,
            destination=f"mailto:{row.recipient}",
            subscription=None,
            site=settings.site,
            trace=TraceIds.new(correlation_id=row.request_id, trace_id=row.trace_id),
        )
        return Outcome(row, attempt, event, None)

    async def _send_mail(self, recipient: str, kind: str | None, smtp_url: str) -> Attempt:
        settings = self.runtime.settings
        try:
            if kind == "invitation":
                message = compose_invitation(
                    recipient, settings.registration_url, settings.smtp_from
                )
            else:
                message = compose_new_message_notice(
                    recipient, settings.portal_url, settings.smtp_from
                )
        except ValueError as exc:  # e.g. an address the composer refuses: retrying cannot help
            return Attempt(False, f"cannot compose the e-mail: {exc}", permanent=True)
        try:
            await send_mail(
                smtp_url,
                message,
                timeout=settings.webhook_timeout,
                ssl_context=mail_tls_context(settings.ca_bundle),
            )
        except MailError as exc:
            return Attempt(False, str(exc), permanent=exc.permanent)
        return Attempt(True, None)

    # --- bookkeeping ------------------------------------------------------------------

    def recordable(self, outcome: Outcome, now: datetime) -> _Recordable:
        """The next attempt's time and the prepared AuditEvent: all that needs no database."""
        row, attempt = outcome.row, outcome.attempt
        next_attempt_at = None if attempt.success else self._next_attempt(row, attempt, now)
        event = prepare_event(row.domain, outcome.event(attempt.success, attempt.description), now)
        return _Recordable(outcome, next_attempt_at, event)

    async def _record(self, outcome: Outcome) -> None:
        """Record one attempt on its own (when its batch could not be), while leased here.

        Should the batch have committed after all (an error after its commit), the
        lease is gone and nothing is recorded twice. If anything here fails,
        computing or writing, the attempt is recorded instead as a failed attempt whose
        bookkeeping failed (`_record_failed_bookkeeping`).
        """
        now = utcnow()
        try:
            recordable = self.recordable(outcome, now)
            recorded = await self.runtime.database.write(
                _bookkeeping(
                    [recordable],
                    owner=self.owner,
                    chain_key=self.runtime.chain_key,
                    now=now,
                    while_leased=True,
                )
            )
        except Exception as exc:
            log.exception(
                "recording the attempt of outbox row %s failed; recording it as a failed attempt",
                outcome.row.pk,
            )
            await self._record_failed_bookkeeping(outcome, exc)
            return
        if recorded:
            _report([recordable])
        else:
            _not_leased(outcome.row)

    async def _record_failed_bookkeeping(self, outcome: Outcome, error: Exception) -> None:
        """Record an attempt whose bookkeeping failed as a counted, audited failed attempt.

        Whatever the attempt's outcome (even a success: whether the receiver had it is
        not on record), the row is rescheduled on the normal backoff, its `Retry-After`
        ignored (or given up, if retrying cannot help), the failure is counted towards
        the Subscription's `error`, and the `transmit` AuditEvent, last, has a failure
        outcome whose description says the bookkeeping failed. Only while this worker
        still holds the row's lease: should the first unit have committed after all
        (an error after its commit), the lease is gone and nothing is recorded twice.

        If this fails too (the database unreachable, say), it is logged and nothing more
        is tried, and the row is not sent again at once, nor in a loop: it keeps its
        lease, so no worker, this one included, claims it before `lease_until`: at
        least `delivery_lease_seconds` after it was claimed, and never less than the
        send needs. Then it is claimed and sent again, as after a crashed worker, once
        per lease at most, each round logged, until a record succeeds.
        """
        row, attempt = outcome.row, outcome.attempt
        failed = Attempt(
            False,
            _bookkeeping_failed(attempt, error),
            permanent=attempt.permanent or attempt.gone,
        )
        now = utcnow()
        try:
            next_attempt_at = None if failed.permanent else self._backoff(row, now)
            prepared = prepare_event(row.domain, outcome.event(False, failed.description), now)
            recordable = _Recordable(
                Outcome(row, failed, outcome.event, outcome.subscription),
                next_attempt_at,
                prepared,
            )
            recorded = await self.runtime.database.write(
                _bookkeeping(
                    [recordable],
                    owner=self.owner,
                    chain_key=self.runtime.chain_key,
                    now=now,
                    while_leased=True,
                )
            )
        except Exception:
            log.exception(
                "recording the failed bookkeeping of outbox row %s failed too; it keeps its "
                "lease and is sent again when the lease runs out",
                row.pk,
            )
            return
        if recorded:
            _report([recordable])
        else:
            _not_leased(row)

    def _next_attempt(self, row: Entry, attempt: Attempt, now: datetime) -> datetime | None:
        if attempt.gone or attempt.permanent:
            return None
        delay = next_attempt_delay(
            row.attempts + 1,
            retry_after=attempt.retry_after,
            now=now.replace(tzinfo=UTC),
            first_attempt_at=(row.first_attempt_at or now).replace(tzinfo=UTC),
            rng=self._random,
            first_delay=timedelta(seconds=self.runtime.settings.retry_base_seconds),
        )
        return None if delay is None else now + delay

    def _backoff(self, row: Entry, now: datetime) -> datetime | None:
        """The normal schedule's next attempt, or None when the retries are over.

        Should even that fail, the schedule's longest step: the row must be rescheduled.
        """
        try:
            return self._next_attempt(row, Attempt(False, None), now)
        except Exception:
            log.exception(
                "the backoff of outbox row %s failed; retrying in %s", row.pk, SCHEDULE[-1]
            )
            return now + SCHEDULE[-1]


class Recorder:
    """Records finished attempts in batches: one unit of work for all that finished meanwhile.

    Like the SQLite writer's group commit, one level up: while one batch is being
    written, the outcomes (and rows to drop) that finish meanwhile wait, and the
    next unit takes them all. Each caller is released once its outcome is on
    record (or, should its batch fail, once it was recorded on its own).
    """

    def __init__(self, deliverer: Deliverer) -> None:
        self._deliverer = deliverer
        self._waiting: list[tuple[Outcome | Entry, asyncio.Future[None]]] = []
        self._writing: asyncio.Task[None] | None = None

    async def record(self, outcome: Outcome) -> None:
        await self._enqueue(outcome)

    async def drop(self, row: Entry) -> None:
        """Remove a row that must not be sent (with the next batch)."""
        await self._enqueue(row)

    async def _enqueue(self, item: Outcome | Entry) -> None:
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_all(), name="hub-delivery-record")
        # Shielded: a caller that is cancelled while waiting does not cancel the record.
        await asyncio.shield(done)

    async def _write_all(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:_MAX_BATCH], self._waiting[_MAX_BATCH:]
                try:
                    await self._write([item for item, _ in batch])
                finally:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._writing = None

    async def _write(self, items: Sequence[Outcome | Entry]) -> None:
        deliverer = self._deliverer
        drops = [item for item in items if isinstance(item, Entry)]
        outcomes = [item for item in items if isinstance(item, Outcome)]
        now = utcnow()
        recordables: list[_Recordable] = []
        alone: list[Outcome] = []  # what cannot even be computed is recorded on its own
        for outcome in outcomes:
            try:
                recordables.append(deliverer.recordable(outcome, now))
            except Exception:
                alone.append(outcome)
        try:
            await deliverer.runtime.database.write(
                _bookkeeping(
                    recordables,
                    drops=drops,
                    owner=deliverer.owner,
                    chain_key=deliverer.runtime.chain_key,
                    now=now,
                )
            )
        except Exception:
            log.exception(
                "recording %d delivery outcomes together failed; recording each on its own",
                len(recordables) + len(drops),
            )
            alone = [r.outcome for r in recordables] + alone
            for row in drops:
                await _drop_alone(deliverer, row)
        else:
            _report(recordables, drops)
        for outcome in alone:
            await deliverer._record(outcome)


def _not_leased(row: Entry) -> None:
    log.warning(
        "outbox row %s was no longer leased here: its attempt was recorded already, "
        "or another worker has it",
        row.pk,
    )


async def _drop_alone(deliverer: Deliverer, row: Entry) -> None:
    try:
        await deliverer.runtime.database.write(outbox.complete_all([row.pk], owner=deliverer.owner))
    except Exception:
        log.exception("dropping outbox row %s failed; it comes back when its lease ends", row.pk)
    else:
        _report([], [row])


def _first_send(row: Entry) -> None:
    """`hub_delivery_latency_seconds`: from the write's commit to the row's first send."""
    if row.attempts == 0:
        seconds = (utcnow() - row.created_at).total_seconds()
        metrics.delivery_latency(row.domain, row.channel, seconds)


def _report(recorded: Sequence[_Recordable], dropped: Sequence[Entry] = ()) -> None:
    """Count and log attempts (and dropped rows) once they are on record: one line each."""
    for row in dropped:
        metrics.delivery(row.domain, row.channel, "dropped")
    for recordable in recorded:
        outcome, next_attempt_at = recordable.outcome, recordable.next_attempt_at
        attempt = outcome.attempt
        if attempt.success:
            verdict, level = "delivered", logging.INFO
        elif next_attempt_at is not None:
            verdict, level = "failed", logging.WARNING
        else:
            verdict, level = "gave-up", logging.WARNING
        metrics.delivery(outcome.row.domain, outcome.row.channel, verdict)
        metrics.audit_events(outcome.row.domain)  # its `transmit` AuditEvent
        if log.isEnabledFor(level):
            _log_attempt(outcome, verdict, level, next_attempt_at)


def _log_attempt(outcome: Outcome, verdict: str, level: int, next_at: datetime | None) -> None:
    """The attempt's line: what, where, how it went, which attempt, how long, what next.

    A webhook is named by its Subscription and endpoint host, an e-mail by its kind
    only: the recipient's address stays out of the log.
    """
    row, attempt = outcome.row, outcome.attempt
    number = row.attempts + 1
    milliseconds = None if attempt.seconds is None else round(attempt.seconds * 1000, 1)
    next_attempt = None if next_at is None else next_at.isoformat(timespec="seconds") + "Z"
    if row.channel == "email":
        what, host = f"e-mail ({row.kind or 'notice'})", None
    else:
        endpoint = outcome.subscription.endpoint if outcome.subscription is not None else ""
        host = urlsplit(endpoint).hostname
        what = f"Subscription/{row.subscription_id} to {host}"
    text = f"{what}: {verdict}"
    if not attempt.success:
        text += f" ({attempt.description or 'delivery failed'})"
    elif attempt.http_status is not None:
        text += f" (HTTP {attempt.http_status})"
    text += f", attempt {number}"
    if milliseconds is not None:
        text += f", {milliseconds:g} ms"
    if next_attempt is not None:
        text += f"; next attempt at {next_attempt}"
    log.log(
        level,
        "%s",
        text,
        extra=logs.fields(
            domain=row.domain,
            channel=row.channel,
            subscription=row.subscription_id,
            resource=f"{row.resource_type}/{row.resource_id}/_history/{row.version_id}",
            endpoint_host=host,
            outcome=verdict,
            http_status=attempt.http_status,
            error=None if attempt.success else attempt.description,
            attempt=number,
            duration_ms=milliseconds,
            next_attempt=next_attempt,
            # The request whose write caused the notification, and its trace.
            correlation_id=row.request_id,
            trace_id=row.trace_id,
        ),
    )


def _transmit(
    row: Entry,
    *,
    destination_device: str | None,
    destination: str,
    subscription: tuple[str, str] | None,
    site: str,
    trace: TraceIds,
) -> EventFor:
    """The builder of the `transmit` AuditEvent of one attempt at `row`."""

    def event(success: bool, description: str | None) -> dict[str, Any]:
        return transmit_event(
            success=success,
            outcome_description=description,
            source_device=row.source_device,
            destination_device=destination_device,
            destination=destination,
            resource_version=f"{row.resource_type}/{row.resource_id}/_history/{row.version_id}",
            subscription=subscription,
            hub_device=HUB_DEVICE,
            site=site,
            trace=trace,
            recorded=utcnow(),
        )

    return event


def _bookkeeping_failed(attempt: Attempt, error: Exception) -> str:
    """The description of an attempt whose bookkeeping failed (the details are logged)."""
    outcome = "delivered" if attempt.success else attempt.description or "delivery failed"
    reason = f"; then its bookkeeping failed ({type(error).__name__})"
    room = _MAX_DESCRIPTION - len(reason)
    if len(outcome) > room:
        outcome = outcome[: room - 1] + "…"
    return outcome + reason


def _bookkeeping(
    recordables: Sequence[_Recordable],
    *,
    drops: Sequence[Entry] = (),
    owner: str,
    chain_key: bytes,
    now: datetime,
    while_leased: bool = False,
) -> Work[bool]:
    """The record of attempts (in order) and of dropped rows: ONE unit of work.

    Delivered and dropped rows go in one statement, failed ones are rescheduled,
    then each Subscription's health and status, and the `transmit` AuditEvents
    last. With `while_leased`, attempts at rows `owner` no longer holds are not
    recorded (False if none was).
    """
    done = yield from outbox.complete_all(
        [r.outcome.row.pk for r in recordables if r.outcome.attempt.success]
        + [row.pk for row in drops],
        owner=owner,
    )
    recorded: list[_Recordable] = []
    for recordable in recordables:
        row, attempt = recordable.outcome.row, recordable.outcome.attempt
        if attempt.success:
            leased = row.pk in done
        else:
            leased = yield from outbox.reschedule(
                row,
                owner=owner,
                next_attempt_at=recordable.next_attempt_at,
                error=attempt.description or "delivery failed",
                now=now,
            )
        if leased or not while_leased:
            recorded.append(recordable)
    yield from _keep_health([r.outcome for r in recorded], now)
    # The audit chain's head is locked last, as every write path does: a client's
    # Subscription update locks the Subscription first and the head last, so the
    # opposite order here would deadlock against it on PostgreSQL.
    yield from append_events([r.event for r in recorded], chain_key)
    return bool(recorded)


def _keep_health(outcomes: Sequence[Outcome], now: datetime) -> Work[None]:
    """Each Subscription's failure count and status after these attempts, in their order.

    Written only where they change: the counters of the Subscriptions that had a
    success are zeroed in one statement per domain (only those above zero), and a
    status is set only when the attempts decide a new one. Subscriptions are visited
    in a fixed order, so two units never wait for each other's rows in a cycle.
    """
    attempts: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.subscription is not None:
            attempts[(outcome.row.domain, outcome.subscription.id)].append(outcome)
    succeeded: dict[str, set[str]] = defaultdict(set)
    for (domain, subscription_id), tried in attempts.items():
        if any(o.attempt.success for o in tried):
            succeeded[domain].add(subscription_id)
    reset: set[tuple[str, str]] = set()
    for domain in sorted(succeeded):
        zeroed = yield from reset_failures_of(domain, succeeded[domain])
        reset.update((domain, subscription_id) for subscription_id in zeroed)
    for key in sorted(attempts):
        yield from _decide_status(key, attempts[key], was_failing=key in reset, now=now)


def _decide_status(
    key: tuple[str, str], tried: Sequence[Outcome], *, was_failing: bool, now: datetime
) -> Work[None]:
    """Count the failures after the last success; set the status the attempts call for."""
    domain, subscription_id = key
    last_success = max((n for n, o in enumerate(tried) if o.attempt.success), default=-1)
    failed = [o.attempt for o in tried[last_success + 1 :]]
    failures = 0
    if failed:
        failures = yield from count_failure(
            domain, subscription_id, failed[-1].description, failures=len(failed)
        )
    gone = next((o.attempt for o in tried if o.attempt.gone), None)
    if gone is not None:
        yield from set_status(domain, subscription_id, "off", gone.description, now)
    elif failures >= FAILURES_BEFORE_ERROR:
        yield from set_status(
            domain,
            subscription_id,
            "error",
            failed[-1].description,
            now,
            applies=_status_is("active"),
        )
    elif last_success >= 0 and (
        # The common case, kept cheap: no failures to forget and the Subscription was
        # active when checked. `error` is only ever set with failures counted, in
        # one unit of work, so a concurrent verdict shows up as a counter to reset.
        was_failing or any(o.subscription and o.subscription.status != "active" for o in tried)
    ):
        yield from set_status(
            domain, subscription_id, "active", None, now, applies=_status_is("error")
        )


def _status_is(expected: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda subscription: subscription.get("status") == expected


def _webhook_attempt(result: DeliveryResult) -> Attempt:
    if result.ok:
        return Attempt(True, None, http_status=result.status, seconds=result.elapsed)
    return Attempt(
        False,
        describe_failure(result),
        retry_after=result.retry_after,
        gone=result.status == 410,
        http_status=result.status,
        seconds=result.elapsed,
    )
