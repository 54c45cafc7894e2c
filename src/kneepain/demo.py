"""The one-command demo: every stage, in order, on a synthetic cohort.

Each stage runs as its own `kneepain <stage>` process, exactly as a user would chain them: the
files between stages are the only contract, so the demo also proves the chain works from files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kneepain.console import console


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs on and how long it may take."""

    out: Path
    subjects: int
    seed: int
    fast: bool
    folds: int
    workers: int | None = None


@dataclass(frozen=True)
class DemoStep:
    """One stage of the chain: a name for people and the CLI arguments after `kneepain`."""

    name: str
    args: list[str]


def demo_steps(options: DemoOptions) -> list[DemoStep]:
    """The stages of the demo with their arguments, in order."""
    cohort = options.out / "cohort"
    work = options.out / "work"
    run = work / "runs" / "demo"
    seed = str(options.seed)
    workers = ["--workers", str(options.workers)] if options.workers else []
    preset = ["--preset", "tiny" if options.fast else "small"]
    return [
        DemoStep(
            "synth",
            ["synth", "--out", str(cohort), "--subjects", str(options.subjects), "--seed", seed, *workers],
        ),
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
            ["cv", str(work), "--run", "demo", "--folds", str(options.folds), "--seed", seed, *preset],
        ),
        DemoStep("evaluate", ["evaluate", str(run)]),
        DemoStep("cam", ["cam", str(run), "--truth", str(cohort / "truth")]),
        DemoStep("report", ["report", str(run)]),
    ]


def run_step(step: DemoStep) -> float:
    """Run one stage as `python -m kneepain ...`; stop the demo with its message if it fails."""
    console.rule(f"[bold]{step.name}")
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "kneepain", *step.args], check=False)
    if completed.returncode != 0:
        console.print(f"[red]demo stopped: stage '{step.name}' failed (exit {completed.returncode})")
        raise SystemExit(completed.returncode)
    return time.perf_counter() - start


def headline(options: DemoOptions) -> list[str]:
    """The numbers a reader wants first, read back from the stages' own files."""
    lines = ["SYNTHETIC DATA: these numbers describe the generator, not any clinical population."]
    summary_path = options.out / "cohort" / "truth" / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        for key in ("oracle_auc", "shortcut_auc"):
            if summary.get(key) is not None:
                lines.append(f"{key.replace('_', ' ')} (from truth): {summary[key]:.3f}")
    metrics_path = options.out / "work" / "runs" / "demo" / "evaluation" / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        auc = metrics.get("auc")
        low, high = metrics.get("auc_ci_delong", [None, None])
        if auc is not None:
            ci = f" (95% CI {low:.3f}-{high:.3f})" if low is not None else ""
            lines.append(f"out-of-fold AUC: {auc:.3f}{ci}, n = {metrics.get('n', '?')}")
    report = options.out / "work" / "runs" / "demo" / "report.html"
    if report.exists():
        lines.append(f"report: {report.resolve()}")
    return lines


def run_demo(options: DemoOptions) -> None:
    """Run every stage on a synthetic cohort and print where the report is, with headline numbers."""
    options.out.mkdir(parents=True, exist_ok=True)
    console.print(
        f"kneepain demo: {options.subjects} synthetic participants, {options.folds}-fold CV, "
        f"{'fast' if options.fast else 'full'} configuration, output in {options.out}"
    )
    timings = {step.name: run_step(step) for step in demo_steps(options)}
    console.rule("[bold]done")
    for name, seconds in timings.items():
        console.print(f"{name:>18}: {seconds:7.1f} s")
    for line in headline(options):
        console.print(line)
