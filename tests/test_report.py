"""`kneepain report`: one self-contained HTML file, sections optional, synthetic data said plainly."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kneepain.cli import app
from kneepain.evaluate.stage import EvaluateOptions, evaluate_run
from test_evaluate_stage import write_cohort, write_run

if TYPE_CHECKING:
    from playwright.sync_api import Browser


class Links(HTMLParser):
    """Every URL-carrying attribute of a page, and the ids of its images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data", "action") and value is not None:
                self.urls.append(value)
        if tag == "img":
            self.images.append(dict(attrs).get("id") or "")


def full_run(tmp_path: Path, **info: object) -> Path:
    """A run with every stage's output: evaluation, funnel, Table 1, split balance, QC, CAM overlays."""
    work = tmp_path / "work"
    cohort = write_cohort(work)
    run = write_run(work, "kneenet", cohort, config={"architecture": "kneenet", "epochs": 3}, **info)
    evaluate_run(run, EvaluateOptions(n_bootstrap=100, seed=1))
    pd.DataFrame({"step": ["enrolled", "both knees imaged", "Model A"], "n": [80, 70, 60]}).to_csv(
        work / "ingest" / "funnel.csv", index=False
    )
    pd.DataFrame(
        {"characteristic": ["age, years", "female, n (%)"], "value": ["61.2 (8.9)", "31 (52%)"]}
    ).to_csv(work / "ingest" / "table1.csv", index=False)
    pd.DataFrame({"fold": [0, 1, 2], "n": [20, 20, 20], "right_painful": [9, 10, 11]}).to_csv(
        run / "split_balance.csv", index=False
    )
    (work / "preprocess").mkdir()
    pd.DataFrame(
        {"subject_id": ["9000100", "9000101"], "side": ["left", "right"], "qc_reason": ["", "blank slices"]}
    ).to_csv(work / "preprocess" / "qc.csv", index=False)
    (run / "cam" / "overlays").mkdir(parents=True)
    rows = cohort.head(3)
    for subject, label in zip(rows["subject_id"], rows["label"], strict=True):
        image = np.zeros((64, 64, 3), np.uint8)
        image[16:48, 16:48] = (0, 0, 255)
        cv2.imwrite(str(run / "cam" / "overlays" / f"{subject}_{'right' if label else 'left'}.png"), image)
    pd.DataFrame(
        {
            "subject_id": rows["subject_id"],
            "label": rows["label"],
            "prob_right": [0.8, 0.3, 0.6],
            "painful_side": np.where(rows["label"] == 1, "right", "left"),
        }
    ).to_csv(run / "cam" / "index.csv", index=False)
    localization = {
        "backbone": "kneenet",
        "map_size": [28, 28],
        "area_above_half_pct_mean": 6.04,
        "area_above_half_pct_sd": 2.41,
        "pointing_hit_rate_correct": 0.8125,
        "pointing_n_correct": 16,
        "pointing_hit_rate_all": None,
        "localization_skipped": "",
    }
    (run / "cam" / "localization.json").write_text(json.dumps(localization))
    return run


def test_report_is_self_contained_and_shows_every_section(tmp_path: Path) -> None:
    run = full_run(tmp_path, synthetic=True)
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    html = (run / "report.html").read_text()
    links = Links()
    links.feed(html)
    external = [u for u in links.urls if not (u.startswith("data:") or u.startswith("#"))]
    assert external == []
    assert "url(" not in html and "@import" not in html
    assert {"roc-image", "calibration-image", "cam-0", "cam-1", "cam-2"} <= set(links.images)
    assert 'id="synthetic-notice"' in html and "not clinical results" in html
    assert "not run" not in html  # every input exists
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert f"{metrics['auc']:.3f}" in html
    expected = ["both knees imaged", "61.2 (8.9)", "right_painful", "blank slices", "kneenet", "scikit-learn"]
    expected += ["Difference in KL grade between two knees = 0", "No comparison was requested"]
    expected += ["28 x 28", "6.0", "81.2%", "pointing game, correctly predicted subjects"]
    for text in expected:
        assert text in html, text


def test_missing_stages_are_named_not_fatal(tmp_path: Path) -> None:
    work = tmp_path / "work"
    run = write_run(work, "bare", write_cohort(work))
    out = tmp_path / "elsewhere" / "bare.html"
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    for stage in ["evaluate was not run", "cam was not run", "preprocess was not run", "ingest was not run"]:
        assert stage in html
    assert 'id="synthetic-notice"' not in html and 'id="data-notice"' in html


@pytest.mark.parametrize("recorded_in", ["run.json", "series.csv"])
def test_truth_folder_beside_recorded_images_marks_the_data_synthetic(
    tmp_path: Path, recorded_in: str
) -> None:
    cohort_dir = tmp_path / "cohort"
    series = cohort_dir / "images" / "00m" / "0.C.2" / "9000100" / "20040101" / "10000001"
    series.mkdir(parents=True)
    (cohort_dir / "truth").mkdir()
    work = tmp_path / "work"
    config = {"images": str(cohort_dir / "images")} if recorded_in == "run.json" else {}
    run = write_run(work, "plain", write_cohort(work), config=config)
    if recorded_in == "series.csv":
        pd.DataFrame({"subject_id": ["9000100"], "side": ["right"], "path": [str(series)]}).to_csv(
            work / "ingest" / "series.csv", index=False
        )
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    html = (run / "report.html").read_text()
    assert 'id="synthetic-notice"' in html and str(cohort_dir / "truth") in html


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tmp_path: Path, chromium: Browser) -> None:
    run = full_run(tmp_path, synthetic=True)
    CliRunner().invoke(app, ["report", str(run)])
    screenshot = tmp_path / "report.png"
    page = chromium.new_page(viewport={"width": 1200, "height": 900})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto((run / "report.html").resolve().as_uri())
    page.wait_for_load_state("load")
    assert page.evaluate("document.getElementById('roc-image').naturalWidth") > 0
    assert page.evaluate("document.getElementById('cam-0').naturalWidth") == 64
    assert page.locator("#synthetic-notice").is_visible()
    assert "SYNTHETIC DATA" in page.locator("#synthetic-notice").inner_text()
    page.screenshot(path=str(screenshot), full_page=True)
    assert [r for r in requests if not r.startswith(("file:", "data:"))] == []
    assert screenshot.stat().st_size > 10_000


def test_malformed_run_json_is_named_not_a_traceback(tmp_path: Path) -> None:
    run = full_run(tmp_path, synthetic=True)
    (run / "run.json").write_text("{not json")
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)  # a clean exit, not a traceback
    assert "run.json" in result.output
