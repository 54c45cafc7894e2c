"""`kneepain bench` through the CLI: every section reported, figures positive, statuses well formed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kneepain.bench.report import OK, is_well_formed
from kneepain.bench.suite import SECTIONS
from kneepain.cli import app


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _ok_rows(section: dict) -> list[dict]:
    return [row for row in section["rows"] if row["status"] == OK]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    """One `kneepain bench --quick` run; its bench folder is kept for reuse by later tests.

    One torch thread and one worker: on a shared CI machine, spinning OpenMP threads of an
    oversubscribed process make a run many times slower without changing what is checked.
    """
    root = tmp_path_factory.mktemp("bench")
    out = root / "results.json"
    args = ["bench", "--quick", "--threads", "1", "--workers", "1", "--work-dir", str(root / "space")]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), root / "space", result.output


def test_quick_run_reports_every_section_with_well_formed_statuses(quick_run) -> None:
    report, _, output = quick_run
    assert set(report["sections"]) == set(SECTIONS)
    for name, section in report["sections"].items():
        assert is_well_formed(section["status"]), (name, section["status"])
        for row in section.get("rows", []):
            assert is_well_formed(row["status"]), (name, row)
    assert report["quick"] is True and report["synthetic"] is True
    machine = report["machine"]
    assert machine["cpu_model"] and machine["usable_cores"] >= 1 and machine["torch"]
    assert len(report["load_average"]["start"]) == 3
    assert "training" in output and "published_vs_ours" in output  # the printed tables


def test_quick_run_figures_are_positive(quick_run) -> None:
    report = quick_run[0]
    assert report["machine"]["torch_threads"] == 1
    sections = report["sections"]
    for name in ("preprocessing", "headers", "training", "published_vs_ours"):
        assert sections[name]["status"] == OK, (name, sections[name]["status"])

    (prep,) = sections["preprocessing"]["rows"]
    assert prep["knees"] == 2 * prep["subjects"] > 0
    assert _positive(prep["knees_per_s"]) and _positive(prep["peak_rss_main_mb"])
    assert prep["peak_rss_total_mb"] >= prep["peak_rss_main_mb"]

    headers = _ok_rows(sections["headers"])
    assert any(r["name"].startswith("scan_series") for r in headers)
    assert all(r["headers"] > 0 and _positive(r["headers_per_s"]) for r in headers)

    training = sections["training"]
    assert _positive(training["flops_per_step"]) and _positive(training["peak_flops"]["fp32"])
    by_name = {row["name"]: row for row in training["rows"]}
    assert by_name["fp32"]["vs_fp32"] == pytest.approx(1.0)
    for row in _ok_rows(training):
        assert _positive(row["images_per_s"]) and _positive(row["share_of_peak"])
        assert row["achieved_flops"] == pytest.approx(training["flops_per_step"] / row["step_s"])
        assert 0 <= row["data_wait_share"] < 1
    assert by_name["fp32 + channels_last + compile"]["status"].startswith("skipped: ")

    comparison = sections["published_vs_ours"]
    assert comparison["subjects"] >= 1 and comparison["epochs"] == 1
    names = [row["name"] for row in comparison["rows"]]
    assert names == ["published style", "ours, paper mode", "ours, joint"]
    for row in _ok_rows(comparison):
        assert _positive(row["seconds"]) and _positive(row["speedup_vs_published"])


def test_predict_section_measures_or_says_why_not(quick_run) -> None:
    section = quick_run[0]["sections"]["predict"]
    if section["status"].startswith("unavailable: "):
        assert "kneepain.predict" in section["status"]
        return
    assert section["status"] == OK
    assert [row["name"] for row in section["rows"]] == ["fp32", "bf16"]
    for row in _ok_rows(section):
        assert _positive(row["first_s"]) and _positive(row["median_s"])


def test_a_reused_folder_is_not_regenerated_and_unchosen_sections_are_skipped(quick_run, tmp_path) -> None:
    _, space, _ = quick_run
    series_table = space / "work" / "ingest" / "series.csv"
    before = series_table.stat().st_mtime_ns
    out = tmp_path / "headers.json"
    args = ["bench", "--quick", "--sections", "headers", "--work-dir", str(space), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    sections = json.loads(out.read_text())["sections"]
    assert sections["headers"]["status"] == OK
    assert all(sections[s]["status"] == "skipped: not in --sections" for s in SECTIONS if s != "headers")
    assert series_table.stat().st_mtime_ns == before


def test_a_broken_section_is_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    space = tmp_path / "space"
    (space / "cohort" / "images").mkdir(parents=True)
    (space / "work" / "ingest").mkdir(parents=True)
    (space / "work" / "ingest" / "series.csv").write_text("subject_id,side\n9000099,left\n")
    (space / "work" / "ingest" / "cohort.csv").write_text("subject_id\n9000099\n")
    out = tmp_path / "broken.json"
    args = ["bench", "--quick", "--sections", "headers", "--work-dir", str(space), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    status = json.loads(out.read_text())["sections"]["headers"]["status"]
    assert status.startswith("failed: BenchInputError") and "series.csv" in status and "path" in status


def test_an_unknown_section_is_refused_and_an_earlier_report_kept(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    out.write_text('{"earlier": true}')
    result = CliRunner().invoke(app, ["bench", "--sections", "training,warp_drive", "--out", str(out)])
    assert result.exit_code != 0
    assert "warp_drive" in result.output
    assert json.loads(out.read_text()) == {"earlier": True}


def test_the_comparison_runs_at_the_size_and_precision_asked_for(quick_run, tmp_path) -> None:
    """`--comparison-preset FILE.toml` and `--comparison-precision` reach published_vs_ours
    (the paper size is this with `paper`; a 16-px SGD network keeps the test in seconds)."""
    _, space, _ = quick_run
    toml = tmp_path / "sgd16.toml"
    toml.write_text(
        '[model]\nwidth = 0.0625\ninput_size = 16\nmode = "joint"\n'
        '[optim]\noptimizer = "sgd"\nbatch_size = 4\n[runtime]\nprecision = "auto"\n'
    )
    out = tmp_path / "comparison.json"
    args = ["bench", "--quick", "--threads", "1", "--sections", "published_vs_ours", "--work-dir", str(space)]
    args += ["--comparison-preset", str(toml), "--comparison-precision", "fp32", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    section = json.loads(out.read_text())["sections"]["published_vs_ours"]
    assert section["status"] == OK
    assert section["network"] == {"preset": str(toml), "width": 0.0625, "input_size": 16}
    assert section["optimizer"] == "sgd" and section["batch_size"] == 4
    assert section["precision"]["ours"] == {"precision": "fp32", "requested": "fp32", "reason": "asked for"}
    assert [row["status"] for row in section["rows"]] == [OK, OK, OK]


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--comparison-preset", "huge", "huge"),
        ("--comparison-precision", "fp8", "fp8"),
        ("--comparison-precision", "fp16", "CUDA"),  # a precision this device cannot run
    ],
)
def test_a_bad_comparison_setting_is_refused_before_any_work(tmp_path, option, value, named) -> None:
    out = tmp_path / "results.json"
    args = ["bench", "--quick", "--device", "cpu", option, value, "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and named in result.output
    assert not out.exists()
