"""Delivery state and resend as FHIR operations, and the operator's `hub deliveries`.

- `GET Subscription/{id}/$status`: a `Parameters` resource modelled on the R4
  Subscriptions Backport's subscription-status (`type` = `query-status`), with the
  hub's delivery figures added: `pending`, `in-flight`, `gave-up`, `oldest-pending`,
  `next-attempt` and `last-attempt`. Allowed to whoever may read the Subscription.
- `POST Subscription/{id}/$resend`: makes every pending notification of the
  Subscription due now; with a `resource` parameter (`Type/id`) it queues a fresh
  notification of that resource instead, only if it matches the criteria and both
  the Subscription's owner and the caller may read it (fail closed: 422 otherwise,
  one answer for "missing" and "not readable", so nothing can be probed). Allowed to
  whoever may update the Subscription. Its AuditEvent is appended in the unit of
  work that changes the outbox, like a write's.
- `GET AuditEvent/$chain-head`: the domain's audit chain head, as `hub audit verify`
  prints it, for a role that may read every AuditEvent.

`hub deliveries list|retry` (`overview`, `retry_as_operator`) run the same store
code as the operations, and `retry` leaves an AuditEvent too.

Sources (docs/architecture.md §4): the queue figures are the Subscription's outbox
rows (`hub.store.delivery_state`); the last attempt is its newest `transmit`
AuditEvent, the only record that holds an attempt's time and a success too (a
delivered row leaves the outbox, and the delivery health counts failures only);
`events-since-subscription-start` counts its delivered notifications (successful
`transmit` events) plus the pending ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.access.matrix import Action
from hub.access.policy import subscriber_may_read, subscriber_origins
from hub.audit.events import DESTINATION_ROLE, TRACE_ID_EXTENSION, Entity, rest_event
from hub.audit.store import prepare as prepare_event
from hub.fhir import jsonio
from hub.fhir.bundle import format_instant
from hub.fhir.extract import extract, instant
from hub.fhir.match import chain_targets, matches
from hub.fhir.model import is_supported, parse_body
from hub.fhir.outcome import FhirError, bad_request, not_found, unprocessable
from hub.fhir.query import parse_search
from hub.interactions.exchange import Audit, Exchange
from hub.interactions.reads import gone
from hub.notify.registry import LiveSubscription, live_subscription
from hub.runtime import HUB_DEVICE, utcnow
from hub.store import outbox, resources
from hub.store.audit import append_events
from hub.store.audit import chain_head as stored_chain_head
from hub.store.db import Database
from hub.store.delivery_state import Queue, make_due, queue_of, queues
from hub.store.index import load_chain_targets
from hub.store.resources import NewVersion, StoredRow
from hub.store.search import search
from hub.store.sql import Work
from hub.trace import TraceIds

STATUS = "$status"
RESEND = "$resend"
CHAIN_HEAD = "$chain-head"

# hub.notify.retry.describe_failure writes an HTTP failure as "HTTP 503 from <endpoint>".
_HTTP_FAILURE = re.compile(r"HTTP (\d{3}) from ")
_REFERENCE = re.compile(r"([A-Za-z]{1,64})/([A-Za-z0-9\-.]{1,64})")


@dataclass(frozen=True)
class LastAttempt:
    """The newest notification attempt of a Subscription, from its `transmit` AuditEvent."""

    time: datetime
    success: bool
    endpoint: str | None
    http_status: int | None  # of a failure answered with a status; a success is a 2xx
    error: str | None  # why it failed
    trace_id: str | None

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> LastAttempt | None:
        recorded = instant(str(event.get("recorded", "")))
        if recorded is None:
            return None
        description = event.get("outcomeDesc")
        error = description if isinstance(description, str) else None
        status = _HTTP_FAILURE.match(error or "")
        return cls(
            time=recorded,
            success=event.get("outcome") == "0",
            endpoint=_destination(event),
            http_status=int(status.group(1)) if status else None,
            error=error,
            trace_id=_trace_id(event),
        )


def _destination(event: Mapping[str, Any]) -> str | None:
    for agent in event.get("agent") or ():
        codes = {c.get("code") for c in (agent.get("type") or {}).get("coding") or ()}
        address = (agent.get("network") or {}).get("address")
        if DESTINATION_ROLE["code"] in codes and isinstance(address, str):
            return address
    return None


def _trace_id(event: Mapping[str, Any]) -> str | None:
    for extension in event.get("extension") or ():
        if extension.get("url") == TRACE_ID_EXTENSION:
            value = extension.get("valueId")
            return value if isinstance(value, str) else None
    return None


@dataclass(frozen=True)
class DeliveryState:
    """What `$status` answers about one Subscription."""

    subscription_id: str
    version_id: int
    status: str
    error: str | None
    queue: Queue
    delivered: int
    last_attempt: LastAttempt | None

    def parameters(self) -> dict[str, Any]:
        """The `Parameters` resource (R4 Subscriptions Backport status, plus the queue)."""
        queue = self.queue
        parameters: list[dict[str, Any]] = [
            {"name": "subscription", "valueReference": {"reference": self._reference}},
            {"name": "status", "valueCode": self.status},
            {"name": "type", "valueCode": "query-status"},
            {
                "name": "events-since-subscription-start",
                "valueString": str(self.delivered + queue.pending),
            },
            {"name": "pending", "valueInteger": queue.pending},
            {"name": "in-flight", "valueInteger": queue.in_flight},
            {"name": "gave-up", "valueInteger": queue.gave_up},
        ]
        if queue.oldest_pending is not None:
            parameters.append(
                {"name": "oldest-pending", "valueInstant": format_instant(queue.oldest_pending)}
            )
        if queue.next_attempt is not None:
            parameters.append(
                {"name": "next-attempt", "valueInstant": format_instant(queue.next_attempt)}
            )
        if self.last_attempt is not None:
            parameters.append({"name": "last-attempt", "part": _attempt_parts(self.last_attempt)})
        if self.error:
            parameters.append({"name": "error", "valueCodeableConcept": {"text": self.error}})
        return {"resourceType": "Parameters", "parameter": parameters}

    @property
    def _reference(self) -> str:
        return f"Subscription/{self.subscription_id}"


def _attempt_parts(attempt: LastAttempt) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [
        {"name": "time", "valueInstant": format_instant(attempt.time)},
        {"name": "outcome", "valueCode": "success" if attempt.success else "failure"},
    ]
    if attempt.http_status is not None:
        parts.append({"name": "http-status", "valueInteger": attempt.http_status})
    if attempt.error is not None:
        parts.append({"name": "error", "valueString": attempt.error})
    if attempt.endpoint is not None:
        parts.append({"name": "endpoint", "valueUrl": attempt.endpoint})
    if attempt.trace_id is not None:
        parts.append({"name": "trace-id", "valueId": attempt.trace_id})
    return parts


@dataclass(frozen=True)
class Answered:
    """An operation's `Parameters`, with what its AuditEvent names."""

    parameters: dict[str, Any]
    audit: Audit


# --- reading the state ---------------------------------------------------------------------


def _transmit_search(subscription_id: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("type", "transmit"), ("entity", f"Subscription/{subscription_id}"), *extra]


def delivery_state(domain: str, row: StoredRow, *, now: datetime) -> Work[DeliveryState]:
    """The state of the stored Subscription `row`, read in one snapshot."""
    subscription = jsonio.loads(row.content)
    queue = yield from queue_of(domain, row.id, now=now)
    newest = yield from search(
        domain=domain,
        query=parse_search("AuditEvent", _transmit_search(row.id, ("_total", "none"))),
        allowed_origins=None,
        page_size=1,
    )
    delivered = yield from search(
        domain=domain,
        query=parse_search(
            "AuditEvent", _transmit_search(row.id, ("outcome", "0"), ("_summary", "count"))
        ),
        allowed_origins=None,
        page_size=0,
    )
    last = LastAttempt.from_event(jsonio.loads(newest.rows[0].content)) if newest.rows else None
    error = subscription.get("error")
    return DeliveryState(
        subscription_id=row.id,
        version_id=row.version_id,
        status=str(subscription.get("status", "")),
        error=error if isinstance(error, str) else None,
        queue=queue,
        delivered=delivered.total or 0,
        last_attempt=last,
    )


def _subscription(exchange: Exchange, id: str, action: Action) -> Work[StoredRow]:
    """The stored Subscription `id`, if the caller may `action` (read or update) it."""
    access = exchange.authorised()
    row = yield from resources.current(exchange.domain, "Subscription", id)
    if row is None:
        raise not_found(f"Subscription/{id} does not exist")
    if not access.allows(action, "Subscription", row.origin):
        raise access.refusal(exchange.interaction, f"Subscription/{id}", f"it needs {action}")
    if row.deleted:
        raise gone("Subscription", id)
    return row


def _named(row: StoredRow, operation: str, *details: tuple[str, str]) -> Entity:
    return Entity(
        what=f"Subscription/{row.id}/_history/{row.version_id}",
        detail=(("operation", operation), *details),
    )


async def status(exchange: Exchange, id: str) -> Answered:
    """`Subscription/{id}/$status`: for whoever may read the Subscription."""

    def unit() -> Work[tuple[StoredRow, DeliveryState]]:
        row = yield from _subscription(exchange, id, "read")
        state = yield from delivery_state(exchange.domain, row, now=utcnow())
        return row, state

    row, state = await exchange.runtime.database.read(unit())
    return Answered(state.parameters(), Audit((_named(row, STATUS),)))


async def chain_head(exchange: Exchange) -> Answered:
    """`AuditEvent/$chain-head`: the head `hub audit verify --expect-head` takes.

    Only for a role that may read every AuditEvent of the domain: the head stands for
    all of them. The head as stored: `hub audit verify` checks it against the chain.
    """
    access = exchange.authorised()
    if access.origins("read", "AuditEvent") is not None:
        raise access.refusal(
            exchange.interaction,
            "AuditEvent/$chain-head",
            "the audit chain's head is for a role that may read every AuditEvent",
        )
    seq, digest = await exchange.runtime.database.read(stored_chain_head(exchange.domain))
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "head", "valueString": f"{seq}:{digest}"},
            {"name": "seq", "valueDecimal": seq},
            {"name": "digest", "valueString": digest},
        ],
    }
    return Answered(parameters, Audit((Entity(detail=(("operation", CHAIN_HEAD),)),)))


# --- resend ----------------------------------------------------------------------------------


def resend_target(body: bytes, query: Sequence[tuple[str, str]]) -> str | None:
    """The `resource` parameter of `$resend` (`Type/id`), from the URL or a Parameters body.

    Nothing else is accepted (400 naming it), and the reference must be a local
    `Type/id` of a type the hub serves.
    """
    given: list[tuple[str, str]] = []
    for name, value in query:
        if name == "resource":
            given.append((value, "resource"))
        elif name != "_format":
            raise bad_request(f"$resend takes no parameter {name!r}; only 'resource'", name)
    if body.strip():
        document = parse_body(body, expected_type="Parameters")
        items = document.get("parameter", [])
        if not isinstance(items, list):
            raise bad_request("Parameters.parameter must be a list", "Parameters.parameter")
        for n, item in enumerate(items):
            given.append(_resource_parameter(item, f"Parameters.parameter[{n}]"))
    if len(given) > 1:
        raise bad_request("$resend takes one 'resource' at most", given[1][1])
    if not given:
        return None
    value, where = given[0]
    match = _REFERENCE.fullmatch(value)
    if match is None or not is_supported(match.group(1)):
        raise bad_request(
            f"resource must be a local reference Type/id to a supported type, not {value[:80]!r}",
            where,
        )
    return value


def _resource_parameter(item: object, where: str) -> tuple[str, str]:
    if not isinstance(item, dict) or item.get("name") != "resource":
        name = item.get("name") if isinstance(item, dict) else None
        raise bad_request(f"$resend takes no parameter {name!r}; only 'resource'", f"{where}.name")
    reference = item.get("valueReference")
    value = reference.get("reference") if isinstance(reference, dict) else item.get("valueString")
    if not isinstance(value, str):
        raise bad_request(
            "resource needs a valueReference (or valueString) Type/id", f"{where}.value[x]"
        )
    return value, where


def _live(row: StoredRow, now: datetime) -> LiveSubscription:
    """The Subscription as delivery sees it; 422 when it can deliver nothing now."""
    subscription = live_subscription(jsonio.loads(row.content))
    if subscription is None or not subscription.is_live(now):
        status = jsonio.loads(row.content).get("status")
        raise unprocessable(
            f"Subscription/{row.id} is {status!r} or has ended: nothing is delivered for it. "
            "Set its status to 'requested' (or its end later) to resume deliveries",
            "Subscription.status",
        )
    return subscription


def _due_now(
    domain: str,
    subscription_id: str | None,
    event_for: Callable[[int], NewVersion],
    chain_key: bytes,
) -> Work[int]:
    """Bring the pending rows forward; the retry's AuditEvent, naming how many, last."""
    count = yield from make_due(domain, subscription_id, now=utcnow())
    if count:
        yield from outbox.announce()
    yield from append_events([event_for(count)], chain_key)
    return count


async def resend(
    exchange: Exchange, id: str, body: bytes, query: Sequence[tuple[str, str]]
) -> Answered:
    """`Subscription/{id}/$resend`: for whoever may update the Subscription.

    `body` (a `Parameters` resource, or empty) and `query` carry the optional
    `resource`; they are read only once the caller is known to be allowed.
    """
    runtime = exchange.runtime
    row = await runtime.database.read(_subscription(exchange, id, "update"))
    target = resend_target(body, query)
    subscription = _live(row, utcnow())
    if target is not None:
        return await _resend_resource(exchange, row, subscription, target)

    def event_for(count: int) -> NewVersion:
        entity = _named(row, RESEND, ("due-now", str(count)))
        return prepare_event(exchange.domain, exchange.audit_event(200, (entity,)), utcnow())

    count = await runtime.database.write(
        _due_now(exchange.domain, row.id, event_for, runtime.chain_key)
    )
    if count:
        runtime.wake_dispatcher()
    audit = Audit((_named(row, RESEND, ("due-now", str(count))),), recorded=True)
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": f"Subscription/{row.id}"}},
            {"name": "due-now", "valueInteger": count},
        ],
    }
    return Answered(parameters, audit)


async def _resend_resource(
    exchange: Exchange, row: StoredRow, subscription: LiveSubscription, target: str
) -> Answered:
    """Queue a fresh notification of `target`, if the Subscription would have been told of it."""
    runtime, domain = exchange.runtime, exchange.domain
    access = exchange.authorised()
    rtype, resource_id = target.split("/")
    owner = subscription.owner
    snapshot = runtime.access.snapshot
    found = await runtime.database.read(resources.current(domain, rtype, resource_id))
    # One answer for missing, deleted and unreadable: a resend must not probe what exists.
    if (
        found is None
        or found.deleted
        or owner is None
        or not subscriber_may_read(snapshot, domain, owner, rtype, found.origin)
        or not access.allows("read", rtype, found.origin)
    ):
        raise unprocessable(
            f"{target} is not a resource that Subscription/{row.id}'s owner and you may read",
            "resource",
        )
    resource = jsonio.loads(found.content)
    values = extract(resource)
    targets = await runtime.database.read(
        load_chain_targets(domain, chain_targets(subscription.query, values))
    )
    if not matches(
        subscription.query,
        resource,
        values,
        resolve=lambda t, i: targets.get((t, i)),
        readable=lambda chained: subscriber_origins(snapshot, domain, owner, chained),
    ):
        raise unprocessable(
            f"{target} does not match Subscription/{row.id}'s criteria {subscription.criteria!r}",
            "resource",
        )
    version = Entity(what=f"{rtype}/{resource_id}/_history/{found.version_id}")
    entities = (_named(row, RESEND), version)
    trigger = outbox.Trigger(
        domain=domain,
        resource_type=rtype,
        resource_id=resource_id,
        version_id=found.version_id,
        origin=found.origin,
        source_device=access.caller.client_id,
        request_id=exchange.trace.request_id,
        trace_id=exchange.trace.trace_id,
        now=utcnow(),
    )
    event = prepare_event(domain, exchange.audit_event(200, entities), utcnow())

    def unit() -> Work[None]:
        yield from outbox.enqueue_webhooks(trigger, [row.id])
        yield from outbox.announce()
        yield from append_events([event], runtime.chain_key)

    await runtime.database.write(unit())
    runtime.wake_dispatcher()
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": f"Subscription/{row.id}"}},
            {"name": "queued", "valueReference": {"reference": version.what}},
        ],
    }
    return Answered(parameters, Audit(entities, recorded=True))


# --- the operator's command: hub deliveries list|retry -------------------------------------


@dataclass(frozen=True)
class Listed:
    """One queue of `hub deliveries list`, with its Subscription's status (None: an e-mail)."""

    queue: Queue
    status: str | None
    error: str | None


def overview(
    *, domain: str | None, subscription_id: str | None, now: datetime
) -> Work[list[Listed]]:
    """Every queue with pending or given-up rows, and its Subscription's status."""
    listed = []
    for queue in (yield from queues(domain=domain, subscription_id=subscription_id, now=now)):
        status = error = None
        if queue.subscription_id is not None:
            row = yield from resources.current(queue.domain, "Subscription", queue.subscription_id)
            stored = jsonio.loads(row.content) if row is not None else {}
            status = "deleted" if row is None or row.deleted else str(stored.get("status", ""))
            found = stored.get("error")
            error = found if isinstance(found, str) else None
        listed.append(Listed(queue, status, error))
    return listed


class NotRetried(Exception):
    """`hub deliveries retry` refused: an unknown Subscription, or one that delivers nothing."""


async def retry_as_operator(
    database: Database,
    chain_key: bytes,
    *,
    domain: str,
    subscription_id: str | None,
    operator: str,
    site: str,
) -> int:
    """`hub deliveries retry`: as `$resend`, for an operator on the machine; rows made due.

    `subscription_id` None retries every pending row of the domain. The AuditEvent
    names the hub's Device as the agent and the operator (`user@host`) in a detail.
    """
    now = utcnow()
    row = None
    if subscription_id is not None:
        row = await database.read(resources.current(domain, "Subscription", subscription_id))
        if row is None or row.deleted:
            raise NotRetried(f"Subscription/{subscription_id} does not exist in {domain!r}")
        try:
            _live(row, now)
        except FhirError as error:
            raise NotRetried(error.text) from error

    def event_for(count: int) -> NewVersion:
        details = (("requested-by", operator), ("due-now", str(count)))
        entity = (
            _named(row, RESEND, *details)
            if row is not None
            else Entity(detail=(("operation", RESEND), ("scope", "all"), *details))
        )
        event = rest_event(
            interaction="operation",
            status=200,
            outcome_description=None,
            caller_device=HUB_DEVICE,
            hub_device=HUB_DEVICE,
            site=site,
            trace=TraceIds.new(),
            entities=(entity,),
            recorded=utcnow(),
        )
        return prepare_event(domain, event, utcnow())

    return await database.write(_due_now(domain, subscription_id, event_for, chain_key))
