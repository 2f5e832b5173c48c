"""Tamper evidence: what an intruder changes in the database, `hub audit verify` names.

Each test builds a real trail through the hub, changes the database with
plain SQL (as someone with database access but without the chain key would),
and runs `hub audit verify` as its own process, as an operator does.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.audit.database import audit_row, hub_cli, sql, verify
from tests.audit.trail import TRACE_ID, TraceHeaders, search_events
from tests.support.hub import HubServer

pytestmark = pytest.mark.slow


async def _trail(hub: HubServer) -> list[Any]:
    """Events of every kind (a write, reads, a refusal, an app's own event), oldest first."""
    trace = TraceHeaders.new()
    headers = {"X-Trace-Id": trace.trace_id}
    async with hub.client("xis") as xis, hub.client("module") as module:
        created = await xis.post("/Patient", json={"resourceType": "Patient"}, headers=headers)
        patient_id = created.json()["id"]
        for _ in range(2):
            await xis.get(f"/Patient/{patient_id}", headers=headers)
        await module.get("/Device/nope", headers=headers)
        event = {
            "resourceType": "AuditEvent",
            "extension": [{"url": TRACE_ID, "valueId": trace.trace_id}],
            "type": {"code": "receive"},
            "recorded": "2025-03-01T12:00:00Z",
            "agent": [{"who": {"reference": "Device/module"}, "requestor": True}],
            "source": {"observer": {"reference": "Device/module"}},
            "entity": [{"what": {"reference": f"Patient/{patient_id}"}}],
        }
        posted = await module.post("/AuditEvent", json=event, headers=headers)
        assert posted.status_code == 201
    # create, read, read, refused read, the app's event, the hub's record of its create
    trail = list(reversed(await search_events(hub, {"traceId": trace.trace_id})))
    assert [e["type"]["code"] for e in trail] == ["rest"] * 4 + ["receive", "rest"]
    return trail


def _assert_caught(verdict: Any, *expected: str) -> None:
    assert verdict.exit_code == 1, verdict
    for text in expected:
        assert text in verdict.stdout, verdict.stdout
    assert "problem(s)" in verdict.stderr


async def test_an_intact_trail_verifies(hub_server: HubServer) -> None:
    await _trail(hub_server)
    verdict = verify(hub_server)
    assert verdict.exit_code == 0, verdict
    [summary, head] = verdict.stdout.strip().splitlines()
    [(count,)] = await sql(hub_server.settings.database_url, "SELECT count(*) FROM audit_chain")
    assert summary == f"audit trail of 'test': intact, {count} events"
    assert re.fullmatch(rf"head {count}:[0-9a-f]{{64}}", head), head


async def test_a_domain_without_events_verifies(hub_server: HubServer) -> None:
    verdict = verify(hub_server, "other")
    assert verdict.exit_code == 0, verdict


async def test_an_edited_event_is_caught(hub_server: HubServer) -> None:
    read = (await _trail(hub_server))[1]
    pk, seq = await audit_row(hub_server.settings.database_url, read["id"])
    # Cover the tracks in both copies: the current row and the history.
    for table, key in (("resources", "pk"), ("resource_versions", "resource_pk")):
        await sql(
            hub_server.settings.database_url,
            f'UPDATE {table} SET content = replace(content, \'"action":"R"\', '  # noqa: S608
            f'\'"action":"E"\') WHERE {key} = :pk',
            {"pk": pk},
        )
    _assert_caught(verify(hub_server), f"link {seq}: AuditEvent/{read['id']} does not match")


async def test_an_edited_history_copy_is_caught(hub_server: HubServer) -> None:
    read = (await _trail(hub_server))[2]
    pk, seq = await audit_row(hub_server.settings.database_url, read["id"])
    await sql(
        hub_server.settings.database_url,
        "UPDATE resource_versions SET content = '{}' WHERE resource_pk = :pk",
        {"pk": pk},
    )
    _assert_caught(verify(hub_server), f"link {seq}: AuditEvent/{read['id']}: its history")


async def test_an_event_hidden_from_search_is_caught(hub_server: HubServer) -> None:
    """The event itself intact, its index rows changed: a failure that searches no longer find."""
    refused = (await _trail(hub_server))[3]
    assert refused["outcome"] == "4"
    pk, seq = await audit_row(hub_server.settings.database_url, refused["id"])
    await sql(
        hub_server.settings.database_url,
        "UPDATE idx_token SET code = '0' WHERE resource_pk = :pk AND param = 'outcome'",
        {"pk": pk},
    )
    assert refused["id"] not in {e["id"] for e in await search_events(hub_server, {"outcome": "4"})}
    _assert_caught(
        verify(hub_server),
        f"link {seq}: the search index of AuditEvent/{refused['id']} was altered",
    )


async def test_an_event_marked_deleted_is_caught(hub_server: HubServer) -> None:
    read = (await _trail(hub_server))[1]
    pk, seq = await audit_row(hub_server.settings.database_url, read["id"])
    await sql(
        hub_server.settings.database_url,
        "UPDATE resources SET deleted = true, version_id = 2 WHERE pk = :pk",
        {"pk": pk},
    )
    _assert_caught(verify(hub_server), f"link {seq}: AuditEvent/{read['id']} was marked deleted")


async def _delete_event(database_url: str, pk: int) -> None:
    for table, key in (
        ("resources", "pk"),
        ("resource_versions", "resource_pk"),
        *((index, "resource_pk") for index in ("idx_token", "idx_string", "idx_reference")),
        *((index, "resource_pk") for index in ("idx_date", "idx_uri")),
    ):
        await sql(database_url, f"DELETE FROM {table} WHERE {key} = :pk", {"pk": pk})  # noqa: S608


async def test_a_deleted_event_is_caught(hub_server: HubServer) -> None:
    read = (await _trail(hub_server))[1]
    pk, seq = await audit_row(hub_server.settings.database_url, read["id"])
    await _delete_event(hub_server.settings.database_url, pk)
    _assert_caught(verify(hub_server), f"link {seq}: its AuditEvent was removed")


async def test_a_deleted_event_and_its_link_are_caught(hub_server: HubServer) -> None:
    read = (await _trail(hub_server))[1]
    pk, seq = await audit_row(hub_server.settings.database_url, read["id"])
    await _delete_event(hub_server.settings.database_url, pk)
    await sql(
        hub_server.settings.database_url,
        "DELETE FROM audit_chain WHERE domain = 'test' AND seq = :seq",
        {"seq": seq},
    )
    _assert_caught(verify(hub_server), f"links {seq}..{seq} are missing")


async def test_the_newest_events_deleted_with_their_links_are_caught(
    hub_server: HubServer,
) -> None:
    newest = (await _trail(hub_server))[-1]
    url = hub_server.settings.database_url
    _, seq = await audit_row(url, newest["id"])
    [(last,)] = await sql(url, "SELECT max(seq) FROM audit_chain WHERE domain = 'test'")
    for doomed in range(seq, last + 1):
        [(doomed_pk,)] = await sql(
            url,
            "SELECT resource_pk FROM audit_chain WHERE domain = 'test' AND seq = :s",
            {"s": doomed},
        )
        await _delete_event(url, doomed_pk)
    await sql(url, "DELETE FROM audit_chain WHERE domain = 'test' AND seq >= :seq", {"seq": seq})
    _assert_caught(verify(hub_server), f"the chain ends at link {seq - 1} but its head says {last}")


async def test_cutting_the_newest_events_and_rewinding_the_head_is_caught_by_an_anchor(
    hub_server: HubServer,
) -> None:
    """The one attack the chain cannot show by itself: an earlier verify's head catches it."""
    await _trail(hub_server)
    anchor = verify(hub_server).stdout.strip().splitlines()[-1].removeprefix("head ")
    anchored_seq = int(anchor.split(":")[0])
    await _trail(hub_server)  # more events after the anchor was recorded
    url = hub_server.settings.database_url
    keep = anchored_seq - 2  # cut back below the anchor
    doomed = await sql(
        url, "SELECT resource_pk FROM audit_chain WHERE domain = 'test' AND seq > :s", {"s": keep}
    )
    for (pk,) in doomed:
        await _delete_event(url, pk)
    await sql(url, "DELETE FROM audit_chain WHERE domain = 'test' AND seq > :s", {"s": keep})
    [(digest,)] = await sql(
        url, "SELECT digest FROM audit_chain WHERE domain = 'test' AND seq = :s", {"s": keep}
    )
    await sql(
        url,
        "UPDATE audit_chain_heads SET seq = :s, digest = :d WHERE domain = 'test'",
        {"s": keep, "d": digest},
    )
    assert verify(hub_server).exit_code == 0  # consistent: without an anchor, nothing to see
    anchored = hub_cli(hub_server, "audit", "verify", "--domain", "test", "--expect-head", anchor)
    _assert_caught(anchored, f"anchor {anchored_seq}: that link is gone")


async def test_swapped_events_are_caught(hub_server: HubServer) -> None:
    """Two events trade places in the chain: each is now out of order."""
    trail = await _trail(hub_server)
    url = hub_server.settings.database_url
    (first_pk, first_seq), (second_pk, second_seq) = [
        await audit_row(url, event["id"]) for event in trail[1:3]
    ]
    for seq, pk in ((first_seq, -1), (second_seq, first_pk), (first_seq, second_pk)):
        await sql(
            url,
            "UPDATE audit_chain SET resource_pk = :pk WHERE domain = 'test' AND seq = :seq",
            {"pk": pk, "seq": seq},
        )
    _assert_caught(
        verify(hub_server),
        f"link {first_seq}: AuditEvent/{trail[2]['id']} does not match",
        f"link {second_seq}: AuditEvent/{trail[1]['id']} does not match",
    )


async def test_swapped_contents_are_caught(hub_server: HubServer) -> None:
    trail = await _trail(hub_server)
    url = hub_server.settings.database_url
    (first_pk, first_seq), (second_pk, second_seq) = [
        await audit_row(url, event["id"]) for event in trail[1:3]
    ]
    [(first,)] = await sql(url, "SELECT content FROM resources WHERE pk = :pk", {"pk": first_pk})
    [(second,)] = await sql(url, "SELECT content FROM resources WHERE pk = :pk", {"pk": second_pk})
    for pk, content in ((first_pk, second), (second_pk, first)):
        for table, key in (("resources", "pk"), ("resource_versions", "resource_pk")):
            await sql(
                url,
                f"UPDATE {table} SET content = :content WHERE {key} = :pk",  # noqa: S608
                {"content": content, "pk": pk},
            )
    _assert_caught(verify(hub_server), f"link {first_seq}: ", f"link {second_seq}: ")


async def test_an_event_inserted_outside_the_hub_is_caught(hub_server: HubServer) -> None:
    trail = await _trail(hub_server)
    url = hub_server.settings.database_url
    forged = f"forged-{uuid.uuid4()}"
    [(content,)] = await sql(
        url, "SELECT content FROM resources WHERE id = :id", {"id": trail[1]["id"]}
    )
    await sql(
        url,
        "INSERT INTO resources (domain, rtype, id, version_id, last_updated, deleted, origin, "
        "content) VALUES ('test', 'AuditEvent', :id, 1, :now, false, 'koppeltaal-hub', :content)",
        {
            "id": forged,
            "now": datetime.now(UTC).replace(tzinfo=None),
            "content": content.replace(trail[1]["id"], forged),
        },
    )
    _assert_caught(verify(hub_server), f"AuditEvent/{forged}", "not in the chain")


async def test_a_forged_chain_without_the_key_is_caught(hub_server: HubServer) -> None:
    """Re-linking the chain after an edit needs the key; a guessed key does not do."""
    import hashlib
    import hmac

    trail = await _trail(hub_server)
    url = hub_server.settings.database_url
    pk, seq = await audit_row(url, trail[1]["id"])
    await sql(
        url,
        'UPDATE resources SET content = replace(content, \'"outcome":"0"\', \'"outcome":"4"\')'
        " WHERE pk = :pk",
        {"pk": pk},
    )
    rows = await sql(
        url,
        "SELECT c.seq, r.content FROM audit_chain c JOIN resources r ON r.pk = c.resource_pk "
        "WHERE c.domain = 'test' ORDER BY c.seq",
    )
    digest = "0" * 64
    for row_seq, content in rows:  # the whole chain again, with a key of the intruder's
        digest = hmac.new(
            b"guessed", digest.encode() + content.encode(), hashlib.sha256
        ).hexdigest()
        await sql(
            url,
            "UPDATE audit_chain SET digest = :d WHERE domain = 'test' AND seq = :s",
            {"d": digest, "s": row_seq},
        )
    await sql(url, "UPDATE audit_chain_heads SET digest = :d WHERE domain = 'test'", {"d": digest})
    verdict = verify(hub_server)
    _assert_caught(verdict, "link 1: ")
    assert f"link {seq}: " in verdict.stdout


async def test_verify_refuses_to_run_without_the_chain_key(
    hub_server: HubServer, tmp_path: Any
) -> None:
    await _trail(hub_server)
    elsewhere = type(hub_server)(
        hub_server.url,
        hub_server.settings.__class__(
            database_url=hub_server.settings.database_url, keys_dir=tmp_path / "empty"
        ),
        hub_server.keys,
    )
    verdict = hub_cli(elsewhere, "audit", "verify", "--domain", "test")
    assert verdict.exit_code == 2
    assert "no audit chain key" in verdict.stderr


# The columns that reads and searches use instead of the event's JSON: each must
# agree with the chained JSON, or the event is intact yet cannot be found.
LONG_AGO = datetime(2001, 1, 1)  # naive UTC, as the database stores times


async def test_a_renamed_event_is_caught(hub_server: HubServer) -> None:
    read = (await _trail(hub_server))[1]
    url = hub_server.settings.database_url
    pk, seq = await audit_row(url, read["id"])
    renamed = f"renamed-{uuid.uuid4()}"
    await sql(url, "UPDATE resources SET id = :id WHERE pk = :pk", {"id": renamed, "pk": pk})
    async with hub_server.client("auditor") as auditor:
        assert (await auditor.get(f"/AuditEvent/{read['id']}")).status_code == 404
    assert await search_events(hub_server, {"_id": read["id"]}) == []
    _assert_caught(
        verify(hub_server),
        f"link {seq}: AuditEvent/{read['id']}: its id column was changed to '{renamed}'",
    )


async def test_a_changed_last_updated_is_caught(hub_server: HubServer) -> None:
    read = (await _trail(hub_server))[1]
    url = hub_server.settings.database_url
    pk, seq = await audit_row(url, read["id"])
    await sql(
        url,
        "UPDATE resources SET last_updated = :then WHERE pk = :pk",
        {"then": LONG_AGO, "pk": pk},
    )
    since = read["meta"]["lastUpdated"][:10]
    found = await search_events(hub_server, {"_id": read["id"], "_lastUpdated": f"ge{since}"})
    assert found == []
    _assert_caught(
        verify(hub_server),
        f"link {seq}: AuditEvent/{read['id']}: its last_updated column was changed "
        "to 2001-01-01T00:00:00.000000Z",
    )


@pytest.mark.parametrize("origin", ["xis", None])
async def test_a_changed_origin_is_caught(hub_server: HubServer, origin: str | None) -> None:
    posted = (await _trail(hub_server))[4]  # the app's own event: origin Device/module
    url = hub_server.settings.database_url
    pk, seq = await audit_row(url, posted["id"])
    [(stored,)] = await sql(url, "SELECT origin FROM resources WHERE pk = :pk", {"pk": pk})
    assert stored == "module"
    await sql(url, "UPDATE resources SET origin = :o WHERE pk = :pk", {"o": origin, "pk": pk})
    _assert_caught(
        verify(hub_server),
        f"link {seq}: AuditEvent/{posted['id']}: its origin column was changed to {origin!r} "
        "(its resource-origin is 'module')",
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("version_id = 2", "version_id 2, not 1"),
        ("last_updated = :then", "last_updated 2001-01-01T00:00:00.000000Z, not "),
        ("deleted = true", "marked deleted"),
        ("method = 'PUT'", "method 'PUT', not 'POST'"),
    ],
)
async def test_a_changed_history_row_is_caught(
    hub_server: HubServer, change: str, named: str
) -> None:
    read = (await _trail(hub_server))[1]
    url = hub_server.settings.database_url
    pk, seq = await audit_row(url, read["id"])
    params: dict[str, Any] = {"pk": pk}
    if ":then" in change:
        params["then"] = LONG_AGO
    await sql(url, f"UPDATE resource_versions SET {change} WHERE resource_pk = :pk", params)  # noqa: S608
    _assert_caught(
        verify(hub_server), f"link {seq}: AuditEvent/{read['id']}: its history was altered ({named}"
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("domain = 'other'", "its row was moved to AuditEvent in domain 'other'"),
        ("rtype = 'Basic'", "its row was moved to Basic in domain 'test'"),
    ],
)
async def test_an_event_moved_out_of_its_domain_or_type_is_caught(
    hub_server: HubServer, change: str, named: str
) -> None:
    read = (await _trail(hub_server))[1]
    url = hub_server.settings.database_url
    pk, seq = await audit_row(url, read["id"])
    await sql(url, f"UPDATE resources SET {change} WHERE pk = :pk", {"pk": pk})  # noqa: S608
    async with hub_server.client("auditor") as auditor:
        assert (await auditor.get(f"/AuditEvent/{read['id']}")).status_code == 404
    _assert_caught(verify(hub_server), f"link {seq}: AuditEvent/{read['id']}: {named}")


@pytest.mark.parametrize("change", ["domain = 'other'", "rtype = 'Basic'"])
async def test_index_rows_moved_out_of_the_event_s_domain_or_type_are_caught(
    hub_server: HubServer, change: str
) -> None:
    """The values intact, but filed under another domain or type: searches miss the event."""
    refused = (await _trail(hub_server))[3]
    assert refused["outcome"] == "4"
    url = hub_server.settings.database_url
    pk, seq = await audit_row(url, refused["id"])
    await sql(
        url,
        f"UPDATE idx_token SET {change} WHERE resource_pk = :pk AND param = 'outcome'",  # noqa: S608
        {"pk": pk},
    )
    assert refused["id"] not in {e["id"] for e in await search_events(hub_server, {"outcome": "4"})}
    _assert_caught(
        verify(hub_server),
        f"link {seq}: the search index of AuditEvent/{refused['id']} was altered",
        "idx_token",
    )
