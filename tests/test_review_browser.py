"""End to end in a real browser: Debian's Chromium driven by Playwright against `kneepain review serve`.

Two reviewers, each in their own browser context, sign in with their link (the address is cleaned,
the secret goes to a cookie), label cases with the keyboard, and only then may reveal the model's
prediction. Each sees only their own work; the export's kappa comes from the labels committed
before the reveal; the SQLite file still holds everything after the server is killed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from typer.testing import CliRunner

from kneepain.cli import app
from review_fixtures import free_port, make_review_run, make_study, start_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

SCREENSHOTS = os.environ.get("KNEEPAIN_SCREENSHOTS")  # set to a folder to keep the screenshots

pytestmark = pytest.mark.browser


def sign_in(browser: Browser, base: str, token: str) -> Page:
    """A fresh browser context (its own cookies) signed in through the reviewer's link."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{base}/?token={token}")
    assert page.url == f"{base}/"  # the secret left the address bar
    return page


def api_status(page: Page, path: str) -> int:
    """The status the page's own fetch gets (with the page's cookie), as a script in it would."""
    return int(page.evaluate("async (path) => (await fetch(path)).status", path))


def label(page: Page, keys: str, version: int) -> None:
    from playwright.sync_api import expect

    for key in keys:
        page.keyboard.press(key)
    expect(page.locator("body")).to_have_attribute("data-version", str(version))


def test_two_reviewers_label_blind_and_see_only_their_own_work(tmp_path: Path, chromium: Browser) -> None:
    from playwright.sync_api import expect

    run = make_review_run(tmp_path)
    db = tmp_path / "review.sqlite"
    tokens = make_study(run, db)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(run, db, port)
    shots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    try:
        alice = sign_in(chromium, base, tokens["alice"])
        expect(alice.locator(".notice")).to_contain_text("Not for clinical use")
        alice.goto(f"{base}/cases/9100002")
        expect(alice.locator("#status")).to_contain_text("Not yet labelled by you (alice)")
        expect(alice.locator(".notice")).to_contain_text("Not for clinical use")
        expect(alice.locator("#reveal")).to_be_disabled()
        assert api_status(alice, "/api/cases/9100002/prediction") == 409  # not before the label
        alice.keyboard.press("r")
        expect(alice.locator("#prediction")).to_have_text("")
        painful_cam = alice.locator("#knee-1 img.cam")
        expect(painful_cam).to_have_attribute("src", "/cases/9100002/slices/left/9/cam.png")
        alice.wait_for_function("document.querySelector('#knee-1 img.cam').naturalWidth === 224")

        label(alice, "2", 1)  # bone marrow lesion, committed blind
        expect(alice.locator("#reveal")).to_be_enabled()
        alice.keyboard.press("ArrowRight")
        expect(painful_cam).to_have_attribute("src", "/cases/9100002/slices/left/10/cam.png")
        alice.keyboard.press("]")
        expect(painful_cam).to_have_css("opacity", "0.55")
        alice.keyboard.press("r")
        expect(alice.locator("#prediction")).to_contain_text("left knee (correct)")
        alice.screenshot(path=str(shots / "review_case.png"), full_page=True)

        alice.goto(f"{base}/cases/9100003")
        label(alice, "7", 1)  # none, committed blind
        alice.keyboard.press("r")
        expect(alice.locator("#prediction")).to_contain_text("(wrong)")
        label(alice, "2", 2)  # changed after seeing the prediction: not a blind label
        # a note typed just before leaving the page is still saved (pagehide, keepalive request)
        alice.locator("#note").click()
        alice.keyboard.type("typed right before leaving")
        alice.goto(f"{base}/")
        for _ in range(25):  # the keepalive save may land just after the list was served
            if alice.evaluate("async () => (await (await fetch('/api/cases')).json())[2].version") == 3:
                break
            alice.wait_for_timeout(200)
        alice.reload()
        expect(alice.locator("table.cases")).to_contain_text("saved (v3), revealed")
        alice.screenshot(path=str(shots / "review_case_list.png"), full_page=True)

        bob = chromium.new_context(viewport={"width": 1280, "height": 900}).new_page()
        bob.goto(f"{base}/")  # the sign-in form, this time, instead of the link
        bob.locator("#token").fill(tokens["bob"][:-1] + "x")
        bob.locator("#token").press("Enter")
        expect(bob.locator("#signin-error")).to_be_visible()
        bob.locator("#token").fill(tokens["bob"])
        bob.locator("#token").press("Enter")
        expect(bob.locator("#who")).to_have_text("bob")
        assert bob.url == f"{base}/"
        expect(bob.locator("#progress")).to_contain_text("0 of 4 cases labelled by you")
        assert "alice" not in bob.content()
        bob.goto(f"{base}/cases/9100002")
        expect(bob.locator("#status")).to_contain_text("Not yet labelled by you (bob)")
        expect(bob.locator("#cat-bone_marrow_lesion")).not_to_be_checked()  # alice's label is not shown
        assert "alice" not in bob.content()
        assert api_status(bob, "/api/cases/9100002/prediction") == 409  # alice's label does not unblind bob
        assert api_status(bob, "/api/admin/reviews") == 403
        label(bob, "2", 1)
        bob.goto(f"{base}/cases/9100003")
        label(bob, "7", 1)
        bob.reload()
        expect(bob.locator("#cat-none")).to_be_checked()
        expect(bob.locator("#prediction")).to_have_text("")  # still blind: bob never revealed it
        # a note typed just before the tab is closed is saved too
        bob.locator("#note").click()
        bob.keyboard.type("typed right before closing")
        bob.close(run_before_unload=True)
        for _ in range(25):
            with sqlite3.connect(db) as connection:
                note = connection.execute(
                    "SELECT note FROM reviews WHERE case_id = '9100003' AND reviewer = 'bob'"
                ).fetchone()[0]
            if note:
                break
            time.sleep(0.2)
        assert note == "typed right before closing"
        bob = chromium.contexts[-1].new_page()
        bob.goto(f"{base}/")
        bob.locator("#signout").click()  # the next reader at this computer must sign in anew
        expect(bob.locator("#token")).to_be_visible()
        bob.goto(f"{base}/cases/9100003")
        expect(bob.locator("h1")).to_have_text("Sign in")
    finally:
        server.send_signal(signal.SIGKILL)  # a killed server must lose nothing acknowledged
        server.wait(timeout=10)
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT case_id, reviewer, bone_marrow_lesion, none, note, version FROM reviews ORDER BY 1, 2"
        ).fetchall()
    assert rows == [
        ("9100002", "alice", 1, 0, "", 1),
        ("9100002", "bob", 1, 0, "", 1),
        ("9100003", "alice", 1, 0, "typed right before leaving", 3),
        ("9100003", "bob", 0, 1, "typed right before closing", 2),
    ]
    result = CliRunner().invoke(app, ["review", "export", str(run), "--db", str(db)])
    assert result.exit_code == 0, result.output
    kappa = pd.read_csv(run / "review" / "agreement.csv").set_index("category")
    # blind labels: BML alice 1,0 and bob 1,0 -> kappa 1; alice's final labels (1,1) would give 0
    assert kappa.loc["Bone marrow lesion", "kappa"] == 1.0 and kappa.loc["Bone marrow lesion", "cases"] == 2
    blinding = pd.read_csv(run / "review" / "blinding.csv").set_index("reviewer")
    assert blinding.loc["alice", ["committed_blind", "revealed", "edited_after_reveal"]].tolist() == [2, 2, 1]
    assert blinding.loc["bob", ["committed_blind", "revealed"]].tolist() == [2, 0]
