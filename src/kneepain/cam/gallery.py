"""The report's CAM gallery: a few correct and a few wrong predictions, one figure per case.

Each figure shows both knees at the paper's slice on one colour scale with the paper's hot spot,
then the two difference-map rules (ours, and ours + the other folds' evidence prior) at their own
slices; with truth masks (synthetic cohorts) the painful knee's true lesion outline is drawn on
every painful-knee panel and the square around each hot spot is the pointing game's reach (a lesion
pixel inside it is a hit). ``gallery.csv`` lists the cases with what the report's captions need and
each figure's layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kneepain.cam.compute import CamOutputs
from kneepain.cam.localization import (
    MaskSource,
    cell_size,
    difference_maps,
    hot_spot,
    smoothed_difference,
)
from kneepain.cam.overlay import (
    GALLERY_CORRECT,
    GALLERY_TABLE,
    GALLERY_WRONG,
    CasePanel,
    case_image,
    save_overlay,
)
from kneepain.contracts import IMAGE_SIZE, KNEES
from kneepain.fileio import write_csv

GALLERY_COLUMNS = [
    "subject_id",
    "file",
    "fold",
    "painful_side",
    "predicted_side",
    "prob_right",
    "correct",
    "truth",
    "slice_paper",
    "hit_paper",
    "lesion_paper",
    "slice_ours",
    "hit_ours",
    "lesion_ours",
    "slice_prior",
    "hit_prior",
    "lesion_prior",
    "width_px",
    "height_px",
    "plot_width_fraction",
]


def pick_cases(index: pd.DataFrame, table: pd.DataFrame, n_correct: int, n_wrong: int) -> list[int]:
    """Positions of the cases to show: the most confident correct and the most confident wrong.

    Subjects measured against truth come first, so a synthetic run's gallery shows outlines.
    """
    confidence = (pd.to_numeric(index["prob_right"], errors="coerce") - 0.5).abs().fillna(0)
    measured = (table["excluded"].fillna("") == "").to_numpy() if "excluded" in table else np.ones(len(index))
    order = pd.DataFrame({"measured": measured, "confidence": confidence.to_numpy()})
    order = order.sort_values(["measured", "confidence"], ascending=False, kind="stable")
    correct = index["correct"].astype(str).str.lower().isin(["true", "1"]).to_numpy()
    picked_correct = [int(i) for i in order.index if correct[i]][:n_correct]
    picked_wrong = [int(i) for i in order.index if not correct[i]][:n_wrong]
    return picked_correct + picked_wrong


def _hit_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)) or value == "":
        return ""
    return ": hit" if str(value).lower() in ("true", "1", "1.0") else ": miss"


def case_panels(
    outputs: CamOutputs,
    position: int,
    record: dict[str, Any],
    labels: np.ndarray | None,
    tolerance_cells: int,
) -> list[CasePanel]:
    """The panels of one case: both knees at the paper's slice, then ours and ours + prior."""
    row = outputs.index.iloc[position]
    cams = np.asarray(outputs.cams[position], np.float32)
    images = outputs.cache[int(row["cache_row"])]
    painful = KNEES.index(str(row["painful_side"]))
    size = (IMAGE_SIZE, IMAGE_SIZE)
    window = tuple(c * tolerance_cells for c in cell_size(cams.shape[-2:], size))
    k = int(row["best_slice"])
    low, high = float(cams[:, k].min()), float(cams[:, k].max())

    def outline(slice_index: int) -> np.ndarray | None:
        return None if labels is None else labels[slice_index] > 0

    panels = []
    for knee, side in enumerate(KNEES):
        is_painful = knee == painful
        title = (
            f"{side} knee ({'painful' if is_painful else 'other'})",
            f"paper's rule, slice {k}{_hit_text(record.get('hit'))}"
            if is_painful
            else f"slice {k}, same colour scale",
        )
        panels.append(
            CasePanel(
                title,
                np.asarray(images[knee, k]),
                cams[knee, k],
                low,
                high,
                spot=hot_spot(cams[knee, k], size) if is_painful else None,
                window=window,
                outline=outline(k) if is_painful else None,
            )
        )
    difference = smoothed_difference(difference_maps(cams, painful)[0])
    for name, suffix, key in (
        ("ours: painful minus other", "ours", "hit_ours"),
        ("ours + evidence prior", "prior", "hit_prior"),
    ):
        k_rule = int(record.get(f"best_slice_{suffix}", -1))
        spot = (
            float(record.get(f"hot_spot_row_{suffix}", np.nan)),
            float(record.get(f"hot_spot_col_{suffix}", np.nan)),
        )
        if k_rule < 0 or not all(np.isfinite(spot)):
            continue
        values = difference[k_rule]
        panels.append(
            CasePanel(
                (name, f"slice {k_rule}{_hit_text(record.get(key))}"),
                np.asarray(images[painful, k_rule]),
                values,
                0.0,
                float(max(values.max(), 0.0)),
                spot=spot,
                window=window,
                outline=outline(k_rule),
            )
        )
    return panels


def write_gallery(
    outputs: CamOutputs,
    table: pd.DataFrame,
    masks: MaskSource | None,
    out_dir: Path,
    tolerance_cells: int = 1,
) -> pd.DataFrame:
    """Write ``<out_dir>/<ID>.jpg`` for the picked cases and ``gallery.csv`` beside the folder."""
    rows = []
    for position in pick_cases(outputs.index, table, GALLERY_CORRECT, GALLERY_WRONG):
        row = outputs.index.iloc[position]
        record = table.iloc[position].to_dict()
        excluded = record.get("excluded")
        measured = masks is not None and (pd.isna(excluded) or excluded == "")
        labels = masks(str(row["subject_id"]), str(row["painful_side"])) if measured else None
        image, plot_fraction = case_image(case_panels(outputs, position, record, labels, tolerance_cells))
        name = f"{row['subject_id']}.jpg"  # photographic panels: JPEG keeps the report light
        save_overlay(out_dir / name, image)
        rows.append(
            {
                "subject_id": row["subject_id"],
                "file": name,
                "fold": row["fold"],
                "painful_side": row["painful_side"],
                "predicted_side": row["predicted_side"],
                "prob_right": row["prob_right"],
                "correct": row["correct"],
                "truth": labels is not None,
                "slice_paper": int(row["best_slice"]),
                "hit_paper": record.get("hit"),
                "lesion_paper": record.get("lesion", ""),
                "slice_ours": record.get("best_slice_ours"),
                "hit_ours": record.get("hit_ours"),
                "lesion_ours": record.get("lesion_ours", ""),
                "slice_prior": record.get("best_slice_prior"),
                "hit_prior": record.get("hit_prior"),
                "lesion_prior": record.get("lesion_prior", ""),
                "width_px": image.shape[1],
                "height_px": image.shape[0],
                "plot_width_fraction": plot_fraction,
            }
        )
    gallery = pd.DataFrame(rows, columns=GALLERY_COLUMNS)
    write_csv(out_dir.parent / GALLERY_TABLE, gallery)
    return gallery
