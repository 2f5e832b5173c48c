"""`hub deliveries list|retry`, run as commands beside a running hub (both backends).

A receiver fails the first notification and asks for an hour: the command lists it
pending, and `retry` has the running hub send it now, leaving an AuditEvent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.https_receiver import HttpsReceiver, LocalCA, Reply
from tests.support.hub import MATRIX, AppKeys, HubServer
from tests.support.subscriptions import (
    correlation_ids,
    create,
    notifying_hub,
    outbox,
    search,
    subscribe,
)
from tests.support.waiting import eventually

HUB = Path(sys.executable).with_name("hub")


def run(hub: HubServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env |= {
        "HUB_DATABASE_URL": hub.settings.database_url,
        "HUB_APPS": str(hub.settings.apps_file),
        "HUB_AUTHZ_MATRIX": str(MATRIX),
        "HUB_KEYS_DIR": str(hub.settings.keys_dir),
    }
    return subprocess.run(
        [str(HUB), "deliveries", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


async def test_list_then_retry_a_waiting_notification(
    tmp_path: Path,
    database_url: str,
    app_keys: dict[str, AppKeys],
    local_ca: LocalCA,
    https_receiver: HttpsReceiver,
) -> None:
    https_receiver.queue(Reply(503, headers=[("Retry-After", "3600")]))
    with notifying_hub(tmp_path, database_url, app_keys, local_ca) as hub:
        async with hub.client("xis") as xis, hub.client("auditor") as auditor:
            subscription_id = await subscribe(xis, "Patient", https_receiver.url())
            await create(xis, {"resourceType": "Patient"}, trace="cli")

            async def failed_once() -> list[Any]:
                rows = await outbox(database_url)
                return [r for r in rows if r.attempts == 1 and r.lease_owner is None]

            await eventually(failed_once, timeout=10, what="the first failure")

            listed = run(hub, "list", "--domain", "test")
            assert listed.returncode == 0, listed.stderr
            header, line = listed.stdout.splitlines()
            assert header.split("\t")[:4] == ["domain", "queue", "status", "pending"]
            columns = line.split("\t")
            assert columns[:6] == [
                "test",
                f"Subscription/{subscription_id}",
                "active",
                "1",
                "0",
                "0",
            ]
            detailed = run(hub, "list", "--subscription", subscription_id)
            assert detailed.returncode == 0, detailed.stderr
            [row_line] = [x for x in detailed.stdout.splitlines() if x.startswith("  row ")]
            assert "pending, 1 attempt(s)" in row_line
            assert f"last error: HTTP 503 from {https_receiver.url()}" in row_line

            https_receiver.reply(200)
            retried = run(hub, "retry", "--domain", "test", "--subscription", subscription_id)
            assert retried.returncode == 0, retried.stderr
            assert retried.stdout.strip() == (
                f"1 pending notification(s) of Subscription/{subscription_id} made due now"
            )
            # Sent now, not in an hour.
            await https_receiver.wait_for_async(2, timeout=10)
            assert run(hub, "list").stdout.strip() == "nothing pending"

            events = await search(
                auditor,
                "/AuditEvent",
                entity=f"Subscription/{subscription_id}",
                subtype="operation",
            )
    assert correlation_ids(https_receiver.requests) == ["cli-w", "cli-w"]
    [event] = events
    details = {d["type"]: d["valueString"] for d in event["entity"][0]["detail"]}
    assert details["operation"] == "$resend"
    assert details["due-now"] == "1"
    assert "@" in details["requested-by"]


async def test_refusals_of_the_command(
    tmp_path: Path, sqlite_template: Path, app_keys: dict[str, AppKeys], local_ca: LocalCA
) -> None:
    """What the command refuses does not depend on the backend: SQLite only."""
    database = tmp_path / "hub.db"
    shutil.copyfile(sqlite_template, database)
    url = f"sqlite+aiosqlite:///{database}"
    with notifying_hub(tmp_path, url, app_keys, local_ca) as hub:
        unknown_domain = run(hub, "retry", "--domain", "nosuch", "--all")
        unknown_subscription = run(hub, "retry", "--domain", "test", "--subscription", "nosuch")
        neither = run(hub, "retry", "--domain", "test")
        both = run(hub, "retry", "--domain", "test", "--all", "--subscription", "x")
        listing_unknown = run(hub, "list", "--domain", "nosuch")
        everything = run(hub, "retry", "--domain", "test", "--all")
    assert unknown_domain.returncode == 2
    assert "unknown domain 'nosuch'" in unknown_domain.stderr
    assert listing_unknown.returncode == 2
    assert unknown_subscription.returncode == 1
    assert "Subscription/nosuch does not exist" in unknown_subscription.stderr
    assert neither.returncode == both.returncode == 2  # argparse: one of the two
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.strip() == "0 pending notification(s) of domain 'test' made due now"
