"""bf16 inference agrees with fp32: what `--precision auto` may choose must not move the results.

Issue 21: on the cohort, bf16 and fp32 give probabilities within 0.01 and a pooled AUC within
0.005. Measured here on a trained cross-validation run's own bundles (every fold's test part),
through the bundle's input specification, as cam and predict run them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from kneepain.contracts import WorkPaths, open_cache, training_table
from kneepain.hardware import autocast_for
from kneepain.model import Bundle
from kneepain.train import run_cv
from workfolder import make_work


def _probabilities(bundle: Bundle, block: np.ndarray, precision: str) -> np.ndarray:
    x = bundle.input.tensor(block)
    with torch.inference_mode(), autocast_for(precision, torch.device("cpu")):
        logits = bundle.model.eval()(x)
    return torch.softmax(logits.float(), dim=1)[:, 1].numpy()


def test_bf16_and_fp32_give_the_same_probabilities_and_auc(tmp_path: Path) -> None:
    work = make_work(tmp_path / "work", n=60, size=32, flip=0.1)
    run = run_cv(work, "agree", folds=2, config="tiny", show_progress=False)
    table = training_table(work, "A")
    cache = open_cache(WorkPaths(work).cache_array)
    predictions = pd.read_csv(run / "predictions.csv", dtype={"subject_id": str}).merge(
        table[["subject_id", "row"]], on="subject_id"
    )
    fp32, bf16, labels = [], [], []
    for fold, rows in predictions.groupby("fold"):
        bundle = Bundle.load(run / f"fold_{int(fold):02d}" / "bundle")
        block = np.asarray(cache[rows["row"].to_numpy()])
        fp32.append(_probabilities(bundle, block, "fp32"))
        bf16.append(_probabilities(bundle, block, "bf16"))
        labels.append(rows["label"].to_numpy())
    p32, p16, y = np.concatenate(fp32), np.concatenate(bf16), np.concatenate(labels)
    assert p32.std() > 0.05, "the network must have learnt something for the comparison to mean anything"
    assert 0 < np.abs(p32 - p16).max() < 0.01  # > 0: bf16 really ran
    assert abs(roc_auc_score(y, p32) - roc_auc_score(y, p16)) < 0.005
