"""The runner of units of work, on both backends.

- Group commit: many concurrent writes, one of which breaks a constraint and
  one of which fails with a domain error after writing rows, fail alone; the
  others commit with their AuditEvents and the chain stays whole.
- A write's caller is released only after its commit.
- Reads cannot write, and one read unit sees one snapshot.
- PostgreSQL never opens more connections than its pool allows.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.sql.elements import ClauseElement

from hub.audit.events import Entity, rest_event
from hub.audit.store import prepare as prepare_event
from hub.audit.verify import verify_domain
from hub.fhir import jsonio
from hub.fhir.outcome import FhirError
from hub.store import resources
from hub.store.audit import LINKS, append_events
from hub.store.db import SQLITE_READERS, Database
from hub.store.index import INDEX_TABLES, RESOURCES
from hub.store.resources import VERSIONS, NewVersion, StoredRow
from hub.store.sql import Conflict, Work, dialect, execute
from hub.trace import TraceIds

DOMAIN = "d"
CHAIN_KEY = bytes(range(32))
T0 = datetime(2026, 11, 22, 9, 0, 0)
UNITS = 50
DUPLICATE = UNITS - 1  # stores the id unit 0 stores too: one of the two meets a Conflict
REFUSING = 7  # raises a 412 after it has written everything, its AuditEvent included
WAIT = 30.0  # seconds a test waits for something that should take milliseconds


def _patient(n: int) -> dict[str, object]:
    return {"resourceType": "Patient", "gender": "female", "name": [{"family": f"Family{n}"}]}


def _patient_id(n: int) -> str:
    return "p00" if n == DUPLICATE else f"p{n:02}"


@dataclass(frozen=True)
class _Write:
    """One unit of the burst: a Patient and the AuditEvent of its creation."""

    number: int
    patient: NewVersion
    event: NewVersion


def _write(n: int) -> _Write:
    id = _patient_id(n)
    now = T0 + timedelta(milliseconds=n)
    patient = resources.prepare(
        DOMAIN, _patient(n), id=id, version_id=1, now=now, origin="xis", method="POST"
    )
    event = rest_event(
        interaction="create",
        status=201,
        outcome_description=None,
        caller_device="xis",
        hub_device="koppeltaal-hub",
        site="test",
        trace=TraceIds.new(),
        entities=[Entity(what=f"Patient/{id}/_history/1", detail=(("unit", str(n)),))],
        recorded=now,
    )
    return _Write(n, patient, prepare_event(DOMAIN, event, now))


def _store(write: _Write, refusal: FhirError | None) -> Work[StoredRow]:
    row = yield from resources.write(write.patient, previous=None)
    yield from append_events([write.event], CHAIN_KEY)
    if refusal is not None:
        # A domain error after the unit wrote its resource, index rows, AuditEvent and
        # chain link (and moved the chain head): all of it must go, and only it.
        raise refusal
    return row


def _count(statement: ClauseElement) -> Work[int]:
    found = yield from execute(statement)
    return int(found.scalar())


def _stored_state() -> Work[dict[str, object]]:
    """What the burst left: resources, history rows, index rows and chain links."""
    found = yield from execute(
        select(RESOURCES.c.rtype, RESOURCES.c.id, RESOURCES.c.content).where(
            RESOURCES.c.domain == DOMAIN
        )
    )
    versions = yield from _count(select(func.count()).select_from(VERSIONS))
    orphan_versions = yield from _count(
        select(func.count()).where(VERSIONS.c.resource_pk.not_in(select(RESOURCES.c.pk)))
    )
    index_rows = 0
    orphan_index_rows = 0
    for table in INDEX_TABLES:
        index_rows += yield from _count(select(func.count()).select_from(table))
        orphan_index_rows += yield from _count(
            select(func.count()).where(table.c.resource_pk.not_in(select(RESOURCES.c.pk)))
        )
    links = yield from execute(
        select(LINKS.c.seq, LINKS.c.resource_pk)
        .where(LINKS.c.domain == DOMAIN)
        .order_by(LINKS.c.seq)
    )
    event_pks = yield from execute(
        select(RESOURCES.c.pk).where(
            RESOURCES.c.domain == DOMAIN, RESOURCES.c.rtype == "AuditEvent"
        )
    )
    return {
        "resources": [(str(rtype), str(id), str(content)) for rtype, id, content in found.rows],
        "versions": versions,
        "orphan_versions": orphan_versions,
        "index_rows": index_rows,
        "orphan_index_rows": orphan_index_rows,
        "link_seqs": [int(seq) for seq, _ in links.rows],
        "linked_pks": sorted(int(pk) for _, pk in links.rows),
        "event_pks": sorted(int(pk) for (pk,) in event_pks.rows),
    }


def _rows(values: NewVersion) -> int:
    v = values.values
    return len(v.tokens) + len(v.strings) + len(v.references) + len(v.dates) + len(v.uris)


async def test_a_burst_of_writes_commits_all_but_the_units_that_fail(database: Database) -> None:
    writes = [_write(n) for n in range(UNITS)]
    refusal = FhirError.single(412, "conflict", "Version mismatch (raised mid-unit by the test)")
    results = await asyncio.gather(
        *(database.write(_store(w, refusal if w.number == REFUSING else None)) for w in writes),
        return_exceptions=True,
    )

    failed = {n: result for n, result in enumerate(results) if isinstance(result, BaseException)}
    # Whichever of the two units storing p00 came second met the unique constraint.
    [loser] = [n for n in (0, DUPLICATE) if n in failed]
    assert set(failed) == {REFUSING, loser}
    assert failed[REFUSING] is refusal, "a failing unit gets its own exception back"
    assert isinstance(failed[loser], Conflict)
    committed = [w for w in writes if w.number not in failed]
    assert len(committed) == UNITS - 2
    for w in committed:
        row = results[w.number]
        assert isinstance(row, StoredRow)
        assert (row.id, row.version_id) == (w.patient.id, 1)

    state = await database.read(_stored_state())
    stored = state["resources"]
    assert isinstance(stored, list)
    patients = {id: content for rtype, id, content in stored if rtype == "Patient"}
    events = [jsonio.loads(content) for rtype, _, content in stored if rtype == "AuditEvent"]
    # The 48 that committed are stored, the p00 the winner wrote, with their AuditEvents ...
    assert patients.keys() == {w.patient.id for w in committed}
    winner = 0 if loser == DUPLICATE else DUPLICATE
    assert jsonio.loads(patients["p00"])["name"] == [{"family": f"Family{winner}"}]
    units = sorted(int(event["entity"][0]["detail"][0]["valueString"]) for event in events)
    assert units == [w.number for w in committed]
    assert len(stored) == 2 * len(committed)
    # ... and nothing of the failed ones: no resource (above), no history row, no index
    # row, no chain link, not even rows left behind under a reused primary key.
    assert "p07" not in patients
    assert state["versions"] == len(stored)
    assert state["orphan_versions"] == 0
    assert state["orphan_index_rows"] == 0
    assert state["index_rows"] == sum(_rows(w.patient) + _rows(w.event) for w in committed)
    assert state["link_seqs"] == list(range(1, len(committed) + 1))
    assert state["linked_pks"] == state["event_pks"]
    for w in writes:
        if w.number in failed:
            assert await database.read(resources.current(DOMAIN, "AuditEvent", w.event.id)) is None

    verdict = await verify_domain(database, DOMAIN, CHAIN_KEY)
    assert verdict.problems == []
    assert verdict.head[0] == len(committed)


async def test_a_write_returns_only_once_it_is_committed(
    database_url: str, database: Database
) -> None:
    async def write_then_look_elsewhere(n: int) -> StoredRow | None:
        new = resources.prepare(
            DOMAIN, _patient(n), id=f"p{n}", version_id=1, now=T0, origin="xis", method="POST"
        )
        await database.write(resources.write(new, previous=None))
        # Another Database (another connection, as another process would have) sees it.
        elsewhere = Database(database_url, pool_size=1)
        try:
            return await elsewhere.read(resources.current(DOMAIN, "Patient", f"p{n}"))
        finally:
            await elsewhere.dispose()

    found = await asyncio.gather(*(write_then_look_elsewhere(n) for n in range(10)))
    assert [row.id if row is not None else None for row in found] == [f"p{n}" for n in range(10)]


def _read_only() -> Work[str]:
    backend = yield from dialect()
    if backend == "sqlite":
        found = yield from execute(text("SELECT query_only FROM pragma_query_only"))
    else:
        found = yield from execute(text("SELECT current_setting('transaction_read_only')"))
    return str(found.scalar())


async def test_a_read_cannot_write(database: Database) -> None:
    assert await database.read(_read_only()) in {"1", "on"}
    new = resources.prepare(
        DOMAIN, _patient(1), id="p1", version_id=1, now=T0, origin="xis", method="POST"
    )
    with pytest.raises((sqlite3.OperationalError, asyncpg.ReadOnlySQLTransactionError)):
        await database.read(resources.write(new, previous=None))
    assert await database.read(resources.current(DOMAIN, "Patient", "p1")) is None
    # Writes are not read-only, and the refused one left nothing that gets in their way.
    assert await database.write(_read_only()) in {"0", "off"}
    await database.write(resources.write(new, previous=None))
    assert await database.read(resources.current(DOMAIN, "Patient", "p1")) is not None


def _patients() -> Work[int]:
    return (
        yield from _count(
            select(func.count()).where(RESOURCES.c.domain == DOMAIN, RESOURCES.c.rtype == "Patient")
        )
    )


def _until(condition: Callable[[], bool]) -> Work[None]:
    """Hold the unit (and its connection and snapshot) until `condition()` holds."""
    backend = yield from dialect()
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "the test never released the unit"
        if backend == "postgresql":
            # The unit runs in the event loop: wait in the database, not in Python.
            yield from execute(text("SELECT pg_sleep(0.02)"))
        else:
            time.sleep(0.02)  # a reader thread of its own: nobody else waits


async def _until_set(flag: threading.Event) -> None:
    deadline = time.monotonic() + WAIT
    while not flag.is_set():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_a_read_unit_sees_one_snapshot(database: Database) -> None:
    def create(n: int) -> Work[StoredRow]:
        new = resources.prepare(
            DOMAIN, _patient(n), id=f"p{n}", version_id=1, now=T0, origin="xis", method="POST"
        )
        return (yield from resources.write(new, previous=None))

    await database.write(create(1))
    counted, written = threading.Event(), threading.Event()

    def reader() -> Work[tuple[int, int]]:
        before = yield from _patients()
        counted.set()
        yield from _until(written.is_set)
        after = yield from _patients()
        return before, after

    reading = asyncio.create_task(database.read(reader()))
    await _until_set(counted)
    await database.write(create(2))
    assert await database.read(_patients()) == 2  # committed: a new read sees it
    written.set()
    assert await reading == (1, 1), "the unit that was reading still sees its first snapshot"


async def _connections_to(url: str) -> int:
    parts = make_url(url)
    watcher = await asyncpg.connect(
        host=parts.host, port=parts.port, user=parts.username, database="postgres"
    )
    try:
        count = await watcher.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", parts.database
        )
    finally:
        await watcher.close()
    assert isinstance(count, int)
    return count


async def test_a_postgres_burst_queues_for_the_pool_instead_of_opening_more(
    database_url: str,
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("the connection bound is a PostgreSQL setting")
    database = Database(database_url, pool_size=2)
    holding: list[int] = []
    released = threading.Event()

    def hold(n: int) -> Work[int]:
        yield from execute(text("SELECT 1"))
        holding.append(n)
        yield from _until(released.is_set)
        return n

    def third() -> Work[int]:
        found = yield from execute(text("SELECT 3"))
        return int(found.scalar())

    try:
        held = [asyncio.create_task(database.read(hold(n))) for n in range(2)]
        deadline = time.monotonic() + WAIT
        while len(holding) < 2:
            assert time.monotonic() < deadline, "the pool did not lend two connections"
            await asyncio.sleep(0.01)
        waiting = asyncio.create_task(database.read(third()))
        await asyncio.sleep(0.3)
        assert not waiting.done(), "a third unit got a connection beyond the pool"
        assert await _connections_to(database_url) == 2
        released.set()
        assert await asyncio.gather(*held) == [0, 1]
        # The held connections are back in the pool: the waiting unit proceeds on one of them.
        assert await asyncio.wait_for(waiting, timeout=10) == 3
        assert await _connections_to(database_url) == 2
    finally:
        released.set()
        await database.dispose()


def _endless() -> Work[None]:
    """A statement that runs until it is stopped (a minute on PostgreSQL)."""
    backend = yield from dialect()
    if backend == "postgresql":
        yield from execute(text("SELECT pg_sleep(60)"))
    else:
        yield from execute(
            text(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"
                " SELECT count(*) FROM c"
            )
        )


async def _sleeping_statements(url: str) -> int:
    parts = make_url(url)
    watcher = await asyncpg.connect(
        host=parts.host, port=parts.port, user=parts.username, database="postgres"
    )
    try:
        count = await watcher.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active'"
            " AND query LIKE 'SELECT pg_sleep(60)%'",
            parts.database,
        )
    finally:
        await watcher.close()
    assert isinstance(count, int)
    return count


async def test_a_cancelled_read_stops_its_statement(database: Database, database_url: str) -> None:
    # As many endless reads as there are SQLite reader threads: only if cancelling them
    # stops their statements is there a reader left for the next unit.
    readers = [asyncio.create_task(database.read(_endless())) for _ in range(SQLITE_READERS)]
    await asyncio.sleep(0.5)
    if database.is_postgres:
        assert await _sleeping_statements(database_url) == SQLITE_READERS
    for reader in readers:
        reader.cancel()
    for reader in readers:
        with pytest.raises(asyncio.CancelledError):
            await reader
    assert await asyncio.wait_for(database.read(_patients()), timeout=10) == 0
    if database.is_postgres:
        deadline = time.monotonic() + 10
        while await _sleeping_statements(database_url):
            assert time.monotonic() < deadline, "the cancelled statements still run"
            await asyncio.sleep(0.05)


def _threads_of_a_unit(seen: list[int]) -> Work[int]:
    """Records the thread its own Python runs in, around two statements and a failing one."""
    seen.append(threading.get_ident())
    yield from execute(text("SELECT 1"))
    seen.append(threading.get_ident())
    try:
        yield from execute(text("SELECT * FROM no_such_table"))
    except Exception:  # the unit handles its own failure, as units may
        seen.append(threading.get_ident())
    return 7


async def test_a_costly_unit_builds_its_statements_off_the_event_loop(
    database_url: str,
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite units run in a reader thread anyway")
    database = Database(database_url)
    loop_thread = threading.get_ident()
    try:
        on_loop: list[int] = []
        assert await database.write(_threads_of_a_unit(on_loop)) == 7
        assert on_loop == [loop_thread] * 3
        off_loop: list[int] = []
        assert await database.read(_threads_of_a_unit(off_loop), costly=True) == 7
        assert len(off_loop) == 3
        assert loop_thread not in off_loop
    finally:
        await database.dispose()
