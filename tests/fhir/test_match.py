from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest

from hub.fhir.extract import IndexValues, ReferenceRow, TokenRow, extract
from hub.fhir.match import (
    Target,
    chain_targets,
    date_matches,
    index_keys,
    matches,
    origin_allowed,
    required_key_sets,
    required_keys,
    unrestricted,
)
from hub.fhir.query import parse_criteria
from tests.fhir.corpus import (
    CASES,
    LIVE,
    case_query,
    index_of,
    instantiates,
    resource,
    targets_of,
)

INDEX = index_of(LIVE)
TARGETS = targets_of(LIVE)


def resolve(resource_type: str, id_: str) -> Target | None:
    return TARGETS.get((resource_type, id_))


@pytest.mark.parametrize(("resource_type", "query_string", "expected"), CASES)
def test_corpus_case(resource_type: str, query_string: str, expected: set[str]) -> None:
    query = case_query(resource_type, query_string)
    found = {
        r["id"]
        for r in LIVE
        if matches(
            query, r, INDEX[(r["resourceType"], r["id"])], resolve=resolve, readable=unrestricted
        )
    }
    assert found == expected


def test_a_resource_of_another_type_never_matches() -> None:
    patient = LIVE[0]
    assert not matches(
        parse_criteria("Task"), patient, extract(patient), resolve=resolve, readable=unrestricted
    )
    assert matches(
        parse_criteria("Patient"), patient, extract(patient), resolve=resolve, readable=unrestricted
    )


def test_result_controls_do_not_filter() -> None:
    patient = LIVE[0]
    query = parse_criteria("Patient?gender=male&_count=1&_sort=-_lastUpdated&_total=none")
    assert matches(query, patient, extract(patient), resolve=resolve, readable=unrestricted)


def test_chain_asks_resolve_only_for_the_chained_targets() -> None:
    task = resource(
        "Task", "t9", "2024-01-01T00:00:00Z", "dev-a", status="ready",
        extension=[instantiates("ActivityDefinition/ad1"), instantiates("ActivityDefinition/x")],
    )  # fmt: skip
    query = parse_criteria("Task?instantiates.publisherId=pubA")
    values = extract(task)
    assert chain_targets(query, values) == {
        ("ActivityDefinition", "ad1"),
        ("ActivityDefinition", "x"),
    }
    asked: list[tuple[str, str]] = []

    def recording(resource_type: str, id_: str) -> Target | None:
        asked.append((resource_type, id_))
        return resolve(resource_type, id_)

    assert matches(query, task, values, resolve=recording, readable=unrestricted)
    assert set(asked) <= chain_targets(query, values)
    assert chain_targets(parse_criteria("Task?status=ready"), values) == set()


def test_chain_to_an_unknown_target_does_not_match() -> None:
    task = resource(
        "Task", "t9", "2024-01-01T00:00:00Z", "dev-a",
        extension=[instantiates("ActivityDefinition/gone")],
    )  # fmt: skip
    query = parse_criteria("Task?instantiates.publisherId=pubA")
    assert not matches(query, task, extract(task), resolve=resolve, readable=unrestricted)


@pytest.mark.parametrize(
    ("prefix", "resource_range", "expected"),
    [
        # The search value is the day [10, 11); resource ranges around it.
        ("eq", (10, 11), True),
        ("eq", (9, 11), False),
        ("ne", (9, 11), True),
        ("ne", (10, 11), False),
        ("gt", (10, 12), True),
        ("gt", (10, 11), False),
        ("lt", (9, 11), True),
        ("lt", (10, 11), False),
        ("ge", (10, 11), True),
        ("ge", (11, 12), True),
        ("ge", (9, 10), False),
        ("le", (10, 11), True),
        ("le", (9, 10), True),
        ("le", (11, 12), False),
        ("sa", (11, 12), True),
        ("sa", (10, 12), False),
        ("eb", (9, 10), True),
        ("eb", (9, 11), False),
    ],
)
def test_date_prefix_boundaries(
    prefix: str, resource_range: tuple[int, int], expected: bool
) -> None:
    def day(n: int) -> datetime:
        return datetime(2024, 1, n)

    low, high = resource_range
    assert date_matches(prefix, day(10), day(11), day(low), day(high)) is expected


def test_index_keys_of_tokens_and_references() -> None:
    values = IndexValues(
        tokens=(TokenRow("status", None, "ready", None), TokenRow("code", None, None, "text")),
        references=(
            ReferenceRow("patient", "Patient", "p1", None),
            ReferenceRow("based-on", None, None, "urn:uuid:1"),
        ),
    )
    assert index_keys(values) == {
        ("status", "token", "ready"),
        ("patient", "reference", "p1"),
        ("based-on", "url", "urn:uuid:1"),
    }


def test_required_keys_come_from_plain_token_and_reference_clauses() -> None:
    query = parse_criteria(
        "Task?status=ready,completed&owner=Patient/p1&code:text=x&instantiates.publisherId=a"
        "&authored-on=2024&identifier:not=x|y&subject:missing=false&subject:Patient=p2"
    )
    assert required_key_sets(query) == (
        frozenset({("status", "token", "ready"), ("status", "token", "completed")}),
        frozenset({("owner", "reference", "p1")}),
        frozenset({("subject", "reference", "p2")}),
    )
    # The smallest set wins, references before tokens.
    assert required_keys(query) == frozenset({("owner", "reference", "p1")})
    assert required_keys(parse_criteria("Task?authored-on=2024")) is None
    assert required_keys(parse_criteria("Task?identifier=sys|")) is None


@pytest.mark.parametrize(("resource_type", "query_string", "_expected"), CASES)
def test_a_match_always_offers_a_required_key(
    resource_type: str, query_string: str, _expected: set[str]
) -> None:
    query = case_query(resource_type, query_string)
    for r in LIVE:
        values = INDEX[(r["resourceType"], r["id"])]
        if matches(query, r, values, resolve=resolve, readable=unrestricted):
            for keys in required_key_sets(query):
                assert keys & index_keys(values)


# --- a chain only looks into targets the reader may read --------------------------------

CHAINED_TASK = resource(
    "Task", "t9", "2024-01-01T00:00:00Z", "dev-a",
    extension=[instantiates("ActivityDefinition/ad1"), instantiates("ActivityDefinition/ad2")],
)  # fmt: skip


def may_read(rtype: str, origins: frozenset[str] | None) -> Callable[[str], frozenset[str] | None]:
    return lambda asked: origins if asked == rtype else frozenset()


@pytest.mark.parametrize(
    ("origins", "expected"),
    [
        (None, True),
        (frozenset({"dev-m"}), True),  # ad1 (pubA) is made by dev-m
        (frozenset({"dev-m", "dev-x"}), True),
        (frozenset({"dev-x"}), False),  # ad1 exists, but the reader may not read it
        (frozenset(), False),  # the reader may read no ActivityDefinition at all
    ],
)
def test_a_chain_only_matches_targets_the_reader_may_read(
    origins: frozenset[str] | None, expected: bool
) -> None:
    query = parse_criteria("Task?instantiates.publisherId=pubA")
    readable = may_read("ActivityDefinition", origins)
    values = extract(CHAINED_TASK)
    assert matches(query, CHAINED_TASK, values, resolve=resolve, readable=readable) is expected


def test_rights_on_other_types_do_not_open_a_chain() -> None:
    query = parse_criteria("Task?instantiates.publisherId=pubA")
    values = extract(CHAINED_TASK)
    assert not matches(
        query, CHAINED_TASK, values, resolve=resolve, readable=may_read("Task", None)
    )
    # Without a chain, what the reader may read of other types does not matter.
    plain = parse_criteria("Task?instantiates=ActivityDefinition/ad1")
    assert matches(plain, CHAINED_TASK, values, resolve=resolve, readable=lambda _: frozenset())


def test_an_unreadable_target_is_never_resolved() -> None:
    asked: list[tuple[str, str]] = []

    def recording(resource_type: str, id_: str) -> Target | None:
        asked.append((resource_type, id_))
        return resolve(resource_type, id_)

    query = parse_criteria("Task?instantiates.publisherId=pubA")
    values = extract(CHAINED_TASK)
    assert not matches(
        query, CHAINED_TASK, values, resolve=recording, readable=lambda _: frozenset()
    )
    assert asked == []


def test_a_target_without_origin_is_readable_only_without_restriction() -> None:
    assert origin_allowed(None, None)
    assert origin_allowed(None, "dev-m")
    assert origin_allowed(frozenset({"dev-m"}), "dev-m")
    assert not origin_allowed(frozenset({"dev-m"}), None)
    assert not origin_allowed(frozenset({"dev-m"}), "dev-x")
    assert not origin_allowed(frozenset(), "dev-m")
    values = extract(CHAINED_TASK)
    query = parse_criteria("Task?instantiates.title=stress")

    def orphans(_rtype: str, _id: str) -> Target:
        """ad1's values, as if it had no resource-origin."""
        return Target(TARGETS[("ActivityDefinition", "ad1")].values, None)

    assert matches(query, CHAINED_TASK, values, resolve=orphans, readable=unrestricted)
    restricted = may_read("ActivityDefinition", frozenset({"dev-m"}))
    assert not matches(query, CHAINED_TASK, values, resolve=orphans, readable=restricted)
