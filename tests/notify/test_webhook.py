"""The notification request on the wire, and the per-endpoint concurrency limit."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from hub.net import OutboundClient
from hub.notify.webhook import EndpointLimiter, endpoint_key, notification_headers
from hub.settings import Settings
from tests.support.https_receiver import HttpsReceiver, LocalCA

pytest_plugins = ["tests.support.https_receiver"]

CONTENT_TYPE = "application/fhir+json; fhirVersion=4.0; charset=utf-8"


def test_notification_headers_follow_design_section_7_in_order() -> None:
    headers = notification_headers(
        channel_headers=["Authorization: Bearer s3cret", "X-Subscription:sub-1"],
        request_id="fhir200",
        correlation_id="epd100",
        trace_id="trace123",
    )
    assert headers == [
        ("Content-Type", CONTENT_TYPE),
        ("Content-Length", "0"),
        ("Authorization", "Bearer s3cret"),
        ("X-Subscription", "sub-1"),
        ("X-Request-Id", "fhir200"),
        ("X-Correlation-Id", "epd100"),
        ("X-Trace-Id", "trace123"),
    ]


@pytest.mark.parametrize(
    ("line", "header"),
    [
        ("X-Key: value", ("X-Key", "value")),
        ("X-Key:value", ("X-Key", "value")),
        ("X-Key: \tvalue with  spaces \t", ("X-Key", "value with  spaces")),
        ("X-Key: a:b: c", ("X-Key", "a:b: c")),
        ("X-Empty:", ("X-Empty", "")),
    ],
)
def test_channel_header_lines_split_at_the_first_colon(line: str, header: tuple[str, str]) -> None:
    headers = notification_headers(
        channel_headers=[line], request_id="r", correlation_id="c", trace_id="t"
    )
    assert headers[2] == header


@pytest.mark.parametrize("line", ["no colon", "X Key: v", "X-Key : v", "X-Key: a\r\nX-Evil: b"])
def test_a_malformed_channel_header_is_never_sent(line: str) -> None:
    with pytest.raises(ValueError, match=r"header|colon|':'"):
        notification_headers(
            channel_headers=[line], request_id="r", correlation_id="c", trace_id="t"
        )


async def test_the_receiver_gets_exactly_the_designed_request(
    https_receiver: HttpsReceiver, local_ca: LocalCA
) -> None:
    settings = Settings(
        ca_bundle=local_ca.bundle,
        webhook_allow_networks=(ipaddress.ip_network("127.0.0.1/32"),),
    )
    headers = notification_headers(
        channel_headers=["Authorization: Bearer s3cret", "x-lower-case:kept"],
        request_id="fhir200",
        correlation_id="epd100",
        trace_id="trace123",
    )
    async with OutboundClient(settings) as client:
        result = await client.post_notification(https_receiver.url("/hooks/tasks"), headers)
    assert result.ok, result.error
    [request] = https_receiver.requests
    assert request.head == (
        b"POST /hooks/tasks HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{https_receiver.port}\r\n".encode()
        + b"Content-Type: application/fhir+json; fhirVersion=4.0; charset=utf-8\r\n"
        b"Content-Length: 0\r\n"
        b"Authorization: Bearer s3cret\r\n"
        b"x-lower-case: kept\r\n"
        b"X-Request-Id: fhir200\r\n"
        b"X-Correlation-Id: epd100\r\n"
        b"X-Trace-Id: trace123\r\n"
        b"\r\n"
    )
    assert request.body == b""


def test_endpoint_key_is_scheme_host_and_port() -> None:
    assert endpoint_key("https://A.Example./a?b") == ("https", "a.example", 443)
    assert endpoint_key("https://a.example:443/x") == endpoint_key("https://a.example/y")
    assert endpoint_key("https://a.example:8443/") == ("https", "a.example", 8443)
    assert endpoint_key("http://a.example/") == ("http", "a.example", 80)


async def _hold(
    limiter: EndpointLimiter, url: str, entered: asyncio.Event, go: asyncio.Event
) -> None:
    async with limiter.slot(url):
        entered.set()
        await go.wait()


async def test_the_limiter_queues_one_endpoint_and_lets_the_others_through() -> None:
    limiter = EndpointLimiter(2)
    go = asyncio.Event()
    inside = [asyncio.Event() for _ in range(4)]
    urls = ["https://slow.example/a", "https://slow.example:443/b", "https://slow.example/c"]
    urls.append("https://fast.example/a")
    tasks = [
        asyncio.create_task(_hold(limiter, url, e, go)) for url, e in zip(urls, inside, strict=True)
    ]
    await asyncio.wait_for(asyncio.gather(inside[0].wait(), inside[1].wait()), 1)
    await asyncio.wait_for(inside[3].wait(), 1)  # another host is not held back
    await asyncio.sleep(0.05)
    assert not inside[2].is_set()  # the third request to slow.example waits
    assert limiter.in_use("https://slow.example/") == 3
    go.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert inside[2].is_set()
    assert limiter.in_use("https://slow.example/") == 0


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    limiter = EndpointLimiter(1)
    go, entered = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(_hold(limiter, "https://a.example/", entered, go))
    await entered.wait()
    waiter = asyncio.create_task(_hold(limiter, "https://a.example/", asyncio.Event(), go))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    go.set()
    await holder
    assert limiter.in_use("https://a.example/") == 0


def test_the_limiter_needs_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EndpointLimiter(0)


async def test_a_held_receiver_delays_only_its_own_notifications(
    https_receiver: HttpsReceiver, local_ca: LocalCA
) -> None:
    settings = Settings(
        ca_bundle=local_ca.bundle,
        webhook_allow_networks=(ipaddress.ip_network("127.0.0.1/32"),),
    )
    limiter = EndpointLimiter(2)
    with HttpsReceiver(local_ca) as other:
        async with OutboundClient(settings) as client:

            async def send(url: str) -> int | None:
                async with limiter.slot(url):
                    return (await client.post_notification(url, [])).status

            https_receiver.hold()
            slow = [asyncio.create_task(send(https_receiver.url(f"/{i}"))) for i in range(3)]
            await https_receiver.wait_for_async(2)
            assert await asyncio.wait_for(send(other.url("/")), 2) == 200
            assert len(https_receiver.requests) == 2  # the third waits for a slot
            https_receiver.release()
            assert await asyncio.wait_for(asyncio.gather(*slow), 2) == [200, 200, 200]
    assert len(https_receiver.requests) == 3
