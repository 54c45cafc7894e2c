"""Measure the preprocess stage against a synthetic cohort's truth (evaluation only).

Reads ``WORK/preprocess/{qc,registration}.csv`` and ``truth/knees.csv``; the stage itself never
reads truth. Figures (docs/preprocess.md): centre slice within +/-1, registration residual
(median mm and degrees, share of slices within 2 mm), QC sensitivity and specificity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kneepain.contracts import QC_REPORT, REGISTRATION_TABLE, WorkPaths


def measure_against_truth(work: Path, truth_dir: Path) -> dict[str, Any]:
    """Figures of the cache in ``work`` against ``truth_dir/knees.csv`` (artifact-free knees for
    centre and registration; all knees for QC)."""
    paths = WorkPaths(Path(work))
    truth = pd.read_csv(Path(truth_dir) / "knees.csv", dtype={"subject_id": str, "artifact": str})
    truth["artifact"] = truth["artifact"].fillna("")
    qc = pd.read_csv(paths.preprocess / QC_REPORT, dtype={"subject_id": str})
    knees = qc.merge(truth, on=["subject_id", "side"], suffixes=("", "_truth"))
    clean = knees[knees["artifact"] == ""]
    centre_error = (clean["centre_slice"] - clean["centre_slice_truth"]).abs()
    figures: dict[str, Any] = {
        "knees": len(knees),
        "clean_knees": len(clean),
        "centre_within_1": float((centre_error <= 1).mean()) if len(clean) else float("nan"),
        "centre_exact": float((centre_error == 0).mean()) if len(clean) else float("nan"),
    }
    artifact = knees["artifact"] != ""
    flagged = ~knees["auto_pass"].astype(bool)
    figures["qc_artifact_knees"] = int(artifact.sum())
    figures["qc_sensitivity"] = (
        float((flagged & artifact).sum() / artifact.sum()) if artifact.any() else float("nan")
    )
    figures["qc_specificity"] = (
        float((~flagged & ~artifact).sum() / (~artifact).sum()) if (~artifact).any() else float("nan")
    )
    figures["qc_missed"] = knees.loc[artifact & ~flagged, "artifact"].value_counts().to_dict()
    figures["qc_false_flags"] = (
        knees.loc[~artifact & flagged, "auto_reason"].str.split(":").str[0].value_counts().to_dict()
    )
    registration = pd.read_csv(paths.preprocess / REGISTRATION_TABLE, dtype={"subject_id": str})
    registration = registration.dropna(subset=["rotation_deg"])
    if len(registration):
        poses = registration.merge(
            clean[["subject_id", "side", "rotation_deg_truth", "shift_row_mm_truth", "shift_col_mm_truth"]]
            if "rotation_deg_truth" in clean
            else clean.rename(
                columns={c: f"{c}_truth" for c in ("rotation_deg", "shift_row_mm", "shift_col_mm")}
            )[["subject_id", "side", "rotation_deg_truth", "shift_row_mm_truth", "shift_col_mm_truth"]],
            on=["subject_id", "side"],
        )
        d_rot = poses["rotation_deg"] - poses["rotation_deg_truth"]
        d_row = poses["shift_row_mm"] - poses["shift_row_mm_truth"]
        d_col = poses["shift_col_mm"] - poses["shift_col_mm_truth"]
        figures.update(_residuals(d_rot, d_row, d_col, "raw"))
        # The template's frame is the cohort's average, so one global rigid offset between it and
        # the generator's frame is expected; residuals after removing that one offset measure
        # how consistently knees are aligned with each other.
        offset = (float(np.median(d_rot)), float(np.median(d_row)), float(np.median(d_col)))
        figures["global_offset_deg_row_col"] = [round(v, 3) for v in offset]
        figures.update(_residuals(d_rot - offset[0], d_row - offset[1], d_col - offset[2], "aligned"))
        figures.update(_template_sample(paths, truth))
    return figures


def _template_sample(paths: WorkPaths, truth: pd.DataFrame) -> dict[str, Any]:
    """The mean true pose of the knees the template was built from, when it was built here, and
    the anatomical frame the template was moved to (``template_frame``, from template.json).

    An unbiased template's frame is those knees' mean pose, so with the group's frame the raw
    global offset should be minus this mean; with the anatomical frame only its height (row)
    still is, the rotation and the anteroposterior shift (col) come from the landmarks.
    """
    record_path = paths.preprocess / "template.json"
    if not record_path.exists():
        return {}
    record = json.loads(record_path.read_text(encoding="utf-8"))
    if record.get("source") != "built" or "template_subjects" not in record:
        return {}
    index = pd.read_csv(paths.cache_index, dtype={"subject_id": str})
    subjects = sorted(index["subject_id"])[: int(record["template_subjects"])]
    sample = truth[truth["subject_id"].isin(subjects)]
    mean = [float(sample[c].mean()) for c in ("rotation_deg", "shift_row_mm", "shift_col_mm")]
    return {
        "template_frame": record.get("anatomical_frame", {"status": "group mean (frame not recorded)"}),
        "template_knees": len(sample),
        "template_knees_true_mean_deg_row_col": [round(v, 3) for v in mean],
    }


def _residuals(d_rot: pd.Series, d_row: pd.Series, d_col: pd.Series, name: str) -> dict[str, float]:
    mm = np.hypot(d_row, d_col)
    return {
        f"{name}_median_mm": float(np.median(mm)),
        f"{name}_median_deg": float(np.median(np.abs(d_rot))),
        f"{name}_within_2mm": float((mm <= 2.0).mean()),
        f"{name}_slices": int(mm.size),
    }
