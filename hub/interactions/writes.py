"""Write interactions: create, update, delete (DESIGN.md §6).

Each write validates first (outside any transaction), then in ONE transaction
stores the resource, its history and index rows, runs the type's side effects
(subscription matching into the outbox, patient e-mail rows, the subscription
generation) and its AuditEvent. After commit the dispatcher is woken.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hub.audit.events import Entity
from hub.audit.store import chain_posted, store_event
from hub.fhir import jsonio
from hub.fhir.extract import extract
from hub.fhir.model import parse_body, validate
from hub.fhir.origin import origin_references, with_origin
from hub.fhir.outcome import FhirError, bad_request, forbidden, not_found, unprocessable
from hub.fhir.stamp import stamp
from hub.interactions import effects
from hub.interactions.exchange import Exchange
from hub.interactions.reads import Found, gone
from hub.runtime import utcnow
from hub.store import resources
from hub.store.outbox import announce
from hub.trace import new_id

_WEAK_ETAG = re.compile(r'^(?:W/)?"(\d+)"$')


@dataclass(frozen=True)
class Written(Found):
    """A stored version, with the status to answer (201 created, 200 updated)."""

    status: int


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
    if match is None:
        raise bad_request(f'If-Match must be an ETag such as W/"3", got {header!r}', "If-Match")
    return int(match.group(1))


def _refuse_client_origin(rtype: str, resource: dict[str, Any]) -> None:
    if origin_references(resource):
        raise unprocessable(
            "The resource-origin extension is set by the hub; a client may not supply it",
            f"{rtype}.extension",
        )


async def _commit(
    exchange: Exchange,
    resource: dict[str, Any],
    *,
    rtype: str,
    id: str,
    status: int,
    lock_version: int | None,
) -> Written:
    """Store `resource` as a new version (1 when `lock_version` is None) in one transaction."""
    runtime = exchange.runtime
    async with runtime.database.write() as session:
        row = None
        version_id = 1
        if lock_version is not None:
            row = await resources.current(session, exchange.domain, rtype, id, for_update=True)
            if row is None:
                raise not_found(f"{rtype}/{id} does not exist")
            if row.deleted:
                raise gone(rtype, id)
            if row.version_id != lock_version:
                raise FhirError.single(
                    412,
                    "conflict",
                    f"{rtype}/{id} is at version {row.version_id}, not {lock_version}: "
                    "read it again and retry",
                    "If-Match",
                )
            version_id = row.version_id + 1
        now = utcnow()
        stamped = stamp(resource, id=id, version_id=version_id, last_updated=now)
        content = jsonio.dumps(stamped)
        values = extract(stamped)
        if row is None:
            row = await resources.insert(
                session,
                domain=exchange.domain,
                rtype=rtype,
                id=id,
                content=content,
                last_updated=now,
                origin=exchange.authorised().caller.client_id,
                values=values,
            )
            if rtype == "AuditEvent":  # an application's own event joins the chain too
                assert row.pk is not None
                await chain_posted(
                    session,
                    domain=exchange.domain,
                    resource_pk=row.pk,
                    content=content,
                    chain_key=runtime.chain_key,
                )
        else:
            row = await resources.replace(
                session, row, content=content, last_updated=now, values=values
            )
        queued = await effects.after_write(session, exchange, stamped, values, row.origin, now)
        if queued:
            await announce(session)
        exchange.entities = [
            Entity(what=f"{rtype}/{id}/_history/{version_id}", detail=tuple(exchange.details))
        ]
        await store_event(
            session,
            domain=exchange.domain,
            event=exchange.audit_event(status),
            chain_key=runtime.chain_key,
            now=now,
        )
    exchange.audited = True
    if queued:
        runtime.wake_dispatcher()
    return Written(rtype, id, version_id, now, content, status=status)


async def create(exchange: Exchange, rtype: str, body: bytes) -> Written:
    access = exchange.authorised()
    if not access.may_create(rtype):
        raise forbidden()
    resource = parse_body(body, expected_type=rtype)
    effects.check_essentials(rtype, resource)
    validate(resource, rules=effects.STRUCTURAL_RULES.get(rtype))
    _refuse_client_origin(rtype, resource)
    resource.pop("id", None)  # the hub assigns the id
    resource = await effects.before_write(exchange, resource, previous=None)
    with_origin(resource, access.caller.client_id)
    return await _commit(
        exchange, resource, rtype=rtype, id=new_id(), status=201, lock_version=None
    )


async def update(
    exchange: Exchange, rtype: str, id: str, body: bytes, if_match: str | None
) -> Written:
    access = exchange.authorised()
    exchange.entities = [Entity(what=f"{rtype}/{id}")]
    if rtype in effects.APPEND_ONLY:
        raise append_only(rtype)
    async with exchange.runtime.database.read() as session:
        current = await resources.current(session, exchange.domain, rtype, id)
    if current is None:
        raise not_found(f"{rtype}/{id} does not exist")
    if not access.allows("update", rtype, current.origin):
        raise forbidden()
    if current.deleted:
        raise gone(rtype, id)
    expected_version = _parse_if_match(if_match)
    resource = parse_body(body, expected_type=rtype)
    if resource.get("id") != id:
        raise bad_request(
            f"The resource id ({resource.get('id')!r}) must equal the id in the URL ({id!r})",
            f"{rtype}.id",
        )
    validate(resource, rules=effects.STRUCTURAL_RULES.get(rtype))
    previous = jsonio.loads(current.content)
    stored_origins = origin_references(previous)
    supplied_origins = origin_references(resource)
    if supplied_origins and supplied_origins != stored_origins:
        raise forbidden("resource-origin cannot change on update")
    if not supplied_origins and current.origin is not None:
        with_origin(resource, current.origin)
    resource = await effects.before_write(exchange, resource, previous=previous)
    return await _commit(
        exchange, resource, rtype=rtype, id=id, status=200, lock_version=expected_version
    )


async def delete(exchange: Exchange, rtype: str, id: str) -> bool:
    """Soft delete; False when it was already deleted (nothing changes then)."""
    access = exchange.authorised()
    exchange.entities = [Entity(what=f"{rtype}/{id}")]
    if rtype in effects.APPEND_ONLY:
        raise append_only(rtype)
    runtime = exchange.runtime
    async with runtime.database.write() as session:
        row = await resources.current(session, exchange.domain, rtype, id, for_update=True)
        if row is None:
            raise not_found(f"{rtype}/{id} does not exist")
        if not access.allows("delete", rtype, row.origin):
            raise forbidden()
        effects.check_deletable(exchange, rtype, id)
        if row.deleted:
            return False
        now = utcnow()
        row = await resources.delete(session, row, last_updated=now)
        await effects.after_delete(session, exchange, rtype)
        exchange.entities = [Entity(what=f"{rtype}/{id}/_history/{row.version_id}")]
        await store_event(
            session,
            domain=exchange.domain,
            event=exchange.audit_event(200),
            chain_key=runtime.chain_key,
            now=now,
        )
    exchange.audited = True
    return True
