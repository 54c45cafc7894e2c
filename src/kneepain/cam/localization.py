"""Measure what the CAMs point at: hot-spot area, pointing game, energy in lesions, lesion under the hot spot.

Truth masks are label volumes in cache space (23 slices x 224 x 224, codes as in the synthetic
generator's ``truth/masks``); a ``MaskSource`` supplies them per subject and side, so the mapping
from series space (preprocess's registration and crop) is plugged in from outside.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kneepain.cam.compute import CamInputError, CamOutputs
from kneepain.cam.overlay import scale, upsample
from kneepain.contracts import IMAGE_SIZE, KNEES, N_SLICES

LESIONS = {
    1: "effusion_synovitis",
    2: "bone_marrow_lesion",
    3: "hoffa_synovitis",
    4: "cartilage_loss",
    5: "meniscal_damage",
}
NO_LESION = "none"
THRESHOLD = 0.5  # the paper's binarisation of the min-max normalised CAM

MaskSource = Callable[[str, str], "np.ndarray | None"]


def area_above_half(cam: np.ndarray, size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> float:
    """Share of the slice (0..1) where the min-max normalised, upsampled CAM exceeds 0.5 (paper's area)."""
    heat = upsample(cam, size)
    return float((scale(heat, float(heat.min()), float(heat.max())) > THRESHOLD).mean())


def hot_spot(cam: np.ndarray, size: tuple[int, int]) -> tuple[int, int]:
    """Pixel (row, col) of the upsampled CAM's maximum (first one on ties)."""
    heat = upsample(cam, size)
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(row), int(col)


def _window(cam: np.ndarray, size: tuple[int, int], tolerance_cells: int) -> tuple[slice, slice]:
    """The pixels within ``tolerance_cells`` CAM cells (Chebyshev distance) of the hot spot."""
    row, col = hot_spot(cam, size)
    cell_rows = int(np.ceil(size[0] / cam.shape[0])) * tolerance_cells
    cell_cols = int(np.ceil(size[1] / cam.shape[1])) * tolerance_cells
    return (
        slice(max(row - cell_rows, 0), row + cell_rows + 1),
        slice(max(col - cell_cols, 0), col + cell_cols + 1),
    )


def pointing_hit(cam: np.ndarray, mask: np.ndarray, tolerance_cells: int = 1) -> bool:
    """Pointing game: is the CAM maximum on the mask, or within ``tolerance_cells`` CAM cells of it?"""
    rows, cols = _window(cam, mask.shape, tolerance_cells)
    return bool(np.asarray(mask, dtype=bool)[rows, cols].any())


def lesion_at_hot_spot(cam: np.ndarray, labels: np.ndarray, tolerance_cells: int = 1) -> int:
    """Lesion code under the hot spot; else the most frequent code within the tolerance; 0 when none.

    Ties between codes go to the lower code, so the answer is deterministic.
    """
    row, col = hot_spot(cam, labels.shape)
    if labels[row, col]:
        return int(labels[row, col])
    rows, cols = _window(cam, labels.shape, tolerance_cells)
    near = labels[rows, cols]
    codes = near[near > 0]
    return int(np.bincount(codes).argmax()) if codes.size else 0


def energy_share(cams: np.ndarray, mask: np.ndarray) -> float:
    """Share of positive CAM energy inside the mask: one (h, w) map on a (H, W) mask, or slices x both.

    NaN when the map has no positive value at all.
    """
    cams = np.asarray(cams, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if cams.ndim == 2:
        cams, mask = cams[None], mask[None]
    heat = np.stack([np.maximum(upsample(c, mask.shape[-2:]), 0.0) for c in cams])
    total = float(heat.sum())
    return float(heat[mask].sum() / total) if total > 0 else float("nan")


def folder_mask_source(folder: str | Path) -> MaskSource:
    """Masks already in cache space: ``<folder>/<ID>_<side>.npz`` holding a (23, 224, 224) label volume.

    The volume is the array named ``mask`` or else the first 3-D array in the file.
    """
    folder = Path(folder)

    def read(subject_id: str, side: str) -> np.ndarray | None:
        path = folder / f"{subject_id}_{side}.npz"
        if not path.exists():
            return None
        with np.load(path) as data:
            names = ["mask"] if "mask" in data.files else [n for n in data.files if data[n].ndim == 3]
            if not names:
                raise CamInputError(f"{path}: holds no 3-D label volume")
            volume = np.asarray(data[names[0]])
        if volume.shape != (N_SLICES, IMAGE_SIZE, IMAGE_SIZE):
            raise CamInputError(
                f"{path}: label volume has shape {volume.shape}, expected cache space "
                f"({N_SLICES}, {IMAGE_SIZE}, {IMAGE_SIZE})"
            )
        return volume

    return read


def truth_mask_source(truth_dir: str | Path, work: str | Path) -> MaskSource:
    """Masks from a synthetic ``truth/`` folder mapped into cache space by preprocess's own transform.

    Uses ``kneepain.preprocess.mask_to_cache(truth_dir, work, subject_id, side)`` when that exists;
    otherwise raises CamInputError saying what is missing (the mapping belongs to preprocess).
    """
    import importlib

    try:
        mask_to_cache = importlib.import_module("kneepain.preprocess").mask_to_cache
    except (ImportError, AttributeError) as error:
        raise CamInputError(
            "localization needs kneepain.preprocess.mask_to_cache(truth_dir, work, subject_id, side) "
            f"to map truth masks into cache space; it is not available ({error})"
        ) from error

    def read(subject_id: str, side: str) -> np.ndarray | None:
        return mask_to_cache(Path(truth_dir), Path(work), subject_id, side)

    return read


def difference_maps(cams: np.ndarray, knee: int) -> tuple[np.ndarray, int]:
    """The painful knee's CAMs minus the other knee's (S, h, w), and the slice with the highest mean.

    Both knees are registered to one template and slice k is the same anatomical place in both, so
    the subtraction cancels what the shared branch answers to in any knee (anatomy) and keeps
    the side-specific evidence the classifier actually weighs (the logit difference is linear in it).
    """
    difference = np.asarray(cams[knee], np.float32) - np.asarray(cams[1 - knee], np.float32)
    return difference, int(np.argmax(difference.mean(axis=(1, 2))))


def localize(outputs: CamOutputs, masks: MaskSource | None, tolerance_cells: int = 1) -> pd.DataFrame:
    """Per test subject: pointing game, energy share and lesion under the hot spot on the painful knee.

    Uses the subject's map (best slice of the painful knee, the paper's rule) and, in the
    ``*_difference`` columns, the difference map (:func:`difference_maps`). A subject without a
    truth mask, or whose painful knee has no lesion, is kept with ``excluded`` saying why and no
    measurements; with ``masks=None`` only the area is measured.
    """
    records = []
    for position, row in enumerate(outputs.index.itertuples(index=False)):
        knee = KNEES.index(row.painful_side)
        k = int(row.best_slice)
        difference, k_difference = difference_maps(np.asarray(outputs.cams[position]), knee)
        record: dict[str, Any] = {
            "subject_id": row.subject_id,
            "painful_side": row.painful_side,
            "correct": bool(row.correct),
            "best_slice": k,
            "area_above_half": area_above_half(np.asarray(outputs.cams[position, knee, k])),
            "hit": np.nan,
            "energy_share_slice": np.nan,
            "energy_share_volume": np.nan,
            "lesion_code": np.nan,
            "lesion": "",
            "best_slice_difference": k_difference,
            "hit_difference": np.nan,
            "energy_share_slice_difference": np.nan,
            "lesion_difference": "",
            "excluded": "",
        }
        labels = masks(row.subject_id, row.painful_side) if masks is not None else None
        if masks is None:
            record["excluded"] = "no truth masks given"
        elif labels is None:
            record["excluded"] = "no truth mask for the painful knee"
        elif not np.any(labels):
            record["excluded"] = "painful knee has no lesion in its truth mask"
        else:
            cam = np.asarray(outputs.cams[position, knee, k])
            code = lesion_at_hot_spot(cam, labels[k], tolerance_cells)
            record.update(
                hit=pointing_hit(cam, labels[k] > 0, tolerance_cells),
                energy_share_slice=energy_share(cam, labels[k] > 0),
                energy_share_volume=energy_share(np.asarray(outputs.cams[position, knee]), labels > 0),
                lesion_code=code,
                lesion=LESIONS.get(code, f"code_{code}") if code else NO_LESION,
            )
            d_map, d_labels = difference[k_difference], labels[k_difference]
            d_code = lesion_at_hot_spot(d_map, d_labels, tolerance_cells)
            record.update(
                hit_difference=pointing_hit(d_map, d_labels > 0, tolerance_cells),
                energy_share_slice_difference=energy_share(d_map, d_labels > 0),
                lesion_difference=LESIONS.get(d_code, f"code_{d_code}") if d_code else NO_LESION,
            )
        records.append(record)
    return pd.DataFrame.from_records(records)


def lesion_table(table: pd.DataFrame) -> pd.DataFrame:
    """Figure 3I from measurement: lesion under the hot spot x prediction correct / wrong (counts, %)."""
    measured = table[table["excluded"] == ""]
    order = [*LESIONS.values(), NO_LESION]
    rows = [{"lesion": "total", "n": len(measured), "correct": int(measured["correct"].sum())}]
    for name in order:
        picked = measured[measured["lesion"] == name]
        rows.append({"lesion": name, "n": len(picked), "correct": int(picked["correct"].sum())})
    frame = pd.DataFrame(rows)
    frame["wrong"] = frame["n"] - frame["correct"]
    frame["percent"] = (100.0 * frame["n"] / max(len(measured), 1)).round(1)
    return frame[["lesion", "n", "percent", "correct", "wrong"]]


def summarize(table: pd.DataFrame, backbone: str, map_size: list[int]) -> dict[str, Any]:
    """Headline numbers: area above 0.5 (mean, SD, %), pointing-game hit rates, energy share, counts."""
    measured = table[table["excluded"] == ""]
    correct = measured[measured["correct"]]

    def rate(frame: pd.DataFrame, column: str = "hit") -> float | None:
        return float(frame[column].astype(bool).mean()) if len(frame) else None

    def mean(column: str) -> float | None:
        return float(measured[column].mean()) if len(measured) else None

    area = 100.0 * table["area_above_half"]
    return {
        "backbone": backbone,
        "map_size": map_size,
        "subjects": len(table),
        "area_above_half_pct_mean": float(area.mean()),
        "area_above_half_pct_sd": float(area.std(ddof=1)) if len(table) > 1 else 0.0,
        "measured": len(measured),
        "excluded": int((table["excluded"] != "").sum()),
        "pointing_hit_rate_correct": rate(correct),
        "pointing_hit_rate_all": rate(measured),
        "pointing_n_correct": len(correct),
        "energy_share_slice_mean": mean("energy_share_slice"),
        "energy_share_volume_mean": mean("energy_share_volume"),
        "pointing_hit_rate_correct_difference": rate(correct, "hit_difference"),
        "pointing_hit_rate_all_difference": rate(measured, "hit_difference"),
        "energy_share_slice_mean_difference": mean("energy_share_slice_difference"),
    }
