"""Pointing-game hit rates of hot-spot rules on a run's stored CAMs, against CAM-free baselines.

    python benchmarks/localization_rules.py RUN --truth COHORT/truth
    python benchmarks/localization_rules.py RUN --cache-masks DIR   # <ID>_<side>.npz in cache space

Reads ``RUN/cam`` (run ``kneepain cam RUN`` first) and the painful knees' truth masks; trains
nothing. Prints Markdown: hit rates on correctly predicted subjects (and on all measured ones)
for each rule, with effusion counted as a lesion or not and at a tolerance of one CAM cell or
none, then where the misses of the main rules fall (wrong slice or wrong spot on a lesion slice).
The row "ours + evidence prior" is the cam stage's fourth rule (the other folds' mean difference
map added; absent for a one-fold run). With ``--truth``, hit rates are also split by thirds of
the lesion burden difference between the painful and the other knee (the generator's
``lesion_burden``, which drives the pain label).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from kneepain.cam.compute import best_slice, read_cam_outputs
from kneepain.cam.localization import (
    cell_size,
    cells_to_pixels,
    chance_hit_rate,
    constant_point_hits,
    evidence_priors,
    hit_at,
    hot_spot,
    ours_hot_spot,
    peak_location,
    prior_hot_spot,
    reachable_cells,
)
from kneepain.cam.stage import choose_masks
from kneepain.contracts import IMAGE_SIZE, KNEES, read_run_info, run_work_folder

SIZE = (IMAGE_SIZE, IMAGE_SIZE)
Spot = tuple[int, tuple[float, float]]  # slice, (row, col) in pixels of the slice
Rule = Callable[[np.ndarray, np.ndarray], Spot]
LESION_SETS = {"all lesions": (1, 2, 3, 4, 5), "effusion not counted": (2, 3, 4, 5)}


def upsampled_max(cam: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> tuple[float, float]:
    """Pixel of the maximum of one map upsampled to the slice (first on ties)."""
    heat = cv2.resize(cam.astype(np.float32), SIZE[::-1], interpolation=interpolation)
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return float(row), float(col)


def paper(painful: np.ndarray, other: np.ndarray) -> Spot:
    k = best_slice(painful)
    return k, tuple(float(v) for v in hot_spot(painful[k], SIZE))


def difference_mean(painful: np.ndarray, other: np.ndarray) -> Spot:
    difference = painful - other
    k = best_slice(difference)
    return k, upsampled_max(difference[k])


def difference_global_max(painful: np.ndarray, other: np.ndarray) -> Spot:
    difference = painful - other
    k = int(np.argmax(difference.max(axis=(1, 2))))
    return k, upsampled_max(difference[k])


def difference_global_max_bicubic(painful: np.ndarray, other: np.ndarray) -> Spot:
    difference = painful - other
    k = int(np.argmax(difference.max(axis=(1, 2))))
    return k, upsampled_max(difference[k], cv2.INTER_CUBIC)


def ours(painful: np.ndarray, other: np.ndarray) -> Spot:
    return ours_hot_spot(painful - other, SIZE)


def global_peak(maps: np.ndarray) -> Spot:
    """Sub-cell peak of the global maximum, without ours' averaging across slices."""
    k, row, col = peak_location(maps)
    return k, cells_to_pixels((row, col), maps.shape[-2:], SIZE)


def ours_without_slice_smoothing(painful: np.ndarray, other: np.ndarray) -> Spot:
    return global_peak(painful - other)


def painful_global_peak(painful: np.ndarray, other: np.ndarray) -> Spot:
    return global_peak(painful)


RULES: dict[str, Rule] = {
    "paper: painful map, slice of highest mean, upsampled max": paper,
    "difference map, slice of highest mean, upsampled max": difference_mean,
    "difference map, global max, upsampled (bilinear) max": difference_global_max,
    "difference map, global max, bicubic max": difference_global_max_bicubic,
    "difference map, global max, sub-cell peak (ours before slice smoothing)": ours_without_slice_smoothing,
    "**ours**: difference map [1 2 1] across slices, global max, sub-cell peak": ours,
    "painful map, global max, sub-cell peak": painful_global_peak,
}


def oracle_slice(painful: np.ndarray, other: np.ndarray, lesion: np.ndarray, tolerance: int) -> bool:
    """Upper bound of the slice choice: does ours' in-slice peak hit on any slice at all?"""
    difference = painful - other
    cell = cell_size(difference.shape[-2:], SIZE)
    for k in np.flatnonzero(lesion.reshape(len(lesion), -1).any(axis=1)):
        _, row, col = peak_location(difference[k : k + 1])
        if hit_at(lesion[k], cells_to_pixels((row, col), difference.shape[-2:], SIZE), cell, tolerance):
            return True
    return False


def pixel_aucs(subjects: list, correct: np.ndarray, step: int = 4) -> dict[str, float]:
    """Mean within-knee AUC of each map (upsampled, all slices) as a lesion detector, correct subjects.

    The prior is the lesion frequency of the other measured knees at each voxel: what registration
    alone says about where lesions lie. Every ``step``-th pixel is used (speed; same for all).
    """
    from sklearn.metrics import roc_auc_score

    lesions = [s[3][:, ::step, ::step] > 0 for s in subjects]
    frequency = np.sum(lesions, axis=0, dtype=np.float32)
    grid = lesions[0].shape[-2:]

    def upsampled(maps: np.ndarray) -> np.ndarray:
        return np.stack([cv2.resize(m, SIZE[::-1], interpolation=cv2.INTER_LINEAR) for m in maps])[
            :, ::step, ::step
        ][:, : grid[0], : grid[1]]

    scores: dict[str, list[float]] = {"difference map": [], "painful map": [], "lesion-frequency prior": []}
    for (painful, other, _, _), lesion, ok in zip(subjects, lesions, correct, strict=True):
        if not ok or lesion.all():
            continue
        truth = lesion.ravel()
        scores["difference map"].append(roc_auc_score(truth, upsampled(painful - other).ravel()))
        scores["painful map"].append(roc_auc_score(truth, upsampled(painful).ravel()))
        scores["lesion-frequency prior"].append(roc_auc_score(truth, (frequency - lesion).ravel()))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def burden_differences(truth: Path, keys: list[tuple[str, str]]) -> np.ndarray:
    """Painful minus other knee's ``lesion_burden`` (truth/knees.csv) for (subject, painful side)."""
    knees = pd.read_csv(truth / "knees.csv", dtype={"subject_id": str}).set_index(["subject_id", "side"])
    burden = knees["lesion_burden"]
    other = {"left": "right", "right": "left"}
    return np.array([burden[(sid, side)] - burden[(sid, other[side])] for sid, side in keys])


def by_burden(subjects: list, keys: list[tuple[str, str]], truth: Path, map_shape: tuple[int, int]) -> None:
    """Hit rates of ours, the difference map and the fixed point per third of the burden difference."""
    correct = [i for i, s in enumerate(subjects) if s[2]]
    if len(correct) < 3:
        return
    gap = burden_differences(truth, [keys[i] for i in correct])
    cell = cell_size(map_shape, SIZE)
    hits = {name: [] for name in ("ours", "difference map, slice of highest mean")}
    for i in correct:
        painful, other, _, lesion = subjects[i]
        for name, rule in (("ours", ours), ("difference map, slice of highest mean", difference_mean)):
            k, spot = rule(painful, other)
            hits[name].append(hit_at(lesion[k] > 0, spot, cell, 1))
    fixed = constant_point_hits([reachable_cells(subjects[i][3] > 0, map_shape, 1) for i in correct])
    thirds = pd.qcut(gap, 3, labels=False, duplicates="drop")
    print(
        "\nBy lesion burden difference (painful - other knee; truth/knees.csv), "
        "correctly predicted, tolerance 1\n"
    )
    print("| third | burden difference | n | ours | difference map, slice of highest mean | fixed point |")
    print("|---|---|---|---|---|---|")
    for third in sorted(set(thirds)):
        rows = thirds == third
        cells = [percent(np.array(hits[name])[rows]) for name in hits]
        print(
            f"| {third + 1} | {gap[rows].min():.2f} to {gap[rows].max():.2f} | {rows.sum()} | "
            + " | ".join(cells)
            + f" | {percent(fixed[rows])} |"
        )


def percent(hits: np.ndarray) -> str:
    return f"{100 * hits.mean():.1f}" if len(hits) else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--truth", type=Path, help="synthetic truth/ folder (masks mapped by preprocess)")
    parser.add_argument("--cache-masks", type=Path, help="folder of cache-space <ID>_<side>.npz masks")
    args = parser.parse_args()
    outputs = read_cam_outputs(args.run)
    work = run_work_folder(args.run, read_run_info(args.run))
    masks, skipped = choose_masks(args.truth, args.cache_masks, work)
    if masks is None:
        raise SystemExit(f"no truth masks: {skipped}")
    subjects, keys, folds = [], [], []
    for position, row in enumerate(outputs.index.itertuples(index=False)):
        labels = masks(row.subject_id, row.painful_side)
        if labels is None or not np.any(labels):
            continue
        keys.append((str(row.subject_id), str(row.painful_side)))
        folds.append(row.fold)
        knee = KNEES.index(row.painful_side)
        cams = np.asarray(outputs.cams[position], np.float32)
        subjects.append((cams[knee], cams[1 - knee], bool(row.correct), np.asarray(labels)))
    map_shape = tuple(outputs.cams.shape[-2:])
    cell = cell_size(map_shape, SIZE)
    correct = np.array([s[2] for s in subjects])
    print(
        f"{args.run}: map {map_shape[0]} x {map_shape[1]}, {len(subjects)} subjects measured, "
        f"{correct.sum()} correctly predicted\n"
    )
    # Every rule as a function of the subject's position in ``subjects``.
    spots: dict[str, Callable[[int], Spot]] = {
        name: (lambda i, rule=rule: rule(subjects[i][0], subjects[i][1])) for name, rule in RULES.items()
    }
    priors = evidence_priors(outputs)
    if priors:
        spots["ours + evidence prior (the other folds' mean difference map)"] = lambda i: prior_hot_spot(
            subjects[i][0] - subjects[i][1], priors[folds[i]], SIZE
        )
    settings = [(name, codes, tol) for name, codes in LESION_SETS.items() for tol in (1, 0)]
    header = [f"{name}, tolerance {tol}" for name, _, tol in settings]
    rows: dict[str, list[str]] = {}
    misses: dict[str, list[str]] = {}
    for name, codes, tol in settings:
        keep = [i for i, s in enumerate(subjects) if np.isin(s[3], codes).any()]
        lesions = {i: np.isin(subjects[i][3], codes) for i in keep}
        ok = correct[keep]
        for rule_name, spot_of in spots.items():
            hits, slice_has_lesion = [], []
            for i in keep:
                k, spot = spot_of(i)
                hits.append(hit_at(lesions[i][k], spot, cell, tol))
                slice_has_lesion.append(bool(lesions[i][k].any()))
            hits_arr, on_lesion = np.array(hits), np.array(slice_has_lesion)
            rows.setdefault(rule_name, []).append(f"{percent(hits_arr[ok])} ({percent(hits_arr)})")
            if tol == 1:
                missed = ok & ~hits_arr
                misses.setdefault(rule_name, []).append(
                    f"{missed.sum()} misses: {(missed & ~on_lesion).sum()} slice without lesion, "
                    f"{(missed & on_lesion).sum()} spot off"
                )
        oracle = np.array([oracle_slice(subjects[i][0], subjects[i][1], lesions[i], tol) for i in keep])
        rows.setdefault("upper bound: ours with the slice chosen knowing the truth", []).append(
            f"{percent(oracle[ok])} ({percent(oracle)})"
        )
        chance = np.array([chance_hit_rate(lesions[i], map_shape, tol) for i in keep])
        rows.setdefault("chance: random pixel on a random slice (expected)", []).append(
            f"{percent(chance[ok])} ({percent(chance)})"
        )
        constant = constant_point_hits([reachable_cells(lesions[i], map_shape, tol) for i in keep])
        rows.setdefault("CAM-free: one fixed slice and cell, leave one out", []).append(
            f"{percent(constant[ok])} ({percent(constant)})"
        )
        header[settings.index((name, codes, tol))] += f", n = {ok.sum()} ({len(keep)})"
    print("Hit rate %, correctly predicted (all measured); n = correct (measured)\n")
    print("| rule | " + " | ".join(header) + " |")
    print("|---|" + "---|" * len(header))
    for rule_name, cells in rows.items():
        print(f"| {rule_name} | " + " | ".join(cells) + " |")
    aucs = pixel_aucs(subjects, correct)
    print(
        "\nWithin-knee pixel AUC for lesion vs not (all lesions, correctly predicted): "
        + ", ".join(f"{name} {value:.3f}" for name, value in aucs.items())
    )
    print("\nMisses at tolerance 1, correctly predicted subjects\n")
    print("| rule | " + " | ".join(name for name in LESION_SETS) + " |")
    print("|---|" + "---|" * len(LESION_SETS))
    for rule_name, cells in misses.items():
        print(f"| {rule_name} | " + " | ".join(cells) + " |")
    if args.truth is not None and (args.truth / "knees.csv").exists():
        by_burden(subjects, keys, args.truth, map_shape)


if __name__ == "__main__":
    main()
