"""Rate limits end to end: 429 with Retry-After, per client, audited once per window.

A real hub under uvicorn; its limiter runs on a clock the test holds still (or moves),
so no test sleeps through a window and none depends on how fast the machine is. A
second client address is a second loopback address (127.0.0.2): the hub sees it as
the ASGI client host, as it sees any other address.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from hub.access.ratelimit import RateLimits
from tests.access.test_endpoints import assert_oauth_error
from tests.api.common import outcome
from tests.audit.database import verify
from tests.audit.trail import TraceHeaders, search_events
from tests.support.hub import AppKeys, HubServer, hub_settings, running_hub, write_apps_file

OTHER_ADDRESS = "127.0.0.2"
PATIENT = {"resourceType": "Patient", "gender": "female"}


class Clock:
    """The limiter's clock: still, unless the test moves it."""

    def __init__(self) -> None:
        self.now = 50_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _apps_file(
    tmp_path: Path, keys: dict[str, AppKeys], rate_limits: dict[str, dict[str, float]]
) -> Path:
    """The test apps, some with a `rate_limit:` of their own."""
    path = write_apps_file(tmp_path / "apps.yaml", keys)
    document = yaml.safe_load(path.read_text())
    for domain in document["domains"]:
        for app in domain["apps"]:
            if app["client_id"] in rate_limits:
                app["rate_limit"] = rate_limits[app["client_id"]]
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@dataclass
class Limited:
    """Starts the hub of a test: its settings' limits, its apps' own, on `clock`."""

    tmp_path: Path
    database_url: str
    keys: dict[str, AppKeys]
    clock: Clock = field(default_factory=Clock)

    @contextmanager
    def hub(
        self, apps: dict[str, dict[str, float]] | None = None, **settings: Any
    ) -> Iterator[HubServer]:
        apps_file = _apps_file(self.tmp_path, self.keys, apps or {})
        options = hub_settings(self.tmp_path, self.database_url, apps_file, **settings)
        with running_hub(options, self.keys) as hub:
            assert hub.app is not None
            hub.app.state.rate_limits = RateLimits(hub.settings, clock=self.clock)
            yield hub


@pytest.fixture
def limited(tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys]) -> Limited:
    return Limited(tmp_path, database_url, app_keys)


def _from(address: str | None = None) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address) if address else None
    return httpx.AsyncClient(transport=transport, timeout=30)


def assert_throttled(response: httpx.Response) -> dict[str, Any]:
    """A FHIR 429: an OperationOutcome `throttled` and a Retry-After in whole seconds."""
    body = outcome(response, 429)
    assert [issue["code"] for issue in body["issue"]] == ["throttled"]
    assert int(response.headers["retry-after"]) >= 1
    return body


def assert_oauth_throttled(response: httpx.Response) -> None:
    assert_oauth_error(response, "temporarily_unavailable", 429)
    assert int(response.headers["retry-after"]) >= 1


# --- token requests ------------------------------------------------------------------------


async def test_the_121st_token_request_in_a_minute_from_one_address_is_refused(
    limited: Limited,
) -> None:
    flood = TraceHeaders.new()
    with limited.hub() as hub:
        # The first token request of this address: the auditor's, to read the trail later.
        hub.token("auditor")
        # Unreadable assertions claim no client: only the address's budget (120) is spent.
        junk = {**hub.token_form("xis"), "client_assertion": "not-a-jwt"}
        async with _from() as client:
            answers = [
                await client.post(hub.token_url(), data=junk, headers=flood.headers)
                for _ in range(119)
            ]
            assert {answer.status_code for answer in answers} == {401}
            refused = [
                await client.post(hub.token_url(), data=junk, headers=flood.headers)
                for _ in range(3)
            ]
            # The address is limited whatever it sends, a valid assertion too.
            valid = await client.post(hub.token_url(), data=hub.token_form("xis"))
        for response in [*refused, valid]:
            assert_oauth_throttled(response)
        assert refused[0].headers["retry-after"] == "1"  # 120 a minute: one back every 0.5 s

        # Another address is not limited, nor is this address in another domain.
        async with _from(OTHER_ADDRESS) as other:
            granted = await other.post(hub.token_url(), data=hub.token_form("xis"))
            assert granted.status_code == 200
        async with _from() as client:
            elsewhere = await client.post(
                hub.token_url("other"), data=hub.token_form("other-xis", "other")
            )
            assert elsewhere.status_code == 200

        # 119 refused logins, and the limit once: not one event per 429.
        events = await search_events(hub, {"traceId": flood.trace_id})
        assert len(events) == 120
        [event] = [e for e in events if "rate limited" in e.get("outcomeDesc", "")]
        assert (event["type"]["code"], event["outcome"]) == ("110114", "4")
        assert event["outcomeDesc"].startswith(
            "temporarily_unavailable: rate limited, too many token requests from this address"
            " (127.0.0.1)"
        )
        assert "network" not in event["agent"][0]

        limited.clock.advance(0.5)  # one token back
        async with _from() as client:
            again = await client.post(hub.token_url(), data=hub.token_form("xis"))
            assert again.status_code == 200


async def test_an_apps_own_token_limit_applies_to_its_claimed_client_id(limited: Limited) -> None:
    with limited.hub(apps={"portal": {"token_per_minute": 2}}) as hub:
        async with _from() as client:
            granted = [
                await client.post(hub.token_url(), data=hub.token_form("portal")) for _ in range(2)
            ]
            assert [answer.status_code for answer in granted] == [200, 200]
            third = await client.post(hub.token_url(), data=hub.token_form("portal"))
            assert_oauth_throttled(third)
            assert third.headers["retry-after"] == "30"  # 2 a minute
            assert "'portal'" in third.json()["error_description"]
            # Another app from the same address is not slowed.
            xis = await client.post(hub.token_url(), data=hub.token_form("xis"))
            assert xis.status_code == 200
        # The claim is the key wherever it comes from, and it is not verified first.
        async with _from(OTHER_ADDRESS) as other:
            portal = await other.post(hub.token_url(), data=hub.token_form("portal"))
            assert_oauth_throttled(portal)
            forged = {**hub.token_form("xis"), "client_assertion": hub.assertion("portal")[:-8]}
            assert_oauth_throttled(await other.post(hub.token_url(), data=forged))


# --- writes per app --------------------------------------------------------------------------

TASK = {"resourceType": "Task", "status": "requested", "intent": "order"}


async def test_writes_per_second_per_app(limited: Limited) -> None:
    ids = TraceHeaders.new()
    with (
        limited.hub(
            rate_limit_writes_per_second=2, apps={"module": {"writes_per_second": 4}}
        ) as hub,
    ):
        async with hub.client("xis") as xis, hub.client("module") as module:
            made = [await xis.post("/Patient", json=PATIENT) for _ in range(2)]
            assert [response.status_code for response in made] == [201, 201]
            patient_id = made[0].json()["id"]
            refused = [
                await xis.post("/Patient", json=PATIENT, headers=ids.headers),
                await xis.put(
                    f"/Patient/{patient_id}",
                    json={**PATIENT, "id": patient_id},
                    headers={"If-Match": 'W/"1"', **ids.headers},
                ),
                await xis.delete(f"/Patient/{patient_id}", headers=ids.headers),
            ]
            for response in refused:
                body = assert_throttled(response)
                assert "at most 2 per second for xis" in body["issue"][0]["diagnostics"]
            assert refused[0].headers["retry-after"] == "1"
            # Reads are not writes.
            assert (await xis.get(f"/Patient/{patient_id}")).status_code == 200
            assert (await xis.get("/Patient", params={"_count": "1"})).status_code == 200
            # Another app writes on, within its own limit from the apps file.
            tasks = [(await module.post("/Task", json=TASK)).status_code for _ in range(5)]
            assert tasks == [201, 201, 201, 201, 429]
            limited.clock.advance(0.5)  # one write back for xis
            assert (await xis.post("/Patient", json=PATIENT)).status_code == 201
            assert_throttled(await xis.post("/Patient", json=PATIENT))

        # The three 429s of xis: one AuditEvent naming it, not one each.
        [event] = await search_events(hub, {"traceId": ids.trace_id})
        assert event["outcome"] == "4"
        assert event["agent"][0]["who"] == {"reference": "Device/xis"}
        assert event["outcomeDesc"].startswith("Rate limited: writes of xis beyond 2 per second")
        assert [coding["code"] for coding in event["subtype"]] == ["create"]


async def test_an_apps_own_write_limit_of_zero_is_no_limit(limited: Limited) -> None:
    with limited.hub(
        rate_limit_writes_per_second=1, apps={"module": {"writes_per_second": 0}}
    ) as hub:
        async with hub.client("module") as module:
            tasks = [(await module.post("/Task", json=TASK)).status_code for _ in range(6)]
    assert tasks == [201] * 6


async def test_by_default_writes_are_not_limited(limited: Limited) -> None:
    with limited.hub() as hub:
        async with hub.client("xis") as xis:
            created = await asyncio.gather(*(xis.post("/Patient", json=PATIENT) for _ in range(25)))
    assert [response.status_code for response in created] == [201] * 25


# --- refused requests per address ----------------------------------------------------------


async def test_a_flood_of_refused_requests_is_cut_off_and_audited_once(limited: Limited) -> None:
    flood = TraceHeaders.new()
    with limited.hub() as hub:
        async with hub.client() as anonymous:

            async def attempt(n: int) -> httpx.Response:
                headers = {**flood.headers, "X-Request-Id": f"flood-{n}"}
                return await anonymous.get("/Patient", params={"name": f"x{n}"}, headers=headers)

            answers = [await attempt(n) for n in range(80)]
            assert [answer.status_code for answer in answers[:60]] == [401] * 60
            for answer in answers[60:]:
                assert_throttled(answer)
            assert answers[60].headers["retry-after"] == "60"  # the clock stands still
            # Cut off before any other work: public metadata, routing and trace refusals.
            assert_throttled(await anonymous.get("/metadata"))
            assert_throttled(await anonymous.get("/Patient/p1/_history/1/extra"))
            assert_throttled(await anonymous.patch("/Patient/p1", content=b"[]"))
            assert_throttled(await anonymous.get("/Patient", headers={"X-Request-Id": "bad id!"}))

        # An app with a valid token from the same address goes on; so does another address.
        async with hub.client("xis") as xis:
            assert (await xis.get("/Patient", params={"_count": "1"})).status_code == 200
        other = httpx.AsyncHTTPTransport(local_address=OTHER_ADDRESS)
        async with hub.client(transport=other) as far:
            assert (await far.get("/Patient")).status_code == 401

        # 60 refusals, each audited; then ONE event for the limit, of the 61st request.
        events = await search_events(hub, {"traceId": flood.trace_id})
        by_request = {
            extension["valueId"]: event
            for event in events
            for extension in event["extension"]
            if extension["url"].endswith("/request-id")
        }
        assert len(events) == 61
        assert set(by_request) == {f"flood-{n}" for n in range(61)}
        limit = by_request["flood-60"]
        assert limit["outcome"] == "4"
        assert limit["outcomeDesc"].startswith(
            "Rate limited: 60 refused requests without a valid access token from 127.0.0.1 "
            "in the window "
        )
        assert "(60 s)" in limit["outcomeDesc"]
        assert "who" not in limit["agent"][0]
        assert "network" not in limit["agent"][0]  # the address is in the description

        # The window over, the address is heard (and audited) again.
        limited.clock.advance(60)
        again = TraceHeaders.new()
        async with hub.client() as anonymous:
            assert (await anonymous.get("/Patient", headers=again.headers)).status_code == 401
        assert len(await search_events(hub, {"traceId": again.trace_id})) == 1
        assert verify(hub).exit_code == 0


async def test_a_concurrent_flood_gets_only_401s_and_429s(limited: Limited) -> None:
    with limited.hub(rate_limit_refused_per_minute=10) as hub:
        async with hub.client() as anonymous:
            answers = await asyncio.gather(
                *(anonymous.post("/Patient", json=PATIENT) for _ in range(40))
            )
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {401, 429}, statuses
    assert statuses.count(429) >= 20  # only the requests in flight overshoot the budget
    for answer in answers:
        if answer.status_code == 429:
            assert_throttled(answer)
        else:
            outcome(answer, 401)
