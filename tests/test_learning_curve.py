"""benchmarks/learning_curve.py in its seconds-long --fast mode, so the learning-curve script cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "learning_curve.py"


def _curve(root: Path, out: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), "--fast", "--root", str(root), "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def fast_curve(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("curve")
    root, out = base / "root", base / "out" / "curve.json"
    done = _curve(root, out)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return root, out


def test_fast_curve_writes_every_cell_with_its_figures_and_compute(fast_curve: tuple[Path, Path]) -> None:
    root, out = fast_curve
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["synthetic"] is True and doc["cells_done"] == doc["cells_planned"] == 1
    cell = doc["cells"][0]
    assert cell["complete"] and set(cell["steps"]) == {"synth", "ingest", "preprocess", "cv", "evaluate"}
    assert all(step["wall_s"] > 0 and step["cpu_s"] > 0 for step in cell["steps"].values())
    result = cell["result"]
    predictions = root / f"n{cell['size']}_s{cell['seed']}" / "work" / "runs" / "curve" / "predictions.csv"
    assert result["n_evaluated"] == len(predictions.read_text(encoding="utf-8").splitlines()) - 1
    assert 0.0 <= result["auc"] <= 1.0 and 0.5 <= result["oracle_same_subjects"] <= 1.0
    assert result["gap"] == pytest.approx(result["oracle_same_subjects"] - result["auc"])
    assert sum(fold["n"] for fold in result["folds"]) == result["n_evaluated"]
    size = doc["sizes"][0]
    assert size["seeds_done"] == [cell["seed"]] and size["gap_mean"] == pytest.approx(result["gap"])
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "<svg" in out.with_suffix(".svg").read_text(encoding="utf-8")[:2000]


def test_a_killed_curve_reruns_only_the_steps_it_had_not_finished(fast_curve: tuple[Path, Path]) -> None:
    root, out = fast_curve
    cell_dir = next(root.iterdir())
    record_path = cell_dir / "cell.json"
    record = json.loads(record_path.read_text(encoding="utf-8"))
    before = record["result"]["auc"]
    del record["steps"]["evaluate"], record["result"]  # as if killed during evaluate
    record_path.write_text(json.dumps(record), encoding="utf-8")

    done = _curve(root, out)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert " evaluate" in done.stdout and " synth" not in done.stdout and " cv" not in done.stdout
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["cells_done"] == 1 and doc["cells"][0]["result"]["auc"] == pytest.approx(before)
    log = (cell_dir / "log.txt").read_text(encoding="utf-8")
    assert log.count(" synth --out ") == 1 and log.count(" evaluate ") == 2


def test_the_published_summary_is_the_curve_evaluate_reads(fast_curve: tuple[Path, Path]) -> None:
    """What --publish writes into the package is the curve's per-size figures, read back by evaluate."""
    import importlib.util

    from kneepain.evaluate.cohort_size import cohort_size_reference

    _, out = fast_curve
    spec = importlib.util.spec_from_file_location("learning_curve", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    doc = json.loads(out.read_text(encoding="utf-8"))
    summary = module.published_summary(doc)
    assert summary["synthetic"] is True and summary["cells_done"] == doc["cells_done"]
    (size,) = summary["sizes"]
    assert size["size"] == doc["sizes"][0]["size"]
    assert size["auc_mean"] == pytest.approx(doc["sizes"][0]["auc_mean"], abs=1e-4)
    assert size["n_evaluated_mean"] == pytest.approx(doc["cells"][0]["result"]["n_evaluated"])
    reference = cohort_size_reference(summary, size["n_evaluated_mean"], 0.7)
    assert reference["cohort_size"] == size["size"] and reference["run_auc"] == 0.7
