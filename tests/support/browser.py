"""A real headless browser for the tests of pages: Debian's Chromium driven by Playwright.

`make test` installs Chromium (`make browser`); HUB_TEST_CHROMIUM names another binary.
Playwright's own browser downloads are not used: the machine's Chromium is enough, and
nothing is fetched at test time.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from playwright.async_api import Browser, async_playwright


def chromium_path() -> str:
    """The Chromium binary to drive; a clear error when there is none."""
    configured = os.environ.get("HUB_TEST_CHROMIUM")
    found = configured or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise RuntimeError("No Chromium found: run `make browser` or set HUB_TEST_CHROMIUM")
    return found


@asynccontextmanager
async def headless_browser(*arguments: str) -> AsyncIterator[Browser]:
    """A fresh headless Chromium, closed on exit; `arguments` go to its command line."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=list(arguments)
        )
        try:
            yield browser
        finally:
            await browser.close()
