from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.fhir.extract import extract, instant
from hub.fhir.match import OriginsOf, Target, matches
from hub.fhir.origin import origin_device
from hub.fhir.outcome import FhirError
from hub.fhir.query import Query, parse_search
from hub.store import resources as repository
from hub.store.db import Database
from hub.store.search import SearchPage, encode_cursor, search
from hub.store.sql import Work
from tests.fhir.corpus import (
    CASES,
    DELETED,
    KT,
    LIVE,
    case_query,
    instantiates,
    publisher,
    resource,
)

DOMAIN = "demo"


def _store(domain: str, resources: Iterable[dict[str, Any]], *, deleted: bool) -> Work[None]:
    for r in resources:
        at = instant(r["meta"]["lastUpdated"]) or datetime.min
        new = repository.prepare(
            domain, r, id=r["id"], version_id=1, now=at, origin=origin_device(r), method="POST"
        )
        row = yield from repository.write(new, previous=None)
        if deleted:
            yield from repository.delete(row, now=at)


async def store(
    database: Database,
    resources: Iterable[dict[str, Any]],
    *,
    domain: str = DOMAIN,
    deleted: bool = False,
) -> None:
    """Store resources as the repository does: rows, history and index rows (deleted: none)."""
    await database.write(_store(domain, resources, deleted=deleted))


async def run(
    database: Database,
    query: Query,
    *,
    origins: frozenset[str] | None = None,
    page_size: int = 100,
    domain: str = DOMAIN,
    target_origins: OriginsOf | None = None,
) -> SearchPage:
    return await database.read(
        search(
            domain=domain,
            query=query,
            allowed_origins=origins,
            page_size=page_size,
            target_origins=target_origins,
        )
    )


def ids(page: SearchPage) -> list[str]:
    return [row.id for row in page.rows]


def query(resource_type: str, query_string: str, cursor: str | None = None) -> Query:
    params = parse_qsl(query_string, keep_blank_values=True)
    if cursor:
        params.append(("_cursor", cursor))
    return parse_search(resource_type, params)


async def test_corpus_cases(database: Database) -> None:
    await store(database, LIVE)
    await store(database, DELETED, deleted=True)
    # The same resources in another domain must never show up.
    await store(database, LIVE, domain="other")
    failures = []
    for resource_type, query_string, expected in CASES:
        page = await run(database, case_query(resource_type, query_string))
        if set(ids(page)) != expected or page.total != len(expected):
            failures.append((resource_type, query_string, ids(page), page.total, expected))
    assert failures == []


async def test_deleted_resources_are_not_found(database: Database) -> None:
    await store(database, DELETED, deleted=True)
    page = await run(database, query("ActivityDefinition", ""))
    assert (ids(page), page.total) == ([], 0)
    page = await run(database, query("ActivityDefinition", "_id=ad3"))
    assert (ids(page), page.total) == ([], 0)


def only(rtype: str, origins: frozenset[str] | None) -> OriginsOf:
    """`OriginsOf` for a caller who may read `origins` of `rtype` (and nothing of other types)."""
    return lambda asked: origins if asked == rtype else frozenset()


async def test_a_chain_only_looks_into_targets_the_caller_may_read(database: Database) -> None:
    await store(database, LIVE)
    await store(database, DELETED, deleted=True)
    chained = query("Task", "instantiates.publisherId=pubA,pubB")

    async def found(target_origins: OriginsOf | None, **kwargs: Any) -> tuple[list[str], int]:
        page = await run(database, chained, target_origins=target_origins, **kwargs)
        assert page.total is not None
        return sorted(ids(page)), page.total

    # ad1 (pubA) and ad2 (pubB) are both made by dev-m.
    assert await found(only("ActivityDefinition", None)) == (["t1", "t2"], 2)
    assert await found(only("ActivityDefinition", frozenset({"dev-m"}))) == (["t1", "t2"], 2)
    # The probe: a caller who may not read dev-m's ActivityDefinitions learns nothing of them.
    assert await found(only("ActivityDefinition", frozenset({"dev-x"}))) == ([], 0)
    assert await found(only("ActivityDefinition", frozenset())) == ([], 0)
    assert await found(only("Patient", None)) == ([], 0)
    # Narrowed on both: the Task's own origin and the target's.
    both = await found(
        only("ActivityDefinition", frozenset({"dev-m"})), origins=frozenset({"dev-b"})
    )
    assert both == (["t2"], 1)
    # Left out, chains fail closed for a narrowed search, and are open only to the hub itself.
    assert await found(None, origins=frozenset({"dev-a", "dev-b"})) == ([], 0)
    assert await found(None) == (["t1", "t2"], 2)
    # A search without a chain is not affected by what the caller may read elsewhere.
    plain = await run(database, query("Task", "status=ready"), target_origins=only("X", None))
    assert sorted(ids(plain)) == ["t1", "t3"]


async def test_a_chain_target_without_origin_is_readable_only_to_an_unrestricted_caller(
    database: Database,
) -> None:
    orphan = resource("ActivityDefinition", "ad9", "2024-01-01T00:00:00Z", "dev-m")
    orphan["extension"] = [publisher("pubZ")]  # no resource-origin
    task = resource(
        "Task", "t9", "2024-01-01T00:00:00Z", "dev-a",
        extension=[instantiates("ActivityDefinition/ad9")],
    )  # fmt: skip
    await store(database, [orphan, task])
    chained = query("Task", "instantiates.publisherId=pubZ")
    anyone = await run(database, chained, target_origins=only("ActivityDefinition", None))
    assert ids(anyone) == ["t9"]
    restricted = only("ActivityDefinition", frozenset({"dev-m"}))
    assert ids(await run(database, chained, target_origins=restricted)) == []


def tasks(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        resource(
            "Task", f"t{n:03}", f"2024-01-01T00:{n // 60:02}:{n % 60:02}Z", f"dev{n % 3}",
            status="ready" if n % 2 == 0 else "completed", intent="order",
            authoredOn=f"2024-02-{1 + n % 28:02}" if n % 5 else None,
        )
        for n in range(start, start + count)
    ]  # fmt: skip


async def walk(
    database: Database,
    resource_type: str,
    query_string: str,
    *,
    page_size: int,
    origins: frozenset[str] | None = None,
) -> list[str]:
    found: list[str] = []
    cursor: str | None = None
    while True:
        page = await run(
            database,
            query(resource_type, query_string, cursor),
            origins=origins,
            page_size=page_size,
        )
        found += ids(page)
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


async def test_default_order_is_creation_order_and_pages_cover_everything(
    database: Database,
) -> None:
    await store(database, tasks(23))
    found = await walk(database, "Task", "", page_size=5)
    assert found == [f"t{n:03}" for n in range(23)]


async def test_audit_events_come_newest_first(database: Database) -> None:
    events = [
        resource("AuditEvent", f"ae{n}", "2024-01-01T00:00:00Z", "dev-a", recorded="2024")
        for n in range(7)
    ]
    await store(database, events)
    assert await walk(database, "AuditEvent", "", page_size=3) == [
        f"ae{n}" for n in range(6, -1, -1)
    ]


async def test_origin_narrowing_keeps_total_and_paging_right(database: Database) -> None:
    await store(database, tasks(30))
    page = await run(
        database, query("Task", "status=ready"), origins=frozenset({"dev1"}), page_size=2
    )
    expected = [f"t{n:03}" for n in range(30) if n % 2 == 0 and n % 3 == 1]
    assert page.total == len(expected)
    found = await walk(database, "Task", "status=ready", page_size=2, origins=frozenset({"dev1"}))
    assert found == expected
    nothing = await run(database, query("Task", ""), origins=frozenset())
    assert (ids(nothing), nothing.total) == ([], 0)


async def test_paging_forwards_while_rows_are_inserted(database: Database) -> None:
    await store(database, tasks(20))
    found: list[str] = []
    cursor: str | None = None
    extra = 100
    while True:
        page = await run(database, query("Task", "", cursor), page_size=3)
        found += ids(page)
        # Someone creates a resource between every two page requests.
        await store(database, tasks(1, start=extra))
        extra += 1
        if page.next_cursor is None or len(found) > 200:
            break
        cursor = page.next_cursor
    originals = [f"t{n:03}" for n in range(20)]
    assert len(found) == len(set(found)), "no duplicates"
    assert found[:20] == originals, "none of the original rows skipped, in order"


async def test_paging_backwards_returns_the_same_pages(database: Database) -> None:
    await store(database, tasks(11))
    pages: list[SearchPage] = []
    cursor: str | None = None
    while True:
        page = await run(database, query("Task", "", cursor), page_size=3)
        pages.append(page)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages[0].previous_cursor is None
    assert [len(p.rows) for p in pages] == [3, 3, 3, 2]
    await store(database, tasks(5, start=50))  # inserts must not disturb going back
    back = pages[-1]
    for expected in reversed(pages[:-1]):
        assert back.previous_cursor is not None
        back = await run(database, query("Task", "", back.previous_cursor), page_size=3)
        assert ids(back) == ids(expected)
        assert back.next_cursor is not None
    assert back.previous_cursor is None


async def test_sort_by_date_puts_resources_without_a_value_last(database: Database) -> None:
    rows = tasks(12)
    await store(database, rows)
    created = {r["id"]: n for n, r in enumerate(rows)}
    dated = [r for r in rows if "authoredOn" in r]
    undated = [r["id"] for r in rows if "authoredOn" not in r]
    assert dated
    assert undated
    # Ties on the date fall back to creation order.
    earliest = sorted(dated, key=lambda r: (r["authoredOn"], created[r["id"]]))
    latest = sorted(dated, key=lambda r: created[r["id"]])
    latest.sort(key=lambda r: r["authoredOn"], reverse=True)
    ascending = await walk(database, "Task", "_sort=authored-on", page_size=4)
    assert ascending == [r["id"] for r in earliest] + undated
    descending = await walk(database, "Task", "_sort=-authored-on", page_size=4)
    assert descending == [r["id"] for r in latest] + undated


async def test_sort_by_id_and_last_updated(database: Database) -> None:
    rows = tasks(7)
    await store(database, list(reversed(rows)))  # created in reverse id order
    assert await walk(database, "Task", "_sort=_id", page_size=3) == [r["id"] for r in rows]
    assert await walk(database, "Task", "_sort=-_lastUpdated", page_size=2) == [
        r["id"] for r in reversed(rows)
    ]


def people(families: Sequence[Sequence[str]], **fields: Any) -> list[dict[str, Any]]:
    """Patients p0, p1, ... in creation order, each with the family names given (or none)."""
    return [
        resource(
            "Patient", f"p{n}", f"2024-01-01T00:00:{n:02}Z", "dev-a",
            name=[{"family": family} for family in names] or None,
            **{key: values[n] for key, values in fields.items()},
        )
        for n, names in enumerate(families)
    ]  # fmt: skip


async def walk_both_ways(
    database: Database, resource_type: str, query_string: str, *, page_size: int
) -> list[str]:
    """Every page going forwards; then back from the last page, which must give the same pages."""
    pages: list[SearchPage] = []
    cursor: str | None = None
    while True:
        page = await run(database, query(resource_type, query_string, cursor), page_size=page_size)
        pages.append(page)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    back = pages[-1]
    for expected in reversed(pages[:-1]):
        assert back.previous_cursor is not None
        back = await run(
            database, query(resource_type, query_string, back.previous_cursor), page_size=page_size
        )
        assert ids(back) == ids(expected)
    assert back.previous_cursor is None
    return [id_ for page in pages for id_ in ids(page)]


async def test_sort_by_string_lowest_value_up_highest_down(database: Database) -> None:
    await store(
        database,
        people(
            [
                ["Visser"],
                ["Zwart", "Andriessen"],
                [],
                ["visser"],
                ["Émile"],
                ["Visser"],
                ["de Boer"],
            ]
        ),
    )
    # Up, each Patient by its lowest name (p1: Andriessen); case and accents are ignored, so
    # the three Vissers tie and keep creation order across page boundaries; no name last.
    up = await walk_both_ways(database, "Patient", "_sort=family", page_size=2)
    assert up == ["p1", "p6", "p4", "p0", "p3", "p5", "p2"]
    # Down, each by its highest name (p1: Zwart); ties still in creation order; no name last.
    down = await walk_both_ways(database, "Patient", "_sort=-family", page_size=2)
    assert down == ["p1", "p0", "p3", "p5", "p4", "p6", "p2"]
    # Every page size gives the same order.
    for size in (1, 3, 7, 8):
        assert await walk(database, "Patient", "_sort=family", page_size=size) == up


async def test_sort_by_token_then_string_and_by_reference(database: Database) -> None:
    genders = ["male", "female", "male", None, "female"]
    organizations = [
        {"reference": "Organization/o2"}, None, {"reference": "Organization/o1"},
        {"reference": "https://elsewhere.example/fhir/Organization/o0"}, None,
    ]  # fmt: skip
    await store(
        database,
        people(
            [["Bakker"], ["Smit"], ["Aalders"], ["Jansen"], ["Mulder"]],
            gender=genders,
            managingOrganization=organizations,
        ),
    )
    by_gender = await walk_both_ways(database, "Patient", "_sort=gender,-family", page_size=2)
    assert by_gender == ["p1", "p4", "p0", "p2", "p3"]
    by_gender_down = await walk(database, "Patient", "_sort=-gender,family", page_size=2)
    assert by_gender_down == ["p2", "p0", "p4", "p1", "p3"]
    # A reference sorts as Type/id, an absolute one included; then none.
    by_organization = await walk_both_ways(database, "Patient", "_sort=organization", page_size=2)
    assert by_organization == ["p3", "p2", "p0", "p1", "p4"]


async def test_sort_by_a_token_with_several_codes(database: Database) -> None:
    identifiers = [
        [{"system": "s", "value": "b"}, {"system": "t", "value": "y"}],
        [{"system": "s", "value": "c"}],
        [{"system": "s", "value": "a"}, {"system": "s", "value": "z"}],
    ]
    await store(database, people([[], [], []], identifier=identifiers))
    assert await walk(database, "Patient", "_sort=identifier", page_size=1) == ["p2", "p0", "p1"]
    assert await walk(database, "Patient", "_sort=-identifier", page_size=1) == ["p2", "p0", "p1"]
    assert await walk(database, "Patient", "_sort=-identifier,_id", page_size=2) == [
        "p2", "p0", "p1",
    ]  # fmt: skip


@pytest.mark.parametrize("bound", [12, "x\x00y", "\ud800", "x" * 3000, {"t": "2024-01-01"}])
async def test_a_cursor_with_a_forged_text_bound_is_a_400(database: Database, bound: Any) -> None:
    await store(database, people([["Bakker"]]))
    sorted_query = query("Patient", "_sort=family")
    forged = encode_cursor(sorted_query, [bound, 1], backwards=False)
    with pytest.raises(FhirError) as raised:
        await run(database, query("Patient", "_sort=family", forged))
    assert raised.value.status == 400
    # A null bound is a right one: it means "a resource without a name".
    fine = encode_cursor(sorted_query, [None, 0], backwards=True)
    assert ids(await run(database, query("Patient", "_sort=family", fine))) == ["p0"]


async def test_phonetic_search_agrees_with_matching(database: Database) -> None:
    names = [["Meijer"], ["Meyer", "van der Berg"], ["Janssen"], [], ["Dijkstra"]]
    patients = people(names)
    await store(database, patients)
    for value, expected in [
        ("Maier", ["p0", "p1"]), ("Berg", ["p1"]), ("Vanderberg", ["p1"]),
        ("Jansen,Dykstra", ["p2", "p4"]), ("Bakker", []),
    ]:  # fmt: skip
        parsed = query("Patient", f"phonetic={value}")
        page = await run(database, parsed)
        matched = [
            r["id"]
            for r in patients
            if matches(parsed, r, extract(r), resolve=lambda t, i: None, readable=only("", None))
        ]
        assert (value, sorted(ids(page))) == (value, expected)
        assert (value, matched) == (value, expected)
    missing = await run(database, query("Patient", "phonetic:missing=true"))
    assert ids(missing) == ["p3"]


async def test_phonetic_in_a_chain(database: Database) -> None:
    doctor = resource(
        "Practitioner", "dr", "2024-01-01T00:00:00Z", "dev-a", name=[{"family": "Claessen"}]
    )
    patients = people(
        [["Bakker"], ["Smit"]], generalPractitioner=[[{"reference": "Practitioner/dr"}], None]
    )
    await store(database, [doctor, *patients])
    targets = {("Practitioner", "dr"): Target(extract(doctor), origin_device(doctor))}
    for value, expected in [("Klaasen", ["p0"]), ("Bakker", [])]:
        parsed = query("Patient", f"general-practitioner:Practitioner.phonetic={value}")
        page = await run(database, parsed)
        matched = [
            r["id"]
            for r in patients
            if matches(
                parsed,
                r,
                extract(r),
                resolve=lambda t, i: targets.get((t, i)),
                readable=lambda _rtype: None,
            )
        ]
        assert (value, ids(page), matched) == (value, expected, expected)


async def test_total_none_and_summary_count(database: Database) -> None:
    await store(database, tasks(6))
    page = await run(database, query("Task", "_total=none"), page_size=2)
    assert page.total is None
    assert len(page.rows) == 2
    page = await run(database, query("Task", "status=ready&_summary=count"), page_size=2)
    assert (page.rows, page.total, page.next_cursor) == ([], 3, None)


@pytest.mark.parametrize(
    "cursor",
    ["garbage", "a.b", "eyJkIjoibmV4dCJ9.AAAA", "!!!.???"],
)
async def test_a_garbled_cursor_is_a_400(database: Database, cursor: str) -> None:
    await store(database, tasks(4))
    with pytest.raises(FhirError) as raised:
        await run(database, parse_search("Task", [("_cursor", cursor)]))
    assert raised.value.status == 400
    assert raised.value.issues[0].expression == ("_cursor",)


async def test_a_tampered_cursor_or_one_of_another_search_is_a_400(database: Database) -> None:
    await store(database, tasks(6))
    page = await run(database, query("Task", "status=ready"), page_size=1)
    assert page.next_cursor is not None
    payload, _, check = page.next_cursor.partition(".")
    tampered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BA") + "." + check
    for bad_query in (
        query("Task", "status=ready", tampered),
        query("Task", "status=completed", page.next_cursor),
        query("Task", "status=ready&_sort=_id", page.next_cursor),
    ):
        with pytest.raises(FhirError) as raised:
            await run(database, bad_query)
        assert raised.value.status == 400
    # The same search with another page size is fine.
    assert (await run(database, query("Task", "status=ready&_count=7", page.next_cursor))).rows


async def test_concurrent_searches_and_writes(database: Database) -> None:
    await store(database, tasks(10))

    async def reader() -> list[str]:
        return await walk(database, "Task", "status=ready", page_size=2)

    async def writer() -> None:
        for n in range(5):
            await store(database, tasks(1, start=200 + n))

    results = await asyncio.gather(reader(), reader(), writer())
    for found in results[:2]:
        assert found is not None
        assert found[:5] == ["t000", "t002", "t004", "t006", "t008"]


# --- matches() and search() agree -------------------------------------------------------

DATES = [
    "2024", "2024-01", "2024-01-15", "2024-01-16", "2024-02", "2024-01-15T10:00:00Z",
    "2024-01-15T10:00:00.5+01:00", "2024-01-15T23:30:00-02:00", "2023-12-31T23:59:59Z",
    "2024-01-31", "2024-12", "2024-12-31", "2025", "2024-01-15T00:00",
]  # fmt: skip
INSTANTS = ["2024-01-15T10:00:00Z", "2024-01-15T10:00:00.5+01:00", "2023-12-31T23:59:59Z"]
PREFIXES = ["", "eq", "ne", "lt", "le", "gt", "ge", "sa", "eb"]
TARGETS = ["ActivityDefinition/ad1", "ActivityDefinition/ad2", "ActivityDefinition/ad3",
           "ActivityDefinition/ad4", "ActivityDefinition/nope"]  # fmt: skip
SUBJECTS = ["Patient/p1", "Patient/p2", "https://elsewhere.example/fhir/Patient/p1", "Group/p1"]
NAMES = ["Jansen", "jan", "Müller", "Mul", "de Vries", "Émile", "Ann"]
AGREEMENT_TARGETS = [
    resource("ActivityDefinition", "ad1", "2024-01-01T00:00:00Z", "dev-m",
             extension=[{"url": f"{KT}/KT2PublisherId", "valueId": "pubA"}]),
    resource("ActivityDefinition", "ad2", "2024-01-01T00:00:00Z", "dev-n",
             extension=[{"url": f"{KT}/KT2PublisherId", "valueId": "pubB"}]),
    # Without a resource-origin: only a caller who may read any origin sees it.
    resource("ActivityDefinition", "ad4", "2024-01-01T00:00:00Z", "dev-m")
    | {"extension": [{"url": f"{KT}/KT2PublisherId", "valueId": "pubA"}]},
]  # fmt: skip
# What the searching caller (or subscriber) may read of the chain targets' type.
READABLE_TARGETS: list[frozenset[str] | None] = [
    None, frozenset(), frozenset({"dev-m"}), frozenset({"dev-n"}), frozenset({"dev-m", "dev-n"}),
    frozenset({"dev-x"}),
]  # fmt: skip


def maybe(values: Sequence[str]) -> st.SearchStrategy[str | None]:
    return st.none() | st.sampled_from(values)


@st.composite
def task_resources(draw: st.DrawFn, number: int) -> dict[str, Any]:
    identifiers = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "system": st.sampled_from(["s1", "s2"]),
                    "value": st.sampled_from(["a", "b", "a,b"]),
                }
            ),
            max_size=2,
        )
    )
    period = draw(
        st.fixed_dictionaries(
            {}, optional={"start": st.sampled_from(DATES), "end": st.sampled_from(DATES)}
        )
    )
    target = draw(maybe(TARGETS))
    subject = draw(maybe(SUBJECTS))
    display = draw(maybe(["Eerste", "Tweede"]))
    return resource(
        "Task",
        f"t{number}",
        draw(st.sampled_from(INSTANTS)),
        draw(st.sampled_from(["dev-a", "dev-b"])),
        extension=[instantiates(target)] if target else [],
        status=draw(st.sampled_from(["ready", "completed", "failed"])),
        intent="order",
        identifier=identifiers or None,
        authoredOn=draw(maybe(DATES)),
        executionPeriod=period or None,
        for_={"reference": subject} if subject else None,
        code={"coding": [{"system": "c", "code": "x", "display": display}]} if display else None,
    )


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|")


def task_clauses() -> st.SearchStrategy[tuple[str, str]]:
    date = st.builds(lambda p, d: p + d, st.sampled_from(PREFIXES), st.sampled_from(DATES))
    token = st.sampled_from(["a", "b", "a,b", "c"]).map(_escape)
    return st.one_of(
        st.tuples(
            st.sampled_from(["status", "status:not"]),
            st.sampled_from(["ready", "completed", "ready,failed"]),
        ),
        st.tuples(
            st.sampled_from(["identifier", "identifier:not"]),
            st.one_of(
                token,
                st.builds(lambda s, t: f"{s}|{t}", st.sampled_from(["s1", "s2", ""]), token),
                st.sampled_from(["s1|", "s2|"]),
            ),
        ),
        st.tuples(
            st.sampled_from(
                [
                    "identifier:missing",
                    "authored-on:missing",
                    "subject:missing",
                    "instantiates:missing",
                ]
            ),
            st.sampled_from(["true", "false"]),
        ),
        st.tuples(st.sampled_from(["authored-on", "period", "_lastUpdated"]), date),
        st.tuples(
            st.just("instantiates"), st.sampled_from(["ActivityDefinition/ad1", "ad2", "ad3"])
        ),
        st.tuples(
            st.sampled_from(
                ["instantiates.publisherId", "instantiates:ActivityDefinition.publisherId"]
            ),
            st.sampled_from(["pubA", "pubB", "pubA,pubB"]),
        ),
        st.tuples(
            st.sampled_from(["subject", "patient"]),
            st.sampled_from(
                ["Patient/p1", "p1", "https://elsewhere.example/fhir/Patient/p1", "Group/p1"]
            ),
        ),
        st.tuples(st.sampled_from(["subject:Patient", "subject:Group"]), st.just("p1")),
        st.tuples(st.just("code:text"), st.sampled_from(["eer", "TWEE", "x"])),
        st.tuples(st.sampled_from(["_id", "_id:not"]), st.sampled_from(["t0", "t1", "t0,t2"])),
    )


@st.composite
def patient_resources(draw: st.DrawFn, number: int) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(NAMES), max_size=3))
    return resource(
        "Patient",
        f"p{number}",
        draw(st.sampled_from(INSTANTS)),
        "dev-a",
        name=[{"family": names[0], "given": names[1:]}] if names else None,
        gender=draw(st.none() | st.sampled_from(["male", "female"])),
        birthDate=draw(st.none() | st.sampled_from(DATES[:5])),
    )


def patient_clauses() -> st.SearchStrategy[tuple[str, str]]:
    text = st.sampled_from(
        ["jan", "JANSEN", "mul", "müller", "Müller", "vries", "de v", "emi", "x"]
    )
    return st.one_of(
        st.tuples(
            st.sampled_from(["family", "given", "name", "family:exact", "name:contains"]), text
        ),
        st.tuples(
            st.sampled_from(["gender", "gender:not"]), st.sampled_from(["male", "female,male"])
        ),
        st.tuples(
            st.sampled_from(["gender:missing", "name:missing", "birthdate:missing"]),
            st.sampled_from(["true", "false"]),
        ),
        st.tuples(
            st.just("birthdate"),
            st.builds(lambda p, d: p + d, st.sampled_from(PREFIXES), st.sampled_from(DATES)),
        ),
    )


Scenario = tuple[str, list[dict[str, Any]], list[list[tuple[str, str]]], frozenset[str] | None]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Some resources of one type, several searches to run over them, and who runs them."""
    resource_type = draw(st.sampled_from(["Task", "Patient"]))
    make, clauses = (
        (task_resources, task_clauses)
        if resource_type == "Task"
        else (patient_resources, patient_clauses)
    )
    count = draw(st.integers(min_value=1, max_value=8))
    resources = [draw(make(n)) for n in range(count)]
    searches = st.lists(clauses(), min_size=1, max_size=2)
    readable = draw(st.sampled_from(READABLE_TARGETS))
    return resource_type, resources, draw(st.lists(searches, min_size=6, max_size=6)), readable


_domains = iter(range(1_000_000))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
async def test_matches_agrees_with_search(database: Database, scenario: Scenario) -> None:
    resource_type, resources, searches, readable_targets = scenario
    domain = f"prop{next(_domains)}"  # every example gets a clean domain
    await store(database, AGREEMENT_TARGETS + resources, domain=domain)
    await store(database, DELETED, domain=domain, deleted=True)
    targets = {
        (r["resourceType"], r["id"]): Target(extract(r), origin_device(r))
        for r in AGREEMENT_TARGETS
    }
    readable = only("ActivityDefinition", readable_targets)
    for params in searches:
        parsed = parse_search(resource_type, params)
        expected = [
            r["id"]
            for r in resources
            if matches(
                parsed,
                r,
                extract(r),
                resolve=lambda t, i: targets.get((t, i)),
                readable=readable,
            )
        ]
        page = await run(database, parsed, domain=domain, target_origins=readable)
        assert (params, sorted(ids(page))) == (params, sorted(expected))
        assert page.total == len(expected)
