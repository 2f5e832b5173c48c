"""The status codes of README.md ("HTTP surface"), each with an OperationOutcome and trace headers.

A table of requests against one hub per backend; the codes that need state of
their own (410, 412, 428) are in test_rest.py, 413 has its own hub below.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.common import RESOURCE_ORIGIN, expressions, outcome
from tests.support.hub import AppKeys, HubServer, hub_settings, running_hub, write_apps_file

# One hub per backend for the module (`module_hub`): keep the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_status_codes")

FHIR = "application/fhir+json"


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str  # under the FHIR base of domain "test", or absolute from the host with "//"
    status: int
    client: str | None = "xis"
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    expression: list[str] | None = None  # the OperationOutcome's expressions, when they matter
    code: str | None = None  # the first issue's code, when it matters


def fhir_json(resource: dict[str, Any]) -> bytes:
    return httpx.Request("POST", "/", json=resource).content


ORIGIN = {"url": RESOURCE_ORIGIN, "valueReference": {"reference": "Device/xis"}}

CASES = [
    # 400: not JSON, not the URL's type, not a valid R4 resource, or a bad search.
    Case("malformed JSON", "POST", "/Patient", 400, body=b'{"resourceType": "Patient",',
         code="structure"),
    Case("duplicate JSON key", "POST", "/Patient", 400,
         body=b'{"resourceType": "Patient", "gender": "male", "gender": "female"}'),
    Case("JSON array", "POST", "/Patient", 400, body=b'[{"resourceType": "Patient"}]'),
    Case("empty body", "POST", "/Patient", 400, body=b""),
    Case("wrong resourceType", "POST", "/Patient", 400,
         body=fhir_json({"resourceType": "Practitioner"}), expression=["resourceType"]),
    Case("no resourceType", "POST", "/Patient", 400, body=fhir_json({"gender": "male"}),
         expression=["Patient.resourceType"]),
    Case("invalid date", "POST", "/Patient", 400,
         body=fhir_json({"resourceType": "Patient", "birthDate": "yesterday"}),
         expression=["Patient.birthDate"]),
    Case("unknown element", "POST", "/Patient", 400,
         body=fhir_json({"resourceType": "Patient", "nickname": "Jim"}),
         expression=["Patient.nickname"]),
    Case("nested invalid element", "POST", "/Patient", 400,
         body=fhir_json({"resourceType": "Patient", "name": [{"given": "Jim"}]}),
         expression=["Patient.name[0].given"]),
    Case("malformed date search", "GET", "/Patient?birthdate=last-year", 400,
         expression=["birthdate"]),
    Case("unsupported date prefix", "GET", "/Patient?birthdate=ap2020", 400,
         expression=["birthdate"]),
    Case("bad _count", "GET", "/Patient?_count=many", 400, expression=["_count"]),
    Case("bad _sort", "GET", "/Patient?_sort=nosuchparameter", 400, expression=["_sort"]),
    Case("bad _total", "GET", "/Patient?_total=maybe", 400, expression=["_total"]),
    Case("bad modifier", "GET", "/Patient?gender:below=male", 400, expression=["gender:below"]),
    Case("forged cursor", "GET", "/Patient?_cursor=abc.def", 400, expression=["_cursor"]),
    Case("bad history _cursor", "GET", "/Patient/x/_history?_cursor=later", 400,
         expression=["_cursor"]),
    Case("zero history _count", "GET", "/Patient/x/_history?_count=0", 400, expression=["_count"]),
    Case("strict unknown parameter", "GET", "/Patient?colour=blue", 400,
         headers={"Prefer": "handling=strict"}, expression=["colour"]),
    # 401: no token, or one the hub did not issue; the challenge says Bearer.
    Case("no token", "GET", "/Patient", 401, client=None, code="login"),
    Case("not a JWT", "GET", "/Patient", 401, client=None,
         headers={"Authorization": "Bearer not-a-token"}, code="login"),
    Case("basic auth", "GET", "/Patient", 401, client=None,
         headers={"Authorization": "Basic eGlzOnNlY3JldA=="}, code="login"),
    # 403: authenticated, not allowed.
    Case("create not allowed", "POST", "/Patient", 403, client="portal",
         body=fhir_json({"resourceType": "Patient"}), code="forbidden"),
    Case("search not allowed", "GET", "/AuditEvent", 403, client="portal", code="forbidden"),
    # 404: unknown id, type, route, domain.
    Case("unknown id", "GET", "/Patient/no-such-patient", 404, code="not-found"),
    Case("unknown version", "GET", "/Patient/no-such-patient/_history/1", 404),
    Case("unsupported type", "GET", "/Observation", 404, code="not-found"),
    Case("unsupported type instance", "GET", "/Observation/1", 404),
    # The token comes first (docs/architecture.md §3), even for a type the hub does not serve.
    Case("unknown type, no token", "GET", "/Observation", 401, client=None),
    Case("unknown route", "GET", "//test/nothing/here", 404, code="not-found"),
    Case("unknown route, root", "GET", "//", 404),
    Case("unknown domain", "GET", "//elsewhere/fhir/Patient", 404, code="not-found"),
    Case("unknown domain metadata", "GET", "//elsewhere/fhir/metadata", 404),
    Case("update of unknown id", "PUT", "/Patient/no-such-patient", 404,
         body=fhir_json({"resourceType": "Patient", "id": "no-such-patient"}),
         headers={"If-Match": 'W/"1"'}),
    Case("delete of unknown id", "DELETE", "/Patient/no-such-patient", 404, client="admin"),
    # 405: AuditEvents are append-only; a method a route does not have.
    Case("update AuditEvent", "PUT", "/AuditEvent/x", 405, client="auditor",
         body=fhir_json({"resourceType": "AuditEvent", "id": "x"}), headers={"If-Match": 'W/"1"'}),
    Case("delete AuditEvent", "DELETE", "/AuditEvent/x", 405, client="admin"),
    Case("delete AuditEvent, no token", "DELETE", "/AuditEvent/x", 401, client=None),
    # 409: the Devices of the hub and of registered apps are the apps file's to remove.
    Case("delete a registered app's Device", "DELETE", "/Device/xis", 409, client="admin"),
    Case("delete the hub's Device", "DELETE", "/Device/koppeltaal-hub", 409, client="admin"),
    Case("PATCH", "PATCH", "/Patient/x", 405, body=b"[]"),
    Case("POST to an instance", "POST", "/Patient/x", 405,
         body=fhir_json({"resourceType": "Patient"})),
    # 415: only FHIR JSON (or plain JSON) in UTF-8.
    Case("XML body", "POST", "/Patient", 415, body=b"<Patient/>",
         headers={"Content-Type": "application/fhir+xml"}),
    Case("text body", "POST", "/Patient", 415, body=b"{}", headers={"Content-Type": "text/plain"}),
    Case("latin-1 body", "POST", "/Patient", 415, body=fhir_json({"resourceType": "Patient"}),
         headers={"Content-Type": "application/fhir+json; charset=iso-8859-1"}),
    Case("JSON _search", "POST", "/Patient/_search", 415, body=b"{}"),
    # 422: a valid resource that breaks a business rule.
    Case("client-supplied resource-origin", "POST", "/Patient", 422,
         body=fhir_json({"resourceType": "Patient", "extension": [ORIGIN]}),
         expression=["Patient.extension"]),
    Case("http webhook", "POST", "/Subscription", 422,
         body=fhir_json({"resourceType": "Subscription", "status": "requested", "reason": "x",
                         "criteria": "Patient?gender=male",
                         "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1/h"}}),
         expression=["Subscription.channel.endpoint"]),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_error_status(module_hub: HubServer, case: Case) -> None:
    headers = {"Content-Type": FHIR, **case.headers}
    if case.client is not None:
        headers.setdefault("Authorization", f"Bearer {module_hub.token(case.client)}")
    url = (
        module_hub.url + case.path[1:]
        if case.path.startswith("//")
        else module_hub.fhir() + case.path
    )
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.request(case.method, url, content=case.body, headers=headers)
    body = outcome(response, case.status)
    if case.expression is not None:
        assert expressions(body) == case.expression
    if case.code is not None:
        assert body["issue"][0]["code"] == case.code
    # Trace headers are on errors too: the hub made both ids for this request.
    assert uuid.UUID(response.headers["x-request-id"])
    assert uuid.UUID(response.headers["x-trace-id"])
    if case.status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
        # Koppeltaal: the text of a 401 stays minimal, whatever the reason.
        assert body["issue"][0]["diagnostics"].startswith("Authentication required")
    if case.status == 405 and "AuditEvent" in case.path:
        assert response.headers["allow"] == "GET, POST"


async def test_trace_headers(module_hub: HubServer) -> None:
    async with module_hub.client("xis") as xis:
        given = await xis.get(
            "/Patient",
            headers={"X-Request-Id": "req-1.a", "X-Trace-Id": "trace-1", "X-Correlation-Id": "c-9"},
        )
        made = [await xis.get("/Patient") for _ in range(2)]
        empty_correlation = await xis.get("/Patient", headers={"X-Correlation-Id": ""})
        on_error = await xis.get("/Patient/nothing", headers={"X-Request-Id": "req-2"})
        unauthenticated = await xis.get(
            "/Patient", headers={"Authorization": "", "X-Trace-Id": "trace-3"}
        )
    assert given.status_code == 200
    assert given.headers["x-request-id"] == "req-1.a"
    assert given.headers["x-trace-id"] == "trace-1"
    assert given.headers["x-correlation-id"] == "c-9"
    for response in made:
        assert uuid.UUID(response.headers["x-request-id"]).version == 4
        assert uuid.UUID(response.headers["x-trace-id"])
        assert "x-correlation-id" not in response.headers
    # A new request, new ids: the hub never reuses one.
    assert made[0].headers["x-request-id"] != made[1].headers["x-request-id"]
    assert made[0].headers["x-trace-id"] != made[1].headers["x-trace-id"]
    assert "x-correlation-id" not in empty_correlation.headers
    assert on_error.status_code == 404
    assert on_error.headers["x-request-id"] == "req-2"
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["x-trace-id"] == "trace-3"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Request-Id", "has space"),
        ("X-Request-Id", "a" * 65),
        ("X-Trace-Id", "under_score"),
        ("X-Trace-Id", "slash/"),
        ("X-Correlation-Id", "ünïcode"),
        ("X-Correlation-Id", "semi;colon"),
    ],
)
async def test_malformed_trace_header(module_hub: HubServer, header: str, value: str) -> None:
    async with module_hub.client("xis") as xis:
        raw = [(header.encode(), value.encode())]  # bytes: httpx would refuse non-ASCII text
        response = await xis.get("/Patient", headers=raw)
        metadata = await xis.get("/metadata", headers=raw)
    for answer in (response, metadata):
        body = outcome(answer, 400)
        assert expressions(body) == [header]
        assert header in body["issue"][0]["diagnostics"]
        # The refused value is not echoed; the hub's own ids are.
        assert uuid.UUID(answer.headers["x-request-id"])
        assert uuid.UUID(answer.headers["x-trace-id"])


async def test_trace_header_of_64_characters_is_accepted(module_hub: HubServer) -> None:
    longest = "A-z.9" * 12 + "abcd"
    assert len(longest) == 64
    async with module_hub.client("xis") as xis:
        response = await xis.get("/Patient", headers={"X-Request-Id": longest})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == longest


async def test_body_too_large(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys]
) -> None:
    apps_file = write_apps_file(tmp_path / "apps.yaml", app_keys)
    settings = hub_settings(tmp_path, database_url, apps_file, max_body_bytes=2048)
    small = {"resourceType": "Patient", "gender": "female"}
    large = {**small, "name": [{"family": "x" * 4096}]}
    with running_hub(settings, app_keys) as hub:
        async with hub.client("xis") as xis:
            accepted = await xis.post("/Patient", json=small)
            declared = await xis.post("/Patient", json=large)

            async def chunks() -> Any:
                # No Content-Length: the hub must count while it reads.
                for _ in range(8):
                    yield b" " * 512
                yield fhir_json(small)

            streamed = await xis.post("/Patient", content=chunks(), headers={"Content-Type": FHIR})
            search = await xis.post(
                "/Patient/_search",
                content=b"family=" + b"x" * 4096,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
    assert accepted.status_code == 201
    for response in (declared, streamed, search):
        assert outcome(response, 413)["issue"][0]["code"] == "too-costly"
