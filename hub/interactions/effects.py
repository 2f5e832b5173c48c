"""What a write means beyond storing it: one table of rules per resource type.

`TYPE_RULES` says, for each type that has any, what its writes check and do:
rules checked before the R4 structure (one 422 names everything missing),
rules checked with the structure (one 400 lists every problem), business rules
that may resolve DNS (before any transaction), whether it is append-only or
protected from deletion, and what its writes and deletes do inside their unit
of work (the subscription generation, patient e-mails, chaining a posted
AuditEvent). Every write is then matched against live Subscriptions into the
outbox, in the same unit of work. The effects return what the write's
AuditEvent should say about them (`Effects.details`, e.g. the patient-notice
decision), which the write puts in the event it appends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hub.access.apps import Snapshot
from hub.access.policy import subscriber_may_read, subscriber_origins
from hub.audit.events import AUDIT_EVENT_TYPE, DCM, LIFECYCLE
from hub.fhir import jsonio
from hub.fhir.match import OriginsOf, Target, chain_targets, matches
from hub.fhir.model import Rules
from hub.fhir.outcome import FhirError, unprocessable
from hub.fhir.query import parse_criteria, parse_search
from hub.interactions.devices import wanted_devices
from hub.interactions.exchange import Exchange
from hub.interactions.reads import refuse_unreadable_chains
from hub.net import UnsafeDestination, check_url
from hub.notify.mail import NoticeKind, decide_patient_notice
from hub.notify.registry import LiveSubscription
from hub.rules.audit_event import check_kt2_essentials, check_posted_by
from hub.rules.bsn import BSN_SYSTEM
from hub.rules.notification import email_of, patient_bsn, patient_email, validate_communication
from hub.rules.subscription import normalise_status, validate_subscription
from hub.store import outbox
from hub.store.audit import append_links
from hub.store.index import load_chain_targets
from hub.store.resources import NewVersion, StoredRow
from hub.store.search import search
from hub.store.sql import Work, returning
from hub.store.subscriptions import bump_generation


@dataclass(frozen=True)
class Change:
    """A stored version, as the effects of its write see it."""

    exchange: Exchange
    version: NewVersion
    row: StoredRow
    trigger: outbox.Trigger


@dataclass(frozen=True)
class Effects:
    """What a write's effects did: whether they queued deliveries, and facts for its audit.

    `details` are (type, valueString) pairs for the written entity's `detail` in the
    write's AuditEvent, e.g. `("patient-notice", "invitation")`.
    """

    queued: bool = False
    details: tuple[tuple[str, str], ...] = ()


NOTHING = Effects()


# Business rules: may resolve DNS, so they run before any transaction opens.
BeforeWrite = Callable[
    [Exchange, dict[str, Any], Mapping[str, Any] | None], Awaitable[dict[str, Any]]
]
# Inside the write's unit of work.
AfterWrite = Callable[[Change], Work[Effects]]
AfterDelete = Callable[[Exchange], Work[None]]


def _no_effects(_written: Change) -> Work[Effects]:
    return returning(NOTHING)


def _nothing_to_do(_exchange: Exchange) -> Work[None]:
    return returning(None)


async def _unchanged(
    _exchange: Exchange, resource: dict[str, Any], _previous: Mapping[str, Any] | None
) -> dict[str, Any]:
    return resource


def _deletable(_exchange: Exchange, _id: str) -> None:
    return None


@dataclass(frozen=True)
class TypeRules:
    """Everything a resource type's writes do beyond storing and notifying."""

    # Koppeltaal: AuditEvents are never updated or deleted, by anyone.
    append_only: bool = False
    # Checked before the R4 structure, so one 422 names everything missing.
    essentials: Callable[[Mapping[str, Any]], list[Any]] | None = None
    # Checked with the structure (`hub.fhir.model.validate`): one 400 lists both.
    structural: Rules | None = None
    before_write: BeforeWrite = _unchanged
    check_deletable: Callable[[Exchange, str], None] = _deletable
    after_write: AfterWrite = _no_effects
    after_delete: AfterDelete = _nothing_to_do


# --- Subscription ----------------------------------------------------------------------


async def _subscription_rules(
    exchange: Exchange, resource: dict[str, Any], previous: Mapping[str, Any] | None
) -> dict[str, Any]:
    issues = validate_subscription(resource, now=datetime.now(UTC), parse_criteria=parse_criteria)
    if issues:
        raise FhirError(422, issues)
    criteria = parse_criteria(resource["criteria"])
    criteria_type = criteria.resource_type
    access = exchange.authorised()
    if not access.may_search(criteria_type):
        raise access.refusal(
            "search-type",
            criteria_type,
            f"the Subscription's criteria search {criteria_type} resources for the subscriber",
        )
    refuse_unreadable_chains(access, criteria)
    settings = exchange.runtime.settings
    app = exchange.runtime.access.registry.app(exchange.domain, access.caller.client_id)
    try:
        await check_url(
            resource["channel"]["endpoint"],
            allow_networks=settings.webhook_allow_networks,
            allowed_prefixes=app.endpoints if app is not None else (),
        )
    except UnsafeDestination as exc:
        raise unprocessable(str(exc), "Subscription.channel.endpoint") from exc
    return normalise_status(resource, current=previous)


def _subscription_changed(written: Change) -> Work[Effects]:
    """Every process's subscription index sees the change at its next write."""
    yield from bump_generation(written.exchange.domain)
    return NOTHING


def _subscription_deleted(exchange: Exchange) -> Work[None]:
    """A deleted Subscription leaves the index."""
    yield from bump_generation(exchange.domain)


# --- Communication (a Spreekuur.nl patient notification) ---------------------------------


def _registered_email(domain: str, bsn: str | None) -> Work[str | None]:
    """The e-mail of the domain's Patient with this BSN: a patient registered with the portal."""
    if bsn is None:
        return None
    query = parse_search("Patient", [("identifier", f"{BSN_SYSTEM}|{bsn}")])
    page = yield from search(domain=domain, query=query, allowed_origins=None, page_size=10)
    for row in page.rows:
        email = email_of(jsonio.loads(row.content))
        if email is not None:
            return email
    return None


def _queue_patient_notice(written: Change) -> Work[Effects]:
    """Queue the patient's e-mail (notice or invitation); the decision is for the audit."""
    if written.version.version_id != 1:
        return NOTHING
    exchange = written.exchange
    communication = written.version.resource
    settings = exchange.runtime.settings
    notice = decide_patient_notice(
        registered_email=(
            yield from _registered_email(exchange.domain, patient_bsn(communication))
        ),
        contained_email=patient_email(communication),
    )
    if settings.smtp_url is None:
        decision = f"{notice.kind.value} (not sent: e-mail is off, HUB_SMTP_URL is unset)"
    elif notice.kind is NoticeKind.NONE or notice.address is None:
        decision = "none (the patient is not registered and no e-mail address was given)"
    else:
        decision = notice.kind.value
        yield from outbox.enqueue_email(
            written.trigger, recipient=notice.address, kind=notice.kind.value
        )
    return Effects(
        queued=settings.smtp_url is not None and notice.kind is not NoticeKind.NONE,
        details=(("patient-notice", decision),),
    )


# --- AuditEvent and Device -------------------------------------------------------------


def _audit_essentials(resource: Mapping[str, Any]) -> list[Any]:
    return list(check_kt2_essentials(resource))


# The hub's own event kinds (hub.audit.events): REST events, notifications sent, logins.
HUB_EVENT_TYPES = frozenset({(AUDIT_EVENT_TYPE, "rest"), (LIFECYCLE, "transmit"), (DCM, "110114")})


async def _posted_by_caller(
    exchange: Exchange, resource: dict[str, Any], _previous: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A posted event speaks for its poster alone: one 422 lists every way it does not."""
    caller = f"Device/{exchange.authorised().caller.client_id}"
    if issues := check_posted_by(resource, caller, reserved_types=HUB_EVENT_TYPES):
        raise FhirError(422, issues)
    return resource


def _chain_posted(written: Change) -> Work[Effects]:
    """An application's own AuditEvent joins the domain's chain too."""
    yield from append_links(
        written.row.domain,
        [(written.row.pk, written.row.content)],
        written.exchange.runtime.chain_key,
    )
    return NOTHING


def _registered_device(exchange: Exchange, id: str) -> None:
    """The hub's and the registered apps' Devices stay: resource-origin names them.

    They are made from the apps file at start-up; deleting one through the API would
    orphan every resource its app wrote. FHIR answers 409 for such a refusal.
    """
    if id in wanted_devices(exchange.runtime.access.registry, exchange.domain):
        raise FhirError.single(
            409,
            "conflict",
            f"Device/{id} is registered in the apps file; remove the application there instead",
        )


TYPE_RULES: Mapping[str, TypeRules] = {
    "AuditEvent": TypeRules(
        append_only=True,
        essentials=_audit_essentials,
        before_write=_posted_by_caller,
        after_write=_chain_posted,
    ),
    "Communication": TypeRules(
        structural=validate_communication, after_write=_queue_patient_notice
    ),
    "Device": TypeRules(check_deletable=_registered_device),
    "Subscription": TypeRules(
        before_write=_subscription_rules,
        after_write=_subscription_changed,
        after_delete=_subscription_deleted,
    ),
}
_DEFAULT = TypeRules()


def rules_for(rtype: str) -> TypeRules:
    return TYPE_RULES.get(rtype, _DEFAULT)


def check_essentials(rtype: str, resource: Mapping[str, Any]) -> None:
    essentials = rules_for(rtype).essentials
    if essentials is not None and (issues := essentials(resource)):
        raise FhirError(422, issues)


# --- every write: notifications --------------------------------------------------------


def after_write(written: Change, early: Matched | None = None) -> Work[Effects]:
    """The type's effects, then subscription matching: queued when either queued deliveries.

    `early` is the matching done before the unit of work (`match_early`); it is used
    when the domain's subscription generation, read in this unit, is still the one
    it was matched against, and the matching is done again here otherwise.
    """
    effects = yield from rules_for(written.version.rtype).after_write(written)
    notified = yield from _queue_notifications(written, early)
    return Effects(queued=effects.queued or notified, details=effects.details)


@dataclass(frozen=True)
class Matched:
    """The Subscriptions a version matched, against the index at `generation`."""

    generation: int
    subscription_ids: tuple[str, ...]


def match_early(exchange: Exchange, version: NewVersion) -> Matched | None:
    """Match `version` before its unit of work, against the index this process holds.

    Matching is pure Python over the in-memory index: done here, in the request's
    task, it stays out of the database's critical section. None when the domain's
    index is not loaded yet, or when a candidate's criteria chain into other
    resources (their targets are read in the unit of work).
    """
    # One index object, loaded at one generation: its generation and its candidates agree.
    index = exchange.runtime.subscriptions.loaded(exchange.domain)
    if index is None:
        return None
    candidates = index.candidates(version.rtype, version.values, version.last_updated)
    found = _matching(exchange, version, candidates, targets=None)
    return None if found is None else Matched(index.generation, found)


def _matching(
    exchange: Exchange,
    version: NewVersion,
    candidates: Sequence[LiveSubscription],
    targets: Mapping[tuple[str, str], Target] | None,
) -> tuple[str, ...] | None:
    """Ids of the `candidates` that `version` matches and whose owner may read it.

    With `targets` None, a candidate whose criteria chain into other resources
    makes the answer None (unknown) instead.
    """
    runtime, domain, rtype = exchange.runtime, exchange.domain, version.rtype
    if targets is None and any(chain_targets(s.query, version.values) for s in candidates):
        return None
    known = targets or {}
    snapshot = runtime.access.snapshot
    return tuple(
        subscription.id
        for subscription in candidates
        if subscription.owner is not None
        and matches(
            subscription.query,
            version.resource,
            version.values,
            resolve=lambda t, i: known.get((t, i)),
            # A chain only looks into what the subscriber may read, as its search would.
            readable=_readable_by(snapshot, domain, subscription.owner),
        )
        # Fail closed: a subscriber never hears of what it may not read.
        and subscriber_may_read(snapshot, domain, subscription.owner, rtype, version.origin)
    )


def _queue_notifications(written: Change, early: Matched | None) -> Work[bool]:
    exchange, version = written.exchange, written.version
    index = exchange.runtime.subscriptions
    generation = yield from index.ensure_current(exchange.domain)
    if early is not None and early.generation == generation:
        matched = early.subscription_ids
    else:
        candidates = index.candidates(
            exchange.domain, version.rtype, version.values, version.last_updated
        )
        needed: set[tuple[str, str]] = set()
        for subscription in candidates:
            needed |= chain_targets(subscription.query, version.values)
        targets = (yield from load_chain_targets(exchange.domain, needed)) if needed else {}
        matched = _matching(exchange, version, candidates, targets) or ()
    if not matched:
        return False
    yield from outbox.enqueue_webhooks(written.trigger, matched)
    return True


def _readable_by(snapshot: Snapshot, domain: str, subscriber: str) -> OriginsOf:
    return lambda rtype: subscriber_origins(snapshot, domain, subscriber, rtype)
