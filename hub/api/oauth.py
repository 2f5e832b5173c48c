"""SMART backend services: the token endpoint, the hub's JWKS and SMART discovery."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub import metrics, trace
from hub.access.assertion import ASSERTION_ALGORITHMS, OAuthError, claimed_client
from hub.api.fhir import read_limited
from hub.api.limits import rate_limits, token_limited
from hub.fhir.outcome import FhirError
from hub.fhir.search_params import SUPPORTED_TYPES
from hub.interactions.token import request_token
from hub.runtime import Runtime

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _runtime(request: Request) -> tuple[Runtime, str] | None:
    runtime: Runtime = request.app.state.runtime
    domain = request.path_params["domain"]
    if domain not in runtime.access.registry.domains:
        return None
    return runtime, domain


def _oauth_error(error: OAuthError) -> Response:
    return JSONResponse(error.to_json(), error.status, headers={**_NO_STORE, **error.headers})


async def _read_form(request: Request, limit: int) -> dict[str, str]:
    """The form fields, read within the hub's body limit: this endpoint takes no token."""
    try:
        body = await read_limited(request, limit)
    except FhirError as exc:
        if exc.status == 408:
            raise OAuthError(
                "invalid_request", 408, "body incomplete", "the token request did not arrive"
            ) from exc
        raise OAuthError(
            "invalid_request", 413, "body too large", "the token request is too large"
        ) from exc
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError("invalid_request", 400, f"unreadable form: {exc}") from exc
    fields = dict(pairs)
    if len(fields) != len(pairs):
        # RFC 6749 §3.2: request parameters MUST NOT be included more than once.
        raise OAuthError("invalid_request", 400, "a parameter appears twice")
    return fields


async def token(request: Request) -> Response:
    found = _runtime(request)
    if found is None:
        return JSONResponse(
            {"error": "invalid_request", "error_description": "unknown domain"}, 404
        )
    runtime, domain = found
    response = await _answer_token_request(request, runtime, domain)
    metrics.token_request(domain, _TOKEN_OUTCOMES.get(response.status_code, "refused"))
    return response


# `hub_token_requests_total{outcome}`: a token, an OAuth error, or over a rate limit.
_TOKEN_OUTCOMES = {200: "granted", 429: "limited"}


async def _answer_token_request(request: Request, runtime: Runtime, domain: str) -> Response:
    client_address = request.client.host if request.client else None
    limits = rate_limits(request)
    # The address's budget before the body is even read; the claimed client's before its
    # assertion is verified: over either limit, the hub does no work for the request.
    if limits is not None:
        verdict = limits.token_request_by_address(domain, client_address)
        if not verdict.allowed:
            return await token_limited(
                runtime,
                domain,
                verdict,
                "from this address",
                client_address=client_address,
                trace=trace.get(),
            )
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return _oauth_error(
            OAuthError(
                "invalid_request",
                400,
                f"content type {content_type!r}",
                "the token request must be application/x-www-form-urlencoded",
            )
        )
    try:
        fields = await _read_form(request, runtime.settings.max_body_bytes)
    except OAuthError as error:
        return _oauth_error(error)
    # The client_id the assertion claims, unverified: only a bucket key. A claim naming
    # no app of the domain has no bucket (it fails anyway, within its address's budget).
    claimed = claimed_client(fields.get("client_assertion"))
    app = runtime.access.registry.app(domain, claimed) if claimed is not None else None
    if limits is not None and claimed is not None and app is not None:
        verdict = limits.token_request_by_client(domain, claimed, app.rate_limit)
        if not verdict.allowed:
            return await token_limited(
                runtime,
                domain,
                verdict,
                f"for client_id {claimed!r}",
                client_address=client_address,
                trace=trace.get(),
            )
    try:
        body = await request_token(
            runtime, domain, fields, client_address=client_address, trace=trace.get()
        )
    except OAuthError as error:
        return _oauth_error(error)
    return JSONResponse(body, 200, headers=_NO_STORE)


async def jwks(request: Request) -> Response:
    found = _runtime(request)
    if found is None:
        return JSONResponse({"error": "unknown domain"}, 404)
    runtime, _ = found
    return JSONResponse(runtime.keys.public_jwks(), headers={"Cache-Control": "max-age=300"})


async def smart_configuration(request: Request) -> Response:
    found = _runtime(request)
    if found is None:
        return JSONResponse({"error": "unknown domain"}, 404)
    runtime, domain = found
    base = runtime.settings.public_url
    return JSONResponse(
        {
            "issuer": runtime.issuer(domain),
            "jwks_uri": f"{base}/{domain}/oauth2/jwks",
            "token_endpoint": runtime.settings.token_endpoint(domain),
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": [f"system/{rtype}.cruds" for rtype in SUPPORTED_TYPES],
            "capabilities": ["client-confidential-asymmetric", "permission-v2"],
        }
    )


routes = [
    Route("/{domain}/oauth2/token", token, methods=["POST"]),
    Route("/{domain}/oauth2/jwks", jwks, methods=["GET"]),
    Route("/{domain}/fhir/.well-known/smart-configuration", smart_configuration, methods=["GET"]),
]
