"""The delivery interaction, run by the hub itself: re-check, send, record, schedule.

Before sending, the Subscription and the subscriber's right to read the
resource are checked again against the CURRENT state (fail closed: a row
whose subscriber lost its right, or whose Subscription is gone or off, is
dropped unsent). After the attempt, one unit of work completes or
reschedules the row, keeps the Subscription's failure count and status
(`error` after 3 failures in a row, `active` again on success, `off` on 410
Gone), and records the `transmit` AuditEvent, last.

Should that bookkeeping itself fail (a value its arithmetic cannot hold, an
event that cannot be prepared, the unit of work), the attempt is recorded
instead as a counted, audited failed attempt and the row rescheduled on the
normal backoff: a failure there never turns into a row sent again at every
lease, silently, for ever (`Deliverer._record`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hub.access.policy import subscriber_may_read
from hub.audit.events import transmit_event
from hub.audit.store import prepare as prepare_event
from hub.fhir import jsonio
from hub.net import DeliveryResult, OutboundClient
from hub.notify.mail import MailError, compose_invitation, compose_new_message_notice, send_mail
from hub.notify.registry import LiveSubscription, live_subscription
from hub.notify.retry import FAILURES_BEFORE_ERROR, SCHEDULE, describe_failure, next_attempt_delay
from hub.notify.status import set_status
from hub.notify.webhook import EndpointLimiter, notification_headers
from hub.runtime import HUB_DEVICE, Runtime, utcnow
from hub.store import outbox, resources
from hub.store.audit import append_events
from hub.store.health import count_failure, reset_failures
from hub.store.outbox import Entry
from hub.store.resources import NewVersion, StoredRow
from hub.store.sql import Work
from hub.trace import TraceIds

log = logging.getLogger("hub.delivery")

_MAX_DESCRIPTION = 500

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


class Deliverer:
    def __init__(self, runtime: Runtime, client: OutboundClient, *, owner: str) -> None:
        self.runtime = runtime
        self.client = client
        self.owner = owner
        self.limiter = EndpointLimiter(runtime.settings.endpoint_concurrency)
        # Rows (pk → subscription id) waiting for a slot of their busy endpoint. The
        # dispatcher neither counts them against its capacity nor claims more rows of
        # those subscriptions, so a slow receiver never holds back the others.
        self.waiting: dict[int, str] = {}
        self.on_waiting: Callable[[], None] = lambda: None
        self._random = random.Random()

    async def deliver(self, row: Entry) -> None:
        if row.channel == "email":
            await self._deliver_mail(row)
        else:
            await self._deliver_webhook(row)

    # --- webhooks ---------------------------------------------------------------------

    async def _still_wanted(self, row: Entry) -> LiveSubscription | None:
        """The Subscription, if it still exists, is not off, and may read the resource."""
        stored, resource = await self.runtime.database.read(_subscription_and_resource(row))
        if stored is None or stored.deleted or resource is None:
            return None
        subscription = live_subscription(jsonio.loads(stored.content))
        if subscription is None or subscription.owner is None or not subscription.is_live(utcnow()):
            return None
        snapshot = self.runtime.access.snapshot
        if not subscriber_may_read(
            snapshot, row.domain, subscription.owner, row.resource_type, resource.origin
        ):
            log.info(
                "Subscription/%s may no longer read %s/%s: not sent",
                subscription.id,
                row.resource_type,
                row.resource_id,
            )
            return None
        return subscription

    async def _deliver_webhook(self, row: Entry) -> None:
        subscription = await self._still_wanted(row)
        if subscription is None:
            await self._drop(row)
            return
        sent = await self._send(row, subscription)
        if sent is None:
            return  # dropped after waiting, or the lease was lost to another worker
        subscription, attempt, trace = sent
        event = _transmit(
            row,
            destination_device=subscription.owner,
            destination=subscription.endpoint,
            subscription=(subscription.id, subscription.criteria),
            site=self.runtime.settings.site,
            trace=trace,
        )
        await self._record(row, attempt, event, subscription=subscription)

    async def _send(
        self, row: Entry, subscription: LiveSubscription
    ) -> tuple[LiveSubscription, Attempt, TraceIds] | None:
        """Send within the endpoint's concurrency limit; None if nothing was sent."""
        waits = self.limiter.busy(subscription.endpoint)
        if waits:
            self.waiting[row.pk] = subscription.id
            self.on_waiting()
        try:
            async with self.limiter.slot(subscription.endpoint):
                self.waiting.pop(row.pk, None)
                if waits:
                    # Behind a slow receiver the wait can be long: the Subscription may
                    # have been turned off, or its owner lost the right to read, meanwhile.
                    rechecked = await self._still_wanted(row)
                    if rechecked is None:
                        await self._drop(row)
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
        return _webhook_attempt(await self.client.post_notification(subscription.endpoint, headers))

    async def _drop(self, row: Entry) -> None:
        await self.runtime.database.write(outbox.drop(row, owner=self.owner))

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

    async def _deliver_mail(self, row: Entry) -> None:
        settings = self.runtime.settings
        assert row.recipient is not None
        if settings.smtp_url is None:
            attempt = Attempt(False, "e-mail is off (HUB_SMTP_URL is unset)", permanent=True)
        elif not await self._keep_lease(row):
            return  # another worker sends it
        else:
            attempt = await self._send_mail(row.recipient, row.kind, settings.smtp_url)
        event = _transmit(
            row,
            destination_device=None,
            destination=f"mailto:{row.recipient}",
            subscription=None,
            site=settings.site,
            trace=TraceIds.new(correlation_id=row.request_id, trace_id=row.trace_id),
        )
        await self._record(row, attempt, event, subscription=None)

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
            await send_mail(smtp_url, message, timeout=settings.webhook_timeout)
        except MailError as exc:
            return Attempt(False, str(exc), permanent=exc.permanent)
        return Attempt(True, None)

    # --- bookkeeping ------------------------------------------------------------------

    async def _record(
        self,
        row: Entry,
        attempt: Attempt,
        event: EventFor,
        *,
        subscription: LiveSubscription | None,
    ) -> None:
        """Record one attempt in one unit of work (`_bookkeeping`).

        Everything that needs no database (the next attempt's time, the AuditEvent) is
        done first, in this task: the unit then holds the writer only for its
        statements. If anything here fails, computing or writing, the attempt is
        recorded instead as a failed attempt whose bookkeeping failed
        (`_record_failed_bookkeeping`).
        """
        now = utcnow()
        try:
            next_attempt_at = None if attempt.success else self._next_attempt(row, attempt, now)
            prepared = prepare_event(row.domain, event(attempt.success, attempt.description), now)
            await self.runtime.database.write(
                _bookkeeping(
                    row,
                    attempt,
                    prepared,
                    subscription=subscription,
                    owner=self.owner,
                    next_attempt_at=next_attempt_at,
                    chain_key=self.runtime.chain_key,
                    now=now,
                )
            )
        except Exception as exc:
            log.exception(
                "recording the attempt of outbox row %s failed; recording it as a failed attempt",
                row.pk,
            )
            await self._record_failed_bookkeeping(
                row, attempt, event, exc, subscription=subscription
            )

    async def _record_failed_bookkeeping(
        self,
        row: Entry,
        attempt: Attempt,
        event: EventFor,
        error: Exception,
        *,
        subscription: LiveSubscription | None,
    ) -> None:
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
        failed = Attempt(
            False,
            _bookkeeping_failed(attempt, error),
            permanent=attempt.permanent or attempt.gone,
        )
        now = utcnow()
        try:
            next_attempt_at = None if failed.permanent else self._backoff(row, now)
            prepared = prepare_event(row.domain, event(False, failed.description), now)
            recorded = await self.runtime.database.write(
                _bookkeeping(
                    row,
                    failed,
                    prepared,
                    subscription=subscription,
                    owner=self.owner,
                    next_attempt_at=next_attempt_at,
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
        if not recorded:
            log.warning(
                "outbox row %s was no longer leased here: its attempt was recorded already, "
                "or another worker has it",
                row.pk,
            )

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


def _subscription_and_resource(row: Entry) -> Work[tuple[StoredRow | None, StoredRow | None]]:
    """The current rows of the row's Subscription and of its resource (one snapshot)."""
    stored = yield from resources.current(row.domain, "Subscription", row.subscription_id or "")
    resource = yield from resources.current(row.domain, row.resource_type, row.resource_id)
    return stored, resource


def _bookkeeping(
    row: Entry,
    attempt: Attempt,
    event: NewVersion,
    *,
    subscription: LiveSubscription | None,
    owner: str,
    next_attempt_at: datetime | None,
    chain_key: bytes,
    now: datetime,
    while_leased: bool = False,
) -> Work[bool]:
    """One attempt's record: the row done or rescheduled, health and status, AuditEvent.

    With `while_leased`, nothing is recorded (False) unless `owner` still holds the
    row's lease.
    """
    if attempt.success:
        leased = yield from outbox.complete(row, owner=owner)
    else:
        leased = yield from outbox.reschedule(
            row,
            owner=owner,
            next_attempt_at=next_attempt_at,
            error=attempt.description or "delivery failed",
            now=now,
        )
    if while_leased and not leased:
        return False
    if subscription is not None:
        yield from _keep_health(row.domain, subscription, attempt, now)
    # The audit chain's head is locked last, as every write path does: a client's
    # Subscription update locks the Subscription first and the head last, so the
    # opposite order here would deadlock against it on PostgreSQL.
    yield from append_events([event], chain_key)
    return True


def _keep_health(
    domain: str, subscription: LiveSubscription, attempt: Attempt, now: datetime
) -> Work[None]:
    subscription_id = subscription.id
    if attempt.success:
        # The common case, kept cheap: no failures to forget and the Subscription was
        # active when checked. `error` is only ever set with failures counted, in
        # one unit of work, so a concurrent verdict shows up as a counter to reset.
        if (yield from reset_failures(domain, subscription_id)) or (
            subscription.status != "active"
        ):
            yield from set_status(
                domain, subscription_id, "active", None, now, applies=_status_is("error")
            )
        return
    failures = yield from count_failure(domain, subscription_id, attempt.description)
    if attempt.gone:
        yield from set_status(domain, subscription_id, "off", attempt.description, now)
    elif failures >= FAILURES_BEFORE_ERROR:
        yield from set_status(
            domain,
            subscription_id,
            "error",
            attempt.description,
            now,
            applies=_status_is("active"),
        )


def _status_is(expected: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda subscription: subscription.get("status") == expected


def _webhook_attempt(result: DeliveryResult) -> Attempt:
    if result.ok:
        return Attempt(True, None)
    return Attempt(
        False, describe_failure(result), retry_after=result.retry_after, gone=result.status == 410
    )
