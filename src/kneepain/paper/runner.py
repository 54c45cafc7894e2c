"""Run the paper's experiments step by step, skipping what is already done, then write the document.

Each step is a `kneepain` stage called in this process through the CLI itself (the same arguments
a user would type, printed before it runs), which saves starting Python and torch again for each
of the twenty-odd stage calls. A stage that refuses its input stops the study with its own message
and the command that failed; everything finished before stays, and the same `kneepain paper`
command continues from there.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from kneepain.console import console, safe
from kneepain.contracts import WorkPaths
from kneepain.fileio import write_json
from kneepain.paper.plan import (
    CORE,
    Experiment,
    PaperError,
    PaperOptions,
    Step,
    minutes,
    plan,
)

RECORD_FILE = "paper.json"


def check_inputs(options: PaperOptions) -> None:
    """Refuse a work folder without ingest tables and a registered cache, naming what is missing."""
    paths = WorkPaths(options.work)
    for path, stage in ((paths.cohort_table, "ingest"), (paths.cache_index, "preprocess")):
        if not path.exists():
            raise PaperError(f"{path}: not found; run `kneepain {stage}` on this work folder first")
    if options.review_db is not None and not options.review_db.is_file():
        raise PaperError(f"{options.review_db}: review database not found (--review-db)")
    if not options.fast and options.preset not in ("small", "paper", "tiny"):
        raise PaperError(f"--preset {options.preset}: expected small, paper or tiny")
    if options.cv_folds < 2:
        raise PaperError(f"--folds {options.cv_folds}: cross-validation needs at least 2 folds")


def stage_command(argv: list[str]) -> str:
    """The stage call as a user would type it."""
    return shlex.join(["kneepain", *argv])


def run_stage(argv: list[str]) -> None:
    """Run one `kneepain` stage in this process; a refusal (exit code not 0) is a PaperError."""
    import click
    import typer

    from kneepain.cli import app

    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="kneepain", standalone_mode=False)
    except click.ClickException as error:  # a usage error: an option the stage does not know
        raise PaperError(f"{stage_command(argv)}: {error.format_message()}") from error
    if code not in (None, 0):
        raise PaperError(f"stage failed (exit {code}): {stage_command(argv)}; its message is above")


def print_plan(experiments: list[Experiment], options: PaperOptions) -> float:
    """Print each experiment with its estimated time (what is not done yet); return the total seconds."""
    fast = " (--fast: a smoke test, not the paper's protocol)" if options.fast else ""
    epochs = f", {options.training_epochs} epochs" if options.training_epochs else ""
    console.print(
        f"[bold]paper[/bold]: {safe(options.work)}: preset {options.training_preset}, "
        f"{options.cv_folds} folds{epochs}, seed {options.seed}{fast}"
    )
    console.print(
        "paper: estimated time still to run (training steps timed here; other jobs on the machine slow it):"
    )
    total = 0.0
    for experiment in experiments:
        if experiment.selected:
            estimate = experiment.estimate_s
            total += estimate
            state = "done" if estimate == 0 else minutes(estimate)
            console.print(f"  {experiment.name:<14} {state:>8}  {safe(experiment.title)}")
        else:
            console.print(
                f"  {experiment.name:<14} {'-':>8}  {safe(experiment.title)}: {safe(experiment.why_not)}"
            )
    console.print(f"  {'total':<14} {minutes(total) if total else 'done':>8}")
    return total


def _step_record(step: Step, status: str, seconds: float | None) -> dict[str, Any]:
    return {
        "title": step.title,
        "command": stage_command(step.argv()) if step.args else "",
        "status": status,
        "seconds": None if seconds is None else round(seconds, 1),
    }


def run_experiments(experiments: list[Experiment], options: PaperOptions) -> dict[str, Any]:
    """Run every selected experiment's steps in order; the record is rewritten after each step."""
    record: dict[str, Any] = {
        "options": {
            "work": str(options.work.resolve()),
            "preset": options.training_preset,
            "requested_preset": options.preset,
            "fast": options.fast,
            "folds": options.cv_folds,
            "seed": options.seed,
            "epochs": options.training_epochs,
            "bootstrap": options.bootstrap,
            "budget_minutes": options.budget_minutes,
            "with": list(options.include),
            "review_db": str(options.review_db) if options.review_db else None,
        },
        "experiments": [],
        "status": "running",
    }
    target = options.out_dir / RECORD_FILE
    selected = [e for e in experiments if e.selected]
    count, position = sum(len(e.steps) for e in selected), 0
    for experiment in experiments:
        entry = {"name": experiment.name, "title": experiment.title, "selected": experiment.selected}
        entry |= {"why_not": experiment.why_not, "core": experiment.name in CORE, "steps": []}
        record["experiments"].append(entry)
        if not experiment.selected:
            continue
        for step in experiment.steps:
            position += 1
            if step.done():
                console.print(f"paper [{position}/{count}] already done: {safe(step.title)}")
                entry["steps"].append(_step_record(step, "done before", None))
                continue
            shown = stage_command(step.argv()) if step.args else "(file copy)"
            console.rule(f"paper [{position}/{count}] {safe(step.title)}")
            console.print(f"paper: {safe(shown)}")
            start = time.perf_counter()
            if step.action is not None:
                step.action()
            else:
                run_stage(step.argv())
            entry["steps"].append(_step_record(step, "ran", time.perf_counter() - start))
            write_json(target, record)
    record["status"] = "complete"
    write_json(target, record)
    return record


def run_paper(options: PaperOptions) -> Path:
    """Run (or continue) the study on ``options.work`` and write the document; returns its path."""
    from kneepain.paper.document import build_document

    check_inputs(options)
    experiments = plan(options)
    print_plan(experiments, options)
    start = time.perf_counter()
    record = run_experiments(experiments, options)
    record["seconds_this_call"] = round(time.perf_counter() - start, 1)
    write_json(options.out_dir / RECORD_FILE, record)
    return build_document(options, record)
