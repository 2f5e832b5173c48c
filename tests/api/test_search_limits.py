"""A search's cost is bounded: its clauses, its values, its `_search` body, its statements.

Too many clauses or values are a 400 naming the limit and the parameter; a `_search` body
over MAX_SEARCH_BODY is a 413 before it is parsed; a statement PostgreSQL cancels after
the statement timeout is `hub.store.db.Timeout`, answered 503 and audited.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode

import pytest
import sqlalchemy

from hub.api.fhir import MAX_SEARCH_BODY
from hub.fhir.outcome import FhirError
from hub.fhir.query import MAX_CLAUSES, MAX_VALUES, parse_criteria, parse_search
from hub.fhir.search_params import SUPPORTED_TYPES, params_for
from hub.interactions import reads
from hub.store.db import Database, Timeout
from hub.store.sql import Work, execute
from tests.api.common import expressions, ids, outcome
from tests.audit.trail import TraceHeaders, b64, event_of
from tests.support.hub import HubServer

# One hub per backend for the module (`module_hub`): keep the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_search_limits")

RUN = "urn:test:limits"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _clauses(tag: str, count: int) -> list[tuple[str, str]]:
    """`count` search parameters that all hold for the Patient tagged `tag`."""
    return [("identifier", f"{RUN}|{tag}")] + [("gender", "female")] * (count - 1)


def _refusal(error: FhirError) -> tuple[int, str, list[str]]:
    [issue] = error.issues
    return error.status, issue.diagnostics, list(issue.expression)


# --- parsing ------------------------------------------------------------------------------


def test_the_clause_limit_counts_search_parameters_not_result_controls() -> None:
    controls = [("_count", "5"), ("_sort", "-_lastUpdated"), ("_total", "accurate")]
    query = parse_search("Patient", [*_clauses("t", MAX_CLAUSES), *controls])
    assert len(query.clauses) == MAX_CLAUSES

    with pytest.raises(FhirError) as refused:
        parse_search("Patient", [*controls, *_clauses("t", MAX_CLAUSES), ("bogus", "x")])
    status, text, expression = _refusal(refused.value)
    assert (status, expression) == (400, ["bogus"])  # unknown parameters count too
    assert f"at most {MAX_CLAUSES} search parameters" in text
    assert refused.value.issues[0].code == "too-costly"


def test_every_parameter_of_a_type_fits_in_one_search() -> None:
    # The CapabilityStatement lists them all; a strict search may use them all at once.
    assert max(len(params_for(rtype)) for rtype in SUPPORTED_TYPES) <= MAX_CLAUSES


def test_a_chain_counts_as_one_clause() -> None:
    chains = [("general-practitioner:Practitioner.name", "x")] * MAX_CLAUSES
    assert len(parse_search("Patient", chains).clauses) == MAX_CLAUSES
    with pytest.raises(FhirError) as refused:
        parse_search("Patient", [*chains, ("general-practitioner:Practitioner.name", "y")])
    assert _refusal(refused.value)[2] == ["general-practitioner:Practitioner.name"]


def test_the_clause_limit_is_checked_before_any_parameter_is_parsed() -> None:
    # 10,000 clauses (the SQLite freeze of the issue): refused at once, not parsed one by one.
    with pytest.raises(FhirError) as refused:
        parse_search("Patient", [("birthdate", "not a date")] * 10_000)
    assert "this one has 10000" in _refusal(refused.value)[1]


def test_the_value_limit_is_per_clause() -> None:
    values = ",".join(f"id-{n}" for n in range(MAX_VALUES))
    assert len(parse_search("Patient", [("_id", values)]).clauses[0].values) == MAX_VALUES
    with pytest.raises(FhirError) as refused:
        parse_search("Patient", [("_id", values + ",one-more")])
    status, text, expression = _refusal(refused.value)
    assert (status, expression) == (400, ["_id"])
    assert f"at most {MAX_VALUES} comma-separated values, not {MAX_VALUES + 1}" in text


def test_subscription_criteria_have_the_same_limits() -> None:
    criteria = "Patient?" + "&".join(["gender=female"] * (MAX_CLAUSES + 1))
    with pytest.raises(FhirError) as refused:
        parse_criteria(criteria)
    assert f"at most {MAX_CLAUSES}" in _refusal(refused.value)[1]


# --- over HTTP ----------------------------------------------------------------------------


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex


async def _patient(hub: HubServer, tag: str) -> str:
    async with hub.client("xis") as xis:
        made = await xis.post(
            "/Patient",
            json={
                "resourceType": "Patient",
                "identifier": [{"system": RUN, "value": tag}],
                "gender": "female",
            },
        )
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


async def test_twenty_clauses_pass_and_twenty_one_are_refused(
    module_hub: HubServer, tag: str
) -> None:
    patient = await _patient(module_hub, tag)
    async with module_hub.client("xis") as xis:
        allowed = await xis.get(
            "/Patient?" + urlencode([*_clauses(tag, MAX_CLAUSES), ("_count", "5")])
        )
        assert allowed.status_code == 200, allowed.text
        assert ids(allowed.json()) == [patient]

        over = [*_clauses(tag, MAX_CLAUSES), ("name:contains", "x")]
        refused = outcome(await xis.get("/Patient?" + urlencode(over)), 400)
        assert f"at most {MAX_CLAUSES} search parameters" in refused["issue"][0]["diagnostics"]
        assert expressions(refused) == ["name:contains"]

        posted = await xis.post(
            "/Patient/_search", data=dict(_clauses(tag, 1)) | {"_count": "5"}, headers=FORM
        )
        assert posted.status_code == 200, posted.text
        refused = outcome(
            await xis.post("/Patient/_search", content=urlencode(over), headers=FORM), 400
        )
        assert expressions(refused) == ["name:contains"]


async def test_fifty_one_values_in_one_clause_are_refused(module_hub: HubServer, tag: str) -> None:
    patient = await _patient(module_hub, tag)
    fifty = [patient, *(f"absent-{n}" for n in range(MAX_VALUES - 1))]
    async with module_hub.client("xis") as xis:
        allowed = await xis.get("/Patient", params={"_id": ",".join(fifty)})
        assert allowed.status_code == 200, allowed.text
        assert ids(allowed.json()) == [patient]

        refused = outcome(
            await xis.get("/Patient", params={"_id": ",".join([*fifty, "one-more"])}), 400
        )
    assert f"at most {MAX_VALUES} comma-separated values" in refused["issue"][0]["diagnostics"]
    assert expressions(refused) == ["_id"]


async def test_a_search_body_over_the_limit_is_refused_before_parsing(
    module_hub: HubServer,
) -> None:
    # Not even form-encoded: the size alone refuses it.
    body = b"name=" + b"\xff" * (17 * 1024)
    async with module_hub.client("xis") as xis:
        declared = outcome(await xis.post("/Patient/_search", content=body, headers=FORM), 413)

        async def chunks() -> Any:
            for start in range(0, len(body), 4096):
                yield body[start : start + 4096]

        streamed = outcome(await xis.post("/Patient/_search", content=chunks(), headers=FORM), 413)
        just_fits = await xis.post(
            "/Patient/_search",
            content=b"_id=x&name=" + b"a" * (MAX_SEARCH_BODY - 11),
            headers=FORM,
        )
    for refused in (declared, streamed):
        assert f"limit of {MAX_SEARCH_BODY} bytes" in refused["issue"][0]["diagnostics"]
        assert refused["issue"][0]["code"] == "too-costly"
    assert just_fits.status_code == 200, just_fits.text


# --- the statement timeout ----------------------------------------------------------------


def _sleep(seconds: float) -> Work[Any]:
    result = yield from execute(sqlalchemy.text(f"SELECT pg_sleep({seconds})"))
    return result.rows


def _one() -> Work[Any]:
    result = yield from execute(sqlalchemy.text("SELECT 1"))
    return result.scalar()


async def test_postgres_cancels_a_statement_after_the_timeout(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite has no statement timeout; the clause limits bound it")
    database = Database(database_url, pool_size=1, statement_timeout=0.2)
    try:
        with pytest.raises(Timeout) as timed_out:
            await database.read(_sleep(2))
        assert timed_out.value.seconds == 0.2
        with pytest.raises(Timeout):
            await database.write(_sleep(2))
        # The one pooled connection is usable again at once.
        assert await database.read(_one()) == 1
        assert await database.read(_sleep(0.01)) is not None
    finally:
        await database.dispose()


async def test_the_default_timeout_lets_ordinary_statements_run(database_url: str) -> None:
    database = Database(database_url)
    try:
        assert await database.read(_one()) == 1
    finally:
        await database.dispose()


@pytest.fixture
def slow_patient_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Patient search times out as PostgreSQL's statement timeout would make it."""
    original = reads.search

    async def search(exchange: Any, rtype: str, *args: Any, **kwargs: Any) -> Any:
        if rtype == "Patient":
            raise Timeout(0.5)
        return await original(exchange, rtype, *args, **kwargs)

    monkeypatch.setattr(reads, "search", search)


@pytest.mark.usefixtures("slow_patient_search")
async def test_a_search_that_times_out_is_a_503_and_audited(module_hub: HubServer) -> None:
    get, post = TraceHeaders.new(), TraceHeaders.new()
    async with module_hub.client("xis") as xis:
        got = await xis.get("/Patient", params={"name": "x"}, headers=get.headers)
        posted = await xis.post("/Patient/_search", content="name=y", headers=FORM | post.headers)
    for response in (got, posted):
        body = outcome(response, 503)
        assert body["issue"][0]["code"] == "timeout"
        assert body["issue"][0]["diagnostics"] == "The search took longer than 0.5 s; narrow it"

    for trace, asked in ((get, "name=x"), (post, "name=y")):
        event = await event_of(module_hub, trace.request_id)
        assert event["outcome"] == "8"  # a server failure (5xx)
        assert event["outcomeDesc"] == "The search took longer than 0.5 s; narrow it"
        assert [entity.get("query") for entity in event["entity"]] == [b64(asked)]
