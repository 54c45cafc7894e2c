"""The one-command demo: every stage, in order, on a synthetic cohort.

Each stage runs as its own `kneepain <stage>` process, exactly as a user would chain them: the
files between stages are the only contract, so the demo also proves the chain works from files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kneepain.console import console
from kneepain.fileio import write_json

DEMO_RECORD = "demo.json"


class DemoError(RuntimeError):
    """The demo cannot start or go on (a clash with an earlier demo's folder, a failed stage)."""


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs on and how long it may take."""

    out: Path
    subjects: int
    seed: int
    fast: bool
    folds: int
    workers: int | None = None

    def record(self) -> dict[str, Any]:
        """What decides the demo's results (not the output folder or the worker count)."""
        return {k: v for k, v in asdict(self).items() if k not in ("out", "workers")}


@dataclass(frozen=True)
class DemoStep:
    """One stage of the chain: a name for people and the CLI arguments after `kneepain`."""

    name: str
    args: list[str]


def demo_steps(options: DemoOptions, *, resume: bool = False) -> list[DemoStep]:
    """The stages of the demo with their arguments, in order.

    With ``resume`` (an earlier demo with the same options stopped in this folder) a finished
    cohort is kept and cross-validation continues from its finished folds.
    """
    cohort = options.out / "cohort"
    work = options.out / "work"
    run = work / "runs" / "demo"
    seed = str(options.seed)
    workers = ["--workers", str(options.workers)] if options.workers else []
    preset = ["--preset", "tiny" if options.fast else "small"]
    keep_cohort = resume and (cohort / "truth" / "summary.json").exists()
    resume_cv = ["--resume"] if resume and (run / "run.json").exists() else []
    synth = [] if keep_cohort else [
        DemoStep(
            "synth",
            ["synth", "--out", str(cohort), "--subjects", str(options.subjects), "--seed", seed, *workers],
        )
    ]  # fmt: skip
    return [
        *synth,
        DemoStep(
            "ingest",
            [
                "ingest",
                *("--images", str(cohort / "images")),
                *("--clinical", str(cohort / "clinical")),
                *("--out", str(work)),
                *workers,
            ],
        ),
        DemoStep("preprocess", ["preprocess", str(work), *workers]),
        DemoStep(
            "cross-validation",
            [
                *("cv", str(work), "--run", "demo", "--folds", str(options.folds), "--seed", seed),
                *preset,
                *resume_cv,
            ],
        ),
        DemoStep("evaluate", ["evaluate", str(run)]),
        DemoStep("cam", ["cam", str(run), "--truth", str(cohort / "truth")]),
        DemoStep("report", ["report", str(run)]),
    ]


def run_step(step: DemoStep) -> float:
    """Run one stage as `python -m kneepain ...`; raise DemoError naming the stage if it fails."""
    console.rule(f"[bold]{step.name}")
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "kneepain", *step.args], check=False)
    if completed.returncode != 0:
        raise DemoError(f"stage '{step.name}' failed (exit {completed.returncode}); its message is above")
    return time.perf_counter() - start


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def headline_numbers(options: DemoOptions) -> dict[str, Any]:
    """The numbers a reader wants first, read back from the stages' own files."""
    run = options.out / "work" / "runs" / "demo"
    truth = _read_json(options.out / "cohort" / "truth" / "summary.json")
    metrics = _read_json(run / "evaluation" / "metrics.json")
    cams = _read_json(run / "cam" / "localization.json")
    report = run / "report.html"
    return {
        "synthetic": True,
        "oracle_auc": truth.get("oracle_auc"),
        "shortcut_auc": truth.get("shortcut_auc"),
        "auc": metrics.get("auc"),
        "auc_ci_delong": metrics.get("auc_ci_delong"),
        "n": metrics.get("n"),
        "pointing_hit_rate_correct": cams.get("pointing_hit_rate_correct"),
        "pointing_hit_rate_correct_ours": cams.get("pointing_hit_rate_correct_ours"),
        "pointing_hit_rate_correct_prior": cams.get("pointing_hit_rate_correct_prior"),
        "pointing_hit_rate_correct_constant": cams.get("pointing_hit_rate_correct_constant"),
        "area_above_half_pct_mean": cams.get("area_above_half_pct_mean"),
        "report": str(report.resolve()) if report.exists() else None,
    }


def headline(numbers: dict[str, Any]) -> list[str]:
    """People-readable lines of :func:`headline_numbers`, starting with the synthetic-data warning."""
    lines = ["SYNTHETIC DATA: these numbers describe the generator, not any clinical population."]
    for key in ("oracle_auc", "shortcut_auc"):
        if numbers.get(key) is not None:
            lines.append(f"{key.replace('_', ' ')} (from truth): {numbers[key]:.3f}")
    if numbers.get("auc") is not None:
        low, high = numbers.get("auc_ci_delong") or (None, None)
        ci = f" (95% CI {low:.3f}-{high:.3f})" if low is not None else ""
        lines.append(f"out-of-fold AUC: {numbers['auc']:.3f}{ci}, n = {numbers.get('n', '?')}")
    if numbers.get("pointing_hit_rate_correct") is not None:
        rate = 100 * numbers["pointing_hit_rate_correct"]
        lines.append(f"CAM hot spot on a true lesion (correct predictions, paper's rule): {rate:.1f}%")
        for key, name in (
            ("pointing_hit_rate_correct_ours", "our rule"),
            ("pointing_hit_rate_correct_prior", "our rule + the other folds' evidence prior"),
            ("pointing_hit_rate_correct_constant", "a fixed point, no CAM (baseline)"),
        ):
            if numbers.get(key) is not None:
                lines.append(f"  {name}: {100 * numbers[key]:.1f}%")
    if numbers.get("report"):
        lines.append(f"report: {numbers['report']}")
    return lines


def check_earlier_demo(options: DemoOptions) -> bool:
    """True when ``out`` holds an earlier demo with the same options (resume it); refuse a different one."""
    record_path = options.out / DEMO_RECORD
    if not record_path.exists():
        if options.out.exists() and any(options.out.iterdir()):
            raise DemoError(
                f"{options.out}: exists, is not empty and holds no {DEMO_RECORD}; choose a new folder"
            )
        return False
    try:
        earlier = json.loads(record_path.read_text(encoding="utf-8"))["options"]
    except (ValueError, KeyError, TypeError) as error:
        raise DemoError(f"{record_path}: unreadable demo record ({error}); choose a new folder") from error
    if earlier != options.record():
        raise DemoError(
            f"{record_path}: this folder holds a demo run with {earlier}, not {options.record()}; "
            "choose a new --out or repeat the same options to resume it"
        )
    return True


def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Run every stage on a synthetic cohort; print and write (``out/demo.json``) the headline numbers."""
    resume = check_earlier_demo(options)
    options.out.mkdir(parents=True, exist_ok=True)
    record_path = options.out / DEMO_RECORD
    record: dict[str, Any] = {"options": options.record(), "status": "running", "seconds": {}}
    write_json(record_path, record)
    console.print(
        f"kneepain demo: {options.subjects} synthetic participants, {options.folds}-fold CV, "
        f"{'fast' if options.fast else 'full'} configuration, output in {options.out}"
        + (" (resuming the earlier run in this folder)" if resume else "")
    )
    start = time.perf_counter()
    for step in demo_steps(options, resume=resume):
        try:
            record["seconds"][step.name] = round(run_step(step), 1)
        except DemoError:
            write_json(record_path, {**record, "status": f"failed at {step.name}"})
            raise
        write_json(record_path, record)
    record["seconds"]["total"] = round(time.perf_counter() - start, 1)
    record.update(status="complete", headline=headline_numbers(options))
    write_json(record_path, record)
    console.rule("[bold]done")
    for name, seconds in record["seconds"].items():
        console.print(f"{name:>18}: {seconds:7.1f} s")
    for line in headline(record["headline"]):
        console.print(line)
    return record
