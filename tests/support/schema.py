"""Every FHIR response the tests receive is checked against the official R4 JSON Schema.

A generic FHIR client parses what the hub serves; the schema is the strictest
common reading of R4 JSON (required bindings as enums, primitive JSON types,
no unknown elements). This plugin wraps `httpx.Client.send` and
`httpx.AsyncClient.send` for the whole session, so every response of every REST
test (and any other client the tests use) whose body is FHIR JSON
(`application/fhir+json`, or JSON with a `resourceType`) is validated; an invalid
one fails the test at the request, naming the element and the schema's reason.
Streamed responses (`send(..., stream=True)`) are not read here.

The schema is `../shared/reference/fhir-r4/fhir.schema.json` beside the clone (CI
has it). When it is missing the first FHIR response fails the test, so the check
can never silently stop; `HUB_TEST_FHIR_SCHEMA` names another copy, or `off`
runs the suite without it (for a checkout without ../shared; never in CI).

Speed: the schema's `oneOf` over all resource types (the root, `ResourceList` for
Bundle entries and contained resources) is dispatched on `resourceType`, as its
`discriminator` says, instead of trying 146 branches; the validator is compiled
once per session.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]  # no stubs are installed
import pytest
from jsonschema.exceptions import ValidationError  # type: ignore[import-untyped]

Validator = Any  # jsonschema.protocols.Validator, untyped here

REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_SCHEMA = REPOSITORY.parent / "shared" / "reference" / "fhir-r4" / "fhir.schema.json"
ENVIRONMENT = "HUB_TEST_FHIR_SCHEMA"


class SchemaMissing(AssertionError):
    """The schema file is not there, and HUB_TEST_FHIR_SCHEMA does not say `off`."""


def schema_path() -> Path | None:
    """Where the schema is; None when HUB_TEST_FHIR_SCHEMA=off."""
    setting = os.environ.get(ENVIRONMENT, "")
    if setting.lower() == "off":
        return None
    return Path(setting) if setting else DEFAULT_SCHEMA


def validator() -> Validator | None:
    """The compiled R4 schema validator (None when switched off); SchemaMissing if absent."""
    path = schema_path()
    return None if path is None else _compiled(path)


@cache
def _compiled(path: Path) -> Validator:
    if not path.is_file():
        raise SchemaMissing(
            f"{path} is missing: the R4 JSON schema check of every response cannot run. "
            f"Put ../shared beside the clone, point {ENVIRONMENT} at fhir.schema.json, "
            f"or set {ENVIRONMENT}=off to run without it"
        )
    schema = json.loads(path.read_text(encoding="utf-8"))
    mapping: Mapping[str, str] = schema["discriminator"]["mapping"]
    dispatched = {id(schema["oneOf"]), id(schema["definitions"]["ResourceList"]["oneOf"])}

    def one_of(
        validator: Any, branches: list[Any], instance: Any, subschema: Mapping[str, Any]
    ) -> Iterator[ValidationError]:
        if id(branches) not in dispatched:
            yield from standard_one_of(validator, branches, instance, subschema)
            return
        kind = instance.get("resourceType") if isinstance(instance, dict) else None
        if not isinstance(kind, str) or kind not in mapping:
            yield ValidationError(f"resourceType {kind!r} is not an R4 resource type")
            return
        yield from validator.descend(instance, {"$ref": mapping[kind]})

    base = jsonschema.Draft6Validator
    standard_one_of = base.VALIDATORS["oneOf"]
    checker = jsonschema.validators.extend(base, {"oneOf": one_of})
    return checker(schema)


def problems(body: Any, limit: int = 5) -> list[str]:
    """What the schema finds wrong in `body` (at most `limit`), each with its JSON path."""
    check = validator()
    if check is None:
        return []
    found = []
    for error in check.iter_errors(body):
        found.append(f"{error.json_path}: {error.message[:300]}")
        if len(found) == limit:
            break
    return found


def fhir_body(response: httpx.Response) -> Any | None:
    """The parsed body when it is FHIR JSON, else None."""
    media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type not in ("application/fhir+json", "application/json") or not response.content:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        if media_type == "application/fhir+json":
            raise AssertionError(f"{_describe(response)}: the body is not JSON") from None
        return None
    if media_type == "application/json" and not (isinstance(body, dict) and "resourceType" in body):
        return None  # plain JSON (token responses, SMART configuration, health)
    return body


def check_response(response: httpx.Response) -> None:
    """Fail (AssertionError) when the response is FHIR JSON the R4 schema refuses."""
    body = fhir_body(response)
    if body is None:
        return
    found = problems(body)
    if found:
        raise AssertionError(
            f"{_describe(response)}: the body is not valid FHIR R4 JSON (fhir.schema.json):\n  "
            + "\n  ".join(found)
        )


def _describe(response: httpx.Response) -> str:
    request = response.request
    return f"{request.method} {request.url} → {response.status_code}"


@pytest.fixture(scope="session", autouse=True)
def fhir_schema_check() -> Iterator[None]:
    """Check every FHIR response of the session (see the module docstring)."""
    sync_send = httpx.Client.send
    async_send = httpx.AsyncClient.send

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        response = sync_send(self, request, **kwargs)
        if not kwargs.get("stream"):
            check_response(response)
        return response

    async def asend(
        self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any
    ) -> httpx.Response:
        response = await async_send(self, request, **kwargs)
        if not kwargs.get("stream"):
            check_response(response)
        return response

    patch = pytest.MonkeyPatch()
    patch.setattr(httpx.Client, "send", send)
    patch.setattr(httpx.AsyncClient, "send", asend)
    yield
    patch.undo()
