"""Matching before the unit of work, checked against the generation inside it (both backends).

A write is matched against this process's subscription index before its unit of
work (`effects.match_early`). The unit reads the domain's subscription generation
in its own transaction: when it is still the one matched against, the early
answer is used; when a Subscription changed meanwhile (in any process), the
write is matched again inside the unit, so it never misses a Subscription.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from hub.access.apps import AccessConfig
from hub.access.policy import Access, Caller, role_scopes
from hub.fhir.origin import with_origin
from hub.interactions import effects
from hub.interactions.exchange import Exchange
from hub.notify.registry import SubscriptionIndex
from hub.runtime import Runtime, utcnow
from hub.store import outbox, resources
from hub.store.db import Database
from hub.store.resources import NewVersion
from hub.store.sql import Work
from hub.store.subscriptions import bump_generation
from hub.trace import TraceIds
from tests.support.hub import AppKeys, hub_settings, write_apps_file

DOMAIN = "test"


@dataclass
class _Runtime:
    """What matching uses of the hub's runtime."""

    access: AccessConfig
    subscriptions: SubscriptionIndex


def _exchange(tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys]) -> Exchange:
    apps = write_apps_file(tmp_path / "apps.yaml", app_keys)
    settings = hub_settings(tmp_path, database_url, apps)
    access = AccessConfig(settings.apps_file, settings.authz_matrix)
    scopes = role_scopes(access.snapshot, DOMAIN, "xis")
    assert scopes is not None
    runtime = cast(Runtime, _Runtime(access, SubscriptionIndex()))
    caller = Access(Caller(DOMAIN, "xis", scopes), scopes, "epd")
    return Exchange(runtime, DOMAIN, "create", TraceIds.new(), None, "Patient", access=caller)


def _subscription(id_: str) -> NewVersion:
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "active",
        "reason": "test",
        "criteria": "Patient?active=true",
        "channel": {"type": "rest-hook", "endpoint": f"https://receiver.example/{id_}"},
    }
    return resources.prepare(
        DOMAIN,
        with_origin(resource, "xis"),
        id=id_,
        version_id=1,
        now=utcnow(),
        origin="xis",
        method="POST",
    )


def _subscribe(id_: str) -> Work[None]:
    yield from resources.insert_new([_subscription(id_)])
    yield from bump_generation(DOMAIN)


def _patient(id_: str) -> NewVersion:
    resource = with_origin({"resourceType": "Patient", "active": True}, "xis")
    return resources.prepare(
        DOMAIN, resource, id=id_, version_id=1, now=utcnow(), origin="xis", method="POST"
    )


def _write(exchange: Exchange, new: NewVersion, early: effects.Matched | None) -> Work[bool]:
    row = yield from resources.write(new, previous=None)
    trigger = outbox.Trigger(DOMAIN, new.rtype, new.id, 1, "xis", "xis", "req", "trace", utcnow())
    done = yield from effects.after_write(effects.Change(exchange, new, row, trigger), early)
    return done.queued


async def _queued_for(database: Database, resource_id: str) -> set[str | None]:
    rows = await database.read(outbox.entries())
    return {row.subscription_id for row in rows if row.resource_id == resource_id}


async def _matched_early(
    database: Database, exchange: Exchange
) -> tuple[NewVersion, effects.Matched]:
    """A Patient matched early against a loaded index holding Subscription s1."""
    await database.write(_subscribe("s1"))
    await database.read(exchange.runtime.subscriptions.ensure_current(DOMAIN))
    patient = _patient("p1")
    early = effects.match_early(exchange, patient)
    assert early is not None and early.subscription_ids == ("s1",)
    return patient, early


async def test_a_subscription_made_after_early_matching_is_still_notified(
    tmp_path: Path, database: Database, database_url: str, app_keys: dict[str, AppKeys]
) -> None:
    exchange = _exchange(tmp_path, database_url, app_keys)
    patient, early = await _matched_early(database, exchange)

    # Another process subscribes between the early match and the write's unit of work.
    await database.write(_subscribe("s2"))
    assert await database.write(_write(exchange, patient, early))
    assert await _queued_for(database, "p1") == {"s1", "s2"}


async def test_the_early_answer_is_used_while_the_generation_holds(
    tmp_path: Path, database: Database, database_url: str, app_keys: dict[str, AppKeys]
) -> None:
    exchange = _exchange(tmp_path, database_url, app_keys)
    patient, early = await _matched_early(database, exchange)

    # An answer marked with the current generation is taken as it is, not matched again.
    trusted = effects.Matched(early.generation, ("s1", "s-early"))
    assert await database.write(_write(exchange, patient, trusted))
    assert await _queued_for(database, "p1") == {"s1", "s-early"}


async def test_without_a_loaded_index_the_write_matches_in_its_unit(
    tmp_path: Path, database: Database, database_url: str, app_keys: dict[str, AppKeys]
) -> None:
    exchange = _exchange(tmp_path, database_url, app_keys)
    await database.write(_subscribe("s1"))
    patient = _patient("p1")
    assert effects.match_early(exchange, patient) is None
    assert await database.write(_write(exchange, patient, None))
    assert await _queued_for(database, "p1") == {"s1"}
