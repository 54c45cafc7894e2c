"""Shared test settings and fixtures.

Small thread counts keep parallel work on 2 cores predictable. ``chromium`` is Debian's Chromium
(not a Playwright download) driven headless by Playwright, for the tests marked ``browser``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def chromium() -> Iterator[Browser]:
    """A headless Chromium browser, closed after the test.

    Without /usr/bin/chromium the test is skipped, except under CI (environment variable CI set),
    where a missing browser would silently drop the browser tests: there it fails.
    """
    if not CHROMIUM.exists():
        reason = f"Debian's chromium ({CHROMIUM}) is not installed: apt-get install chromium"
        if "CI" in os.environ:
            pytest.fail(f"{reason}; CI must run the browser tests", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
