"""What a write means beyond storing it, per resource type.

`before_write` enforces the business rules of a type before any transaction
opens (they may resolve DNS). `after_write` runs inside the write's
transaction: it keeps the subscription index generation, queues patient
e-mails, and matches the write against live Subscriptions into the outbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from hub.access.apps import Snapshot
from hub.access.policy import subscriber_may_read, subscriber_origins
from hub.fhir import jsonio
from hub.fhir.extract import IndexValues
from hub.fhir.match import OriginsOf, chain_targets, matches
from hub.fhir.model import Rules
from hub.fhir.outcome import FhirError, forbidden, unprocessable
from hub.fhir.query import parse_criteria, parse_search
from hub.interactions.devices import wanted_devices
from hub.interactions.exchange import Exchange
from hub.interactions.reads import refuse_unreadable_chains
from hub.net import UnsafeDestination, check_url
from hub.notify.mail import NoticeKind, decide_patient_notice
from hub.notify.registry import bump_generation
from hub.rules.audit_event import check_kt2_essentials
from hub.rules.bsn import BSN_SYSTEM
from hub.rules.notification import (
    email_of,
    patient_bsn,
    patient_email,
    validate_communication,
)
from hub.rules.subscription import normalise_status, validate_subscription
from hub.store.index import load_chain_targets
from hub.store.outbox import email_row, enqueue_webhook
from hub.store.search import search

# AuditEvents are never updated or deleted (Koppeltaal), by anyone.
APPEND_ONLY = frozenset({"AuditEvent"})

# Types whose own rules answer 400, as a broken R4 structure does: they are checked with
# the structure (`hub.fhir.model.validate`), so one OperationOutcome lists every problem
# of both. A Communication is a Spreekuur.nl notification, whose contract asks for that.
STRUCTURAL_RULES: Mapping[str, Rules] = {"Communication": validate_communication}


async def before_write(
    exchange: Exchange, resource: dict[str, Any], *, previous: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Check the type's business rules; returns the resource as it will be stored."""
    rtype = resource["resourceType"]
    if rtype == "Subscription":
        return await _subscription_rules(exchange, resource, previous)
    return resource


def check_deletable(exchange: Exchange, rtype: str, id: str) -> None:
    """The hub's and the registered apps' Devices stay: resource-origin names them.

    They are made from the apps file at start-up; deleting one through the API would
    orphan every resource its app wrote. FHIR answers 409 for such a refusal.
    """
    if rtype == "Device" and id in wanted_devices(
        exchange.runtime.access.registry, exchange.domain
    ):
        raise FhirError.single(
            409,
            "conflict",
            f"Device/{id} is registered in the apps file; remove the application there instead",
        )


def check_essentials(rtype: str, resource: Mapping[str, Any]) -> None:
    """Rules checked before the R4 structure, so one 422 names everything missing."""
    if rtype == "AuditEvent":
        issues = check_kt2_essentials(resource)
        if issues:
            raise FhirError(422, issues)


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
        raise forbidden(f"The subscriber may not read {criteria_type} resources")
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


async def after_write(
    session: AsyncSession,
    exchange: Exchange,
    resource: dict[str, Any],
    values: IndexValues,
    origin: str | None,
    now: datetime,
) -> bool:
    """Side effects in the write's transaction; True when deliveries were queued."""
    rtype = resource["resourceType"]
    queued = False
    if rtype == "Subscription":
        await bump_generation(session, exchange.domain)
    elif rtype == "Communication" and resource["meta"]["versionId"] == "1":
        queued = await _queue_patient_notice(session, exchange, resource, now)
    return await _queue_notifications(session, exchange, resource, values, origin, now) or queued


async def after_delete(session: AsyncSession, exchange: Exchange, rtype: str) -> None:
    """No notification on delete (Koppeltaal); a deleted Subscription leaves the index."""
    if rtype == "Subscription":
        await bump_generation(session, exchange.domain)


async def _queue_notifications(
    session: AsyncSession,
    exchange: Exchange,
    resource: dict[str, Any],
    values: IndexValues,
    origin: str | None,
    now: datetime,
) -> bool:
    runtime = exchange.runtime
    await runtime.subscriptions.ensure_current(session, exchange.domain)
    rtype = resource["resourceType"]
    candidates = runtime.subscriptions.candidates(exchange.domain, rtype, values, now)
    if not candidates:
        return False
    needed: set[tuple[str, str]] = set()
    for subscription in candidates:
        needed |= chain_targets(subscription.query, values)
    targets = await load_chain_targets(session, exchange.domain, needed) if needed else {}
    snapshot = runtime.access.snapshot
    caller = exchange.authorised().caller
    queued = False
    for subscription in candidates:
        if subscription.owner is None or not matches(
            subscription.query,
            resource,
            values,
            resolve=lambda t, i: targets.get((t, i)),
            # A chain only looks into what the subscriber may read, as its search would.
            readable=_readable_by(snapshot, exchange.domain, subscription.owner),
        ):
            continue
        # Fail closed: a subscriber never hears of what it may not read.
        if not subscriber_may_read(snapshot, exchange.domain, subscription.owner, rtype, origin):
            continue
        await enqueue_webhook(
            session,
            domain=exchange.domain,
            subscription_id=subscription.id,
            resource_type=rtype,
            resource_id=resource["id"],
            version_id=int(resource["meta"]["versionId"]),
            source_device=caller.client_id,
            request_id=exchange.trace.request_id,
            trace_id=exchange.trace.trace_id,
            now=now,
        )
        queued = True
    return queued


def _readable_by(snapshot: Snapshot, domain: str, subscriber: str) -> OriginsOf:
    return lambda rtype: subscriber_origins(snapshot, domain, subscriber, rtype)


async def _registered_email(session: AsyncSession, domain: str, bsn: str | None) -> str | None:
    """The e-mail of the domain's Patient with this BSN: a patient registered with the portal."""
    if bsn is None:
        return None
    query = parse_search("Patient", [("identifier", f"{BSN_SYSTEM}|{bsn}")])
    page = await search(session, domain=domain, query=query, allowed_origins=None, page_size=10)
    for row in page.rows:
        email = email_of(jsonio.loads(row.content))
        if email is not None:
            return email
    return None


async def _queue_patient_notice(
    session: AsyncSession, exchange: Exchange, communication: dict[str, Any], now: datetime
) -> bool:
    """Queue the patient's e-mail (notice or invitation) and note the decision for the audit."""
    settings = exchange.runtime.settings
    notice = decide_patient_notice(
        registered_email=await _registered_email(
            session, exchange.domain, patient_bsn(communication)
        ),
        contained_email=patient_email(communication),
    )
    if settings.smtp_url is None:
        decision = f"{notice.kind.value} (not sent: e-mail is off, HUB_SMTP_URL is unset)"
    elif notice.kind is NoticeKind.NONE or notice.address is None:
        decision = "none (the patient is not registered and no e-mail address was given)"
    else:
        decision = notice.kind.value
        session.add(
            email_row(
                domain=exchange.domain,
                resource_type="Communication",
                resource_id=communication["id"],
                version_id=1,
                source_device=exchange.authorised().caller.client_id,
                request_id=exchange.trace.request_id,
                trace_id=exchange.trace.trace_id,
                recipient=notice.address,
                kind=notice.kind.value,
                now=now,
            )
        )
    exchange.details.append(("patient-notice", decision))
    return settings.smtp_url is not None and notice.kind is not NoticeKind.NONE
