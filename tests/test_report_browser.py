"""The report as a reader sees it in Chromium, on a desktop (1280 px) and on a phone (420 px).

Every figure must load, fill its width with plot rather than white space, and read without any
Python repr; the page must never scroll sideways; a gallery figure must enlarge on a click.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from browser_pages import open_page
from kneepain.evaluate.stage import EvaluateOptions, evaluate_run
from kneepain.report.html import build_report
from test_evaluate_stage import write_cohort, write_run
from test_report import ARCHITECTURE, REPR, RUN_INFO, full_run

if TYPE_CHECKING:
    from playwright.sync_api import Browser

MIN_PLOT_SHARE = 0.6
READ_TEXT = "figcaption, table, .note, .table-caption, .verdict, p"


def svg_texts(path: Path) -> list[str]:
    """The text matplotlib drew in an SVG (titles, labels, legend): it writes each as a comment."""
    return re.findall(r"<!-- (.*?) -->", path.read_text(encoding="utf-8"))


@pytest.mark.browser
def test_report_reads_well_at_desktop_and_phone_width(tmp_path: Path, chromium: Browser) -> None:
    run = full_run(tmp_path, synthetic=True)
    work = run.parent.parent
    wider = {**RUN_INFO, "architecture": {**ARCHITECTURE, "width": 1.0, "combine": "concat"}}
    other = write_run(work, "wider-network-with-a-long-name", write_cohort(work), seed=2, **wider)
    evaluate_run(run, EvaluateOptions(compare=(other,), n_bootstrap=50, seed=1))
    report = build_report(run)
    legend = [t for t in svg_texts(run / "evaluation" / "roc.svg") if "AUC" in t]
    assert [t.split(":")[0] for t in legend] == [
        "kneenet (Model A)",
        "wider-network-with-a-long-name (Model A)",
    ]
    for figure in ("roc.svg", "calibration.svg"):
        drawn = svg_texts(run / "evaluation" / figure)
        assert not [t for t in drawn if REPR.search(t)], drawn
    requests: list[str] = []
    for width in (1280, 420):
        page = open_page(chromium, report, width, requests)
        page.click("#configuration summary")  # the run's settings, folded away until asked for
        wide = page.evaluate(
            "[...document.querySelectorAll('.table-wrap')].filter(w => w.scrollWidth > w.clientWidth + 1)"
            ".map(w => w.innerText.slice(0, 60))"
        )
        assert wide == [], f"{width} px: tables wider than the page: {wide}"
        images = page.evaluate(
            """[...document.images].map(img => ({id: img.id, natural: img.naturalWidth,
              loaded: img.complete && img.naturalWidth > 0,
              width: img.dataset.widthPx, share: img.dataset.plotWidthFraction}))"""
        )
        assert len(images) >= 6
        for image in images:
            assert image["loaded"], f"{width} px: {image['id']} did not load"
            assert image["share"] is not None, f"{image['id']}: no layout record"
            assert MIN_PLOT_SHARE <= float(image["share"]) <= 1.0, image  # a share, never above the whole
            assert image["natural"] == int(image["width"]), f"{image['id']}: saved figure is not its canvas"
        texts = page.locator(READ_TEXT).all_inner_texts()
        assert not [t for t in texts if REPR.search(t)]
        assert page.locator("#synthetic-notice").is_visible()
        page.screenshot(path=str(tmp_path / f"report_{width}.png"), full_page=True)
        page.click("#case-9000003")  # a wrong prediction: click to enlarge
        enlarged = page.evaluate(
            "(() => { const f = document.getElementById('fig-case-9000003'); const s = getComputedStyle(f);"
            " return [s.position, f.getBoundingClientRect().width]; })()"
        )
        assert enlarged == ["fixed", width]
        page.close()
    assert [r for r in requests if not r.startswith(("file:", "data:"))] == []
