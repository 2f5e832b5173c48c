"""One X-Trace-Id finds the whole chain: a write, the notification it caused, the follow-up.

The Koppeltaal example chain: an EHR writes a Task (X-Request-Id epd100), the
hub notifies a module (X-Correlation-Id epd100), the module fetches the Task
(X-Correlation-Id = the notification's X-Request-Id). All share the trace id,
and so do their AuditEvents: the REST ones and the hub's `transmit` event.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.audit.trail import CORRELATION_ID, REQUEST_ID, extension, search_events
from tests.support.https_receiver import HttpsReceiver, LocalCA
from tests.support.hub import (
    AppKeys,
    HubServer,
    hub_settings,
    running_hub,
    write_apps_file,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def notifying_hub(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], local_ca: LocalCA
) -> Iterator[HubServer]:
    """A hub that trusts the local CA of the HTTPS receiver."""
    apps_file = write_apps_file(tmp_path / "apps.yaml", app_keys)
    settings = hub_settings(tmp_path, database_url, apps_file, ca_bundle=local_ca.bundle)
    with running_hub(settings, app_keys) as server:
        yield server


async def _transmit_event(hub: HubServer, trace_id: str) -> Any:
    """The hub writes the transmit event just after the webhook answers: wait for it."""
    for _ in range(200):
        events = await search_events(hub, {"traceId": trace_id, "type": "transmit"})
        if events:
            return events[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no transmit AuditEvent was recorded")


async def test_one_trace_id_finds_the_write_the_notification_and_the_follow_up(
    notifying_hub: HubServer, https_receiver: HttpsReceiver
) -> None:
    trace_id = f"trace-{uuid.uuid4()}"
    subscription = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "audit trace test",
        "criteria": "Task?status=requested",
        "channel": {"type": "rest-hook", "endpoint": https_receiver.url("/hook")},
    }
    async with notifying_hub.client("module") as module, notifying_hub.client("portal") as portal:
        subscribed = await module.post("/Subscription", json=subscription)
        assert subscribed.status_code == 201, subscribed.text
        written = await portal.post(
            "/Task",
            json={"resourceType": "Task", "status": "requested", "intent": "order"},
            headers={"X-Request-Id": "epd100", "X-Trace-Id": trace_id},
        )
        assert written.status_code == 201, written.text
        [notification] = await https_receiver.wait_for_async(1, timeout=30)
        assert notification.header("X-Trace-Id") == trace_id
        assert notification.header("X-Correlation-Id") == "epd100"
        notification_id = notification.header("X-Request-Id")
        assert notification_id is not None
        follow_up = await module.get(
            f"/Task/{written.json()['id']}",
            headers={
                "X-Request-Id": "md300",
                "X-Correlation-Id": notification_id,
                "X-Trace-Id": trace_id,
            },
        )
        assert follow_up.status_code == 200

    transmit = await _transmit_event(notifying_hub, trace_id)
    trail = await search_events(notifying_hub, {"traceId": trace_id})
    kinds = {
        (event["type"]["code"], extension(event, REQUEST_ID)["valueId"]): event for event in trail
    }
    assert set(kinds) == {
        ("rest", "epd100"),
        ("transmit", notification_id),
        ("rest", "md300"),
    }
    assert kinds[("transmit", notification_id)]["id"] == transmit["id"]
    assert extension(transmit, CORRELATION_ID)["valueId"] == "epd100"
    assert extension(kinds[("rest", "md300")], CORRELATION_ID)["valueId"] == notification_id
    task = f"Task/{written.json()['id']}/_history/1"
    assert transmit["entity"][0]["what"] == {"reference": task}
    assert transmit["entity"][1]["what"] == {"reference": f"Subscription/{subscribed.json()['id']}"}
    # The follow-up is found by what caused it, as an auditor walks the chain.
    caused = await search_events(notifying_hub, {"correlationId": notification_id})
    assert [extension(event, REQUEST_ID)["valueId"] for event in caused] == ["md300"]
