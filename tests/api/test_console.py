"""The delivery console in a real headless Chromium, against a real hub and HTTPS receiver.

The page is driven as an operator would: paste a token, read the table, open a
Subscription's attempts, press Resend. The Subscription's endpoint, reason and error
hold markup: the page must show it as text and run none of it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.support.browser import headless_browser
from tests.support.https_receiver import HttpsReceiver, LocalCA, Reply
from tests.support.hub import AppKeys, HubServer
from tests.support.subscriptions import (
    correlation_ids,
    create,
    notifying_hub,
    read,
    subscription,
    wait_for_status,
)
from tests.support.waiting import eventually

# One hub per backend for the module: keep the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_console")

SCRIPT_PATH = "/hook/<script>window.pwned=1</script>"
REASON = '<img src="x" onerror="window.pwned=2">'


@pytest.fixture(scope="module")
def hub(
    tmp_path_factory: pytest.TempPathFactory,
    module_database_url: str,
    app_keys: dict[str, AppKeys],
    local_ca: LocalCA,
) -> Iterator[HubServer]:
    directory = tmp_path_factory.mktemp("console")
    with notifying_hub(directory, module_database_url, app_keys, local_ca) as server:
        yield server


@pytest.fixture
async def page(hub: HubServer) -> AsyncIterator[Page]:
    async with headless_browser() as browser:
        tab = await browser.new_page()
        await tab.goto(f"{hub.url}/test/console/")
        yield tab


async def _load(page: Page, token: str) -> None:
    """Paste `token` and load; returns once the page says how it went."""
    await page.fill("#token", token)
    await page.click("#load")
    # `expect` polls from Playwright's own isolated world: the page's policy forbids eval.
    await expect(page.locator("#message")).to_have_text(
        re.compile(r"^(Loaded|Cannot load|This token)"), timeout=15_000
    )


def _cell(row: str, name: str) -> str:
    return f"{row} td.{name}"


async def test_the_console_shows_a_failing_subscription_as_text_and_resends_it(
    hub: HubServer, page: Page, https_receiver: HttpsReceiver
) -> None:
    # Three failures make the Subscription `error`; the third asks for an hour.
    https_receiver.queue(Reply(503), Reply(503), Reply(503, headers=[("Retry-After", "3600")]))
    endpoint = https_receiver.url(SCRIPT_PATH)
    async with hub.client("xis") as xis:
        made = await xis.post(
            "/Subscription", json=subscription("Patient", endpoint, reason=REASON)
        )
        assert made.status_code == 201, made.text
        subscription_id = made.json()["id"]
        await create(xis, {"resourceType": "Patient"}, trace="console")
        failed = await wait_for_status(xis, subscription_id, "error")
    assert "<script>" in failed["error"]

    await _load(page, hub.token("xis"))
    row = f'tr[data-subscription="{subscription_id}"]'
    assert await page.text_content(f"{row} .status") == "error"
    # Markup in the data is shown as the text it is, and none of it ran.
    assert await page.text_content(_cell(row, "error-text")) == failed["error"]
    assert endpoint in (await page.text_content(f"{row} td:nth-child(3)") or "")
    assert REASON in (await page.text_content(_cell(row, "subscription")) or "")
    assert await page.evaluate("window.pwned") is None
    assert await page.evaluate("document.querySelectorAll('script').length") == 1
    assert await page.evaluate("document.querySelectorAll('img').length") == 0
    assert await page.text_content(_cell(row, "pending")) == "1"
    last = await page.text_content(_cell(row, "last-attempt")) or ""
    assert last.startswith("failure") and "HTTP 503" in last
    assert re.match(r"in \d+ (min|h)", await page.text_content(_cell(row, "next-attempt")) or "")
    assert await page.text_content("#pending-total") == "1"
    assert re.fullmatch(r"\d+:[0-9a-f]{64}", await page.text_content("#chain-head") or "")

    # The attempts: three failed transmits, with their endpoint and trace id.
    await page.click(f"{row} button.events")
    attempts = f'tr[data-events="{subscription_id}"] tbody tr'
    await page.wait_for_selector(attempts, timeout=10_000)
    cells = await page.eval_on_selector_all(
        attempts, "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert [c[1] for c in cells] == ["failure"] * 3
    assert {c[2] for c in cells} == {endpoint}
    assert {c[3] for c in cells} == {"console"}

    # The receiver is back (it answers 200 now): Resend, through the page.
    await page.click(f"{row} button.resend")
    await expect(page.locator("#message")).to_contain_text(
        "1 pending notification(s) made due now", timeout=10_000
    )
    await https_receiver.wait_for_async(4, timeout=10)

    async def recovered() -> bool:
        await page.click("#refresh")
        await expect(page.locator("#message")).to_have_text(re.compile("^Loaded"))
        status = await page.text_content(f"{row} .status")
        pending = await page.text_content(_cell(row, "pending"))
        return status == "active" and pending == "0"

    await eventually(recovered, timeout=15, what="the console to show the delivery")
    last = await page.text_content(_cell(row, "last-attempt")) or ""
    assert last.startswith("success")
    assert correlation_ids(https_receiver.requests) == ["console-w"] * 4
    async with hub.client("xis") as xis:
        assert (await read(xis, f"/Subscription/{subscription_id}"))["status"] == "active"


async def test_the_console_says_what_a_token_may_not_do(hub: HubServer, page: Page) -> None:
    await _load(page, "not-a-token")
    assert (await page.text_content("#message") or "").startswith("Cannot load: 401")
    # The auditor may read no Subscriptions at all.
    await _load(page, hub.token("auditor"))
    assert (await page.text_content("#message") or "").startswith("Cannot load: 403")
    # The module may read its own Subscriptions, but not the audit chain.
    await _load(page, hub.token("module"))
    assert await page.text_content("#chain-head") == "not readable with this token"


async def test_the_console_files_are_served_with_a_strict_policy(hub: HubServer) -> None:
    async with httpx.AsyncClient(base_url=hub.url) as client:
        page = await client.get("/test/console/")
        script = await client.get("/test/console/console.js")
        bare = await client.get("/test/console")
        unknown = await client.get("/nosuch/console/")
        missing = await client.get("/test/console/nothing.js")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    # Everything shown is set as text: no markup is ever parsed from a string.
    assert not re.search(r"\.(inner|outer)HTML\b|insertAdjacentHTML|document\.write", script.text)
    assert bare.status_code in (307, 308)
    assert bare.headers["location"].endswith("/test/console/")
    assert unknown.status_code == 404
    assert missing.status_code == 404
