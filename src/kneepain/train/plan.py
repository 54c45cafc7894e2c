"""Run plans: which subjects each fold of a run trains on, validates on and predicts.

``plan_cv`` makes a cross-validation's folds by the fold rule, ``plan_split`` takes the 70/15/15
split's parts; a resumed run's plan is read back from its folds.json (``read_plan``), never made
again. ``check_plan`` refuses overlapping parts and unknown subjects before anything trains.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd

from kneepain.contracts import FOLDS_FILE, SPLIT_FILE, WorkPaths, training_table
from kneepain.train.folds import SPLITS, SplitError, check_folds, hold_out, make_folds, read_folds
from kneepain.train.inputs import RunInputError, load_inputs


@dataclass(frozen=True)
class Parts:
    """One fold's subject ids: trained on, held out for early stopping (may be empty), predicted."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]


@dataclass(frozen=True)
class RunPlan:
    """What one run trains: a bundle per fold on that fold's parts.

    ``kind`` is ``cv`` (the test parts partition the training table) or ``split`` (one fold: the
    70/15/15 split). ``source`` is the file the parts were read from (split.json, or folds.json
    for a resumed run), None when the fold rule made them; folds.json is written only then.
    """

    kind: str
    work: Path
    run_dir: Path
    model: str
    seed: int
    parts: tuple[Parts, ...]
    source: Path | None = None

    @property
    def folds(self) -> int:
        """Number of folds (1 for a split run)."""
        return len(self.parts)

    @property
    def predicted(self) -> list[str]:
        """Every test subject in fold order: the run's predictions.csv holds each exactly once."""
        return [sid for part in self.parts for sid in part.test]


def plan_cv(
    work: Path,
    run_name: str,
    *,
    folds: int,
    model: str,
    seed: int,
    val_fraction: float,
    resume: bool = False,
) -> RunPlan:
    """The folds of a cross-validation run: read back from folds.json on resume, else made by the
    fold rule (stratified test folds, then a stratified validation part of each fold's rest, seed + k).
    """
    work, model = Path(work), model.upper()
    run_dir = WorkPaths(work).runs / run_name
    if resume and (run_dir / FOLDS_FILE).exists():
        plan = read_plan("cv", work, run_dir, model, seed)
        if plan.folds != folds:
            raise RunInputError(
                f"{run_dir / FOLDS_FILE}: holds {plan.folds} folds, not the {folds} asked for"
            )
        return plan
    table, _, _ = load_inputs(work, model)
    ids, labels = table["subject_id"].tolist(), table["label"].to_numpy()
    parts = []
    try:
        for k, test_ids in enumerate(make_folds(ids, labels, folds, seed)):
            rest = table[~table["subject_id"].isin(test_ids)]
            train_ids, val_ids = hold_out(
                rest["subject_id"].tolist(), rest["label"].to_numpy(), val_fraction, seed + k
            )
            parts.append(Parts(tuple(train_ids), tuple(val_ids), tuple(test_ids)))
    except SplitError as error:
        raise RunInputError(f"{WorkPaths(work).cohort_table} (Model {model}): {error}") from error
    return RunPlan("cv", work, run_dir, model, seed, tuple(parts))


def plan_split(work: Path, run_name: str, *, model: str, seed: int, resume: bool = False) -> RunPlan:
    """The one fold of a split run: split.json's parts (on resume folds.json's, which must agree)."""
    work, model = Path(work), model.upper()
    run_dir = WorkPaths(work).runs / run_name
    path = run_dir / SPLIT_FILE
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
        written = Parts(*(tuple(str(s) for s in split[name]) for name in SPLITS))
    except FileNotFoundError as error:
        raise RunInputError(f"{path}: not found (run `kneepain split` first)") from error
    except (ValueError, KeyError, TypeError) as error:
        raise RunInputError(f"{path}: needs lists train, validation and test ({error})") from error
    if resume and (run_dir / FOLDS_FILE).exists():
        plan = read_plan("split", work, run_dir, model, seed)
        if plan.parts != (written,):
            raise RunInputError(
                f"{run_dir / FOLDS_FILE}: the run's parts differ from {path} (rewritten since the run "
                "began?); start a new run (--run NAME)"
            )
        return plan
    return RunPlan("split", work, run_dir, model, seed, (written,), source=path)


def _id_lists(data: dict[str, Any], key: str, n: int, path: Path) -> list[list[str]] | None:
    """folds.json's ``key``: ``n`` lists of subject ids, or None when absent."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n or not all(isinstance(ids, list) for ids in value):
        raise RunInputError(f"{path}: '{key}' must hold one list of subject ids per fold ({n})")
    return [[str(s) for s in ids] for ids in value]


def read_plan(kind: str, work: Path, run_dir: Path, model: str, seed: int) -> RunPlan:
    """A started run's plan as its folds.json records it: a resumed run trains exactly these parts.

    A folds.json from before it recorded ``train`` gives each fold the rest of the training table,
    ordered as the fold rule ordered it.
    """
    path = run_dir / FOLDS_FILE
    try:
        data = read_folds(path)
    except SplitError as error:
        raise RunInputError(str(error)) from error
    if data.get("seed") != seed:
        raise RunInputError(f"{path}: made with seed {data.get('seed')!r}, not {seed}")
    tests = [[str(s) for s in ids] for ids in data["folds"]]
    validation = _id_lists(data, "validation", len(tests), path) or [[] for _ in tests]
    train = _id_lists(data, "train", len(tests), path)
    if train is None:
        ids = training_table(work, model)["subject_id"].tolist()
        train = []
        for test, held in zip(tests, validation, strict=True):
            rest = [s for s in ids if s not in set(test) | set(held)]
            train.append(sorted(rest) if held else rest)
    parts = tuple(
        Parts(tuple(a), tuple(b), tuple(c)) for a, b, c in zip(train, validation, tests, strict=True)
    )
    return RunPlan(kind, work, run_dir, model, seed, parts, source=path)


def check_plan(plan: RunPlan, table: pd.DataFrame) -> None:
    """Refuse parts that repeat a subject or overlap within a fold, subjects outside the training
    table, a split part with one class, or (cv) test parts that do not partition the table."""
    where = plan.source or f"{plan.run_dir.name} folds"
    known = set(table["subject_id"])
    labels = dict(zip(table["subject_id"], table["label"], strict=True))
    for k, part in enumerate(plan.parts):
        named = {"train": part.train, "validation": part.validation, "test": part.test}
        for name, ids in named.items():
            twice = sorted(s for s, n in Counter(ids).items() if n > 1)
            if twice:
                raise RunInputError(f"{where}: subject {twice[0]} is twice in the {name} part of fold {k}")
        for (a, first), (b, second) in combinations(named.items(), 2):
            both = sorted(set(first) & set(second))
            if both:
                raise RunInputError(
                    f"{where}: subject {both[0]} is in both the {a} and the {b} part of fold {k}"
                )
        unknown = sorted(set(part.train + part.validation + part.test) - known)
        if unknown:
            raise RunInputError(f"{where}: subjects {unknown[:10]} of fold {k} are not in the training table")
        for name in ("train", "test") if plan.kind == "split" else ():
            if len({labels[s] for s in named[name]}) < 2:
                raise RunInputError(f"{where}: the {name} part has one class only")
    if plan.kind == "cv":
        try:
            check_folds([list(part.test) for part in plan.parts], sorted(known), where=str(where))
        except SplitError as error:
            raise RunInputError(str(error)) from error
