"""`kneepain report`: one self-contained HTML file, sections optional, synthetic data said plainly."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kneepain.cam.stage import run_cam_stage
from kneepain.cli import app
from kneepain.evaluate.stage import EvaluateOptions, evaluate_run
from kneepain.ingest.table1 import table1
from kneepain.report.html import build_report
from test_cam import load_test_bundle, write_masks
from test_cam import make_run as make_cam_run
from test_evaluate_stage import write_cohort, write_run


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


ARCHITECTURE = {
    "branch": "kneenet",
    "combine": "relu_diff",
    "head": "shared",
    "input_size": 224,
    "width": 0.25,
}
RUN_INFO = {
    "kind": "cv",
    "folds": 3,
    "architecture": ARCHITECTURE,
    "training": {"optimizer": "adam", "epochs": 12},
}
REPR = re.compile(r"\{'|<kneepain\.|array\(| object at 0x|np\.float")  # Python reprs a reader must never see


def write_cam_folder(tmp_path: Path, run: Path) -> None:
    """RUN/cam as the real cam stage writes it (four participants, stand-in bundles, truth masks)."""
    cam_run = make_cam_run(tmp_path / "cam-source")
    run_cam_stage(cam_run, cache_masks=write_masks(tmp_path / "masks"), loader=load_test_bundle)
    shutil.copytree(cam_run / "cam", run / "cam")


def write_qc(work: Path) -> None:
    """preprocess/qc.csv in the stage's shape: automatic and manual decisions of four knees."""
    rows = [
        ("9000100", "left", False, "motion: ghosting along the phase direction (score 0.21 > 0.08)", "pass"),
        ("9000101", "right", False, "blank_slices: 3 of 37 slices blank", "fail"),
        ("9000102", "left", True, "", ""),
        ("9000103", "right", False, "motion: ghosting along the phase direction (score 0.33 > 0.08)", ""),
    ]
    frame = pd.DataFrame(rows, columns=["subject_id", "side", "auto_pass", "auto_reason", "manual"])
    frame["qc_pass"] = np.where(frame["manual"] == "", frame["auto_pass"], frame["manual"] == "pass")
    manual_reason = "manual fail: " + frame["auto_reason"]
    frame["qc_reason"] = np.where(
        frame["qc_pass"], "", np.where(frame["manual"] == "fail", manual_reason, frame["auto_reason"])
    )
    (work / "preprocess").mkdir(exist_ok=True)
    frame.to_csv(work / "preprocess" / "qc.csv", index=False)


def write_qc_audit(work: Path) -> None:
    """preprocess/qc_audit.csv made by the audit from a planted exclusion: the final decision drops
    the painful knee of 12 of 40 participants and no other knee."""
    from kneepain.preprocess.qc_audit import audit_qc

    ids = [f"95{i:05d}" for i in range(40)]
    cohort = pd.DataFrame({"subject_id": ids, "label": [i % 2 for i in range(40)], "model_a": True})
    painful = ["right" if i % 2 else "left" for i in range(40)]
    rows = [
        {"subject_id": s, "side": side, "auto_pass": True, "qc_pass": not (side == p and n < 12)}
        for n, (s, p) in enumerate(zip(ids, painful, strict=True))
        for side in ("left", "right")
    ]
    audit_qc(pd.DataFrame(rows), cohort).to_csv(work / "preprocess" / "qc_audit.csv", index=False)


def full_run(tmp_path: Path, **info: object) -> Path:
    """A cross-validation run with every stage's output: evaluation, funnel, Table 1, QC, CAMs."""
    work = tmp_path / "work"
    cohort = write_cohort(work)
    run = write_run(work, "kneenet", cohort, **{**RUN_INFO, **info})
    evaluate_run(run, EvaluateOptions(n_bootstrap=100, seed=1))
    pd.DataFrame({"step": ["enrolled", "both knees imaged", "Model A"], "n": [80, 70, 60]}).to_csv(
        work / "ingest" / "funnel.csv", index=False
    )
    table1(cohort).to_csv(work / "ingest" / "table1.csv", index=False)
    write_qc(work)
    write_qc_audit(work)
    write_cam_folder(tmp_path, run)
    return run


def section_html(html: str, key: str) -> str:
    """The HTML of one report section."""
    start = html.index(f'<section id="{key}">')
    end = html.find("<section", start + 1)
    return html[start : end if end > 0 else len(html)]


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
    cases = {f"case-{sid}" for sid in ("9000001", "9000002", "9000003", "9000004")}
    assert {"roc-image", "calibration-image", *cases} <= set(links.images)
    assert 'id="synthetic-notice"' in html and "not clinical results" in html
    assert "not run" not in html  # every input exists
    assert not REPR.search(html), REPR.search(html)
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert f"{metrics['auc']:.3f}" in html
    expected = [
        "both knees imaged",
        "Percent female",
        "p, paper&#39;s method",
        "Per fold of the cross-validation",
    ]
    expected += ["manual fail", "kneenet network (width x0.25", "scikit-learn"]
    expected += ["Difference in KL grade between two knees = 0", "No comparison was requested"]
    expected += ["28 x 28", "100.0%", "Correct predictions", "Wrong predictions", "bone marrow lesion"]
    for text in expected:
        assert text in html, text
    cam = section_html(html, "cam")
    assert cam.index("Does the hot spot fall") < cam.index("Correct predictions")  # caption before its table
    assert "Participant 9000003, fold 0: painful knee right, predicted left" in cam


def test_p_values_and_headers_read_as_a_reader_expects(tmp_path: Path) -> None:
    run = full_run(tmp_path, synthetic=True)
    table = pd.read_csv(run.parent.parent / "ingest" / "table1.csv")
    table.loc[1, "p_value"] = 0.00001
    table.to_csv(run.parent.parent / "ingest" / "table1.csv", index=False)
    build_report(run)
    html = (run / "report.html").read_text()
    table1_html = section_html(html, "table1")
    assert "&lt;0.001" in table1_html
    assert not re.search(r"\d\.\d{4,}", table1_html)  # no p-value to six decimals
    assert "<th>p_value" not in html and "<th>right_pain<" not in html  # no snake_case header
    cam = section_html(html, "cam")
    assert "can end in .5" in cam  # half counts of the fixed point explained beside the table


def test_qc_section_lists_only_the_manual_decisions_that_differ(tmp_path: Path) -> None:
    run = full_run(tmp_path, synthetic=True)
    build_report(run)
    qc = section_html((run / "report.html").read_text(), "qc")
    assert "1 of 4 knees passed" not in qc and "2 of 4 knees passed quality control" in qc
    assert "Manual decisions that changed the automatic one" in qc
    assert "9000100" in qc  # automatic fail, manual pass: listed
    assert "9000101" not in qc  # manual fail confirms the automatic fail: not listed
    assert "<td>motion</td>" in qc and "<td>2</td>" not in qc  # one motion failure left after the override
    assert qc.count("auto_reason") == 0


def test_cross_validation_run_reports_split_balance_per_fold(tmp_path: Path) -> None:
    work = tmp_path / "work"
    cohort = write_cohort(work)
    run = write_run(work, "cv", cohort, **RUN_INFO)
    predictions = pd.read_csv(run / "predictions.csv", dtype={"subject_id": str})
    held = [sorted(predictions.loc[predictions["fold"] != k, "subject_id"])[:4] for k in range(3)]
    folds = [sorted(predictions.loc[predictions["fold"] == k, "subject_id"]) for k in range(3)]
    (run / "folds.json").write_text(json.dumps({"seed": 0, "n_folds": 3, "folds": folds, "validation": held}))
    evaluate_run(run, EvaluateOptions(n_bootstrap=50, seed=1))
    balance = pd.read_csv(run / "evaluation" / "fold_balance.csv").set_index(["fold", "part"])
    members = cohort[cohort["model_a"]].set_index("subject_id")
    for k in range(3):
        test = members.loc[folds[k]]
        assert balance.loc[(k, "test"), "n"] == len(test)
        assert balance.loc[(k, "validation"), "n"] == 4
        assert balance.loc[(k, "train"), "n"] == len(members) - len(test) - 4
        assert balance.loc[(k, "test"), "right_painful_pct"] == pytest.approx(100 * test["label"].mean())
        assert balance.loc[(k, "test"), "women_pct"] == pytest.approx(100 * (test["sex"] == "female").mean())
        assert balance.loc[(k, "test"), "age_mean"] == pytest.approx(test["age"].mean())
    build_report(run)
    split = section_html((run / "report.html").read_text(), "split-balance")
    assert "not run" not in split and "Per fold of the cross-validation" in split
    assert "<th>BMI, kg/m²</th>" in split


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


def test_malformed_run_json_is_named_not_a_traceback(tmp_path: Path) -> None:
    run = full_run(tmp_path, synthetic=True)
    (run / "run.json").write_text("{not json")
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)  # a clean exit, not a traceback
    assert "run.json" in result.output


def test_cam_folder_without_a_gallery_shows_both_knees_of_each_case(tmp_path: Path) -> None:
    run = full_run(tmp_path, synthetic=True)
    (run / "cam" / "gallery.csv").unlink()  # a cam folder written before the gallery existed
    build_report(run)
    links = Links()
    links.feed((run / "report.html").read_text())
    overlays = [image for image in links.images if image.startswith("cam-")]
    assert overlays == [f"cam-{i}" for i in range(8)]  # four cases, left and right knee each
    cam = section_html((run / "report.html").read_text(), "cam")
    assert "Participant 9000001, painful knee right, predicted right: left knee." in cam
    assert "Participant 9000001, painful knee right, predicted right: right knee." in cam
    assert 'data-plot-width-fraction="0.894"' in cam


def test_split_run_shows_its_own_balance_table_with_p_values_as_a_reader_expects(tmp_path: Path) -> None:
    work = tmp_path / "work"
    run = write_run(work, "split", write_cohort(work), kind="split")
    rows = [
        ("n", "42", "9", "9", None, ""),
        ("Age (years)", "61.1 ± 9.0", "60.2 ± 8.1", "62.0 ± 7.7", 0.000012, "ANOVA"),
    ]
    columns = ["parameter", "train", "validation", "test", "p_value", "method"]
    pd.DataFrame(rows, columns=columns).to_csv(run / "split_balance.csv", index=False)
    build_report(run)
    split = section_html((run / "report.html").read_text(), "split-balance")
    assert "70/15/15 split" in split and "<th>Validation</th>" in split
    assert "<td>&lt;0.001</td>" in split and "1.2e-05" not in split


def test_qc_section_shows_the_audit_against_the_pain_label(tmp_path: Path) -> None:
    run = full_run(tmp_path, synthetic=True)
    build_report(run)
    qc = section_html((run / "report.html").read_text(), "qc")
    assert "Warning: exclusions by final decision depend on the pain label" in qc
    assert "<td>12/40</td>" in qc and "<td>0/40</td>" in qc and "<td>yes</td>" in qc and "<td>∞</td>" in qc
    assert "Model A participants: by painful side" in qc
    (tmp_path / "work" / "preprocess" / "qc_audit.csv").unlink()
    build_report(run)
    assert "qc_audit.csv not found" in section_html((run / "report.html").read_text(), "qc")


def test_qc_section_states_the_template_frame_and_its_fallback(tmp_path: Path) -> None:
    run = full_run(tmp_path, synthetic=True)
    template_json = tmp_path / "work" / "preprocess" / "template.json"
    fallback = {
        "status": "fallback: group mean frame kept",
        "reason": "tibial plateau not a line (tilt 3 deg)",
    }
    template_json.write_text(json.dumps({"anatomical_frame": fallback}))
    build_report(run)
    qc = section_html((run / "report.html").read_text(), "qc")
    assert "landmarks were not found (tibial plateau not a line (tilt 3 deg))" in qc
    assert "keeps the group" in qc and "mean frame (preprocess/template.json)" in qc
    found = {"status": "found", "plateau_angle_deg": 1.25, "eminence_mm": 0.4}
    template_json.write_text(json.dumps({"anatomical_frame": found}))
    build_report(run)
    qc = section_html((run / "report.html").read_text(), "qc")
    assert "Registration frame: anatomical" in qc and "not found" not in qc


def test_cam_verdict_says_beyond_chance_only_when_the_paired_test_says_so() -> None:
    from kneepain.report.html import _verdict

    summary = {
        "pointing_hit_rate_correct_constant": 0.83,
        "pointing_hit_rate_correct": 0.24,
        "pointing_hit_rate_correct_ours": 0.77,
        "pointing_hit_rate_correct_prior": 0.87,
        "prior_vs_constant_correct": {"p_value": 0.454},
        "ours_vs_constant_correct": {"p_value": 0.238},
    }
    assert "not beyond chance: ours + prior 87.0% (p 0.454)" in _verdict(summary)
    summary["prior_vs_constant_correct"] = {"p_value": 0.0003}
    assert _verdict(summary).startswith("Beats the CAM-free fixed point (83.0%) beyond chance: ours + prior")
    summary["pointing_hit_rate_correct_prior"] = 0.5
    assert _verdict(summary).startswith("On this run no CAM rule beats the CAM-free fixed point")
