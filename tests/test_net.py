"""hub.net against real HTTPS servers on loopback, with a local CA and a fake DNS."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import pathlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop

from hub.addresses import system_resolver
from hub.net import (
    OutboundClient,
    OutboundError,
    Resolver,
    UnsafeDestination,
    check_url,
    endpoint_within,
    redacted,
    resolve_public,
    tls_context,
)
from hub.net.webhooks import WebhookClient
from hub.settings import IPNetwork, Settings, SettingsError
from tests.support.https_receiver import HttpsReceiver, LocalCA, Reply

pytest_plugins = ["tests.support.https_receiver"]

PUBLIC_V4 = "93.184.215.14"
LOOPBACK: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"),)


@dataclass
class FakeDns:
    """Answers from a table; a name's answers are used in turn, the last one repeating."""

    answers: dict[str, list[list[str]]]
    asked: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        sequence = self.answers.get(host)
        if not sequence:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return sequence.pop(0) if len(sequence) > 1 else sequence[0]


MakeClient = Callable[..., OutboundClient]


@pytest.fixture
async def make_client(local_ca: LocalCA) -> AsyncIterator[MakeClient]:
    clients: list[OutboundClient] = []

    def make(
        *,
        trust_local_ca: bool = True,
        allow: tuple[IPNetwork, ...] = LOOPBACK,
        resolver: Resolver | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
    ) -> OutboundClient:
        settings = Settings(
            ca_bundle=local_ca.bundle if trust_local_ca else None,
            webhook_allow_networks=allow,
            webhook_connect_timeout=connect_timeout,
            webhook_timeout=timeout,
        )
        client = OutboundClient(settings, **({"resolver": resolver} if resolver else {}))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- the destination guard ---


async def test_resolve_public_answers_every_public_address() -> None:
    dns = FakeDns({"hooks.example": [[PUBLIC_V4, "2606:4700::1"]]})
    addresses = await resolve_public("hooks.example", 443, allow_networks=(), resolver=dns)
    assert addresses == [ipaddress.ip_address(PUBLIC_V4), ipaddress.ip_address("2606:4700::1")]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("192.0.2.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an answer to refuse, not a bind
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:100.64.0.1", "carrier-grade NAT"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ],
)
async def test_resolve_public_refuses_non_public_addresses(address: str, reason: str) -> None:
    dns = FakeDns({"hooks.example": [[address]]})
    with pytest.raises(UnsafeDestination, match=reason) as refused:
        await resolve_public("hooks.example", 443, allow_networks=(), resolver=dns)
    assert f"hooks.example resolves to {ipaddress.ip_address(address)}" in str(refused.value)


async def test_resolve_public_refuses_a_name_mixing_public_and_private_answers() -> None:
    dns = FakeDns({"hooks.example": [[PUBLIC_V4, "10.0.0.7"]]})
    with pytest.raises(UnsafeDestination, match=r"10\.0\.0\.7"):
        await resolve_public("hooks.example", 443, allow_networks=(), resolver=dns)


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1"])
async def test_resolve_public_judges_the_ipv4_inside_nat64_and_6to4(address: str) -> None:
    dns = FakeDns({"hooks.example": [[address]]})
    assert await resolve_public("hooks.example", 443, allow_networks=(), resolver=dns)


@pytest.mark.parametrize("address", ["127.0.0.1", "::ffff:127.0.0.1", "127.9.9.9"])
async def test_allow_networks_admit_their_addresses(address: str) -> None:
    dns = FakeDns({"hooks.example": [[address]]})
    answer = await resolve_public("hooks.example", 443, allow_networks=LOOPBACK, resolver=dns)
    assert answer == [ipaddress.ip_address(address)]


async def test_allow_networks_admit_nothing_outside_them() -> None:
    dns = FakeDns({"hooks.example": [["127.0.0.1"]]})
    with pytest.raises(UnsafeDestination, match="loopback"):
        await resolve_public(
            "hooks.example",
            443,
            allow_networks=(ipaddress.ip_network("10.0.0.0/8"),),
            resolver=dns,
        )


async def test_an_address_literal_is_checked_without_resolving() -> None:
    dns = FakeDns({})
    with pytest.raises(UnsafeDestination, match=r"^127\.0\.0\.1 is a loopback address$"):
        await resolve_public("127.0.0.1", 443, allow_networks=(), resolver=dns)
    assert dns.asked == []


async def test_the_system_resolver_is_guarded_too() -> None:
    with pytest.raises(UnsafeDestination, match=r"localhost resolves to .*loopback"):
        await resolve_public("localhost", 443, allow_networks=())
    assert await resolve_public(
        "localhost", 443, allow_networks=(*LOOPBACK, ipaddress.ip_network("::1/128"))
    )


async def test_an_unknown_name_raises_oserror() -> None:
    with pytest.raises(OSError, match="not known"):
        await resolve_public("nowhere.example", 443, allow_networks=(), resolver=FakeDns({}))


# --- endpoint prefixes and check_url ---


@pytest.mark.parametrize(
    ("url", "prefix", "within"),
    [
        ("https://a.example/hooks", "https://a.example/hooks", True),
        ("https://a.example/hooks/", "https://a.example/hooks", True),
        ("https://a.example/hooks/x?y=1", "https://a.example/hooks", True),
        ("https://a.example/hooks-evil", "https://a.example/hooks", False),
        ("https://a.example/hooksx", "https://a.example/hooks", False),
        ("https://a.example/Hooks", "https://a.example/hooks", False),
        ("https://a.example/hooks/../admin", "https://a.example/hooks", False),
        ("https://a.example/hooks/%2e%2e/admin", "https://a.example/hooks", False),
        ("https://a.example/hooks/..%5cadmin", "https://a.example/hooks/", False),
        ("https://a.example/hooks", "https://a.example/hooks/", False),
        ("https://a.example/hooks/x", "https://a.example/hooks/", True),
        ("https://a.example/hooks-evil", "https://a.example/hooks/", False),
        ("https://a.example.evil.com/hooks", "https://a.example/hooks", False),
        ("https://a.example.evil.com/", "https://a.example/", False),
        ("https://evil.example/a.example/hooks", "https://a.example/hooks", False),
        ("https://a.example@evil.example/hooks", "https://a.example/hooks", False),
        ("http://a.example/hooks", "https://a.example/hooks", False),
        ("https://a.example:8443/hooks", "https://a.example/hooks", False),
        ("https://a.example:443/hooks/x", "https://a.example/hooks", True),
        ("https://A.EXAMPLE./hooks/x", "https://a.example/hooks", True),
        ("https://a.example/anything", "https://a.example", True),
        ("https://a.example/anything", "https://a.example/", True),
        ("https://xn--bcher-kva.example/x", "https://bücher.example/", True),
        ("https://a.example/x", "not a url at all", False),
    ],
)
def test_endpoint_within(url: str, prefix: str, within: bool) -> None:
    assert endpoint_within(url, prefix) is within


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://hooks.example/hook", "not an https URL"),
        ("hooks.example/hook", "not an https URL"),
        ("https://user:secret@hooks.example/hook", "user name or password"),
        ("https:///hook", "no host"),
        ("https://hooks.example:99999/hook", "not a valid URL"),
    ],
)
async def test_check_url_refuses_malformed_endpoints(url: str, message: str) -> None:
    dns = FakeDns({"hooks.example": [[PUBLIC_V4]]})
    with pytest.raises(UnsafeDestination, match=message) as refused:
        await check_url(url, allow_networks=(), allowed_prefixes=(), resolver=dns)
    assert "secret" not in str(refused.value)


async def test_check_url_keeps_an_app_to_its_registered_prefixes() -> None:
    dns = FakeDns({"hooks.example": [[PUBLIC_V4]], "other.example": [[PUBLIC_V4]]})
    prefixes = ["https://hooks.example/app-a/", "https://hooks.example/shared"]
    for url in ["https://hooks.example/app-a/1", "https://hooks.example/shared"]:
        await check_url(url, allow_networks=(), allowed_prefixes=prefixes, resolver=dns)
    for url in ["https://hooks.example/app-b/1", "https://other.example/app-a/1"]:
        with pytest.raises(UnsafeDestination, match="registered endpoints"):
            await check_url(url, allow_networks=(), allowed_prefixes=prefixes, resolver=dns)


async def test_check_url_without_prefixes_admits_any_public_https_url() -> None:
    dns = FakeDns({"anywhere.example": [[PUBLIC_V4]]})
    await check_url(
        "https://anywhere.example/x", allow_networks=(), allowed_prefixes=(), resolver=dns
    )
    assert dns.asked == ["anywhere.example"]


async def test_check_url_refuses_what_resolves_to_loopback_unless_allowed() -> None:
    dns = FakeDns({"hooks.example": [["127.0.0.1"]]})
    url = "https://hooks.example/hook"
    with pytest.raises(UnsafeDestination, match="loopback"):
        await check_url(url, allow_networks=(), allowed_prefixes=(), resolver=dns)
    await check_url(url, allow_networks=LOOPBACK, allowed_prefixes=(), resolver=dns)


async def test_check_url_refuses_a_name_that_does_not_resolve() -> None:
    with pytest.raises(UnsafeDestination, match="does not resolve"):
        await check_url(
            "https://nowhere.example/", allow_networks=(), allowed_prefixes=(), resolver=FakeDns({})
        )


# --- post_notification against real receivers ---


async def test_delivered_notification_reports_status_and_sends_only_the_given_headers(
    make_client: MakeClient, https_receiver: HttpsReceiver
) -> None:
    result = await make_client().post_notification(
        https_receiver.url("/hook?sub=1"), [("Content-Length", "0"), ("X-Sub", "a")]
    )
    assert (result.ok, result.status, result.error, result.retry_after) == (True, 200, None, None)
    assert result.elapsed > 0
    [request] = https_receiver.requests
    assert (request.method, request.target, request.body) == ("POST", "/hook?sub=1", b"")
    # No User-Agent, Accept or Connection of httpx's own: only Host and the given ones.
    assert [name for name, _ in request.headers] == ["Host", "Content-Length", "X-Sub"]


async def test_retry_after_of_a_failed_delivery_is_reported(
    make_client: MakeClient, https_receiver: HttpsReceiver
) -> None:
    https_receiver.reply(503, retry_after="120")
    result = await make_client().post_notification(https_receiver.url(), [])
    assert (result.ok, result.status, result.retry_after) == (False, 503, "120")


async def test_each_attempt_reports_its_own_answer(
    make_client: MakeClient, https_receiver: HttpsReceiver
) -> None:
    https_receiver.queue(Reply(503, [("Retry-After", "30")]), Reply(500))
    client = make_client()
    results = [await client.post_notification(https_receiver.url(), []) for _ in range(3)]
    assert [(r.status, r.retry_after, r.ok) for r in results] == [
        (503, "30", False),
        (500, None, False),
        (200, None, True),
    ]


async def test_a_name_is_pinned_to_its_checked_address_yet_keeps_host_and_sni(
    make_client: MakeClient, local_ca: LocalCA
) -> None:
    dns = FakeDns({"hooks.example": [["127.0.0.1"], ["10.255.255.1"]]})
    with HttpsReceiver(local_ca, hostnames=["hooks.example"]) as receiver:
        url = receiver.url("/hook", host="hooks.example")
        result = await make_client(resolver=dns).post_notification(url, [])
    assert result.status == 200, result.error
    # One resolution per connection, and the socket went to exactly that answer
    # (a second lookup would have answered the unreachable 10.255.255.1).
    assert dns.asked == ["hooks.example"]
    [request] = receiver.requests
    assert request.header("Host") == f"hooks.example:{receiver.port}"
    assert request.server_name == "hooks.example"


async def test_a_certificate_for_another_name_is_refused_on_the_right_address(
    make_client: MakeClient, local_ca: LocalCA
) -> None:
    dns = FakeDns({"hooks.example": [["127.0.0.1"]]})
    with HttpsReceiver(local_ca, hostnames=["other.example"]) as receiver:
        url = receiver.url("/hook", host="hooks.example")
        result = await make_client(resolver=dns).post_notification(url, [])
        assert receiver.connections == 0
    assert result.status is None
    assert result.error is not None
    assert result.error.startswith("TLS certificate verify failed: Hostname mismatch")
    assert receiver.requests == []


async def test_an_untrusted_certificate_is_refused(
    make_client: MakeClient, https_receiver: HttpsReceiver
) -> None:
    result = await make_client(trust_local_ca=False).post_notification(https_receiver.url(), [])
    assert result.error is not None
    assert result.error.startswith("TLS certificate verify failed")
    assert https_receiver.requests == []


async def test_redirects_are_not_followed(
    make_client: MakeClient, https_receiver: HttpsReceiver, local_ca: LocalCA
) -> None:
    with HttpsReceiver(local_ca) as elsewhere:
        https_receiver.reply(302, headers=[("Location", elsewhere.url("/stolen"))])
        result = await make_client().post_notification(https_receiver.url(), [])
        assert (result.ok, result.status, result.error) == (False, 302, None)
        assert elsewhere.connections == 0
        assert elsewhere.requests == []


async def test_a_slow_receiver_times_out(
    make_client: MakeClient, https_receiver: HttpsReceiver
) -> None:
    https_receiver.reply(200, delay=3.0)
    result = await make_client(timeout=0.5).post_notification(https_receiver.url(), [])
    assert (result.status, result.error) == (None, "timeout after 0.5 s")
    assert 0.4 < result.elapsed < 2.0
    assert len(https_receiver.requests) == 1


async def test_a_stalled_tls_handshake_is_a_connect_timeout(make_client: MakeClient) -> None:
    with socket.socket() as listener:  # listens, so TCP connects, but never speaks TLS
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/hook"
        result = await make_client(connect_timeout=0.3).post_notification(url, [])
    assert (result.status, result.error) == (None, "connect timeout after 0.3 s")
    assert result.elapsed < 2.0


async def test_a_refused_connection_is_reported(make_client: MakeClient) -> None:
    result = await make_client().post_notification(f"https://127.0.0.1:{closed_port()}/", [])
    assert (result.status, result.error) == (None, "connection refused")


async def test_a_name_that_does_not_resolve_is_reported(make_client: MakeClient) -> None:
    client = make_client(resolver=FakeDns({}))
    result = await client.post_notification("https://nowhere.example/hook", [])
    assert result.error == "could not resolve nowhere.example"


async def test_loopback_is_refused_unless_allowed(
    make_client: MakeClient, https_receiver: HttpsReceiver
) -> None:
    result = await make_client(allow=()).post_notification(https_receiver.url(), [])
    assert result.error == "unsafe destination: 127.0.0.1 is a loopback address"
    assert https_receiver.connections == 0


async def test_dns_rebinding_after_the_check_does_not_reach_loopback(
    make_client: MakeClient, local_ca: LocalCA
) -> None:
    # Public when the Subscription is checked, loopback when the notification goes out.
    dns = FakeDns({"hooks.example": [[PUBLIC_V4], ["127.0.0.1"]]})
    with HttpsReceiver(local_ca, hostnames=["hooks.example"]) as receiver:
        url = receiver.url("/hook", host="hooks.example")
        await check_url(url, allow_networks=(), allowed_prefixes=(), resolver=dns)
        result = await make_client(allow=(), resolver=dns).post_notification(url, [])
        assert receiver.connections == 0
    assert result.error == (
        "unsafe destination: hooks.example resolves to 127.0.0.1, which is a loopback address"
    )


async def test_only_https_is_sent_to(make_client: MakeClient) -> None:
    result = await make_client().post_notification("http://127.0.0.1:1/hook", [])
    assert result.error == "unsafe destination: 'http://127.0.0.1:1/hook' is not an https URL"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:pw@a.example:8443/hook?token=s#f", "https://a.example:8443/hook"),
        ("https://a.example?token=s", "https://a.example"),
        ("https://a.example/p@q?x", "https://a.example/p@q"),
        ("not a url?x", "not a url"),
    ],
)
def test_urls_in_error_texts_lose_credentials_and_query(url: str, shown: str) -> None:
    assert redacted(url) == shown


async def test_a_refused_url_with_secrets_is_reported_without_them(make_client: MakeClient) -> None:
    result = await make_client().post_notification("https://u:pw@127.0.0.1:1/h?token=s", [])
    assert result.error == (
        "unsafe destination: 'https://127.0.0.1:1/h' must not contain a user name or password"
    )


async def test_connections_are_reused_per_host_name_never_across_names(
    make_client: MakeClient, local_ca: LocalCA
) -> None:
    dns = FakeDns({"a.example": [["127.0.0.1"]], "b.example": [["127.0.0.1"]]})
    client = make_client(resolver=dns)
    with HttpsReceiver(local_ca, hostnames=["a.example", "b.example"]) as receiver:
        for host in ["a.example", "a.example", "b.example"]:
            result = await client.post_notification(receiver.url("/", host=host), [])
            assert result.ok, result.error
        assert receiver.connections == 2
    assert [r.server_name for r in receiver.requests] == ["a.example", "a.example", "b.example"]


async def test_a_large_answer_body_does_not_change_the_result(
    make_client: MakeClient, https_receiver: HttpsReceiver
) -> None:
    https_receiver.reply(202, body=b"x" * 500_000)
    result = await make_client().post_notification(https_receiver.url(), [])
    assert (result.ok, result.status) == (True, 202)


# --- fetch_json and post_form ---


async def test_fetch_json_answers_the_document(
    make_client: MakeClient, https_receiver: HttpsReceiver
) -> None:
    jwks = {"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]}
    https_receiver.reply(
        200, headers=[("Content-Type", "application/json")], body=json.dumps(jwks).encode()
    )
    assert await make_client().fetch_json(https_receiver.url("/jwks")) == jwks
    [request] = https_receiver.requests
    assert (request.method, request.header("Accept")) == ("GET", "application/json")


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (404, b"{}", "HTTP 404"),
        (200, b"[1, 2]", "not a JSON object"),
        (200, b"<html>", "not JSON"),
        (200, b'{"k": "' + b"x" * 2000 + b'"}', "larger than 1000 bytes"),
    ],
)
async def test_fetch_json_refuses_unusable_answers(
    make_client: MakeClient, https_receiver: HttpsReceiver, status: int, body: bytes, message: str
) -> None:
    https_receiver.reply(status, body=body)
    with pytest.raises(OutboundError, match=message):
        await make_client().fetch_json(https_receiver.url("/jwks"), max_bytes=1000)


async def test_fetch_json_goes_through_the_guard(
    make_client: MakeClient, https_receiver: HttpsReceiver
) -> None:
    with pytest.raises(OutboundError, match=r"unsafe destination: 127\.0\.0\.1 is a loopback"):
        await make_client(allow=()).fetch_json(https_receiver.url("/jwks"))
    with pytest.raises(OutboundError, match="not an https URL"):
        await make_client().fetch_json("http://127.0.0.1/jwks")
    assert https_receiver.connections == 0


async def test_post_form_reaches_the_operators_url_without_the_guard(
    make_client: MakeClient, https_receiver: HttpsReceiver
) -> None:
    https_receiver.reply(400, body=b'{"error": "invalid_client"}')
    client = make_client(allow=())
    status, answer = await client.post_form(
        https_receiver.url("/demo/oauth2/token"), {"grant_type": "client_credentials", "scope": ""}
    )
    assert (status, answer) == (400, {"error": "invalid_client"})
    [request] = https_receiver.requests
    assert request.header("Content-Type") == "application/x-www-form-urlencoded"
    assert request.body == b"grant_type=client_credentials&scope="


async def test_post_form_refuses_an_answer_that_is_not_json(
    make_client: MakeClient, https_receiver: HttpsReceiver
) -> None:
    https_receiver.reply(502, body=b"Bad gateway")
    with pytest.raises(OutboundError, match="not JSON"):
        await make_client().post_form(https_receiver.url("/token"), {"a": "b"})


def test_an_unusable_ca_bundle_is_a_clear_settings_error(tmp_path: pathlib.Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    with pytest.raises(SettingsError, match=r"HUB_CA_BUNDLE: .*empty\.pem holds no usable CA"):
        tls_context(empty)
    with pytest.raises(SettingsError, match="HUB_CA_BUNDLE"):
        tls_context(tmp_path / "missing.pem")


# --- the notification client's own behaviour (hub.net.webhooks) ---
#
# Written as tests that take only `local_ca` and build their own clients and servers,
# so that `test_the_same_on_uvloop` can run them again on uvloop, the loop `hub serve`
# runs on (its transports are not asyncio's classes, and its TLS is its own).


@asynccontextmanager
async def outbound(
    ca: LocalCA, *, webhook_timeout: float = 5.0, webhook_connect_timeout: float = 2.0
) -> AsyncIterator[OutboundClient]:
    settings = Settings(
        ca_bundle=ca.bundle,
        webhook_allow_networks=LOOPBACK,
        webhook_timeout=webhook_timeout,
        webhook_connect_timeout=webhook_connect_timeout,
    )
    async with OutboundClient(settings) as client:
        yield client


@asynccontextmanager
async def webhooks(
    ca: LocalCA,
    *,
    keepalive_expiry: float = 5.0,
    max_connections: int = 100,
    max_idle_per_endpoint: int = 8,
) -> AsyncIterator[WebhookClient]:
    """The pool itself, for settings OutboundClient keeps fixed (expiry, bounds)."""
    client = WebhookClient(
        tls_context(ca.bundle),
        allow_networks=LOOPBACK,
        resolver=system_resolver,
        connect_timeout=2.0,
        total_timeout=5.0,
        keepalive_expiry=keepalive_expiry,
        max_connections=max_connections,
        max_idle_per_endpoint=max_idle_per_endpoint,
    )
    try:
        yield client
    finally:
        await client.aclose()


OK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
Script = Callable[
    ["ScriptedServer", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]
]


class ScriptedServer:
    """An HTTPS server in the test's own event loop that says whatever the test scripts.

    `script(server, reader, writer, n)` runs for the n-th connection (from 0) and
    reads requests with `server.read(reader, n)`, which records them.
    """

    def __init__(self, ca: LocalCA, script: Script) -> None:
        self._context = ca.server_context("127.0.0.1")
        self._script = script
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.requests: list[tuple[int, bytes]] = []
        """(connection number, request head), in arrival order."""
        self.connections = 0
        self.port = 0

    def url(self, path: str = "/hook") -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    async def read(self, reader: asyncio.StreamReader, n: int) -> bytes | None:
        """The next request head (bodies are empty), or None when the client closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, OSError):
            return None
        self.requests.append((n, head))
        return head

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        n, self.connections = self.connections, self.connections + 1
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await self._script(self, reader, writer, n)
            await writer.drain()


def answering(*answers: bytes, close: bool = False) -> Script:
    """Answer every request on every connection with `answers` in turn (the last repeats).

    With `close`, each connection is closed right after its first answer.
    """

    async def script(
        server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        index = 0
        while await server.read(reader, n) is not None:
            writer.write(answers[min(index, len(answers) - 1)])
            index += 1
            if close:
                await writer.drain()
                writer.close()
                return

    return script


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for something the event loop does in its own time (a close noticed)."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"still not {what} after 5 s")


async def test_an_idle_connection_the_server_closed_is_not_reused(local_ca: LocalCA) -> None:
    async with ScriptedServer(local_ca, answering(OK_ANSWER, close=True)) as server:
        async with outbound(local_ca) as client:
            assert (await client.post_notification(server.url(), [])).status == 200
            await until(lambda: client.webhooks.open_connections == 0, "noticed the close")
            result = await client.post_notification(server.url(), [])
            assert result.status == 200, result.error
        assert server.connections == 2
        assert [n for n, _ in server.requests] == [0, 1]  # each request sent once


async def test_a_request_a_reused_connection_drops_unanswered_goes_once_more_fresh(
    local_ca: LocalCA,
) -> None:
    async def script(
        server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while await server.read(reader, n) is not None:
            if n == 0 and len(server.requests) == 2:
                writer.transport.abort()  # closed as the second request came in
                return
            writer.write(OK_ANSWER)

    async with ScriptedServer(local_ca, script) as server, outbound(local_ca) as client:
        results = [await client.post_notification(server.url(), []) for _ in range(2)]
        assert [(r.status, r.error) for r in results] == [(200, None), (200, None)]
        assert [n for n, _ in server.requests] == [0, 0, 1]


async def test_a_request_answered_in_part_is_never_sent_again(local_ca: LocalCA) -> None:
    async def script(
        server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while await server.read(reader, n) is not None:
            if len(server.requests) == 2:
                writer.write(b"HTTP/1.1 200 O")
                await writer.drain()
                writer.transport.abort()
                return
            writer.write(OK_ANSWER)

    async with ScriptedServer(local_ca, script) as server, outbound(local_ca) as client:
        assert (await client.post_notification(server.url(), [])).status == 200
        result = await client.post_notification(server.url(), [])
        assert (result.status, result.error) == (
            None,
            "the connection closed in the middle of the answer",
        )
        assert [n for n, _ in server.requests] == [0, 0]


async def test_a_fresh_connection_closed_unanswered_is_an_error_not_a_retry(
    local_ca: LocalCA,
) -> None:
    async def script(
        server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await server.read(reader, n)
        writer.close()

    async with ScriptedServer(local_ca, script) as server, outbound(local_ca) as client:
        result = await client.post_notification(server.url(), [])
        assert (result.status, result.error) == (
            None,
            "the server closed the connection without answering",
        )
        assert server.connections == 1
        assert len(server.requests) == 1


async def test_a_chunked_answer_is_read_and_the_connection_reused(local_ca: LocalCA) -> None:
    chunked = (
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\nRetry-After: 9\r\n\r\n"
    )
    async with ScriptedServer(local_ca, answering(chunked)) as server, outbound(local_ca) as client:
        results = [await client.post_notification(server.url(), []) for _ in range(3)]
        # A trailer is no header of the answer: no Retry-After.
        assert [(r.status, r.retry_after) for r in results] == [(202, None)] * 3
        assert server.connections == 1


async def test_an_answer_delimited_by_the_close_is_complete(local_ca: LocalCA) -> None:
    close_delimited = b"HTTP/1.1 200 OK\r\nRetry-After: 3\r\n\r\nthe body, until the close"
    async with ScriptedServer(local_ca, answering(close_delimited, close=True)) as server:
        async with outbound(local_ca) as client:
            results = [await client.post_notification(server.url(), []) for _ in range(2)]
        assert [(r.status, r.retry_after, r.error) for r in results] == [(200, "3", None)] * 2
        assert server.connections == 2


def _chunks(size: int, count: int) -> bytes:
    return (f"{size:x}\r\n".encode() + b"x" * size + b"\r\n") * count + b"0\r\n\r\n"


@pytest.mark.parametrize(
    ("answer", "connections"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 60000\r\n\r\n" + b"x" * 60_000, 1),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n" + b"x" * 70_000, 2),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunks(0x3000, 5), 1),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunks(0x4000, 5), 2),
    ],
    ids=["60 kB kept", "70 kB closed", "60 kB chunked kept", "80 kB chunked closed"],
)
async def test_an_oversized_answer_closes_the_connection_instead_of_reusing_it(
    local_ca: LocalCA, answer: bytes, connections: int
) -> None:
    async with ScriptedServer(local_ca, answering(answer)) as server, outbound(local_ca) as client:
        results = [await client.post_notification(server.url(), []) for _ in range(2)]
        assert [r.status for r in results] == [200, 200]
        assert server.connections == connections


async def test_interim_answers_are_skipped(local_ca: LocalCA) -> None:
    interim = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\nRetry-After: 1\r\n\r\n"
    )
    answers = (
        interim + b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        interim + b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n",
        interim + b"HTTP/1.1 204 No Content\r\n\r\n",
    )
    async with (
        ScriptedServer(local_ca, answering(*answers)) as server,
        outbound(local_ca) as client,
    ):
        results = [await client.post_notification(server.url(), []) for _ in range(3)]
        assert [(r.status, r.retry_after) for r in results] == [
            (503, None),
            (429, "7"),
            (204, None),
        ]
        assert server.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        OK_ANSWER + b"HTTP/1.1 200 OK\r\n\r\n",  # a second answer to one request
        OK_ANSWER + b"junk",
    ],
    ids=["Connection: close", "HTTP/1.0", "two answers", "bytes after the answer"],
)
async def test_an_answer_that_leaves_doubt_closes_the_connection(
    local_ca: LocalCA, answer: bytes
) -> None:
    async with ScriptedServer(local_ca, answering(answer)) as server, outbound(local_ca) as client:
        results = [await client.post_notification(server.url(), []) for _ in range(2)]
        assert [r.status for r in results] == [200, 200]
        assert server.connections == 2


async def test_bytes_on_an_idle_connection_drop_it(local_ca: LocalCA) -> None:
    async def script(
        server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while await server.read(reader, n) is not None:
            writer.write(OK_ANSWER)
            if n == 0:  # what some servers say before they close an idle connection
                await writer.drain()
                writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")

    async with ScriptedServer(local_ca, script) as server, outbound(local_ca) as client:
        assert (await client.post_notification(server.url(), [])).status == 200
        await until(lambda: client.webhooks.open_connections == 0, "dropped")
        assert (await client.post_notification(server.url(), [])).status == 200
        assert server.connections == 2


@pytest.mark.parametrize(
    "answer",
    [b"SMTP ready\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n"],
)
async def test_an_answer_that_is_not_http_is_an_error(local_ca: LocalCA, answer: bytes) -> None:
    async with ScriptedServer(local_ca, answering(answer)) as server, outbound(local_ca) as client:
        result = await client.post_notification(server.url(), [])
        assert result.status is None
        assert result.error is not None
        assert result.error.startswith("invalid HTTP answer: ")
        assert client.webhooks.open_connections == 0


async def test_a_head_without_end_is_an_error(local_ca: LocalCA) -> None:
    endless = b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"x" * 70_000
    async with ScriptedServer(local_ca, answering(endless)) as server, outbound(local_ca) as client:
        result = await client.post_notification(server.url(), [])
        assert (result.status, result.error) == (None, "answer head larger than 64 kB")


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (("X-Key", "a\r\nX-Evil: b"), "the value of header X-Key contains CR, LF, NUL"),
        (("X-Key", "a\nb"), "the value of header X-Key contains CR, LF, NUL"),
        (("X-Key", "a\rb"), "the value of header X-Key contains CR, LF, NUL"),
        (("X-Key", "a\x00b"), "the value of header X-Key contains CR, LF, NUL"),
        (("X-Key\r\nX-Evil", "b"), "header name 'X-Key\\r\\nX-Evil' is not an HTTP token"),
        (("X-Key\nX-Evil", "b"), "header name 'X-Key\\nX-Evil' is not an HTTP token"),
        (("X Key", "b"), "header name 'X Key' is not an HTTP token"),
        (("", "b"), "header name '' is not an HTTP token"),
        (("Host", "elsewhere.example"), "the Host header is the client's own"),
        (("X-Key", "caf\u00e9"), "'ascii' codec can't encode character '\\xe9'"),
    ],
)
async def test_headers_that_could_change_the_request_are_refused_before_sending(
    local_ca: LocalCA, header: tuple[str, str], error: str
) -> None:
    async with (
        ScriptedServer(local_ca, answering(OK_ANSWER)) as server,
        outbound(local_ca) as client,
    ):
        result = await client.post_notification(server.url(), [("X-Fine", "1"), header])
        assert result.status is None
        assert result.error is not None
        assert result.error.startswith(error)
        assert server.connections == 0


async def test_cancellation_propagates_and_leaves_no_connection_behind(local_ca: LocalCA) -> None:
    with HttpsReceiver(local_ca) as receiver:
        async with outbound(local_ca) as client:
            assert (await client.post_notification(receiver.url(), [])).status == 200
            receiver.hold()
            sending = asyncio.create_task(client.post_notification(receiver.url(), []))
            await receiver.wait_for_async(2)
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            assert (client.webhooks.open_connections, client.webhooks.idle_connections) == (0, 0)
            receiver.release()  # the held answer goes to a closed connection
            result = await client.post_notification(receiver.url(), [])
            assert result.status == 200, result.error
        assert receiver.connections == 2


async def test_cancellation_in_the_tls_handshake_gives_the_connection_slot_back(
    local_ca: LocalCA,
) -> None:
    with socket.socket() as listener, HttpsReceiver(local_ca) as receiver:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # accepts TCP, never speaks TLS
        async with webhooks(local_ca, max_connections=1) as client:
            stalled = asyncio.create_task(
                client.post(f"https://127.0.0.1:{listener.getsockname()[1]}/", [])
            )
            await asyncio.sleep(0.1)  # in the handshake, which never ends
            stalled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stalled
            assert await client.post(receiver.url(), []) == (200, None)


async def test_an_idle_connection_expires(local_ca: LocalCA) -> None:
    with HttpsReceiver(local_ca) as receiver:
        async with webhooks(local_ca, keepalive_expiry=0.2) as client:
            assert await client.post(receiver.url(), []) == (200, None)
            assert client.idle_connections == 1
            await until(lambda: client.open_connections == 0, "expired")
            assert await client.post(receiver.url(), []) == (200, None)
            assert await client.post(receiver.url(), []) == (200, None)
        assert receiver.connections == 2


async def test_the_pool_is_bounded_in_all(local_ca: LocalCA) -> None:
    with HttpsReceiver(local_ca) as receiver, HttpsReceiver(local_ca) as other:
        async with webhooks(local_ca, max_connections=3) as client:
            receiver.hold()
            sending = [asyncio.create_task(client.post(receiver.url(), [])) for _ in range(5)]
            await receiver.wait_for_async(3)
            await asyncio.sleep(0.1)
            assert (client.open_connections, receiver.connections) == (3, 3)  # two wait
            receiver.release()
            assert await asyncio.gather(*sending) == [(200, None)] * 5
            assert client.open_connections <= 3
            # Another endpoint at the cap: the least recently used idle ones make room.
            for path in ("/1", "/2", "/3", "/4"):
                assert await client.post(other.url(path), []) == (200, None)
            assert client.open_connections <= 3
            assert other.connections == 1


async def test_idle_connections_per_endpoint_are_bounded(local_ca: LocalCA) -> None:
    with HttpsReceiver(local_ca) as receiver:
        async with webhooks(local_ca, max_idle_per_endpoint=2) as client:
            receiver.hold()
            sending = [asyncio.create_task(client.post(receiver.url(), [])) for _ in range(4)]
            await receiver.wait_for_async(4)
            assert client.open_connections == 4
            receiver.release()
            assert await asyncio.gather(*sending) == [(200, None)] * 4
            assert (client.open_connections, client.idle_connections) == (2, 2)


async def test_aclose_closes_every_connection(local_ca: LocalCA) -> None:
    with HttpsReceiver(local_ca) as receiver, HttpsReceiver(local_ca) as other:
        client = OutboundClient(
            Settings(ca_bundle=local_ca.bundle, webhook_allow_networks=LOOPBACK)
        )
        for url in (receiver.url(), other.url()):
            assert (await client.post_notification(url, [])).ok
        assert client.webhooks.open_connections == 2
        await client.aclose()
        assert client.webhooks.open_connections == 0
        with pytest.raises(RuntimeError, match="closed"):
            await client.post_notification(receiver.url(), [])


async def test_the_request_on_the_wire_is_exactly_host_and_the_given_headers(
    local_ca: LocalCA,
) -> None:
    with HttpsReceiver(local_ca) as receiver:
        async with outbound(local_ca) as client:
            headers = [("content-length", "0"), ("X-Tab", "a\tb"), ("X-Empty", ""), ("X-A", "1")]
            for path in ("/h?x=1&y=%20", "/"):
                result = await client.post_notification(receiver.url(path), headers)
                assert result.ok, result.error
        assert [r.head for r in receiver.requests] == [
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{receiver.port}\r\n".encode()
            + b"content-length: 0\r\nX-Tab: a\tb\r\nX-Empty: \r\nX-A: 1\r\n\r\n"
            for path in ("/h?x=1&y=%20", "/")
        ]
        assert receiver.connections == 1


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
async def test_an_ipv6_address_is_connected_to_and_named_in_brackets(local_ca: LocalCA) -> None:
    settings = Settings(
        ca_bundle=local_ca.bundle, webhook_allow_networks=(ipaddress.ip_network("::1/128"),)
    )
    with HttpsReceiver(local_ca, host="::1", hostnames=["::1"]) as receiver:
        async with OutboundClient(settings) as client:
            result = await client.post_notification(f"https://[::1]:{receiver.port}/h", [])
            assert result.status == 200, result.error
        [request] = receiver.requests
        assert request.header("Host") == f"[::1]:{receiver.port}"


async def test_failures_read_the_same(local_ca: LocalCA) -> None:
    """The guard's failures, in one test so that uvloop runs them too."""
    dns = FakeDns({"hooks.example": [["127.0.0.1"]], "rebound.example": [["127.0.0.1"]]})
    with HttpsReceiver(local_ca, hostnames=["other.example"]) as wrong_name:
        async with OutboundClient(
            Settings(ca_bundle=local_ca.bundle, webhook_allow_networks=LOOPBACK), resolver=dns
        ) as client:
            result = await client.post_notification(wrong_name.url(host="hooks.example"), [])
            assert result.error is not None
            assert result.error.startswith("TLS certificate verify failed: Hostname mismatch")
        async with OutboundClient(Settings(webhook_allow_networks=LOOPBACK)) as untrusting:
            result = await untrusting.post_notification(wrong_name.url(), [])
            assert result.error is not None
            assert result.error.startswith("TLS certificate verify failed")
        async with OutboundClient(Settings(), resolver=dns) as guarded:
            result = await guarded.post_notification(wrong_name.url(host="rebound.example"), [])
            assert result.error == (
                "unsafe destination: rebound.example resolves to 127.0.0.1,"
                " which is a loopback address"
            )
        assert wrong_name.requests == []
    async with outbound(local_ca) as client:
        result = await client.post_notification(f"https://127.0.0.1:{closed_port()}/", [])
        assert result.error == "connection refused"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        async with outbound(local_ca, webhook_connect_timeout=0.3) as client:
            url = f"https://127.0.0.1:{listener.getsockname()[1]}/"
            result = await client.post_notification(url, [])
            assert result.error == "connect timeout after 0.3 s"
        async with outbound(local_ca, webhook_connect_timeout=2.0, webhook_timeout=0.3) as client:
            result = await client.post_notification(url, [])
            assert result.error == "timeout after 0.3 s"  # the total bounds the connect too
    with HttpsReceiver(local_ca) as slow:
        slow.reply(200, delay=3.0)
        async with outbound(local_ca, webhook_timeout=0.3) as client:
            result = await client.post_notification(slow.url(), [])
            assert (result.status, result.error) == (None, "timeout after 0.3 s")
            assert client.webhooks.open_connections == 0


@pytest.mark.parametrize(
    "test",
    [
        test_an_idle_connection_the_server_closed_is_not_reused,
        test_a_request_a_reused_connection_drops_unanswered_goes_once_more_fresh,
        test_a_request_answered_in_part_is_never_sent_again,
        test_a_fresh_connection_closed_unanswered_is_an_error_not_a_retry,
        test_a_chunked_answer_is_read_and_the_connection_reused,
        test_an_answer_delimited_by_the_close_is_complete,
        test_interim_answers_are_skipped,
        test_bytes_on_an_idle_connection_drop_it,
        test_a_head_without_end_is_an_error,
        test_cancellation_propagates_and_leaves_no_connection_behind,
        test_cancellation_in_the_tls_handshake_gives_the_connection_slot_back,
        test_an_idle_connection_expires,
        test_the_pool_is_bounded_in_all,
        test_idle_connections_per_endpoint_are_bounded,
        test_aclose_closes_every_connection,
        test_the_request_on_the_wire_is_exactly_host_and_the_given_headers,
        test_failures_read_the_same,
    ],
    ids=lambda test: test.__name__.removeprefix("test_"),
)
def test_the_same_on_uvloop(
    test: Callable[[LocalCA], Coroutine[Any, Any, None]], local_ca: LocalCA
) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(test(local_ca))
