"""The one-command demo: every stage, in order, on a synthetic cohort.

Each stage runs as its own `kneepain <stage>` process, exactly as a user would chain them: the
files between stages are the only contract, so the demo also proves the chain works from files.
"""

from __future__ import annotations

import csv
import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kneepain.console import console
from kneepain.fileio import write_json, write_text

DEMO_RECORD = "demo.json"
PREDICT_EXAMPLE = "predict_example.sh"  # the README's first "After the demo" command runs it


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
        "predict_example": held_out_example(options),
    }


def _kneepain_command() -> str:
    """The `kneepain` of this environment by its full path, so a printed command runs from any shell."""
    beside = Path(sys.executable).with_name("kneepain")
    return str(beside) if beside.exists() else "kneepain"


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def held_out_example(options: DemoOptions) -> dict[str, Any] | None:
    """A participant fold_00's model never trained on, and the exact `kneepain predict` command for them.

    The first participant (by id) of fold 0's test part whose two knee series were read without a
    problem and passed QC: predicting anyone else with fold_00's bundle would be an in-sample
    prediction. None when the run's files do not allow one.
    """
    work = options.out / "work"
    run = work / "runs" / "demo"
    try:
        test_ids = json.loads((run / "folds.json").read_text(encoding="utf-8"))["folds"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None
    series: dict[tuple[str, str], str] = {}
    for row in _rows(work / "ingest" / "series.csv"):
        if not row.get("problem"):
            series[(row["subject_id"], row["side"])] = row["path"]
    passed = {r["subject_id"] for r in _rows(work / "preprocess" / "index.csv") if r.get("qc_pass") == "True"}
    labels = {r["subject_id"]: r["label"] for r in _rows(work / "ingest" / "cohort.csv")}
    for subject in sorted(test_ids):
        left, right = series.get((subject, "left")), series.get((subject, "right"))
        if left and right and subject in passed:
            command = [_kneepain_command(), "predict", "--left", left, "--right", right]
            command += ["--model", str((run / "fold_00" / "bundle").resolve()), "--out", "pred"]
            return {
                "subject_id": subject,
                "painful_side": "right" if labels.get(subject) == "1" else "left",
                "command": shlex.join(command),
            }
    return None


def write_predict_example(out: Path, example: dict[str, Any] | None) -> Path | None:
    """``out/predict_example.sh``: the held-out participant's predict command as a script (extra
    arguments pass through, e.g. ``--json``); None when the run allows no example."""
    if not example:
        return None
    target = out / PREDICT_EXAMPLE
    text = (
        "#!/bin/sh\n"
        f"# Written by `kneepain demo`: participant {example['subject_id']} (painful knee "
        f"{example['painful_side']}), whom fold_00's model never trained on; output in ./pred\n"
        f'{example["command"]} "$@"\n'
    )
    write_text(target, text)
    return target


def localization_verdict(numbers: dict[str, Any]) -> str:
    """Plain words: does our CAM rule alone beat the CAM-free fixed point, and with the prior?"""
    point = numbers.get("pointing_hit_rate_correct_constant")
    ours = numbers.get("pointing_hit_rate_correct_ours")
    prior = numbers.get("pointing_hit_rate_correct_prior")
    if point is None or ours is None:
        return ""
    pct = f"{100 * ours:.1f}% against {100 * point:.1f}%"
    if ours <= point:
        text = f"Our CAM rule alone loses to the CAM-free fixed point: {pct}"
    else:
        text = f"Our CAM rule beats the CAM-free fixed point: {pct}"
    if prior is not None:
        relation = "above" if prior > point else "still not above"
        text += f"; with the other folds' evidence prior {100 * prior:.1f}%, {relation} the point"
    return text + "."


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
        verdict = localization_verdict(numbers)
        if verdict:
            lines.append(verdict)
    if numbers.get("report"):
        lines.append(f"report: {numbers['report']}")
    example = numbers.get("predict_example")
    if example:
        lines.append(
            f"predict a participant fold_00 never trained on ({example['subject_id']}, painful knee "
            f"{example['painful_side']}):"
        )
        lines.append(f"  {example['command']}")
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
    write_predict_example(options.out, record["headline"].get("predict_example"))
    console.rule("[bold]done")
    for name, seconds in record["seconds"].items():
        console.print(f"{name:>18}: {seconds:7.1f} s")
    for line in headline(record["headline"]):
        console.print(line, soft_wrap=True, markup=False, highlight=False)  # commands stay copyable
    return record
