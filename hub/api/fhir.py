"""The FHIR REST endpoints: thin handlers around `hub.interactions`.

Every request follows docs/architecture.md §3: trace ids (middleware) → token (401) →
permission (403) → body (400/422) → the interaction → AuditEvent → response. The
interaction returns what its AuditEvent names (`Audit`); a refused or failed request's
event names what the request asked for.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC
from email.utils import format_datetime
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from hub import trace
from hub.api.auth import authenticate
from hub.api.disconnect import while_connected
from hub.api.errors import internal_error, timed_out
from hub.api.limits import count_refusal, rate_limits, refused_gate, write_gate
from hub.api.refusals import public_exchange
from hub.api.responses import FHIR_JSON, PLAIN_JSON, FhirResponse, error_response
from hub.audit.events import Entity, query_entity
from hub.fhir.capability import capability_statement
from hub.fhir.model import is_supported
from hub.fhir.outcome import FhirError, bad_request, information, not_found
from hub.interactions import reads, writes
from hub.interactions.effects import rules_for
from hub.interactions.exchange import Audit, Exchange, Prefer
from hub.runtime import Runtime
from hub.store.db import Timeout

log = logging.getLogger("hub.api")


@dataclass(frozen=True)
class Answer:
    """An interaction's response, with what its AuditEvent names."""

    response: Response
    audit: Audit


Operation = Callable[[Exchange], Awaitable[Answer]]

_BODY_TYPES = (FHIR_JSON, PLAIN_JSON)
_FORMATS = {
    "json": FHIR_JSON,
    FHIR_JSON: FHIR_JSON,
    PLAIN_JSON: PLAIN_JSON,
}


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def response_media_type(request: Request) -> str:
    """The JSON flavour to answer in: `_format` first, then Accept (406 for anything else)."""
    requested = request.query_params.get("_format")
    if requested is not None:
        media_type = _FORMATS.get(requested.split(";")[0].strip())
        if media_type is None:
            raise FhirError.single(
                406, "not-supported", f"_format {requested!r} is not supported; use json", "_format"
            )
        return media_type
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return FHIR_JSON
    ranges = [_media_range(part) for part in accept.split(",")]
    offered = [media for media, version in ranges if version is None or version in _R4_VERSIONS]
    if FHIR_JSON in offered or "*/*" in offered or "application/*" in offered:
        return FHIR_JSON
    if PLAIN_JSON in offered:
        return PLAIN_JSON
    versions = sorted({version for _, version in ranges if version not in (None, *_R4_VERSIONS)})
    if versions:
        raise FhirError.single(
            406,
            "not-supported",
            f"Cannot answer in fhirVersion {', '.join(map(repr, versions))}; this server speaks "
            "FHIR R4 only (fhirVersion=4.0)",
        )
    raise FhirError.single(
        406,
        "not-supported",
        f"Cannot answer in {accept!r}; this server speaks application/fhir+json",
    )


# The `fhirVersion` media-type parameter values that name R4 (FHIR R4 http.html#version-parameter).
_R4_VERSIONS = ("4.0", "4.0.1")


def _media_range(part: str) -> tuple[str, str | None]:
    """One Accept entry as its media type (lower case) and its `fhirVersion`, if any."""
    media_type, *parameters = part.split(";")
    version = None
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "fhirversion":
            version = value.strip().strip('"')
    return media_type.strip().lower(), version


async def read_body(request: Request, limit: int) -> bytes:
    """The request body as FHIR JSON (415 for another content type, 413 when too large)."""
    content_type = request.headers.get("content-type", "")
    media_type, *parameters = (part.strip().lower() for part in content_type.split(";"))
    if media_type not in _BODY_TYPES:
        raise FhirError.single(
            415,
            "not-supported",
            f"Content-Type must be application/fhir+json or application/json, not {content_type!r}",
        )
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip() == "charset" and value.strip().strip('"') not in ("utf-8", "utf8"):
            raise FhirError.single(415, "not-supported", "Only UTF-8 request bodies are accepted")
    return await read_limited(request, limit)


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes.

    A declared `Content-Length` over the limit is refused before a byte of the body is
    read. A body that stops arriving is cut off by the connection guard
    (`hub.api.connections`): 408.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect as gone:
        raise FhirError.single(
            408,
            "incomplete",
            f"The request body ended after {size} bytes: the client closed the connection "
            "or the body did not arrive in time",
        ) from gone
    return b"".join(chunks)


def too_large(limit: int) -> FhirError:
    # No `Connection: close`: closing with the client's body unread would reset the
    # connection before it reads this answer. uvicorn discards the rest of the body, and
    # the connection guard's body deadline bounds how long that may take.
    return FhirError.single(
        413, "too-costly", f"The request body exceeds the limit of {limit} bytes"
    )


def _client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


async def perform(
    request: Request, interaction: str, operation: Operation, *, rtype: str | None = None
) -> Response:
    """Run one interaction: authenticate, operate, audit (success or failure), respond."""
    runtime = runtime_of(request)
    domain = request.path_params["domain"]
    if domain not in runtime.access.registry.domains:
        return error_response(not_found(f"Unknown domain {domain!r}"))
    exchange = Exchange(
        runtime=runtime,
        domain=domain,
        interaction=interaction,
        trace=trace.get(),
        client_address=_client_address(request),
        rtype=rtype,
        prefer=Prefer.parse(request.headers.get("prefer")),
    )
    # What was asked for, so a request refused before or by the interaction (401, 403,
    # 404 of an unsupported type, 406, ...) still tells the auditor what was tried.
    requested = _requested(request, interaction, rtype)
    # Who asks decides which rate limit applies, so the token is checked first; a bad one
    # is refused below, in its usual turn. Over a limit, nothing else is done.
    limits = rate_limits(request)
    unauthenticated: FhirError | None = None
    try:
        identified = replace(exchange, access=authenticate(runtime, request, domain))
    except FhirError as error:
        identified, unauthenticated = exchange, error
    except Exception:
        with contextlib.suppress(Exception):
            await exchange.fail(internal_error(), requested)
        raise
    limited = await refused_gate(limits, identified, requested) or await write_gate(
        limits, identified, requested
    )
    if limited is not None:
        return error_response(limited)
    media_type = FHIR_JSON
    try:
        media_type = response_media_type(request)
        if unauthenticated is not None:
            raise unauthenticated
        exchange = identified
        if rtype is not None and not is_supported(rtype):
            raise not_found(f"Resource type {rtype!r} is not supported by this server")
        answer = await operation(exchange)
        response = answer.response
        response.media_type = media_type
        response.headers["content-type"] = f"{media_type}; charset=utf-8"
        await exchange.finish(response.status_code, answer.audit)
        return response
    except _Refused as refused:
        count_refusal(limits, identified, refused.error.status)
        await exchange.fail(refused.error, refused.entities)
        return error_response(refused.error, media_type)
    except FhirError as error:
        count_refusal(limits, identified, error.status)
        await exchange.fail(error, requested)
        return error_response(error, media_type)
    except Timeout as timeout:
        cancelled = timed_out(timeout.seconds, search=False)
        await exchange.fail(cancelled, requested)
        return error_response(cancelled, media_type)
    except Exception:
        # Audit the failure if the database still lets us; the error middleware answers 500.
        with contextlib.suppress(Exception):
            await exchange.fail(internal_error(), requested)
        raise


class _Refused(Exception):
    """A refusal that names more than the URL shows (a `POST _search` body)."""

    def __init__(self, error: FhirError, entities: tuple[Entity, ...]) -> None:
        super().__init__(error.text)
        self.error = error
        self.entities = entities


def _requested(request: Request, interaction: str, rtype: str | None) -> tuple[Entity, ...]:
    """The entities a request names: `Type/id[/_history/vid]`, or a search's query string."""
    params = request.path_params
    if rtype is not None and "id" in params:
        version = f"/_history/{params['vid']}" if "vid" in params else ""
        return (Entity(what=f"{rtype}/{params['id']}{version}"),)
    if interaction == "search-type" and request.url.query:
        return (query_entity(rtype, request.url.query),)
    return ()


def _resource_headers(version: reads.Found) -> dict[str, str]:
    return {
        "ETag": f'W/"{version.version_id}"',
        "Last-Modified": format_datetime(version.last_updated.replace(tzinfo=UTC), usegmt=True),
    }


def _written(exchange: Exchange, written: writes.Written) -> Answer:
    base = exchange.runtime.fhir_base(exchange.domain)
    headers = _resource_headers(written)
    headers["Location"] = f"{base}/{written.rtype}/{written.id}/_history/{written.version_id}"
    preference = exchange.prefer.return_
    if preference == "minimal":
        return Answer(FhirResponse(None, written.status, headers), written.audit)
    if preference == "OperationOutcome":
        verb = "created" if written.status == 201 else "updated"
        outcome = information(f"{written.rtype}/{written.id} {verb}, version {written.version_id}")
        return Answer(FhirResponse(outcome, written.status, headers), written.audit)
    return Answer(FhirResponse(written.content, written.status, headers), written.audit)


def _found(found: reads.Found) -> Answer:
    return Answer(FhirResponse(found.content, 200, _resource_headers(found)), found.audit)


def _listed(listed: reads.Listed) -> Answer:
    return Answer(FhirResponse(listed.bundle), listed.audit)


# --- handlers ---------------------------------------------------------------------------


async def metadata(request: Request) -> Response:
    runtime = runtime_of(request)
    domain = request.path_params["domain"]
    if domain not in runtime.access.registry.domains:
        return error_response(not_found(f"Unknown domain {domain!r}"))
    # Public, but a caller that identifies itself is named in the AuditEvent.
    exchange = public_exchange(request, runtime, domain, "capabilities")
    limits = rate_limits(request)
    limited = await refused_gate(limits, exchange)
    if limited is not None:
        return error_response(limited)
    try:
        media_type = response_media_type(request)
    except FhirError as error:
        count_refusal(limits, exchange, error.status)
        await exchange.fail(error)
        return error_response(error)
    statement = capability_statement(
        runtime.fhir_base(domain),
        runtime.settings.token_endpoint(domain),
        runtime.version,
        performable=runtime.access.matrix.performable(),
    )
    await exchange.finish(200, Audit())
    return FhirResponse(statement, 200, media_type=media_type)


async def type_endpoint(request: Request) -> Response:
    rtype = request.path_params["rtype"]
    if request.method == "POST":
        return await perform(request, "create", lambda ex: _create(request, ex, rtype), rtype=rtype)
    params = list(parse_qsl(request.url.query, keep_blank_values=True))
    return await perform(
        request,
        "search-type",
        lambda ex: _search(request, ex, rtype, params, request.url.query),
        rtype=rtype,
    )


# The largest `POST _search` body: far more than any search within the caps of
# hub.fhir.query (MAX_CLAUSES parameters of MAX_VALUES values) needs, and refused
# before a byte of it is parsed.
MAX_SEARCH_BODY = 16 * 1024


async def search_post(request: Request) -> Response:
    rtype = request.path_params["rtype"]

    async def operation(exchange: Exchange) -> Answer:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise FhirError.single(
                415, "not-supported", "POST _search needs application/x-www-form-urlencoded"
            )
        limit = min(MAX_SEARCH_BODY, runtime_of(request).settings.max_body_bytes)
        raw = await read_limited(request, limit)
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise bad_request(
                f"The _search body is not UTF-8 ({error.reason} at byte {error.start})",
                code="structure",
            ) from None
        params = list(parse_qsl(request.url.query, keep_blank_values=True))
        params += parse_qsl(body, keep_blank_values=True)
        query_string = "&".join(filter(None, (request.url.query, body)))
        try:
            return await _search(request, exchange, rtype, params, query_string)
        except FhirError as error:
            # The body is part of what was asked: the refusal names it too.
            raise _Refused(error, (query_entity(rtype, query_string),)) from error

    return await perform(request, "search-type", operation, rtype=rtype)


async def _search(
    request: Request,
    exchange: Exchange,
    rtype: str,
    params: list[tuple[str, str]],
    query_string: str,
) -> Answer:
    """The search, cancelled with its query if the client goes (its body is read by now)."""
    try:
        listed = await while_connected(request, reads.search(exchange, rtype, params, query_string))
        return _listed(listed)
    except Timeout as timeout:
        raise timed_out(timeout.seconds, search=True) from timeout


async def _create(request: Request, exchange: Exchange, rtype: str) -> Answer:
    body = await read_body(request, exchange.runtime.settings.max_body_bytes)
    return _written(exchange, await writes.create(exchange, rtype, body))


async def instance(request: Request) -> Response:
    rtype, id = request.path_params["rtype"], request.path_params["id"]
    # Starlette routes HEAD wherever GET is allowed: it is a read, never a delete.
    if request.method in ("GET", "HEAD"):
        return await perform(request, "read", lambda ex: _read(ex, rtype, id), rtype=rtype)
    if request.method == "PUT":
        return await perform(
            request, "update", lambda ex: _update(request, ex, rtype, id), rtype=rtype
        )
    return await perform(request, "delete", lambda ex: _delete(ex, rtype, id), rtype=rtype)


async def _read(exchange: Exchange, rtype: str, id: str) -> Answer:
    return _found(await reads.read(exchange, rtype, id))


async def _update(request: Request, exchange: Exchange, rtype: str, id: str) -> Answer:
    if rules_for(rtype).append_only:
        raise writes.append_only(rtype)
    body = await read_body(request, exchange.runtime.settings.max_body_bytes)
    return _written(
        exchange, await writes.update(exchange, rtype, id, body, request.headers.get("if-match"))
    )


async def _delete(exchange: Exchange, rtype: str, id: str) -> Answer:
    deleted = await writes.delete(exchange, rtype, id)
    text = f"{rtype}/{id} deleted" if deleted.deleted else f"{rtype}/{id} was already deleted"
    return Answer(FhirResponse(information(text), 200), deleted.audit)


async def history(request: Request) -> Response:
    rtype, id = request.path_params["rtype"], request.path_params["id"]
    params = list(parse_qsl(request.url.query, keep_blank_values=True))

    async def operation(exchange: Exchange) -> Answer:
        return _listed(await reads.history(exchange, rtype, id, params))

    return await perform(request, "history-instance", operation, rtype=rtype)


async def vread(request: Request) -> Response:
    rtype, id, version = (request.path_params[name] for name in ("rtype", "id", "vid"))

    async def operation(exchange: Exchange) -> Answer:
        return _found(await reads.vread(exchange, rtype, id, version))

    return await perform(request, "vread", operation, rtype=rtype)


routes = [
    Route("/{domain}/fhir/metadata", metadata, methods=["GET"]),
    Route("/{domain}/fhir/{rtype}/_search", search_post, methods=["POST"]),
    Route("/{domain}/fhir/{rtype}/{id}/_history/{vid}", vread, methods=["GET"]),
    Route("/{domain}/fhir/{rtype}/{id}/_history", history, methods=["GET"]),
    Route("/{domain}/fhir/{rtype}/{id}", instance, methods=["GET", "PUT", "DELETE"]),
    Route("/{domain}/fhir/{rtype}", type_endpoint, methods=["GET", "POST"]),
]
