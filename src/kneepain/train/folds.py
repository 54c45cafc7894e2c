"""Subject splits: seeded stratified folds (written to JSON, checked for overlap) and the paper's
70/15/15 split stratified by sex, age and BMI with a balance report (the paper's Table 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kneepain.fileio import write_json

SPLITS = ("train", "validation", "test")


class SplitError(ValueError):
    """Subjects cannot be split as asked (too few, one class, overlapping folds)."""


def make_folds(subject_ids: list[str], labels: np.ndarray, n_folds: int, seed: int) -> list[list[str]]:
    """Test subjects of each of ``n_folds`` folds, stratified by label (sklearn StratifiedKFold)."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    counts = {int(c): int((labels == c).sum()) for c in np.unique(labels)}
    if len(counts) < 2:
        raise SplitError(f"only one class present ({counts}); a pain-side classifier needs both labels")
    if n_folds < 2:
        raise SplitError(f"--folds must be at least 2, got {n_folds}")
    if min(counts.values()) < n_folds:
        raise SplitError(
            f"too few subjects for {n_folds} folds: label counts {counts}; each class needs at least "
            f"{n_folds} subjects (one per test fold)"
        )
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    ids = np.asarray(subject_ids, dtype=object)
    return [sorted(ids[test].tolist()) for _, test in splitter.split(np.zeros(len(ids)), labels)]


def check_folds(folds: list[list[str]], subject_ids: list[str] | None = None, where: str = "folds") -> None:
    """No subject in two folds; with ``subject_ids``, every one of them in exactly one fold."""
    seen: dict[str, int] = {}
    for index, fold in enumerate(folds):
        for sid in fold:
            if sid in seen:
                raise SplitError(f"{where}: subject {sid} is in fold {seen[sid]} and fold {index}")
            seen[sid] = index
    if subject_ids is not None:
        missing = sorted(set(subject_ids) - set(seen))
        extra = sorted(set(seen) - set(subject_ids))
        if missing or extra:
            raise SplitError(
                f"{where}: subjects missing from folds {missing[:10]}, unknown in folds {extra[:10]}"
            )


def write_folds(path: Path, folds: list[list[str]], seed: int, **extra: Any) -> None:
    """folds.json: seed, the test subject ids of each fold (checked first) and ``extra`` keys
    (a run adds each fold's ``validation`` and ``train`` ids, so a resumed run reads its parts back)."""
    check_folds(folds, where=str(path))
    write_json(path, {"seed": seed, "n_folds": len(folds), "folds": folds, **extra})


def read_folds(path: Path) -> dict[str, Any]:
    """Read folds.json and check its test folds are lists of ids with no subject in two of them."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SplitError(f"{path}: unreadable folds file ({error})") from error
    folds = data.get("folds") if isinstance(data, dict) else None
    if not isinstance(folds, list) or not all(isinstance(fold, list) for fold in folds):
        raise SplitError(f"{path}: 'folds' must be a list of lists of subject ids")
    check_folds(folds, where=str(path))
    return data


def hold_out(
    subject_ids: list[str], labels: np.ndarray, fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Stratified (keep, held_out) of the given subjects; held_out is ~``fraction`` (early stopping)."""
    from sklearn.model_selection import train_test_split

    if fraction <= 0:
        return list(subject_ids), []
    labels = np.asarray(labels)
    counts = [int((labels == c).sum()) for c in (0, 1)]
    if min(counts) < 2:
        raise SplitError(f"too few subjects to hold out a validation part: label counts {counts}")
    n_held = max(2, round(fraction * len(labels)))
    keep, held = train_test_split(list(subject_ids), test_size=n_held, stratify=labels, random_state=seed)
    return sorted(keep), sorted(held)


def _interleave(n: int, shares: tuple[float, ...]) -> list[int]:
    """Split labels for n ordered items: each step goes to the split furthest behind its share.

    Hand-written (a few lines): run down a list ordered by stratum, this gives every stratum its
    proportional share within one subject and the totals within one subject of 70/15/15.
    """
    counts = np.zeros(len(shares))
    out = []
    for i in range(n):
        behind = (i + 1) * np.asarray(shares) - counts
        choice = int(np.argmax(behind))
        counts[choice] += 1
        out.append(choice)
    return out


def stratified_split(
    table: pd.DataFrame, seed: int, shares: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> pd.Series:
    """train / validation / test for each subject, stratified by sex, age tercile and BMI tercile.

    Subjects are ordered by stratum and, within it, at random (numpy Generator from ``seed``),
    then dealt out in proportion. Missing age/BMI form their own stratum. Returns a Series indexed
    like ``table``.
    """
    if len(table) < 7:
        raise SplitError(f"too few subjects ({len(table)}) for a 70/15/15 split")
    rng = np.random.default_rng(seed)
    strata = pd.DataFrame(index=table.index)
    strata["sex"] = table["sex"].fillna("unknown").astype(str)
    for column in ("age", "bmi"):
        values = pd.to_numeric(table[column], errors="coerce")
        strata[column] = pd.qcut(values, 3, labels=False, duplicates="drop").fillna(-1).astype(int)
    strata["random"] = rng.random(len(table))
    order = strata.sort_values(["sex", "age", "bmi", "random"]).index
    assignment = pd.Series(index=order, data=[SPLITS[k] for k in _interleave(len(order), shares)])
    return assignment.reindex(table.index)


def balance_report(table: pd.DataFrame, split: pd.Series) -> pd.DataFrame:
    """Per split: n, age and BMI mean +/- SD, % women, % right knee painful; p-values across splits.

    Age and BMI: one-way ANOVA; sex and label: chi-square test of independence (scipy).
    """
    from scipy import stats

    groups = {name: table[split == name] for name in SPLITS}
    rows = [{"parameter": "n", **{k: str(len(g)) for k, g in groups.items()}, "p_value": None, "method": ""}]
    for column, name in (("age", "Age (years)"), ("bmi", "BMI (kg/m2)")):
        values = {k: pd.to_numeric(g[column], errors="coerce").dropna() for k, g in groups.items()}
        cells = {k: f"{v.mean():.2f} ± {v.std():.2f}" for k, v in values.items()}
        usable = [v.to_numpy() for v in values.values() if len(v) > 1]
        p = float(stats.f_oneway(*usable).pvalue) if len(usable) == len(SPLITS) else None
        rows.append({"parameter": name, **cells, "p_value": p, "method": "one-way ANOVA"})
    for column, level, name in (("sex", "female", "Women (%)"), ("label", 1, "Right knee painful (%)")):
        flags = {k: (g[column] == level) for k, g in groups.items()}
        cells = {k: f"{100 * f.mean():.1f}" for k, f in flags.items()}
        contingency = np.array([[int(f.sum()), int((~f).sum())] for f in flags.values()])
        ok = contingency.sum(axis=0).min() > 0
        p = float(stats.chi2_contingency(contingency).pvalue) if ok else None
        rows.append({"parameter": name, **cells, "p_value": p, "method": "chi-square"})
    return pd.DataFrame(rows, columns=["parameter", *SPLITS, "p_value", "method"])
