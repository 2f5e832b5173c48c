"""One app's slow endpoints never take every delivery place from another app.

The hub has four delivery places, one request at a time per endpoint, and each app
may hold half of the places (`delivery_app_share`). One app has four endpoints that
never answer; another app's notification must still go out while they hang.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.https_receiver import HttpsReceiver, LocalCA
from tests.support.hub import AppKeys
from tests.support.subscriptions import correlation_ids, create, notifying_hub, subscribe
from tests.support.waiting import eventually


@pytest.fixture
def slow_receivers(local_ca: LocalCA) -> Iterator[list[HttpsReceiver]]:
    with ExitStack() as stack:
        receivers = [stack.enter_context(HttpsReceiver(local_ca)) for _ in range(4)]
        for receiver in receivers:
            receiver.hold()
        yield receivers


async def test_a_slow_app_holds_at_most_its_share_of_the_delivery_places(
    tmp_path: Path,
    database_url: str,
    app_keys: dict[str, AppKeys],
    local_ca: LocalCA,
    https_receiver: HttpsReceiver,
    slow_receivers: list[HttpsReceiver],
) -> None:
    with notifying_hub(
        tmp_path, database_url, app_keys, local_ca,
        roles={"module": "Zorgondersteuning"},
        delivery_concurrency=4, endpoint_concurrency=1, delivery_app_share=0.5,
        webhook_timeout=60.0,
    ) as hub:  # fmt: skip
        async with hub.client("xis") as xis, hub.client("module") as module:
            for receiver in slow_receivers:
                await subscribe(xis, "Patient?gender=male", receiver.url())
            await subscribe(module, "Patient?gender=female", https_receiver.url())
            await create(xis, {"resourceType": "Patient", "gender": "male"}, trace="slow")

            async def two_hanging() -> bool:
                return sum(len(r.requests) for r in slow_receivers) >= 2

            await eventually(two_hanging, what="the slow app's share in flight")
            await create(module, {"resourceType": "Patient", "gender": "female"}, trace="healthy")

            async def delivered() -> bool:
                return correlation_ids(https_receiver.requests) == ["healthy-w"]

            # Without the share the four hanging requests would hold every place for the
            # whole webhook timeout (a minute); with it, two places stay free.
            try:
                await eventually(delivered, timeout=20, what="the other app's notification")
                assert sum(len(r.requests) for r in slow_receivers) == 2
            finally:
                for receiver in slow_receivers:  # the hub's shutdown waits for them
                    receiver.release()


async def test_rows_waiting_for_their_own_slow_endpoint_hold_none_of_the_apps_places(
    tmp_path: Path,
    database_url: str,
    app_keys: dict[str, AppKeys],
    local_ca: LocalCA,
    https_receiver: HttpsReceiver,
    slow_receivers: list[HttpsReceiver],
) -> None:
    # Two places for the app, one request at a time per endpoint: the slow endpoint's
    # queued rows must wait for the endpoint without taking the app's second place.
    [slow, *_] = slow_receivers
    with notifying_hub(
        tmp_path, database_url, app_keys, local_ca,
        delivery_concurrency=4, endpoint_concurrency=1, delivery_app_share=0.5,
        webhook_timeout=60.0,
    ) as hub:  # fmt: skip
        async with hub.client("xis") as xis:
            await subscribe(xis, "Patient?gender=male", slow.url())
            await subscribe(xis, "Patient?gender=female", https_receiver.url())
            try:
                for n in range(3):
                    await create(xis, {"resourceType": "Patient", "gender": "male"}, trace=f"m{n}")
                await slow.wait_for_async(1)
                await create(xis, {"resourceType": "Patient", "gender": "female"}, trace="f")
                [request] = await https_receiver.wait_for_async(1, timeout=20)
                assert request.header("X-Correlation-Id") == "f-w"
                assert len(slow.requests) == 1
            finally:
                for receiver in slow_receivers:
                    receiver.release()
