"""Learning curve: out-of-fold AUC and gap to the oracle against the number of participants (issue 24).

    .venv/bin/python benchmarks/learning_curve.py --root /tmp/curve/lc --prune --publish \\
        --sizes 100 200 300 500 --seeds 2401 2402 2403 --out docs/learning_curve.json
    .venv/bin/python benchmarks/learning_curve.py --fast --root /tmp/lc-fast --out /tmp/lc-fast/curve.json

Each (size, seed) cell is its own cohort and work folder, ``ROOT/n{size}_s{seed}/``, made by the CLI
as a user would: ``kneepain synth --subjects N --seed S``, ``ingest``, ``preprocess``,
``cv WORK --folds K --seed S --preset P --run curve``, ``evaluate``. Cells run size by size (every
seed of the smallest size first), so a run stopped at any point leaves complete sizes. The cell
records every finished step with its wall and CPU seconds in ``cell.json``; the same command
continues where a killed run stopped (a killed synth is redone, ingest is replaced whole,
preprocess and cv resume). ``--prune`` deletes a finished cell's DICOM images and slice cache (about
3 GB per 100 participants; 500 participants x 3 seeds would need 50 GB); ``--publish`` writes the
per-size summary into the package, which ``kneepain evaluate`` draws each run against.

Separate cohorts per size, not subsets of one large cohort: ``kneepain synth`` draws each person from
(seed, index), but the participant ids, image folders and DICOM headers depend on the cohort's
size, so the 100-participant cohort of a seed is not a file-level prefix of its 500-participant one.

After every cell the script rewrites ``--out`` (one JSON: every cell, done or not, its figures and
compute, and per size the mean and between-seed spread) and the figure beside it (PNG and SVG).
The oracle is the generator's own score (the true lesion-burden difference), read as the demo
reads it (``truth/summary.json``, whole cohort) and recomputed on the evaluated participants with
the generator's :func:`kneepain.synth.difficulty.oracle_auc`; the gap is the latter minus the
pooled out-of-fold AUC. ``--fast`` (a handful of participants, tiny preset, one epoch) checks the
script in the test suite; its figures mean nothing. Synthetic data: no figure is a clinical result.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kneepain.synth.difficulty import auc, oracle_auc

RUN_NAME = "curve"
STEPS = ("synth", "ingest", "preprocess", "cv", "evaluate")
TARGET_GAP = 0.05


@dataclass(frozen=True)
class Plan:
    """The grid and the training settings, the same for every cell."""

    sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    folds: int
    preset: str
    epochs: int | None


# Plumbing only (the seed and size of gpu_check.py's smoke cohort); its figures are never quoted.
FAST = Plan(sizes=(8,), seeds=(21,), folds=2, preset="tiny", epochs=1)


def kneepain_command() -> list[str]:
    """This interpreter running the kneepain CLI, so the cells use the code the script imports."""
    return [sys.executable, "-m", "kneepain"]


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` whole (temporary file, then rename), so a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Cell:
    """One (size, seed): its folders, the steps done so far and its result, kept in ``cell.json``."""

    def __init__(self, root: Path, size: int, seed: int, plan: Plan) -> None:
        self.size, self.seed, self.plan = size, seed, plan
        self.dir = root / f"n{size}_s{seed}"
        self.cohort = self.dir / "cohort"
        self.work = self.dir / "work"
        self.run_dir = self.work / "runs" / RUN_NAME
        self.record_path = self.dir / "cell.json"
        self.record = read_json(self.record_path) or {"size": size, "seed": seed, "steps": {}}

    def done(self, step: str) -> bool:
        return self.record["steps"].get(step, {}).get("status") == "ok"

    def command(self, step: str) -> list[str]:
        """The CLI call of ``step`` (cv resumes when a killed run left its run folder)."""
        plan = self.plan
        if step == "synth":
            args = [
                "synth",
                "--out",
                str(self.cohort),
                "--subjects",
                str(self.size),
                "--seed",
                str(self.seed),
            ]
        elif step == "ingest":
            args = [
                "ingest",
                "--images",
                str(self.cohort / "images"),
                "--clinical",
                str(self.cohort / "clinical"),
            ]
            args += ["--out", str(self.work)]
        elif step == "preprocess":
            args = ["preprocess", str(self.work)]
        elif step == "cv":
            args = ["cv", str(self.work), "--folds", str(plan.folds), "--seed", str(self.seed)]
            args += ["--preset", plan.preset, "--run", RUN_NAME]
            args += ["--epochs", str(plan.epochs)] if plan.epochs else []
            args += ["--resume"] if self.run_dir.exists() else []
        else:
            args = ["evaluate", str(self.run_dir)]
        return [*kneepain_command(), *args]

    def run_step(self, step: str, log: Path) -> None:
        """Run one step, appending its output to the cell's log; record wall and CPU seconds."""
        if step == "synth" and self.cohort.exists():
            shutil.rmtree(self.cohort)  # a synth killed after its final rename but before cell.json
        command = self.command(step)
        print(f"[{time.strftime('%H:%M:%S')}] n={self.size} seed={self.seed} {step}", flush=True)
        cpu0, wall0 = children_cpu_s(), time.perf_counter()
        with log.open("a", encoding="utf-8") as handle:
            handle.write(f"\n$ {shlex.join(command)}\n")
            handle.flush()
            done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False)
        self.record["steps"][step] = {
            "status": "ok" if done.returncode == 0 else f"failed (exit {done.returncode})",
            "wall_s": round(time.perf_counter() - wall0, 1),
            "cpu_s": round(children_cpu_s() - cpu0, 1),
            "command": shlex.join(command),
        }
        self.save()
        if done.returncode != 0:
            raise RuntimeError(f"cell n={self.size} seed={self.seed}: {step} failed; see {log}")

    def run(self) -> None:
        """Every step not yet done, then the cell's figures."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for step in STEPS:
            if not self.done(step):
                self.run_step(step, self.dir / "log.txt")
        if "result" not in self.record:
            self.record["result"] = cell_result(self.cohort, self.run_dir)
            self.save()

    def prune(self) -> None:
        """Remove what a finished cell no longer needs (the DICOM images, the slice cache: about
        3 GB per 100 participants); its truth tables, run folder and figures stay."""
        if "result" not in self.record:
            return
        for bulky in (
            self.cohort / "images",
            self.work / "preprocess" / "cache.npy",
            self.work / "preprocess" / "parts",
        ):
            if bulky.is_dir():
                shutil.rmtree(bulky)
            elif bulky.exists():
                bulky.unlink()
        self.record["pruned"] = True
        self.save()

    def save(self) -> None:
        steps = self.record["steps"]
        self.record["complete"] = all(self.done(step) for step in STEPS)
        self.record["wall_s"] = round(sum(s["wall_s"] for s in steps.values()), 1)
        self.record["cpu_s"] = round(sum(s["cpu_s"] for s in steps.values()), 1)
        write_json(self.record_path, self.record)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def cell_result(cohort: Path, run_dir: Path) -> dict[str, Any]:
    """Pooled and per-fold AUC and oracle on the evaluated participants, from the stages' own files."""
    metrics = read_json(run_dir / "evaluation" / "metrics.json")
    truth = {row["subject_id"]: float(row["propensity"]) for row in _rows(cohort / "truth" / "subjects.csv")}
    predictions = _rows(run_dir / "predictions.csv")
    labels = np.array([int(float(row["label"])) for row in predictions])
    scores = np.array([float(row["prob_right"]) for row in predictions])
    propensity = np.array([truth[row["subject_id"]] for row in predictions])
    folds = np.array([int(row["fold"]) for row in predictions])
    oracle = oracle_auc(labels, propensity)
    fold_rows = []
    for fold in sorted(set(folds.tolist())):
        part = folds == fold
        fold_auc, fold_oracle = auc(labels[part], scores[part]), oracle_auc(labels[part], propensity[part])
        gap = None if fold_auc is None or fold_oracle is None else fold_oracle - fold_auc
        fold_rows.append(
            {"fold": fold, "n": int(part.sum()), "auc": fold_auc, "oracle": fold_oracle, "gap": gap}
        )
    fold_aucs = [row["auc"] for row in fold_rows if row["auc"] is not None]
    fold_gaps = [row["gap"] for row in fold_rows if row["gap"] is not None]
    return {
        "n_evaluated": int(metrics["n"]),
        "auc": metrics["auc"],
        "auc_ci_delong": metrics.get("auc_ci_delong"),
        "oracle_same_subjects": oracle,
        "oracle_cohort": read_json(cohort / "truth" / "summary.json").get("oracle_auc"),
        "gap": None if oracle is None else oracle - metrics["auc"],
        "folds": fold_rows,
        "fold_auc_sd": statistics.stdev(fold_aucs) if len(fold_aucs) > 1 else None,
        "fold_gap_sd": statistics.stdev(fold_gaps) if len(fold_gaps) > 1 else None,
    }


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(cells: list[Cell], plan: Plan) -> dict[str, Any]:
    """Per size: mean and between-seed SD of AUC, oracle and gap, and the mean between-fold SD."""
    sizes = []
    for size in plan.sizes:
        done = [c.record["result"] for c in cells if c.size == size and "result" in c.record]
        auc_mean, auc_sd = _mean_sd([r["auc"] for r in done])
        gap_mean, gap_sd = _mean_sd([r["gap"] for r in done])
        oracle_mean, oracle_sd = _mean_sd([r["oracle_same_subjects"] for r in done])
        evaluated_mean, _ = _mean_sd([r["n_evaluated"] for r in done])
        fold_auc_sd, _ = _mean_sd([r["fold_auc_sd"] for r in done if r["fold_auc_sd"] is not None])
        fold_gap_sd, _ = _mean_sd([r["fold_gap_sd"] for r in done if r["fold_gap_sd"] is not None])
        sizes.append(
            {
                "size": size,
                "seeds_done": [c.seed for c in cells if c.size == size and "result" in c.record],
                "n_evaluated_mean": evaluated_mean,
                "auc_mean": auc_mean,
                "auc_sd_between_seeds": auc_sd,
                "oracle_mean": oracle_mean,
                "oracle_sd_between_seeds": oracle_sd,
                "gap_mean": gap_mean,
                "gap_sd_between_seeds": gap_sd,
                "fold_auc_sd_mean": fold_auc_sd,
                "fold_gap_sd_mean": fold_gap_sd,
                "target_met": None if gap_mean is None else gap_mean <= TARGET_GAP,
            }
        )
    return {
        "synthetic": True,
        "note": "Synthetic cohorts made by `kneepain synth` (default phantom): not clinical results.",
        "what": "pooled out-of-fold AUC (kneepain evaluate); gap = oracle AUC on the same participants - it",
        "plan": {
            "sizes": list(plan.sizes),
            "seeds": list(plan.seeds),
            "folds": plan.folds,
            "preset": plan.preset,
            "epochs": plan.epochs,
            "cv_seed": "the cohort's seed",
        },
        "target_gap": TARGET_GAP,
        "cells_done": sum("result" in c.record for c in cells),
        "cells_planned": len(cells),
        "compute": {
            "wall_s": round(sum(c.record.get("wall_s", 0.0) for c in cells), 1),
            "cpu_s": round(sum(c.record.get("cpu_s", 0.0) for c in cells), 1),
            "timing_note": "each step's wall and CPU seconds (CPU: the step's processes, from getrusage); "
            "a step killed and resumed counts only its last attempt",
            "cores": len(os.sched_getaffinity(0)),
        },
        "sizes": sizes,
        "cells": [{"size": c.size, "seed": c.seed, **c.record} for c in cells],
    }


def plot(doc: dict[str, Any], stem: Path) -> None:
    """Two panels against participants: OOF AUC beside the oracle, and the gap with the target line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in doc["cells"] if "result" in c]
    sizes = [s for s in doc["sizes"] if s["auc_mean"] is not None]
    seeds = doc["plan"]["seeds"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), constrained_layout=True)
    width = max(doc["plan"]["sizes"]) / 60
    keys = (("auc", "auc_mean", "auc_sd_between_seeds"), ("gap", "gap_mean", "gap_sd_between_seeds"))
    for panel, (key, mean_key, sd_key) in zip(axes, keys, strict=True):
        for index, seed in enumerate(seeds):
            mine = [c for c in cells if c["seed"] == seed]
            if not mine:
                continue
            x = [c["size"] + (index + 1) * width for c in mine]  # beside the mean, not under it
            y = [c["result"][key] for c in mine]
            fold_sd = [c["result"]["fold_auc_sd" if key == "auc" else "fold_gap_sd"] or 0.0 for c in mine]
            panel.errorbar(
                x, y, yerr=fold_sd, fmt="o", ms=4, lw=0.8, capsize=2, alpha=0.6, color=f"C{index + 1}",
                label=f"seed {seed}",
            )  # fmt: skip
        if sizes:
            x = [s["size"] for s in sizes]
            sd = [s[sd_key] or 0.0 for s in sizes]
            panel.errorbar(
                x, [s[mean_key] for s in sizes], yerr=sd, fmt="s-", color="C0", lw=2, capsize=5,
                label="mean of the seeds", zorder=5,
            )  # fmt: skip
        panel.set_xlabel("participants synthesised (cohort size)")
        panel.set_xticks(doc["plan"]["sizes"])
        panel.grid(alpha=0.3)
    if sizes:
        axes[0].plot(
            [s["size"] for s in sizes], [s["oracle_mean"] for s in sizes], "k--", lw=1.2,
            label="oracle, same participants (mean)",
        )  # fmt: skip
    axes[0].set_ylabel("pooled out-of-fold AUC")
    axes[0].set_title("Out-of-fold AUC")
    lowest = min([c["result"]["auc"] for c in cells] + [0.5])
    axes[0].set_ylim(min(0.45, lowest - 0.05), 1.0)  # every cohort's dot stays in view
    span = max(doc["plan"]["sizes"]) - min(doc["plan"]["sizes"])
    for panel in axes:  # both panels over every planned size, finished or not
        panel.set_xlim(min(doc["plan"]["sizes"]) - 0.06 * span, max(doc["plan"]["sizes"]) + 0.1 * span)
    axes[1].axhline(TARGET_GAP, color="C3", ls=":", lw=1.5, label=f"target gap {TARGET_GAP}")
    axes[1].set_ylabel("oracle AUC minus out-of-fold AUC")
    axes[1].set_title("Gap to the oracle (lower is better)")
    for panel in axes:
        panel.legend(fontsize=7, loc="lower right" if panel is axes[0] else "upper right")
    plan = doc["plan"]
    fig.suptitle(
        f"Learning curve on fresh synthetic cohorts ({plan['folds']} folds, {plan['preset']} preset; "
        f"{doc['cells_done']} of {doc['cells_planned']} cells done). Synthetic data, not clinical.",
        fontsize=10,
    )
    note = "Dots: one cohort each, bar = SD between its folds. Squares: mean of seeds, bar = SD between seeds"
    fig.supxlabel(note + ".", fontsize=8)
    for suffix in (".png", ".svg"):
        fig.savefig(stem.with_suffix(suffix), dpi=130)
    plt.close(fig)


# What `kneepain evaluate` draws each run against (kneepain/evaluate/cohort_size.py).
PUBLISHED = Path(__file__).resolve().parents[1] / "src" / "kneepain" / "evaluate" / "learning_curve.json"


def published_summary(doc: dict[str, Any]) -> dict[str, Any]:
    """The per-size figures the package carries (no cells, no paths)."""
    keys = ("size", "seeds_done", "n_evaluated_mean", "auc_mean", "auc_sd_between_seeds", "oracle_mean",
            "gap_mean", "gap_sd_between_seeds", "fold_auc_sd_mean")  # fmt: skip
    return {
        "source": "benchmarks/learning_curve.py (docs/learning_curve.json, docs/experiments.md)",
        "synthetic": True,
        "note": doc["note"],
        "plan": doc["plan"],
        "cells_done": doc["cells_done"],
        "cells_planned": doc["cells_planned"],
        "sizes": [
            {k: round(size[k], 4) if isinstance(size[k], float) else size[k] for k in keys}
            for size in doc["sizes"]
            if size["auc_mean"] is not None
        ],
    }


def write_outputs(cells: list[Cell], plan: Plan, out: Path, publish: bool = False) -> dict[str, Any]:
    doc = summarize(cells, plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, doc)
    plot(doc, out.with_suffix(""))
    if publish:
        write_json(PUBLISHED, published_summary(doc))
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="Scratch: one folder per (size, seed) cell.")
    parser.add_argument("--out", type=Path, required=True, help="JSON; the figure beside it (.png, .svg).")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 300, 500])
    parser.add_argument("--seeds", type=int, nargs="+", default=[2401, 2402, 2403])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--epochs", type=int, default=None, help="Override the preset's epochs.")
    parser.add_argument("--fast", action="store_true", help="Seconds-long plumbing check (tests).")
    parser.add_argument("--summarize-only", action="store_true", help="Rewrite JSON and figure; run nothing.")
    parser.add_argument(
        "--prune", action="store_true", help="Delete each finished cell's images and slice cache (disk)."
    )
    parser.add_argument(
        "--publish", action="store_true", help=f"Also write the summary evaluate draws on ({PUBLISHED.name})."
    )
    options = parser.parse_args(argv)
    plan = (
        FAST
        if options.fast
        else Plan(
            tuple(sorted(options.sizes)), tuple(options.seeds), options.folds, options.preset, options.epochs
        )
    )
    cells = [Cell(options.root, size, seed, plan) for size in plan.sizes for seed in plan.seeds]
    for cell in cells:
        if options.summarize_only:
            continue
        try:
            cell.run()
            if options.prune:
                cell.prune()
        except RuntimeError as error:
            write_outputs(cells, plan, options.out, options.publish)
            print(error, file=sys.stderr)
            return 1
        write_outputs(cells, plan, options.out, options.publish)
    doc = write_outputs(cells, plan, options.out, options.publish)
    print(f"{doc['cells_done']} of {doc['cells_planned']} cells done; {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
