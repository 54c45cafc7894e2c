"""benchmarks/lesion_weights.py recovers the weights a known scorer gives each lesion type."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lesion_weights.py"


def test_lesion_weights_recovers_a_known_scorer(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    true_weights = np.array([3.0, 1.0, 1.0, 0.5, 0.5])
    knees, predictions = [], []
    for subject in range(200):
        diff = np.zeros(5)
        for side, sign in (("right", 1.0), ("left", -1.0)):
            present = np.flatnonzero(rng.random(5) < 0.6)
            severities = rng.uniform(0.15, 1.0, len(present))
            diff[present] += sign * severities
            lesions = ";".join(f"{code + 1}:{s:.3f}" for code, s in zip(present, severities, strict=True))
            knees.append({"subject_id": 9000000 + subject, "side": side, "lesions": lesions})
        logit = float(diff @ true_weights)
        predictions.append({"subject_id": 9000000 + subject, "prob_right": 1 / (1 + np.exp(-logit))})
    run, truth = tmp_path / "run", tmp_path / "truth"
    run.mkdir(), truth.mkdir()
    pd.DataFrame(predictions).to_csv(run / "predictions.csv", index=False)
    pd.DataFrame(knees).to_csv(truth / "knees.csv", index=False)
    command = [sys.executable, str(SCRIPT), str(run), "--truth", str(truth)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| ") and "type" not in line]
    weights = {name.strip(): float(weight) for name, weight, *_ in rows}
    assert list(weights) == ["effusion_synovitis", "bone_marrow_lesion", "hoffa_synovitis", "cartilage_loss",
                             "meniscal_damage"]  # fmt: skip
    np.testing.assert_allclose(list(weights.values()), true_weights, atol=0.02)
    assert "R^2 1.000" in done.stdout

    stranger = {"subject_id": 1, "prob_right": 0.5}
    pd.DataFrame([*predictions, stranger]).to_csv(run / "predictions.csv", index=False)
    failed = subprocess.run(command, capture_output=True, text=True)
    assert failed.returncode != 0 and "knees.csv: no knees for subjects [1]" in failed.stderr
