"""The index of live Subscriptions that every write is matched against.

Matching must not cost more as subscriptions are added, so each Subscription
is filed by domain, resource type and one set of index keys its criteria
require (`hub.fhir.match.required_keys`): a changed resource is only tested
against the subscriptions filed under keys it actually has, plus the few whose
criteria require none.

The index lives in memory in every process. `ensure_current` compares the
index with the domain's generation row inside each write transaction and
reloads when another process (or this one) changed a Subscription, so no write
is ever matched against a stale index.

A generation is a random stamp, not a counter: a counter bumped in a
transaction that then rolls back would be bumped to the same number by the
next change, and an index cached from the rolled-back transaction's
uncommitted rows would pass for current.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from hub.fhir import jsonio
from hub.fhir.extract import IndexValues, instant
from hub.fhir.match import Key, index_keys, required_keys
from hub.fhir.origin import origin_device
from hub.fhir.outcome import FhirError
from hub.fhir.query import Query, parse_criteria
from hub.store.sql import Work
from hub.store.subscriptions import generation, subscription_contents

log = logging.getLogger("hub.subscriptions")

LIVE_STATUSES = frozenset({"active", "error"})


@dataclass(frozen=True)
class LiveSubscription:
    id: str
    owner: str | None  # the client_id (Device id) of the app that created it
    query: Query
    criteria: str
    endpoint: str
    headers: tuple[str, ...]
    status: str
    end: datetime | None

    def is_live(self, now: datetime) -> bool:
        return self.status in LIVE_STATUSES and (self.end is None or self.end > now)


def live_subscription(resource: dict[str, object]) -> LiveSubscription | None:
    """The index entry for a stored Subscription; None when it cannot deliver anything."""
    criteria = resource.get("criteria")
    channel = resource.get("channel")
    if not isinstance(criteria, str) or not isinstance(channel, dict):
        return None
    try:
        query = parse_criteria(criteria)
    except FhirError as exc:
        # Validated on write; this only happens when the server's parameters changed since.
        log.warning("Subscription/%s: criteria no longer parse: %s", resource.get("id"), exc.text)
        return None
    end = resource.get("end")
    return LiveSubscription(
        id=str(resource["id"]),
        owner=origin_device(resource),
        query=query,
        criteria=criteria,
        endpoint=str(channel.get("endpoint", "")),
        headers=tuple(str(h) for h in channel.get("header") or ()),
        status=str(resource.get("status", "")),
        end=instant(end) if isinstance(end, str) else None,
    )


@dataclass
class DomainIndex:
    generation: int = -1
    by_key: dict[tuple[str, Key], list[LiveSubscription]] = field(
        default_factory=lambda: defaultdict(list)
    )
    unkeyed: dict[str, list[LiveSubscription]] = field(default_factory=lambda: defaultdict(list))
    by_id: dict[str, LiveSubscription] = field(default_factory=dict)

    def add(self, subscription: LiveSubscription) -> None:
        rtype = subscription.query.resource_type
        self.by_id[subscription.id] = subscription
        keys = required_keys(subscription.query)
        if keys is None:
            self.unkeyed[rtype].append(subscription)
        else:
            for key in keys:
                self.by_key[(rtype, key)].append(subscription)

    def candidates(self, rtype: str, values: IndexValues, now: datetime) -> list[LiveSubscription]:
        """Live subscriptions of `rtype` the resource might match (a superset of its matches)."""
        found: dict[str, LiveSubscription] = {s.id: s for s in self.unkeyed.get(rtype, ())}
        for key in index_keys(values):
            for subscription in self.by_key.get((rtype, key), ()):
                found[subscription.id] = subscription
        return [s for s in found.values() if s.is_live(now)]


class SubscriptionIndex:
    def __init__(self) -> None:
        self._domains: dict[str, DomainIndex] = {}

    def loaded(self, domain: str) -> DomainIndex | None:
        """The domain's index as last loaded (None: not loaded yet); it never changes."""
        return self._domains.get(domain)

    def ensure_current(self, domain: str) -> Work[int]:
        """Reload the domain's subscriptions if any changed since they were loaded.

        Part of every write's unit of work: the generation is read in the write's
        own transaction. Returns the generation the index is now at.
        """
        stamp = yield from generation(domain)
        known = self._domains.get(domain)
        if known is not None and known.generation == stamp:
            return stamp
        index = DomainIndex(generation=stamp)
        for content in (yield from subscription_contents(domain)):
            subscription = live_subscription(jsonio.loads(content))
            if subscription is not None:
                index.add(subscription)
        self._domains[domain] = index  # swapped whole: readers never see a half-built index
        log.debug("loaded %d subscriptions of %s (generation %d)", len(index.by_id), domain, stamp)
        return stamp

    def candidates(
        self, domain: str, rtype: str, values: IndexValues, now: datetime
    ) -> list[LiveSubscription]:
        """Live subscriptions of `rtype` the resource might match (a superset of its matches)."""
        index = self._domains.get(domain)
        return [] if index is None else index.candidates(rtype, values, now)

    def all(self, domain: str) -> Iterable[LiveSubscription]:
        index = self._domains.get(domain)
        return index.by_id.values() if index is not None else ()
