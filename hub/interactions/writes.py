"""Write interactions: create, update, delete (docs/architecture.md, "The write path").

Each write validates first and prepares the version it will store (stamped,
serialised, indexed) outside any transaction, then runs ONE unit of work:
check the version it replaces, store the resource with its history and index
rows, run the type's effects and the subscription matching into the outbox,
and append its AuditEvent to the chain. The database commits it (on SQLite
with other units of the moment) before the caller hears 201; then the
dispatcher is woken. Its result's `Audit` says the event is recorded, so the API
records no other; a delete of an already deleted resource changes nothing and
leaves its event to the API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from hub.audit.events import Entity
from hub.audit.store import prepare as prepare_event
from hub.fhir import jsonio
from hub.fhir.model import parse_body, refuse_unstorable, validate
from hub.fhir.origin import origin_references, with_origin
from hub.fhir.outcome import FhirError, bad_request, forbidden, not_found, unprocessable
from hub.fhir.query import MAX_DIGITS, whole_number
from hub.interactions import effects
from hub.interactions.exchange import Audit, Exchange
from hub.interactions.offload import cpu_bound
from hub.interactions.reads import Found, gone
from hub.runtime import utcnow
from hub.store import outbox, resources
from hub.store.audit import append_events
from hub.store.resources import NewVersion, StoredRow
from hub.store.sql import Work
from hub.trace import new_id

_WEAK_ETAG = re.compile(r'^(?:W/)?"([^"]*)"$')


@dataclass(frozen=True)
class Written(Found):
    """A stored version, with the status to answer (201 created, 200 updated)."""

    status: int


@dataclass(frozen=True)
class Deleted:
    """A delete's outcome: `deleted` is False when it was already deleted (nothing changed)."""

    deleted: bool
    audit: Audit


def append_only(rtype: str) -> FhirError:
    return FhirError.single(
        405,
        "not-supported",
        f"{rtype} resources are append-only: they are never updated or deleted",
        headers={"Allow": "GET, POST"},
    )


def _parse_if_match(header: str | None) -> int:
    if header is None:
        raise FhirError.single(
            428, "required", 'An update needs an If-Match header with the version, e.g. W/"3"'
        )
    match = _WEAK_ETAG.match(header.strip())
    version = whole_number(match.group(1)) if match else None
    if version is None:
        raise bad_request(
            f'If-Match must be an ETag such as W/"3" (at most {MAX_DIGITS} digits), '
            f"got {header[:60]!r}",
            "If-Match",
        )
    return version


def _refuse_client_origin(rtype: str, resource: dict[str, Any]) -> None:
    if origin_references(resource):
        raise unprocessable(
            "The resource-origin extension is set by the hub; a client may not supply it",
            f"{rtype}.extension",
        )


def _current_at(new: NewVersion, expected: int) -> Work[StoredRow]:
    """The resource's current row, locked, if it is still at version `expected`."""
    row = yield from resources.current(new.domain, new.rtype, new.id, for_update=True)
    if row is None:
        raise not_found(f"{new.rtype}/{new.id} does not exist")
    if row.deleted:
        raise gone(new.rtype, new.id)
    if row.version_id != expected:
        raise FhirError.single(
            412,
            "conflict",
            f"{new.rtype}/{new.id} is at version {row.version_id}, not {expected}: "
            "read it again and retry",
            "If-Match",
        )
    return row


@dataclass(frozen=True)
class _Prepared:
    """What a write's unit of work needs that was made before it, outside the database."""

    new: NewVersion
    status: int
    event: NewVersion  # the AuditEvent, for a write whose effects add no details
    entity: Entity
    early: effects.Matched | None


def _prepare(exchange: Exchange, new: NewVersion, status: int) -> _Prepared:
    entity = Entity(what=f"{new.rtype}/{new.id}/_history/{new.version_id}")
    event = prepare_event(exchange.domain, exchange.audit_event(status, (entity,)), utcnow())
    return _Prepared(new, status, event, entity, effects.match_early(exchange, new))


def _store(exchange: Exchange, prepared: _Prepared) -> Work[tuple[bool, Audit]]:
    """The write's unit of work: whether deliveries were queued, and the AuditEvent it recorded."""
    new = prepared.new
    previous = None
    if new.version_id > 1:
        previous = yield from _current_at(new, new.version_id - 1)
    row = yield from resources.write(new, previous=previous)
    trigger = outbox.Trigger(
        domain=new.domain,
        resource_type=new.rtype,
        resource_id=new.id,
        version_id=new.version_id,
        origin=new.origin,
        source_device=exchange.authorised().caller.client_id,
        request_id=exchange.trace.request_id,
        trace_id=exchange.trace.trace_id,
        now=new.last_updated,
    )
    done = yield from effects.after_write(
        effects.Change(exchange, new, row, trigger), prepared.early
    )
    if done.queued:
        yield from outbox.announce()
    entity, event = prepared.entity, prepared.event
    if done.details:  # e.g. the patient-notice decision, known only now
        entity = replace(entity, detail=done.details)
        event = prepare_event(
            exchange.domain, exchange.audit_event(prepared.status, (entity,)), utcnow()
        )
    # Last: appending to the chain locks the domain's head until commit.
    yield from append_events([event], exchange.runtime.chain_key)
    return done.queued, Audit((entity,), recorded=True)


def _audit(exchange: Exchange, entity: Entity, status: int) -> Work[Audit]:
    """Append the write's AuditEvent, naming `entity`, to the domain's chain."""
    event = prepare_event(exchange.domain, exchange.audit_event(status, (entity,)), utcnow())
    yield from append_events([event], exchange.runtime.chain_key)
    return Audit((entity,), recorded=True)


async def _commit(exchange: Exchange, new: NewVersion, *, status: int) -> Written:
    """Store `new` in one unit of work, audited; returns once it is committed."""
    runtime = exchange.runtime
    queued, audit = await runtime.database.write(_store(exchange, _prepare(exchange, new, status)))
    if queued:
        runtime.wake_dispatcher()
    return Written(
        new.rtype, new.id, new.version_id, new.last_updated, new.content, audit, status=status
    )


def _checked(
    rtype: str, body: bytes, rules: effects.TypeRules, *, id: str | None = None
) -> dict[str, Any]:
    """The body parsed and checked against the type's model and structural rules.

    A new resource (`id` None) must also meet its type's essentials; an update's body
    must carry the id of the resource it replaces.
    """
    resource = parse_body(body, expected_type=rtype)
    if id is None:
        effects.check_essentials(rtype, resource)
    elif resource.get("id") != id:
        raise bad_request(
            f"The resource id ({resource.get('id')!r}) must equal the id in the URL ({id!r})",
            f"{rtype}.id",
        )
    validate(resource, rules=rules.structural)
    return resource


def _versioned(
    domain: str, resource: dict[str, Any], *, id: str, version_id: int, origin: str | None,
    method: str,
) -> NewVersion:  # fmt: skip
    """The version to store: refused if it holds what no database text can, else prepared."""
    refuse_unstorable(resource)
    return resources.prepare(
        domain, resource, id=id, version_id=version_id, now=utcnow(), origin=origin, method=method
    )


async def create(exchange: Exchange, rtype: str, body: bytes) -> Written:
    access = exchange.authorised()
    if not access.may_create(rtype):
        raise access.refusal(exchange.interaction, rtype)
    rules = effects.rules_for(rtype)
    runtime = exchange.runtime
    resource = await cpu_bound(runtime, len(body), _checked, rtype, body, rules)
    _refuse_client_origin(rtype, resource)
    resource.pop("id", None)  # the hub assigns the id
    resource = await rules.before_write(exchange, resource, None)
    origin = access.caller.client_id
    with_origin(resource, origin)
    new = await cpu_bound(
        runtime, len(body), _versioned, exchange.domain, resource,
        id=new_id(), version_id=1, origin=origin, method="POST",
    )  # fmt: skip
    return await _commit(exchange, new, status=201)


async def update(
    exchange: Exchange, rtype: str, id: str, body: bytes, if_match: str | None
) -> Written:
    access = exchange.authorised()
    rules = effects.rules_for(rtype)
    if rules.append_only:
        raise append_only(rtype)
    runtime = exchange.runtime
    current = await runtime.database.read(resources.current(exchange.domain, rtype, id))
    if current is None:
        raise not_found(f"{rtype}/{id} does not exist")
    if not access.allows("update", rtype, current.origin):
        raise access.refusal(exchange.interaction, f"{rtype}/{id}")
    if current.deleted:
        raise gone(rtype, id)
    expected_version = _parse_if_match(if_match)
    resource = await cpu_bound(runtime, len(body), _checked, rtype, body, rules, id=id)
    previous = await cpu_bound(runtime, len(current.content), jsonio.loads, current.content)
    stored_origins = origin_references(previous)
    supplied_origins = origin_references(resource)
    if supplied_origins and supplied_origins != stored_origins:
        raise forbidden("resource-origin cannot change on update")
    if not supplied_origins and current.origin is not None:
        with_origin(resource, current.origin)
    resource = await rules.before_write(exchange, resource, previous)
    new = await cpu_bound(
        runtime, len(body), _versioned, exchange.domain, resource,
        id=id, version_id=expected_version + 1, origin=current.origin, method="PUT",
    )  # fmt: skip
    return await _commit(exchange, new, status=200)


def _delete(exchange: Exchange, rtype: str, id: str) -> Work[Deleted]:
    access = exchange.authorised()
    row = yield from resources.current(exchange.domain, rtype, id, for_update=True)
    if row is None:
        raise not_found(f"{rtype}/{id} does not exist")
    if not access.allows("delete", rtype, row.origin):
        raise access.refusal(exchange.interaction, f"{rtype}/{id}")
    rules = effects.rules_for(rtype)
    rules.check_deletable(exchange, id)
    if row.deleted:
        return Deleted(False, Audit((Entity(what=f"{rtype}/{id}"),)))
    row = yield from resources.delete(row, now=utcnow())
    yield from rules.after_delete(exchange)
    audit = yield from _audit(exchange, Entity(what=f"{rtype}/{id}/_history/{row.version_id}"), 200)
    return Deleted(True, audit)


async def delete(exchange: Exchange, rtype: str, id: str) -> Deleted:
    """Soft delete, audited in its unit of work.

    An already deleted resource is left as it is (`deleted` False), and its AuditEvent
    is left to the API.
    """
    exchange.authorised()
    if effects.rules_for(rtype).append_only:
        raise append_only(rtype)
    return await exchange.runtime.database.write(_delete(exchange, rtype, id))
