"""examples/receiver.py, run as its command against a real hub.

The receiver runs as `python -m examples.receiver` (HTTPS with a certificate from its
demo CA helper, its own private key, `--subscribe`); a module completes a Task; the
auditor then follows ONE X-Trace-Id from the write through the hub's `transmit`
event to the receiver's `receive` event and the search it made in response.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.receiver import local_certificate
from tests.support.hub import (
    REPOSITORY,
    AppKeys,
    HubServer,
    hub_settings,
    running_hub,
    write_apps_file,
)
from tests.support.processes import free_port
from tests.support.subscriptions import create, extension, search
from tests.support.waiting import eventually

TASK = {"resourceType": "Task", "status": "completed", "intent": "order"}


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path, Path]:
    return local_certificate(tmp_path / "tls", ["127.0.0.1", "localhost"])


@pytest.fixture
def hub(
    tmp_path: Path,
    database_url: str,
    app_keys: dict[str, AppKeys],
    certificate: tuple[Path, Path, Path],
) -> Iterator[HubServer]:
    apps = write_apps_file(tmp_path / "apps.yaml", app_keys)
    settings = hub_settings(tmp_path, database_url, apps, ca_bundle=certificate[2])
    with running_hub(settings, app_keys) as server:
        yield server


class ReceiverProcess:
    def __init__(self, directory: Path, args: list[str]) -> None:
        self.output = directory / "receiver.out"
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "examples.receiver", *args],
                cwd=REPOSITORY,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def printed(self) -> str:
        return self.output.read_text()

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(30)
        return self.printed()


@pytest.fixture
def receiver(
    tmp_path: Path,
    hub: HubServer,
    app_keys: dict[str, AppKeys],
    certificate: tuple[Path, Path, Path],
) -> Iterator[ReceiverProcess]:
    key = tmp_path / "portal.pem"
    key.write_bytes(app_keys["portal"].private_pem)
    cert, cert_key, _ = certificate
    process = ReceiverProcess(
        tmp_path,
        [
            *("--hub", hub.url, "--domain", "test", "--client-id", "portal"),
            *("--key", str(key), "--kid", app_keys["portal"].kid),
            *("--criteria", "Task?status=completed", "--subscribe"),
            *("--header", "X-Receiver-Secret: s3cret"),
            *("--port", str(free_port()), "--cert", str(cert), "--cert-key", str(cert_key)),
        ],
    )
    try:
        yield process
    finally:
        if process.process.poll() is None:
            process.stop()


async def test_one_trace_id_follows_a_write_to_the_receivers_follow_up_search(
    hub: HubServer, receiver: ReceiverProcess
) -> None:
    async def subscribed() -> bool:
        assert receiver.process.poll() is None, receiver.printed()
        return "subscribed: Subscription/" in receiver.printed()

    await eventually(subscribed, timeout=30, what="the receiver to subscribe")

    async with hub.client("module") as module, hub.client("auditor") as auditor:
        task = (await create(module, TASK, trace="chain")).json()

        async def fetched() -> bool:
            return f"new: Task/{task['id']}/_history/1" in receiver.printed()

        await eventually(fetched, timeout=30, what="the receiver to fetch the Task")
        events = await search(auditor, "/AuditEvent", traceId="chain", _count="50")
    printed = receiver.stop()

    [write] = [e for e in events if subtype(e) == "create" and who(e) == "Device/module"]
    [transmit] = [e for e in events if code(e) == "transmit"]
    [receive] = [e for e in events if code(e) == "receive"]
    [posted] = [e for e in events if subtype(e) == "create" and who(e) == "Device/portal"]
    [follow_up] = [e for e in events if subtype(e) == "search-type"]

    assert extension(write, "request-id") == "chain-w"
    assert write["entity"][0]["what"]["reference"] == f"Task/{task['id']}/_history/1"
    # The hub's notification was caused by the write ...
    assert extension(transmit, "correlation-id") == "chain-w"
    notification = extension(transmit, "request-id")
    # ... the receiver recorded that very notification ...
    assert extension(receive, "request-id") == notification
    assert extension(receive, "correlation-id") == "chain-w"
    # ... as the receiving application alone: the only agent, and the observer.
    assert [agent["who"] for agent in receive["agent"]] == [{"reference": "Device/portal"}]
    assert receive["agent"][0]["requestor"] is True
    assert receive["source"]["observer"] == {"reference": "Device/portal"}
    # ... and both its requests name the notification as their cause.
    assert extension(posted, "correlation-id") == notification
    assert extension(follow_up, "correlation-id") == notification
    assert who(follow_up) == "Device/portal"

    assert f"notified: X-Request-Id {notification}, X-Trace-Id chain" in printed


async def test_a_notification_without_the_channel_secret_is_refused(
    hub: HubServer, receiver: ReceiverProcess, certificate: tuple[Path, Path, Path]
) -> None:
    async def started() -> bool:
        return "subscribed: Subscription/" in receiver.printed()

    await eventually(started, timeout=30, what="the receiver to start")
    endpoint = receiver.printed().split("receiving on ", 1)[1].split(" ", 1)[0]
    trust = ssl.create_default_context(cafile=str(certificate[2]))
    async with httpx.AsyncClient(verify=trust) as client:
        forged = await client.post(endpoint, headers={"X-Receiver-Secret": "guess"})
        genuine = await client.post(endpoint, headers={"X-Receiver-Secret": "s3cret"})
    assert forged.status_code == 401
    assert genuine.status_code == 202
    assert genuine.content == b""


def code(event: dict[str, Any]) -> str:
    return str(event["type"]["code"])


def subtype(event: dict[str, Any]) -> str | None:
    return next((s["code"] for s in event.get("subtype", ())), None)


def who(event: dict[str, Any]) -> str:
    return str(event["agent"][0].get("who", {}).get("reference"))
