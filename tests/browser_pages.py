"""Test helper for the browser tests: a local document opened in Chromium at one width."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


def open_page(browser: Browser, document: Path, width: int, requests: list[str]) -> Page:
    """``document`` loaded in a new page ``width`` px wide (900 high), each request's URL appended
    to ``requests``; fails when the page scrolls sideways."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.on("request", lambda request: requests.append(request.url))
    page.goto(document.resolve().as_uri())
    page.wait_for_load_state("load")
    scroll = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll[0] <= scroll[1], f"{width} px: the page scrolls sideways ({scroll})"
    return page
