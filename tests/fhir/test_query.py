from __future__ import annotations

from datetime import datetime
from urllib.parse import parse_qsl

import pytest

from hub.fhir.outcome import FhirError
from hub.fhir.query import (
    DateValue,
    MissingValue,
    ReferenceValue,
    SortKey,
    TextValue,
    TokenValue,
    UriValue,
    parse_criteria,
    parse_search,
    split_escaped,
    unescape,
)


def test_token_values_and_escaping() -> None:
    query = parse_search("Patient", [("identifier", r"sys|a\,b,\|x,|c,d|,e\\f")])
    [clause] = query.clauses
    assert clause.values == (
        TokenValue("sys", "a,b"),
        TokenValue(None, "|x"),
        TokenValue("", "c"),
        TokenValue("d", None),
        TokenValue(None, "e\\f"),
    )


def test_comma_is_or_and_repetition_is_and() -> None:
    query = parse_search("Task", [("status", "ready,completed"), ("status", "failed")])
    assert [len(clause.values) for clause in query.clauses] == [2, 1]


def test_string_uri_and_missing_values() -> None:
    query = parse_search(
        "ActivityDefinition",
        [("title:exact", "Stress"), ("url:below", "http://x/"), ("status:missing", "true")],
    )
    assert [clause.modifier for clause in query.clauses] == ["exact", "below", "missing"]
    assert query.clauses[0].values == (TextValue("Stress", "stress"),)
    assert query.clauses[1].values == (UriValue("http://x/"),)
    assert query.clauses[2].values == (MissingValue(True),)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Patient/p1", ReferenceValue("Patient", "p1")),
        ("p1", ReferenceValue(None, "p1")),
        ("Patient/p1/_history/2", ReferenceValue("Patient", "p1")),
        (
            "https://hub/fhir/Patient/p1",
            ReferenceValue("Patient", "p1", "https://hub/fhir/Patient/p1"),
        ),
        ("urn:uuid:1", ReferenceValue(None, None, "urn:uuid:1")),
    ],
)
def test_reference_values(value: str, expected: ReferenceValue) -> None:
    assert parse_search("Task", [("subject", value)]).clauses[0].values == (expected,)


def test_reference_type_modifier() -> None:
    [clause] = parse_search("Task", [("subject:Patient", "p1")]).clauses
    assert clause.values == (ReferenceValue("Patient", "p1"),)


@pytest.mark.parametrize(
    ("value", "prefix", "low", "high"),
    [
        ("2024", "eq", datetime(2024, 1, 1), datetime(2025, 1, 1)),
        ("ge2024-03", "ge", datetime(2024, 3, 1), datetime(2024, 4, 1)),
        ("lt2024-03-01T10:00Z", "lt", datetime(2024, 3, 1, 10), datetime(2024, 3, 1, 10, 1)),
        ("sa2024-03-01T10:00:00+01:00", "sa", datetime(2024, 3, 1, 9),
         datetime(2024, 3, 1, 9, 0, 1)),
        ("eb2024-03-01T10:00:00 01:00", "eb", datetime(2024, 3, 1, 9),
         datetime(2024, 3, 1, 9, 0, 1)),
        ("ne2024-03-01T10:00:00.25", "ne", datetime(2024, 3, 1, 10, 0, 0, 250000),
         datetime(2024, 3, 1, 10, 0, 0, 260000)),
    ],
)  # fmt: skip
def test_date_values(value: str, prefix: str, low: datetime, high: datetime) -> None:
    [clause] = parse_search("Task", [("authored-on", value)]).clauses
    assert clause.values == (DateValue(prefix, low, high),)  # type: ignore[arg-type]


def test_chains() -> None:
    for name in ("instantiates.publisherId", "instantiates:ActivityDefinition.publisherId"):
        [clause] = parse_search("Task", [(name, "pub")]).clauses
        assert clause.target_type == "ActivityDefinition"
        assert clause.chain is not None
        assert clause.chain.param.code == "publisherId"
        assert clause.chain.values == (TokenValue(None, "pub"),)
        assert clause.name == name
    [clause] = parse_search("Task", [("subject:Patient.name", "jan")]).clauses
    assert clause.target_type == "Patient"


def test_result_controls() -> None:
    query = parse_search(
        "AuditEvent",
        [("_count", "10"), ("_sort", "-date,_id"), ("_total", "accurate"),
         ("_summary", "count"), ("_cursor", "abc"), ("_format", "json")],
    )  # fmt: skip
    assert query.count == 10
    assert query.sort == (SortKey("date", True), SortKey("_id", False))
    assert (query.total, query.summary, query.cursor) == ("accurate", "count", "abc")
    assert query.clauses == ()
    assert parse_search("Task", [("_summary", "false")]).summary is None


def test_sort_on_string_token_and_reference_parameters() -> None:
    query = parse_search("Patient", [("_sort", "family,-gender,organization,-birthdate")])
    assert query.sort == (
        SortKey("family"), SortKey("gender", True), SortKey("organization"),
        SortKey("birthdate", True),
    )  # fmt: skip
    assert parse_search("Task", [("_sort", "-status,_id")]).sort == (
        SortKey("status", True),
        SortKey("_id"),
    )


def test_phonetic_values_are_keys_matched_as_codes() -> None:
    [clause] = parse_search("Patient", [("phonetic", "Meijer,de Jongh")]).clauses
    assert clause.values == (TokenValue(None, "67"), TokenValue(None, "264"))
    assert clause.raw == ("Meijer", "de Jongh")


def test_lenient_mode_ignores_unknown_parameters_and_modifiers() -> None:
    query = parse_search(
        "Task", [("foo", "1"), ("status:weird", "x"), ("_include", "Task:owner"), ("status", "")]
    )
    assert query.clauses == ()
    assert query.unknown == ("foo", "status:weird", "_include")


def test_canonical_params_round_trip() -> None:
    params = [
        ("identifier", r"sys|a\,b,c"),
        ("instantiates:ActivityDefinition.publisherId", "pub"),
        ("authored-on", "ge2024-01-01T10:00:00+01:00"),
        ("_sort", "-authored-on"),
        ("_count", "5"),
        ("_total", "none"),
        ("_summary", "count"),
    ]
    query = parse_search("Task", [*params, ("_cursor", "c"), ("unknown", "x")])
    assert query.canonical_params() == params
    assert parse_search("Task", query.canonical_params()) == parse_search("Task", params)


def test_parse_criteria() -> None:
    query = parse_criteria("Task?status=ready&instantiates.publisherId=p%7Cq")
    assert query.resource_type == "Task"
    assert [clause.name for clause in query.clauses] == ["status", "instantiates.publisherId"]
    assert query.clauses[1].innermost.values == (TokenValue("p", "q"),)
    assert parse_criteria("Patient").clauses == ()


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ([("status:exact", "x")], "status:exact"),
        ([("status:contains", "x")], "status:contains"),
        ([("period:not", "2024")], "period:not"),
        ([("authored-on:text", "x")], "authored-on:text"),
        ([("status:in", "http://vs")], "status:in"),
        ([("subject:identifier", "x|y")], "subject:identifier"),
        ([("status:Patient", "x")], "status:Patient"),
        ([("owner:Group", "x")], "owner:Group"),
        ([("subject:Patient", "Group/g1")], "subject:Patient"),
        ([("status:missing", "yes")], "status:missing"),
        ([("authored-on", "xx2024")], "authored-on"),
        ([("authored-on", "ap2024")], "authored-on"),
        ([("authored-on", "2024-13-01")], "authored-on"),
        ([("authored-on", "2024-01-01T10")], "authored-on"),
        ([("subject", "not a/reference/at all")], "subject"),
        ([("identifier", "|")], "identifier"),
        ([("identifier", ",")], "identifier"),
        ([("status.name", "x")], "status.name"),
        ([("subject.name", "x")], "subject.name"),
        ([("instantiates.nothing", "x")], "instantiates.nothing"),
        ([("instantiates.publisherId.x", "x")], "instantiates.publisherId.x"),
        ([("instantiates:missing.publisherId", "x")], "instantiates:missing.publisherId"),
        ([("instantiates._id", "x")], "instantiates._id"),
        ([("_lastUpdated:missing", "true")], "_lastUpdated:missing"),
        ([("_count", "-1")], "_count"),
        ([("_count", "ten")], "_count"),
        ([("_count", "1"), ("_count", "2")], "_count"),
        ([("_sort", "_profile")], "_sort"),
        ([("_sort", "phonetic")], "_sort"),
        ([("_sort", "family:exact")], "_sort"),
        ([("_sort", "_id,-_id")], "_sort"),
        ([("_total", "some")], "_total"),
        ([("_summary", "true")], "_summary"),
    ],
)
def test_bad_searches_are_400s_that_name_the_parameter(
    params: list[tuple[str, str]], names: str
) -> None:
    with pytest.raises(FhirError) as raised:
        parse_search("Task", params)
    assert raised.value.status == 400
    assert raised.value.issues[0].expression == (names,)
    assert raised.value.issues[0].diagnostics


@pytest.mark.parametrize(
    "criteria",
    ["Task?foo=1", "Task?status:weird=x", "Task?_include=Task:owner", "Unknown?x=1", "?status=a"],
)
def test_criteria_are_strict(criteria: str) -> None:
    with pytest.raises(FhirError) as raised:
        parse_criteria(criteria)
    assert raised.value.status == 400


def test_unsupported_resource_type() -> None:
    with pytest.raises(FhirError):
        parse_search("Observation", [])


def test_split_and_unescape() -> None:
    assert split_escaped(r"a\,b,c\\,d", ",") == [r"a\,b", "c\\\\", "d"]
    assert split_escaped("a|b|c", "|", limit=1) == ["a", "b|c"]
    assert unescape(r"a\,b\$c\|d\\e\x") == r"a,b$c|d\e\x"


# --- empty values: the name is checked first, then the value is ignored ---------------------


def test_an_empty_value_is_ignored_only_once_its_name_is_known() -> None:
    query = parse_search(
        "Task",
        [("foo", ""), ("status:bogus", ""), ("status", ""), ("instantiates.publisherId", "")],
    )
    assert query.clauses == ()
    assert query.unknown == ("foo", "status:bogus")


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ([("foo", "")], "foo"),
        ([("status:bogus", "")], "status:bogus"),
        ([("instantiates.publisherId:bogus", "")], "instantiates.publisherId:bogus"),
    ],
)
def test_strict_mode_refuses_an_unknown_name_with_an_empty_value(
    params: list[tuple[str, str]], name: str
) -> None:
    with pytest.raises(FhirError) as raised:
        parse_search("Task", params, strict=True)
    assert raised.value.status == 400
    assert raised.value.issues[0].expression == (name,)
    # The same parameters with a known name and an empty value are ignored.
    assert parse_search("Task", [("status", "")], strict=True).clauses == ()


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ([("status:exact", "")], "status:exact"),
        ([("status:Patient", "")], "status:Patient"),
        ([("owner:Group", "")], "owner:Group"),
        ([("status.name", "")], "status.name"),
        ([("instantiates.nothing", "")], "instantiates.nothing"),
        ([("instantiates._id", "")], "instantiates._id"),
    ],
)
def test_a_wrong_name_is_a_400_even_with_an_empty_value(
    params: list[tuple[str, str]], name: str
) -> None:
    with pytest.raises(FhirError) as raised:
        parse_search("Task", params)
    assert raised.value.status == 400
    assert raised.value.issues[0].expression == (name,)


def test_empty_result_controls_are_ignored() -> None:
    query = parse_search(
        "Task",
        [("_count", ""), ("_sort", ""), ("_total", ""), ("_summary", ""), ("_cursor", "")],
    )
    assert query == parse_search("Task", [])
    assert parse_search("Task", [("_count", ""), ("_count", "5")]).count == 5


@pytest.mark.parametrize(
    ("criteria", "name"),
    [
        ("Task?bogus=", "bogus"),
        ("Task?status:bogus=", "status:bogus"),
        ("Task?status=ready&bogus=", "bogus"),
    ],
)
def test_criteria_refuse_an_unknown_name_with_an_empty_value(criteria: str, name: str) -> None:
    with pytest.raises(FhirError) as raised:
        parse_criteria(criteria)
    assert raised.value.status == 400
    assert raised.value.issues[0].expression == (name,)
    # As Subscription.criteria the expression becomes the element: the text names the parameter.
    assert repr(name) in raised.value.text


@pytest.mark.parametrize(
    ("criteria", "name"),
    [
        ("Task?status=ready&_cursor=abc.def", "_cursor"),
        ("Task?status=ready&_cursor=", "_cursor"),
        ("Task?_format=json", "_format"),
        ("Task?_summary=count", "_summary"),
        ("Task?status=ready&_count=0", "_count"),
    ],
)
def test_criteria_refuse_result_controls_that_make_no_sense_there(criteria: str, name: str) -> None:
    with pytest.raises(FhirError) as raised:
        parse_criteria(criteria)
    assert raised.value.status == 400
    assert raised.value.issues[0].expression == (name,)
    assert "Subscription.criteria" in raised.value.text
    # An ordinary search takes them.
    resource_type, _, query_string = criteria.partition("?")
    parse_search(resource_type, parse_qsl(query_string, keep_blank_values=True), strict=True)


def test_criteria_accept_the_controls_of_the_search_a_subscriber_runs() -> None:
    query = parse_criteria("Task?status=ready&_sort=-_lastUpdated&_count=10&_total=none")
    assert (query.sort, query.count, query.total) == ((SortKey("_lastUpdated", True),), 10, "none")
    assert parse_criteria("Task?status=ready&_summary=false").summary is None
    assert parse_criteria("Task?status=").clauses == ()  # a known name: the empty value is ignored


def test_a_token_code_outside_its_required_binding_is_refused_unless_any_code() -> None:
    for params in (
        [("status", "compleeted")],
        [("status", "completed,compleeted")],
        [("status:not", "compleeted")],
        [("status", "http://hl7.org/fhir/task-status|compleeted")],
    ):
        with pytest.raises(FhirError) as raised:
            parse_search("Task", params)
        [issue] = raised.value.issues
        assert raised.value.status == 400
        assert issue.code == "code-invalid"
        assert issue.expression == (params[0][0],)
        assert "draft, requested, received" in issue.diagnostics
        assert "handling=lenient" in issue.diagnostics
    lenient = parse_search("Task", [("status", "compleeted")], any_code=True)
    assert lenient.clauses[0].values == (TokenValue(None, "compleeted"),)
    # Every code of the value set; :text, :missing and unbound tokens take anything.
    for code in ("draft", "completed", "entered-in-error"):
        parse_search("Task", [("status", code)])
    parse_search("Task", [("status:text", "compleeted"), ("status:missing", "true")])
    parse_search("Task", [("identifier", "anything"), ("_id", "x")])
    # A chain's value is checked against its last parameter.
    with pytest.raises(FhirError) as chained:
        parse_search("Task", [("owner:Patient.gender", "f")])
    assert chained.value.issues[0].expression == ("owner:Patient.gender",)


def test_criteria_refuse_a_code_outside_the_binding_without_the_lenient_hint() -> None:
    with pytest.raises(FhirError) as raised:
        parse_criteria("Task?status=compleeted")
    [issue] = raised.value.issues
    assert issue.code == "code-invalid"
    assert "lenient" not in issue.diagnostics
    assert parse_criteria("Subscription?status=active&type=rest-hook").clauses
