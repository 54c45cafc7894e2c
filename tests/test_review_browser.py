"""End to end in a real browser: Debian's Chromium driven by Playwright against `kneepain review serve`.

The reviewer opens a case, records a lesion and a note with the keyboard, reloads and finds them
saved; the SQLite file is read directly, and it still holds the review after the server is killed.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from test_review_app import make_review_run

if TYPE_CHECKING:
    from playwright.sync_api import Browser

SCREENSHOTS = os.environ.get("KNEEPAIN_SCREENSHOTS")  # set to a folder to keep the screenshots

pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(run: Path, db: Path, port: int) -> subprocess.Popen[bytes]:
    """`python -m kneepain review serve` on 127.0.0.1; returns once it answers."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kneepain",
            "review",
            "serve",
            str(run),
            "--db",
            str(db),
            "--port",
            str(port),
            "--reviewer",
            "alice",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"server exited: {server.stdout.read().decode() if server.stdout else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise AssertionError("server did not answer within 60 s")


def test_reviewer_records_a_lesion_with_the_keyboard_and_finds_it_after_reload(
    tmp_path: Path, chromium: Browser
) -> None:
    from playwright.sync_api import expect

    run = make_review_run(tmp_path)
    db = tmp_path / "review.sqlite"
    port = free_port()
    server = start_server(run, db, port)
    shots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    try:
        page = chromium.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/cases/9100002")
        expect(page.locator("#status")).to_contain_text("Not yet reviewed by alice")
        expect(page.locator("#prediction")).to_have_text("")  # blinded by default
        painful_cam = page.locator("#knee-painful img.cam")
        expect(painful_cam).to_have_attribute("src", "/cases/9100002/slices/left/9/cam.png")
        page.wait_for_function("document.querySelector('#knee-painful img.cam').naturalWidth === 224")

        page.keyboard.press("2")  # bone marrow lesion
        expect(page.locator("body")).to_have_attribute("data-version", "1")
        page.keyboard.press("ArrowRight")
        expect(painful_cam).to_have_attribute("src", "/cases/9100002/slices/left/10/cam.png")
        page.keyboard.press("]")
        expect(painful_cam).to_have_css("opacity", "0.55")
        page.locator("#note").click()
        page.keyboard.type("BML under the hot spot")
        page.keyboard.press("Tab")  # leaving the note saves it
        expect(page.locator("body")).to_have_attribute("data-version", "2")
        page.keyboard.press("r")
        expect(page.locator("#prediction")).to_contain_text("left knee (correct)")
        page.screenshot(path=str(shots / "review_case.png"), full_page=True)

        page.reload()
        expect(page.locator("#status")).to_contain_text("Saved (version 2")
        expect(page.locator("#cat-bone_marrow_lesion")).to_be_checked()
        expect(page.locator("#cat-effusion_synovitis")).not_to_be_checked()
        expect(page.locator("#note")).to_have_value("BML under the hot spot")
        expect(page.locator("#prediction")).to_have_text("")  # blinded again after reload

        page.keyboard.press("n")
        page.wait_for_url(f"http://127.0.0.1:{port}/cases/9100003")
        page.goto(f"http://127.0.0.1:{port}/")
        expect(page.locator("table.cases")).to_contain_text("alice")
        page.screenshot(path=str(shots / "review_list.png"), full_page=True)
    finally:
        server.send_signal(signal.SIGKILL)  # a killed server must lose nothing
        server.wait(timeout=10)
    with sqlite3.connect(db) as connection:
        row = connection.execute(
            "SELECT reviewer, bone_marrow_lesion, effusion_synovitis, note, version FROM reviews "
            "WHERE case_id = ?",
            ("9100002",),
        ).fetchone()
    assert row == ("alice", 1, 0, "BML under the hot spot", 2)
