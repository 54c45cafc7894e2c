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
from scipy.stats import binomtest

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


def cell_size(map_shape: tuple[int, int], size: tuple[int, int]) -> tuple[float, float]:
    """Pixels per CAM cell along rows and columns when a map of ``map_shape`` covers ``size``."""
    return size[0] / map_shape[0], size[1] / map_shape[1]


def _window(
    spot: tuple[float, float], cell: tuple[float, float], tolerance_cells: int, size: tuple[int, int]
) -> tuple[slice, slice]:
    """The pixels whose centres lie within ``tolerance_cells`` cells (Chebyshev) of ``spot``.

    ``spot`` may fall between pixels (a sub-cell peak); a map size that does not divide the slice
    (12 cells over 224 pixels) gets its exact cell width, not a rounded one. At tolerance 0 the
    window is the pixel under the spot.
    """

    def axis(centre: float, reach: float, length: int) -> slice:
        low, high = int(np.ceil(centre - reach)), int(np.floor(centre + reach))
        if low > high:  # no pixel centre that close (tolerance 0 between pixels): the nearest pixel
            low = high = round(centre)
        return slice(max(low, 0), min(high + 1, length))

    return (
        axis(spot[0], cell[0] * tolerance_cells, size[0]),
        axis(spot[1], cell[1] * tolerance_cells, size[1]),
    )


def hit_at(
    mask: np.ndarray, spot: tuple[float, float], cell: tuple[float, float], tolerance_cells: int = 1
) -> bool:
    """Pointing game at a given spot (pixels): is a mask pixel within ``tolerance_cells`` cells of it?"""
    rows, cols = _window(spot, cell, tolerance_cells, mask.shape)
    return bool(np.asarray(mask, dtype=bool)[rows, cols].any())


def lesion_at(
    labels: np.ndarray, spot: tuple[float, float], cell: tuple[float, float], tolerance_cells: int = 1
) -> int:
    """Lesion code at ``spot``; else the most frequent code within the tolerance; 0 when none.

    Ties between codes go to the lower code, so the answer is deterministic.
    """
    row = min(max(round(spot[0]), 0), labels.shape[0] - 1)
    col = min(max(round(spot[1]), 0), labels.shape[1] - 1)
    if labels[row, col]:
        return int(labels[row, col])
    rows, cols = _window(spot, cell, tolerance_cells, labels.shape)
    near = labels[rows, cols]
    codes = near[near > 0]
    return int(np.bincount(codes).argmax()) if codes.size else 0


def pointing_hit(cam: np.ndarray, mask: np.ndarray, tolerance_cells: int = 1) -> bool:
    """Pointing game: is the CAM maximum on the mask, or within ``tolerance_cells`` CAM cells of it?"""
    spot = hot_spot(cam, mask.shape)
    return hit_at(mask, spot, cell_size(cam.shape, mask.shape), tolerance_cells)


def lesion_at_hot_spot(cam: np.ndarray, labels: np.ndarray, tolerance_cells: int = 1) -> int:
    """Lesion code under the upsampled CAM's maximum; else the most frequent code within the tolerance."""
    spot = hot_spot(cam, labels.shape)
    return lesion_at(labels, spot, cell_size(cam.shape, labels.shape), tolerance_cells)


def peak_location(maps: np.ndarray) -> tuple[int, float, float]:
    """The maximum of (S, h, w) maps over all slices: its slice and its sub-cell (row, col) in cells.

    The maximal cell is refined to the centroid of its 3 x 3 neighbourhood, weighted by how far
    each value lies above the neighbourhood's minimum: the evidence peak between cell centres
    rather than the centre of the hottest cell (a standard sub-pixel peak estimate).
    """
    maps = np.asarray(maps, dtype=np.float32)
    k, row, col = (int(v) for v in np.unravel_index(int(np.argmax(maps)), maps.shape))
    rows = slice(max(row - 1, 0), min(row + 2, maps.shape[1]))
    cols = slice(max(col - 1, 0), min(col + 2, maps.shape[2]))
    patch = maps[k, rows, cols].astype(np.float64)
    weights = patch - patch.min()
    if not np.isfinite(weights).all() or weights.sum() <= 0:
        return k, float(row), float(col)
    grid_rows, grid_cols = np.mgrid[rows, cols]
    total = weights.sum()
    return k, float((grid_rows * weights).sum() / total), float((grid_cols * weights).sum() / total)


def cells_to_pixels(
    position: tuple[float, float], map_shape: tuple[int, int], size: tuple[int, int]
) -> tuple[float, float]:
    """A (row, col) position in map cells (cell centres at integers) as a pixel position on the slice."""
    cell = cell_size(map_shape, size)
    return (position[0] + 0.5) * cell[0] - 0.5, (position[1] + 0.5) * cell[1] - 0.5


def reachable_cells(labels: np.ndarray, map_shape: tuple[int, int], tolerance_cells: int = 1) -> np.ndarray:
    """(S, h, w) bool: would a hot spot at this cell's centre score a pointing-game hit on ``labels``?

    The same windows as :func:`hit_at`, counted for all cells at once from a summed-area table.
    """
    size = labels.shape[-2:]
    cell = cell_size(map_shape, size)
    lesion = (np.asarray(labels) > 0).astype(np.int32)
    table = np.zeros((lesion.shape[0], size[0] + 1, size[1] + 1), dtype=np.int64)
    table[:, 1:, 1:] = lesion.cumsum(axis=1).cumsum(axis=2)
    centres = [cells_to_pixels((i, i), map_shape, size) for i in range(max(map_shape))]
    rows = [_window((centres[r][0], 0.0), cell, tolerance_cells, size)[0] for r in range(map_shape[0])]
    cols = [_window((0.0, centres[c][1]), cell, tolerance_cells, size)[1] for c in range(map_shape[1])]
    r0, r1 = np.array([w.start for w in rows]), np.array([w.stop for w in rows])
    c0, c1 = np.array([w.start for w in cols]), np.array([w.stop for w in cols])
    counts = (
        table[:, r1[:, None], c1[None, :]]
        - table[:, r0[:, None], c1[None, :]]
        - table[:, r1[:, None], c0[None, :]]
        + table[:, r0[:, None], c0[None, :]]
    )
    return counts > 0


def chance_hit_rate(labels: np.ndarray, map_shape: tuple[int, int], tolerance_cells: int = 1) -> float:
    """Expected pointing-game hit rate of a uniformly random pixel on a uniformly random slice."""
    import cv2

    cell = cell_size(map_shape, labels.shape[-2:])
    reach = [int(np.floor(c * tolerance_cells)) for c in cell]  # whole pixels within the tolerance
    kernel = np.ones((2 * reach[0] + 1, 2 * reach[1] + 1), np.uint8)
    lesion = (np.asarray(labels) > 0).astype(np.uint8)
    return float(np.mean([cv2.dilate(s, kernel).mean() for s in lesion]))


def constant_point_hits(reachable: list[np.ndarray]) -> np.ndarray:
    """CAM-free baseline, leave one out: does the (slice, cell) most often reachable in the others hit?

    ``reachable`` holds each subject's :func:`reachable_cells`. Registration puts every knee's
    anatomy at the same place, so a single fixed point can score well without looking at the
    image; a localization figure means something only above this one. Points tied for the most
    frequent count as a random pick among them (the subject's expected hit, 0..1), so that leaving
    one subject out does not hand a tie to whichever point comes first.
    """
    if not reachable:
        return np.zeros(0, dtype=np.float64)
    stack = np.stack(reachable).reshape(len(reachable), -1).astype(np.int32)
    total = stack.sum(axis=0)
    hits = np.zeros(len(stack), dtype=np.float64)
    for i, own in enumerate(stack):
        others = total - own
        hits[i] = float(own[others == others.max()].mean())
    return hits


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
        try:
            return mask_to_cache(Path(truth_dir), Path(work), subject_id, side)
        except (OSError, ValueError) as error:
            raise CamInputError(f"truth mask of subject {subject_id} {side}: {error}") from error

    return read


def difference_maps(cams: np.ndarray, knee: int) -> tuple[np.ndarray, int]:
    """The painful knee's CAMs minus the other knee's (S, h, w), and the slice with the highest mean.

    Both knees are registered to one template and slice k is the same anatomical place in both, so
    the subtraction cancels what the shared branch answers to in any knee (anatomy) and keeps
    the side-specific evidence the classifier actually weighs (the logit difference is linear in it).
    """
    difference = np.asarray(cams[knee], np.float32) - np.asarray(cams[1 - knee], np.float32)
    return difference, int(np.argmax(difference.mean(axis=(1, 2))))


SLICE_SMOOTHING = np.array([1.0, 2.0, 1.0], dtype=np.float32) / 4


def smoothed_difference(difference: np.ndarray) -> np.ndarray:
    """A difference map (S, h, w) averaged [1 2 1] with its neighbouring slices (ours' first step)."""
    from scipy.ndimage import convolve1d

    return convolve1d(np.asarray(difference, dtype=np.float32), SLICE_SMOOTHING, axis=0, mode="nearest")


def ours_hot_spot(difference: np.ndarray, size: tuple[int, int]) -> tuple[int, tuple[float, float]]:
    """Our rule: the difference map, averaged [1 2 1] with its neighbouring slices, at its maximum
    over all slices, refined between cells (pixels on ``size``).

    The slice is the one holding the strongest side-specific evidence (not the highest mean,
    which favours slices whose whole map is warm), and the spot is the sub-cell peak
    (:func:`peak_location`), so nothing but the maps decides where the model points. A lesion
    spans several 3 mm slices (median 4-5 for the focal ones in the synthetic cohorts) while noise
    in neighbouring maps is independent, so the neighbours' average favours evidence that
    persists across slices over a one-slice spike: +3 to +9 points of pointing-game hits on five
    of six shared-head runs, -1 on the sixth (docs/review.md). With the paper's per-location head
    each slice's map has its own scale, and this averaging lost 7 points on the one run measured.
    """
    k, row, col = peak_location(smoothed_difference(difference))
    return k, cells_to_pixels((row, col), difference.shape[-2:], size)


PRIOR_WEIGHT = 1.0  # chosen on one seed-1 run (0.5-2 within 1.3 points there); docs/review.md


def _unit_scale(maps: np.ndarray) -> np.ndarray:
    """``maps`` divided by their largest absolute value (unchanged when all zero)."""
    peak = float(np.abs(maps).max())
    return maps / peak if peak > 0 else maps


def evidence_priors(outputs: CamOutputs) -> dict[Any, np.ndarray]:
    """Per fold: where the model's side-specific evidence usually lies, from the other folds only.

    The mean over the subjects of every other fold of their smoothed difference map (painful
    knee minus the other, by their known label), each scaled to a largest absolute value of 1.
    It uses no truth mask and nothing of the fold's own subjects, so it is what a model's
    training subjects would supply for a new person (approximated by the other folds' out-of-fold
    maps instead of the fold model's maps of its training subjects). A run with one fold gets none.
    """
    # Summed per fold while reading, so memory holds one map per fold, not one per subject.
    totals: dict[Any, np.ndarray] = {}
    counts: dict[Any, int] = {}
    for i, (side, fold) in enumerate(zip(outputs.index["painful_side"], outputs.index["fold"], strict=True)):
        difference, _ = difference_maps(np.asarray(outputs.cams[i]), KNEES.index(side))
        scaled = _unit_scale(smoothed_difference(difference)).astype(np.float64)
        totals[fold] = totals[fold] + scaled if fold in totals else scaled
        counts[fold] = counts.get(fold, 0) + 1
    priors = {}
    for fold in totals:
        others = [other for other in totals if other != fold]
        if others:
            total = sum(totals[other] for other in others)
            priors[fold] = (total / sum(counts[other] for other in others)).astype(np.float32)
    return priors


def prior_hot_spot(
    difference: np.ndarray, prior: np.ndarray, size: tuple[int, int]
) -> tuple[int, tuple[float, float]]:
    """Ours with a population prior: the peak of the subject's smoothed difference map plus
    ``PRIOR_WEIGHT`` times the fold's :func:`evidence_priors` map, both scaled to a largest
    absolute value of 1.

    After registration the same structures sit in the same cells, so where other people's evidence
    lies is a strong hint where this person's is; the subject's own map decides among the usual
    places and can still point elsewhere when its evidence there is strong. Weak or diffuse single
    maps (small lesion burden) gain most. It is a second rule beside ours, not a replacement:
    its hot spot is partly the population's, which a reviewer should know.
    """
    combined = _unit_scale(smoothed_difference(difference)) + PRIOR_WEIGHT * _unit_scale(prior)
    k, row, col = peak_location(combined)
    return k, cells_to_pixels((row, col), difference.shape[-2:], size)


def _lesion_name(code: int) -> str:
    return LESIONS.get(code, f"code_{code}") if code else NO_LESION


def localize(outputs: CamOutputs, masks: MaskSource | None, tolerance_cells: int = 1) -> pd.DataFrame:
    """Per test subject: pointing game, energy share and lesion under the hot spot on the painful knee.

    Three rules, all on the painful knee's truth mask: the paper's (best slice of the painful
    knee's map, its upsampled maximum: columns without suffix), the difference map with the slice
    of highest mean (``*_difference``, :func:`difference_maps`) and ours (``*_ours``,
    :func:`ours_hot_spot`). Two CAM-free baselines put the rates in context: ``chance_hit`` (a random
    pixel on a random slice, expected) and ``hit_constant`` (one fixed slice and cell, chosen on the
    other measured subjects, :func:`constant_point_hits`; an expected hit, 0..1). A subject without
    a truth mask, or whose painful knee has no lesion, is kept with ``excluded`` saying why and no
    measurements; with ``masks=None`` only the area is measured.
    """
    records = []
    reachable: list[np.ndarray] = []
    measured_rows: list[int] = []
    map_shape = tuple(int(v) for v in outputs.cams.shape[-2:])
    priors = evidence_priors(outputs) if "fold" in outputs.index.columns else {}
    for position, row in enumerate(outputs.index.itertuples(index=False)):
        knee = KNEES.index(row.painful_side)
        k = int(row.best_slice)
        difference, k_difference = difference_maps(np.asarray(outputs.cams[position]), knee)
        k_ours, spot_ours = ours_hot_spot(difference, (IMAGE_SIZE, IMAGE_SIZE))
        prior = priors.get(getattr(row, "fold", None))
        k_prior, spot_prior = (
            prior_hot_spot(difference, prior, (IMAGE_SIZE, IMAGE_SIZE))
            if prior is not None
            else (-1, (np.nan, np.nan))
        )
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
            "best_slice_ours": k_ours,
            "hot_spot_row_ours": round(spot_ours[0], 1),
            "hot_spot_col_ours": round(spot_ours[1], 1),
            "hit_ours": np.nan,
            "lesion_ours": "",
            "best_slice_prior": k_prior,
            "hot_spot_row_prior": round(spot_prior[0], 1),
            "hot_spot_col_prior": round(spot_prior[1], 1),
            "hit_prior": np.nan,
            "lesion_prior": "",
            "chance_hit": np.nan,
            "hit_constant": np.nan,
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
                lesion=_lesion_name(code),
            )
            d_map, d_labels = difference[k_difference], labels[k_difference]
            record.update(
                hit_difference=pointing_hit(d_map, d_labels > 0, tolerance_cells),
                energy_share_slice_difference=energy_share(d_map, d_labels > 0),
                lesion_difference=_lesion_name(lesion_at_hot_spot(d_map, d_labels, tolerance_cells)),
            )
            cell = cell_size(map_shape, labels.shape[-2:])
            record.update(
                hit_ours=hit_at(labels[k_ours] > 0, spot_ours, cell, tolerance_cells),
                lesion_ours=_lesion_name(lesion_at(labels[k_ours], spot_ours, cell, tolerance_cells)),
                chance_hit=chance_hit_rate(labels, map_shape, tolerance_cells),
            )
            if prior is not None:
                record.update(
                    hit_prior=hit_at(labels[k_prior] > 0, spot_prior, cell, tolerance_cells),
                    lesion_prior=_lesion_name(lesion_at(labels[k_prior], spot_prior, cell, tolerance_cells)),
                )
            reachable.append(reachable_cells(labels, map_shape, tolerance_cells))
            measured_rows.append(position)
        records.append(record)
    table = pd.DataFrame.from_records(records)
    if measured_rows:
        table.loc[measured_rows, "hit_constant"] = constant_point_hits(reachable)
    return table


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
    """Headline numbers: area above 0.5 (mean, SD, %), pointing-game hit rates, energy share, counts.

    The hit rates of the three rules come with the CAM-free baselines (``*_chance``,
    ``*_constant``): a rule localizes only as far as it beats the constant point.
    """
    measured = table[table["excluded"] == ""]
    correct = measured[measured["correct"]]

    def rate(frame: pd.DataFrame, column: str = "hit") -> float | None:
        return float(frame[column].astype(bool).mean()) if len(frame) else None

    def mean(column: str, frame: pd.DataFrame = measured) -> float | None:
        return float(frame[column].mean()) if len(frame) else None

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
        "pointing_hit_rate_correct_ours": rate(correct, "hit_ours"),
        "pointing_hit_rate_all_ours": rate(measured, "hit_ours"),
        "pointing_hit_rate_correct_chance": mean("chance_hit", correct),
        "pointing_hit_rate_correct_constant": mean("hit_constant", correct),
        "pointing_hit_rate_all_constant": mean("hit_constant"),
        "pointing_hit_rate_correct_ours_ci95": hit_rate_interval(correct["hit_ours"]),
        "ours_vs_constant_correct": paired_hits(correct["hit_ours"], correct["hit_constant"]),
        "pointing_hit_rate_correct_prior": rate(correct.dropna(subset=["hit_prior"]), "hit_prior"),
        "pointing_hit_rate_all_prior": rate(measured.dropna(subset=["hit_prior"]), "hit_prior"),
        "pointing_hit_rate_correct_prior_ci95": hit_rate_interval(correct["hit_prior"]),
        "prior_vs_constant_correct": paired_hits(correct["hit_prior"], correct["hit_constant"]),
    }


def hit_rate_interval(hits: pd.Series) -> list[float] | None:
    """Wilson 95% interval of a hit rate (None without subjects): a rate on ~150 subjects is +/-6
    points, which decides whether a figure is above a target or only near it."""
    known = hits.dropna().astype(bool)
    if known.empty:
        return None
    interval = binomtest(int(known.sum()), len(known)).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(interval.low), float(interval.high)]


def paired_hits(ours: pd.Series, baseline: pd.Series) -> dict[str, Any]:
    """Exact McNemar test of two rules hit-or-miss on the same subjects.

    Counts the subjects only ``ours`` hits and only ``baseline`` hits; the two-sided p-value is the
    binomial test of the first count among the discordant ones (scipy), so a CAM rule is shown to
    localize beyond a CAM-free one only when its extra hits are not chance. A fractional hit (the
    fixed point's expected hit when points tie) counts by its expectation; the test takes the
    rounded counts.
    """
    both = pd.concat([ours, baseline], axis=1).dropna().astype(float).to_numpy()
    ours_only = float((both[:, 0] * (1 - both[:, 1])).sum())
    baseline_only = float(((1 - both[:, 0]) * both[:, 1]).sum())
    wins, losses = round(ours_only), round(baseline_only)
    p_value = float(binomtest(wins, wins + losses).pvalue) if wins + losses else 1.0
    return {
        "subjects": len(both),
        "ours_only": round(ours_only, 1),
        "baseline_only": round(baseline_only, 1),
        "p_value": p_value,
    }
