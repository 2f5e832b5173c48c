"""The Deliverer on both backends, without a running hub: re-check, send, bookkeeping.

Outbox rows are queued and claimed with the store's own units; the receiver is a
stand-in client that answers with given statuses. What is checked is what one
delivery leaves in the database: the row done, rescheduled, given up or dropped,
the Subscription's failure count and status, and the `transmit` AuditEvent's link
in the domain's chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from hub.access.apps import AccessConfig
from hub.fhir import jsonio
from hub.fhir.origin import with_origin
from hub.interactions.delivery import Deliverer
from hub.net import DeliveryResult, OutboundClient
from hub.runtime import Runtime, utcnow
from hub.settings import Settings
from hub.store import health, outbox, resources
from hub.store.audit import chain_head
from hub.store.db import Database
from hub.store.outbox import Entry, Trigger
from hub.store.sql import Work
from tests.support.hub import AppKeys, hub_settings, write_apps_file

DOMAIN = "test"
ENDPOINT = "https://receiver.example/hook"
OWNER = "this-host:1:abc"


class Receiver:
    """Answers each POST with the next queued status (200 once they run out)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.posts: list[dict[str, str]] = []

    async def post_notification(
        self, url: str, headers: Sequence[tuple[str, str]]
    ) -> DeliveryResult:
        self.posts.append(dict(headers))
        status = self.statuses.pop(0) if self.statuses else 200
        return DeliveryResult(url, 0.01, status=status)


@dataclass
class _Runtime:
    """What the Deliverer uses of the hub's runtime."""

    settings: Settings
    database: Database
    access: AccessConfig
    chain_key: bytes


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
        source_device="xis", request_id=request_id, trace_id=f"trace-{request_id}", now=utcnow(),
    )  # fmt: skip
    yield from outbox.enqueue_webhooks(trigger, ["s1"])


async def _claim(database: Database) -> Entry:
    # Claimed as if later: a rescheduled row is due at once.
    [row] = await database.write(
        outbox.claim(
            owner=OWNER, now=utcnow() + timedelta(hours=1), lease=timedelta(seconds=60), limit=1
        )
    )
    return row


async def _deliver(setup: Setup) -> None:
    await setup.deliverer.deliver(await _claim(setup.database))


async def _subscription(database: Database) -> tuple[int, str, str | None]:
    row = await database.read(resources.current(DOMAIN, "Subscription", "s1"))
    assert row is not None
    resource = jsonio.loads(row.content)
    return row.version_id, resource["status"], resource.get("error")


async def _events(database: Database) -> int:
    seq, _ = await database.read(chain_head(DOMAIN))
    return seq


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
        source_device="xis", request_id="r1", trace_id="trace-r1", now=utcnow(),
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
