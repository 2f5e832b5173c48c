"""The Deliverer on both backends, without a running hub: re-check, send, bookkeeping.

Outbox rows are queued and claimed with the store's own units; the receiver is a
stand-in client that answers with given statuses (and, if asked, a `Retry-After`).
What is checked is what one delivery leaves in the database: the row done,
rescheduled, given up or dropped, the Subscription's failure count and status, and
the `transmit` AuditEvent's link in the domain's chain. Also that the bookkeeping
survives its own failures: a value it cannot compute with, a write that fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from sqlalchemy import select

from hub.access.apps import AccessConfig
from hub.fhir import jsonio
from hub.fhir.origin import with_origin
from hub.interactions import delivery
from hub.interactions.delivery import Deliverer
from hub.net import DeliveryResult, OutboundClient
from hub.notify.registry import SubscriptionIndex
from hub.notify.retry import RETRY_AFTER_CAP, next_attempt_delay
from hub.notify.webhook import EndpointLimiter
from hub.runtime import Runtime, utcnow
from hub.settings import Settings
from hub.store import health, outbox, resources
from hub.store.audit import chain_head
from hub.store.db import Database
from hub.store.outbox import Entry, Trigger
from hub.store.resources import RESOURCES
from hub.store.sql import Work, execute
from tests.support.hub import AppKeys, hub_settings, write_apps_file

DOMAIN = "test"
ENDPOINT = "https://receiver.example/hook"
OWNER = "this-host:1:abc"
HUGE_RETRY_AFTER = "100000000000000"  # seconds: beyond what a timedelta can hold

T = TypeVar("T")


class Receiver:
    """Answers each POST with the next queued status (200 once they run out).

    Every answer that is not a success carries `retry_after`, if set, as its
    `Retry-After` header.
    """

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.retry_after: str | None = None
        self.posts: list[dict[str, str]] = []

    async def post_notification(
        self, url: str, headers: Sequence[tuple[str, str]]
    ) -> DeliveryResult:
        self.posts.append(dict(headers))
        status = self.statuses.pop(0) if self.statuses else 200
        retry_after = None if 200 <= status < 300 else self.retry_after
        return DeliveryResult(url, 0.01, status=status, retry_after=retry_after)


class FailingWrites:
    """The database, but its next `failures` writes fail (after committing, if `after`)."""

    def __init__(self, database: Database, failures: int, *, after: bool = False) -> None:
        self.database = database
        self.failures = failures
        self.after = after

    async def read(self, work: Work[T]) -> T:
        return await self.database.read(work)

    async def write(self, work: Work[T]) -> T:
        if self.failures <= 0:
            return await self.database.write(work)
        self.failures -= 1
        if self.after:
            await self.database.write(work)
        else:
            work.close()
        raise RuntimeError("the database went away")


@dataclass
class _Runtime:
    """What the Deliverer uses of the hub's runtime."""

    settings: Settings
    database: Database
    access: AccessConfig
    chain_key: bytes
    subscriptions: SubscriptionIndex = field(default_factory=SubscriptionIndex)


@dataclass
class Setup:
    database: Database
    deliverer: Deliverer
    receiver: Receiver


@pytest.fixture
def setup(
    tmp_path: Path, database: Database, database_url: str, app_keys: dict[str, AppKeys]
) -> Setup:
    apps = write_apps_file(tmp_path / "apps.yaml", app_keys)
    settings = hub_settings(tmp_path, database_url, apps)
    runtime = _Runtime(
        settings, database, AccessConfig(settings.apps_file, settings.authz_matrix), b"k" * 32
    )
    receiver = Receiver()
    deliverer = Deliverer(cast(Runtime, runtime), cast(OutboundClient, receiver), owner=OWNER)
    return Setup(database, deliverer, receiver)


def _store(rtype: str, id: str, resource: dict[str, Any]) -> Work[None]:
    new = resources.prepare(
        DOMAIN, with_origin(resource | {"resourceType": rtype}, "xis"), id=id, version_id=1,
        now=utcnow(), origin="xis", method="POST",
    )  # fmt: skip
    yield from resources.write(new, previous=None)


def _subscription_and_patient() -> Work[None]:
    yield from _store(
        "Subscription",
        "s1",
        {
            "status": "active",
            "reason": "test",
            "criteria": "Patient",
            "channel": {"type": "rest-hook", "endpoint": ENDPOINT},
        },
    )
    yield from _store("Patient", "p1", {"gender": "male"})


def _queue(request_id: str) -> Work[None]:
    trigger = Trigger(
        domain=DOMAIN, resource_type="Patient", resource_id="p1", version_id=1,
        origin="xis", source_device="xis", request_id=request_id,
        trace_id=f"trace-{request_id}", now=utcnow(),
    )  # fmt: skip
    yield from outbox.enqueue_webhooks(trigger, ["s1"])


async def _claim(database: Database, later: timedelta = timedelta(hours=1)) -> Entry:
    # Claimed as if later: a rescheduled row is due at once.
    [row] = await database.write(
        outbox.claim(owner=OWNER, now=utcnow() + later, lease=timedelta(seconds=60), limit=1)
    )
    return row


async def _deliver(setup: Setup, later: timedelta = timedelta(hours=1)) -> None:
    await setup.deliverer.deliver(await _claim(setup.database, later))


async def _subscription(database: Database) -> tuple[int, str, str | None]:
    row = await database.read(resources.current(DOMAIN, "Subscription", "s1"))
    assert row is not None
    resource = jsonio.loads(row.content)
    return row.version_id, resource["status"], resource.get("error")


async def _events(database: Database) -> int:
    seq, _ = await database.read(chain_head(DOMAIN))
    return seq


def _stored_events() -> Work[list[dict[str, Any]]]:
    found = yield from execute(
        select(RESOURCES.c.content)
        .where(RESOURCES.c.domain == DOMAIN, RESOURCES.c.rtype == "AuditEvent")
        .order_by(RESOURCES.c.pk)
    )
    return [jsonio.loads(content) for (content,) in found.rows]


async def _transmits(database: Database) -> list[tuple[str, str | None]]:
    """Each `transmit` AuditEvent's (outcome, outcomeDesc), oldest first."""
    events = await database.read(_stored_events())
    assert all(event["type"]["code"] == "transmit" for event in events)
    return [(event["outcome"], event.get("outcomeDesc")) for event in events]


async def test_a_success_completes_the_row_and_is_audited(setup: Setup) -> None:
    database = setup.database
    await database.write(_subscription_and_patient())
    await database.write(_queue("r1"))
    await _deliver(setup)
    [headers] = setup.receiver.posts
    assert headers["X-Correlation-Id"] == "r1"
    assert await database.read(outbox.entries()) == []
    assert await _events(database) == 1
    assert await _subscription(database) == (1, "active", None)
    assert await database.read(health.failures(DOMAIN, "s1")) == (0, None)


async def test_three_failures_in_a_row_make_an_error_and_a_success_clears_it(
    setup: Setup,
) -> None:
    database = setup.database
    await database.write(_subscription_and_patient())
    await database.write(_queue("r1"))
    setup.receiver.statuses = [503, 503, 503]
    error = f"HTTP 503 from {ENDPOINT}"
    for attempt in (1, 2):
        await _deliver(setup)
        [row] = await database.read(outbox.entries())
        assert (row.attempts, row.state, row.last_error, row.lease_owner) == (
            attempt, outbox.PENDING, error, None,
        )  # fmt: skip
        assert await _subscription(database) == (1, "active", None)
    await _deliver(setup)
    assert await _subscription(database) == (2, "error", error)
    assert await database.read(health.failures(DOMAIN, "s1")) == (3, error)

    await _deliver(setup)  # the fourth attempt succeeds
    assert await _subscription(database) == (3, "active", None)
    assert await database.read(health.failures(DOMAIN, "s1")) == (0, None)
    assert await database.read(outbox.entries()) == []
    assert await _events(database) == 4
    assert len(setup.receiver.posts) == 4


async def test_gone_turns_the_subscription_off_and_gives_up(setup: Setup) -> None:
    database = setup.database
    await database.write(_subscription_and_patient())
    await database.write(_queue("r1"))
    setup.receiver.statuses = [410]
    await _deliver(setup)
    [row] = await database.read(outbox.entries())
    assert (row.state, row.attempts) == (outbox.GAVE_UP, 1)
    assert await _subscription(database) == (2, "off", f"HTTP 410 from {ENDPOINT}")
    assert await _events(database) == 1


async def test_a_deleted_subscription_is_dropped_unsent(setup: Setup) -> None:
    database = setup.database
    await database.write(_subscription_and_patient())
    await database.write(_queue("r1"))

    def delete() -> Work[None]:
        row = yield from resources.current(DOMAIN, "Subscription", "s1", for_update=True)
        assert row is not None
        yield from resources.delete(row, now=utcnow())

    await database.write(delete())
    await _deliver(setup)
    assert setup.receiver.posts == []
    assert await database.read(outbox.entries()) == []
    assert await _events(database) == 0


async def test_a_lease_lost_before_sending_sends_nothing(setup: Setup) -> None:
    database = setup.database
    await database.write(_subscription_and_patient())
    await database.write(_queue("r1"))
    # Another worker holds the row now; this one's copy has a lease too short to send on.
    [row] = await database.write(
        outbox.claim(owner="other-host:2:def", now=utcnow(), lease=timedelta(seconds=1), limit=1)
    )
    await setup.deliverer.deliver(row._replace(lease_owner=OWNER))
    assert setup.receiver.posts == []
    [kept] = await database.read(outbox.entries())
    assert (kept.lease_owner, kept.attempts) == ("other-host:2:def", 0)
    assert await _events(database) == 0


async def test_an_email_that_cannot_be_sent_is_given_up_and_audited(setup: Setup) -> None:
    database = setup.database
    trigger = Trigger(
        domain=DOMAIN, resource_type="Patient", resource_id="p1", version_id=1,
        origin="xis", source_device="xis", request_id="r1", trace_id="trace-r1", now=utcnow(),
    )  # fmt: skip
    await database.write(
        outbox.enqueue_email(trigger, recipient="patient@example.org", kind="notice")
    )
    await _deliver(setup)  # HUB_SMTP_URL is unset: retrying cannot help
    [row] = await database.read(outbox.entries())
    assert (row.channel, row.state, row.last_error) == (
        "email", outbox.GAVE_UP, "e-mail is off (HUB_SMTP_URL is unset)",
    )  # fmt: skip
    assert await _events(database) == 1


async def test_a_huge_retry_after_is_capped_counted_and_audited(setup: Setup) -> None:
    # It used to overflow inside the bookkeeping: the row was sent again at every
    # lease, for ever, with no AuditEvent, no failure counted and no `error`.
    database = setup.database
    await database.write(_subscription_and_patient())
    await database.write(_queue("r1"))
    setup.receiver.statuses = [503, 503, 503]
    setup.receiver.retry_after = HUGE_RETRY_AFTER
    error = f"HTTP 503 from {ENDPOINT}"
    for attempt in (1, 2, 3):
        before = utcnow()
        await _deliver(setup, later=RETRY_AFTER_CAP + timedelta(hours=1))
        after = utcnow()
        [row] = await database.read(outbox.entries())
        assert (row.attempts, row.state, row.last_error, row.lease_owner) == (
            attempt, outbox.PENDING, error, None,
        )  # fmt: skip
        # The cap, jitter included: at most 6 hours ahead (and, asked for more, not less).
        assert before + RETRY_AFTER_CAP <= row.next_attempt_at <= after + RETRY_AFTER_CAP
        assert await _transmits(database) == [("4", error)] * attempt
        assert await database.read(health.failures(DOMAIN, "s1")) == (attempt, error)
    assert len(setup.receiver.posts) == 3
    assert await _subscription(database) == (2, "error", error)


async def test_a_failure_in_the_bookkeeping_is_a_counted_audited_failed_attempt(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    database = setup.database
    await database.write(_subscription_and_patient())
    await database.write(_queue("r1"))

    def overflowing(failures: int, *, retry_after: str | None, **kwargs: Any) -> Any:
        if retry_after is not None:  # whatever may still overflow in there
            raise OverflowError("date value out of range")
        return next_attempt_delay(failures, retry_after=retry_after, **kwargs)

    monkeypatch.setattr(delivery, "next_attempt_delay", overflowing)
    setup.receiver.statuses = [503, 503, 503]
    setup.receiver.retry_after = "120"
    error = f"HTTP 503 from {ENDPOINT}; then its bookkeeping failed (OverflowError)"
    for attempt in (1, 2, 3):
        caplog.clear()
        before = utcnow()
        with caplog.at_level(logging.ERROR, logger="hub.delivery"):
            await _deliver(setup)
        [row] = await database.read(outbox.entries())
        assert (row.attempts, row.state, row.last_error, row.lease_owner) == (
            attempt, outbox.PENDING, error, None,
        )  # fmt: skip
        # The normal backoff (5 s, 30 s, 2 min ± 20 %), not the Retry-After.
        assert before < row.next_attempt_at <= utcnow() + timedelta(minutes=3)
        assert await _transmits(database) == [("4", error)] * attempt
        assert await database.read(health.failures(DOMAIN, "s1")) == (attempt, error)
        [logged] = caplog.records
        assert logged.exc_info is not None and logged.exc_info[0] is OverflowError
    assert await _subscription(database) == (2, "error", error)


async def test_a_batch_whose_record_fails_is_recorded_one_by_one(setup: Setup) -> None:
    database = setup.database
    await database.write(_subscription_and_patient())
    await database.write(_queue("r1"))
    setup.deliverer.runtime.database = cast(Database, FailingWrites(database, 1))
    await _deliver(setup)
    assert await database.read(outbox.entries()) == []
    assert await _transmits(database) == [("0", None)]
    assert len(setup.receiver.posts) == 1


async def test_a_success_whose_record_fails_is_recorded_as_a_failed_attempt(
    setup: Setup,
) -> None:
    database = setup.database
    await database.write(_subscription_and_patient())
    await database.write(_queue("r1"))
    # The batch's unit fails, and so does the attempt's record on its own.
    setup.deliverer.runtime.database = cast(Database, FailingWrites(database, 2))
    before = utcnow()
    await _deliver(setup)
    error = "delivered; then its bookkeeping failed (RuntimeError)"
    [row] = await database.read(outbox.entries())
    assert (row.attempts, row.state, row.last_error, row.lease_owner) == (
        1, outbox.PENDING, error, None,
    )  # fmt: skip
    assert before < row.next_attempt_at <= utcnow() + timedelta(seconds=6)
    assert await _transmits(database) == [("4", error)]
    assert await database.read(health.failures(DOMAIN, "s1")) == (1, error)

    await _deliver(setup)  # sent again, and recorded this time
    assert await database.read(outbox.entries()) == []
    assert await _transmits(database) == [("4", error), ("0", None)]
    assert await database.read(health.failures(DOMAIN, "s1")) == (0, None)
    assert len(setup.receiver.posts) == 2


async def test_a_record_that_fails_every_time_leaves_the_row_leased(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    database = setup.database
    await database.write(_subscription_and_patient())
    await database.write(_queue("r1"))
    setup.receiver.statuses = [503]
    # The batch's unit, the attempt's own record, and its failed-bookkeeping record.
    setup.deliverer.runtime.database = cast(Database, FailingWrites(database, 3))
    claimed = await _claim(database, later=timedelta(0))
    with caplog.at_level(logging.ERROR, logger="hub.delivery"):
        await setup.deliverer.deliver(claimed)
    assert len(caplog.records) == 3
    assert "keeps its lease" in caplog.records[2].getMessage()
    # Nothing recorded: the row keeps this worker's lease, so no worker sends it again
    # until the lease runs out, and then once.
    [row] = await database.read(outbox.entries())
    assert (row.attempts, row.lease_owner, row.lease_until) == (0, OWNER, claimed.lease_until)
    assert claimed.lease_until is not None
    assert await database.write(_claim_at(claimed.lease_until - timedelta(seconds=1))) == []
    assert await _events(database) == 0
    assert len(setup.receiver.posts) == 1

    await setup.deliverer.deliver(await _claim(database))  # once the lease has run out
    assert await database.read(outbox.entries()) == []
    assert await _transmits(database) == [("0", None)]
    assert len(setup.receiver.posts) == 2


def _claim_at(now: datetime) -> Work[list[Entry]]:
    return outbox.claim(owner="other-host:2:def", now=now, lease=timedelta(seconds=60), limit=1)


async def test_a_record_that_committed_after_all_is_not_recorded_twice(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    database = setup.database
    await database.write(_subscription_and_patient())
    await database.write(_queue("r1"))
    setup.receiver.statuses = [503]
    setup.deliverer.runtime.database = cast(Database, FailingWrites(database, 1, after=True))
    with caplog.at_level(logging.WARNING, logger="hub.delivery"):
        await _deliver(setup)
    error = f"HTTP 503 from {ENDPOINT}"
    [row] = await database.read(outbox.entries())
    assert (row.attempts, row.last_error, row.lease_owner) == (1, error, None)
    assert await _transmits(database) == [("4", error)]
    assert await database.read(health.failures(DOMAIN, "s1")) == (1, error)
    assert "no longer leased here" in caplog.records[-1].getMessage()


class CountingWrites:
    """The database, counting the units of work written through it."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.writes = 0

    async def read(self, work: Work[T]) -> T:
        return await self.database.read(work)

    async def write(self, work: Work[T]) -> T:
        self.writes += 1
        return await self.database.write(work)


async def _deliver_together(setup: Setup, statuses: list[int]) -> CountingWrites:
    """Queue, claim and deliver one row per status at once; the units their record took."""
    database = setup.database
    for number in range(len(statuses)):
        await database.write(_queue(f"r{number}"))
    rows = await database.write(
        outbox.claim(
            owner=OWNER, now=utcnow() + timedelta(hours=1), lease=timedelta(seconds=60), limit=99
        )
    )
    # The index loaded and the endpoint wide open: the sends go out in claim order.
    await database.read(setup.deliverer.subscriptions.ensure_current(DOMAIN))
    setup.deliverer.limiter = EndpointLimiter(len(rows))
    setup.receiver.statuses = list(statuses)
    counting = CountingWrites(database)
    setup.deliverer.runtime.database = cast(Database, counting)
    await asyncio.gather(*(setup.deliverer.deliver(row) for row in rows))
    setup.deliverer.runtime.database = database
    return counting


async def test_outcomes_that_finish_together_are_recorded_in_one_unit(setup: Setup) -> None:
    database = setup.database
    await database.write(_subscription_and_patient())
    counting = await _deliver_together(setup, [200, 200, 200, 200, 200])
    assert counting.writes == 1
    assert await database.read(outbox.entries()) == []
    assert await _transmits(database) == [("0", None)] * 5
    # In the order of the sends: their correlation ids are the rows' request ids.
    events = await database.read(_stored_events())
    correlations = [
        extension["valueId"]
        for event in events
        for extension in event.get("extension", [])
        if extension["url"].endswith("correlation-id")
    ]
    assert correlations == [f"r{number}" for number in range(5)]


async def test_a_batch_counts_only_the_failures_after_its_last_success(setup: Setup) -> None:
    database = setup.database
    await database.write(_subscription_and_patient())
    error = f"HTTP 503 from {ENDPOINT}"
    await _deliver_together(setup, [503, 503, 200, 503])
    assert await database.read(health.failures(DOMAIN, "s1")) == (1, error)
    assert await _subscription(database) == (1, "active", None)
    assert await _transmits(database) == [("4", error), ("4", error), ("0", None), ("4", error)]
    assert [row.attempts for row in await database.read(outbox.entries())] == [1, 1, 1]


async def test_a_batch_ending_in_three_failures_makes_an_error_and_one_success_clears_it(
    setup: Setup,
) -> None:
    database = setup.database
    await database.write(_subscription_and_patient())
    error = f"HTTP 503 from {ENDPOINT}"
    await _deliver_together(setup, [200, 503, 503, 503])
    assert await database.read(health.failures(DOMAIN, "s1")) == (3, error)
    assert await _subscription(database) == (2, "error", error)

    # A Subscription in `error` still gets its notifications; one success clears it.
    await database.read(setup.deliverer.subscriptions.ensure_current(DOMAIN))
    await _deliver_together(setup, [503, 200])
    assert await database.read(health.failures(DOMAIN, "s1")) == (0, None)
    assert await _subscription(database) == (3, "active", None)


async def test_a_gone_anywhere_in_a_batch_turns_the_subscription_off(setup: Setup) -> None:
    database = setup.database
    await database.write(_subscription_and_patient())
    await _deliver_together(setup, [410, 200])
    assert await _subscription(database) == (2, "off", f"HTTP 410 from {ENDPOINT}")


async def test_a_success_on_a_healthy_subscription_writes_no_health_or_status(
    setup: Setup,
) -> None:
    database = setup.database
    await database.write(_subscription_and_patient())
    await _deliver_together(setup, [200, 200])
    assert await _subscription(database) == (1, "active", None)
    assert await database.read(_health_rows()) == []


def _health_rows() -> Work[list[Any]]:
    found = yield from execute(select(health.HEALTH))
    return list(found.rows)
