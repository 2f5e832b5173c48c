"""`hub audit verify`'s walk, in-process: page by page, each page its own snapshot.

The tamper tests (`test_tamper_evidence`) run the command against a real hub;
these check the walk itself on a chain made with the store's own units: page
boundaries, events appended while it walks, and anchors.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from hub.audit.verify import check_anchor, verify_domain
from hub.fhir.origin import RESOURCE_ORIGIN
from hub.runtime import utcnow
from hub.store import audit, resources
from hub.store.db import Database
from hub.store.sql import Work
from hub.trace import new_id
from tests.audit.database import sql

KEY = secrets.token_bytes(32)


def _event(n: int) -> dict[str, Any]:
    return {
        "resourceType": "AuditEvent",
        "extension": [{"url": RESOURCE_ORIGIN, "valueReference": {"reference": "Device/module"}}],
        "type": {"code": "receive"},
        "recorded": "2025-03-01T12:00:00Z",
        "agent": [{"who": {"reference": "Device/module"}, "requestor": True}],
        "source": {"observer": {"reference": "Device/module"}},
        "entity": [{"what": {"reference": f"Patient/{n}"}}],
    }


async def _append(database: Database, count: int, domain: str = "test") -> None:
    now = utcnow()
    events = [
        resources.prepare(
            domain, _event(n), id=new_id(), version_id=1, now=now, origin="module", method="POST"
        )
        for n in range(count)
    ]
    await database.write(audit.append_events(events, KEY))


@pytest.fixture
def pages(monkeypatch: pytest.MonkeyPatch, database: Database) -> list[int]:
    """How many reads a verify made (each page is one)."""
    reads: list[int] = []
    read = database.read

    async def counted(work: Work[Any]) -> Any:
        reads.append(1)
        return await read(work)

    monkeypatch.setattr(database, "read", counted)
    return reads


# Reads: the chain's pages, then the pages of the scan for events outside it. A full
# last page needs one more (empty) page to find the end.
@pytest.mark.parametrize(
    ("events", "batch", "reads"), [(7, 3, 3 + 3), (6, 3, 3 + 3), (0, 3, 1 + 1)]
)
async def test_an_intact_chain_verifies_page_by_page(
    database: Database, pages: list[int], events: int, batch: int, reads: int
) -> None:
    await _append(database, events)
    verdict = await verify_domain(database, "test", KEY, batch=batch)
    assert len(pages) == reads
    assert verdict.problems == []
    assert verdict.head == await database.read(audit.chain_head("test"))
    assert verdict.head[0] == events


async def test_events_appended_during_the_walk_are_walked_too(database: Database) -> None:
    await _append(database, 4)
    read = database.read
    appended = False

    async def appending(work: Work[Any], *, costly: bool = False) -> Any:
        nonlocal appended
        found = await read(work, costly=costly)
        if not appended:  # after the first page: another process writes two more events
            appended = True
            await _append(database, 2)
        return found

    database.read = appending  # type: ignore[method-assign]
    verdict = await verify_domain(database, "test", KEY, batch=2)
    assert verdict.problems == []
    assert verdict.head[0] == 6


async def test_a_link_removed_at_a_page_boundary_is_caught(
    database: Database, database_url: str
) -> None:
    await _append(database, 7)
    await sql(database_url, "DELETE FROM audit_chain WHERE domain = 'test' AND seq = 4")
    verdict = await verify_domain(database, "test", KEY, batch=3)
    assert verdict.problems[0] == "links 4..4 are missing: events were removed"
    assert "link 5: AuditEvent/" in verdict.problems[1]
    assert "does not match the chain" in verdict.problems[1]
    assert verdict.problems[-1].startswith("1 AuditEvent(s) of 'test' are not in the chain")
    assert len(verdict.problems) == 3


async def test_a_head_beyond_the_chain_is_caught(database: Database, database_url: str) -> None:
    await _append(database, 3)
    await sql(database_url, "UPDATE audit_chain_heads SET seq = 9 WHERE domain = 'test'")
    verdict = await verify_domain(database, "test", KEY, batch=3)
    assert verdict.problems == [
        "the chain ends at link 3 but its head says 9: "
        "the newest events were removed or the head was altered"
    ]


async def test_other_domains_do_not_count(database: Database) -> None:
    await _append(database, 3, domain="other")
    verdict = await verify_domain(database, "test", KEY)
    assert verdict.problems == []
    assert verdict.head == (0, audit.GENESIS)


async def test_anchors(database: Database, database_url: str) -> None:
    assert await check_anchor(database, "test", 0, audit.GENESIS) == []
    await _append(database, 3)
    seq, digest = await database.read(audit.chain_head("test"))
    assert await check_anchor(database, "test", seq, digest) == []
    assert await check_anchor(database, "test", seq, "0" * 64) == [
        f"anchor {seq}: the link's digest changed: the chain was rewritten from there"
    ]
    assert await check_anchor(database, "test", seq + 1, digest) == [
        f"anchor {seq + 1}: that link is gone: the chain was cut back below it"
    ]
    await sql(
        database_url, "DELETE FROM audit_chain WHERE domain = 'test' AND seq = :s", {"s": seq}
    )
    assert (await check_anchor(database, "test", seq, digest))[0].endswith("cut back below it")
