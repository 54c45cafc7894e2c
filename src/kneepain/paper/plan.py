"""What `kneepain paper` runs: the experiments, each a list of CLI stage calls, and what they cost.

Every experiment is made of ordinary run folders written by the stages themselves, so `evaluate`,
`cam`, `report` and `review` work on them as on any other run. A step knows when its output is
already there (a finished run, an evaluation made with the same options, a CAM folder newer than
the predictions), so a second `paper` skips it and a killed one continues where it stopped.

The cost of each experiment is estimated from a few training steps of its network timed on this
machine (kneepain.train.estimate, as `cv` does); the core experiments always run, the others
run when they fit the time budget and otherwise are listed with the option that runs them.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kneepain.config import load_config
from kneepain.contracts import PREDICTIONS_TABLE, SPLIT_FILE, WorkPaths, training_table
from kneepain.ingest.pipeline import OUTPUT_FILES
from kneepain.paper.runinfo import run_finished
from kneepain.train.estimate import StepTiming, time_training_step

RUN_A = "paper-model-a"
RUN_B = "paper-model-b"
REVIEW_RUN = "paper-review"  # the 70/15/15 Model B split: KneeNet, the radiologist review set
UNREGISTERED_DIR = "unregistered"  # WORK/unregistered/: a second work folder with the --no-register cache
BRANCHES = ("kneenet", "vgg16_gap", "alexnet_gap")
CORE = ("model-a", "model-b", "review")
OPTIONAL = ("architectures", "unregistered")  # run when they fit --budget-minutes, or with --with NAME
FAST = {"preset": "tiny", "folds": 2, "epochs": 2, "bootstrap": 200}

PREPROCESS_SECONDS_PER_SUBJECT = 0.4  # --no-register (no template); measured on this machine
STAGE_OVERHEAD_SECONDS = 5.0  # loading, evaluation's bootstrap, the CAM pass of a small run


class PaperError(ValueError):
    """`kneepain paper` cannot start or go on; the message names the file, run or option."""


def architecture_args(branch: str) -> list[str]:
    """The CLI arguments of `cv`/`train` that choose the Siamese branch (issue 20: --set model.branch=)."""
    return ["--set", f"model.branch={branch}"]


@dataclass(frozen=True)
class PaperOptions:
    """What `kneepain paper` was asked to do."""

    work: Path
    preset: str = "small"
    out: Path | None = None
    fast: bool = False
    review_db: Path | None = None
    folds: int = 10
    seed: int = 0
    budget_minutes: float = 90.0
    include: tuple[str, ...] = ()  # --with NAME: optional experiments run whatever the budget
    epochs: int | None = None
    device: str | None = None
    precision: str | None = None

    @property
    def training_preset(self) -> str:
        return FAST["preset"] if self.fast else self.preset

    @property
    def cv_folds(self) -> int:
        return int(FAST["folds"]) if self.fast else self.folds

    @property
    def training_epochs(self) -> int | None:
        return int(FAST["epochs"]) if self.fast and self.epochs is None else self.epochs

    @property
    def bootstrap(self) -> int:
        return int(FAST["bootstrap"]) if self.fast else 2000

    @property
    def out_dir(self) -> Path:
        return self.out if self.out is not None else self.work / "paper"

    def training_args(self) -> list[str]:
        """The options every `cv` and `train` call of the study shares."""
        args = ["--preset", self.training_preset, "--seed", str(self.seed)]
        if self.training_epochs is not None:
            args += ["--epochs", str(self.training_epochs)]
        if self.device:
            args += ["--device", self.device]
        if self.precision:
            args += ["--precision", self.precision]
        return args


@dataclass
class Step:
    """One stage call. ``args`` follow `kneepain`; ``resume_run`` adds --resume when that run was started."""

    title: str
    args: list[str]
    done: Callable[[], bool]
    estimate_s: float = STAGE_OVERHEAD_SECONDS
    resume_run: Path | None = None
    action: Callable[[], None] | None = None  # a step that is no stage call (copying the ingest tables)

    def argv(self) -> list[str]:
        """The arguments as run now: with --resume when the run folder holds an unfinished run."""
        if self.resume_run is not None and (self.resume_run / "run.json").exists():
            return [*self.args, "--resume"]
        return list(self.args)


@dataclass
class Experiment:
    """A named experiment of the paper: what it answers, its steps, and whether it runs."""

    name: str
    title: str
    steps: list[Step] = field(default_factory=list)
    selected: bool = True
    why_not: str = ""  # when not selected: the budget line and the option that runs it

    @property
    def estimate_s(self) -> float:
        return sum(step.estimate_s for step in self.steps if not step.done())


# --- done checks -------------------------------------------------------------------------------


def _newer(path: Path, than: Path) -> bool:
    return path.exists() and than.exists() and path.stat().st_mtime >= than.stat().st_mtime


def evaluation_done(run_dir: Path, compare: list[Path], bootstrap: int, seed: int) -> bool:
    """True when RUN/evaluation/metrics.json exists, is newer than the predictions and used these options."""
    metrics_path = run_dir / "evaluation" / "metrics.json"
    if not _newer(metrics_path, run_dir / PREDICTIONS_TABLE):
        return False
    try:
        options = json.loads(metrics_path.read_text(encoding="utf-8")).get("options", {})
    except (OSError, ValueError):
        return False
    return (
        options.get("compare") == [str(p) for p in compare]
        and options.get("n_bootstrap") == bootstrap
        and options.get("seed") == seed
    )


def cam_done(run_dir: Path) -> bool:
    """True when RUN/cam/ was written after the run's predictions (cam writes its folder whole)."""
    return _newer(run_dir / "cam" / "localization.json", run_dir / PREDICTIONS_TABLE)


def ingest_copy_done(source: Path, target: Path) -> bool:
    """True when the second work folder's ingest tables are byte-identical to the first's."""
    for name in OUTPUT_FILES:
        a, b = source / name, target / name
        if a.exists() != b.exists() or (a.exists() and a.read_bytes() != b.read_bytes()):
            return False
    return True


def unregistered_cache_done(work: Path) -> bool:
    """True when the work folder holds a --no-register cache made after its ingest tables."""
    paths = WorkPaths(work)
    try:
        config = json.loads(paths.cache_config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return config.get("register") is False and _newer(paths.cache_index, paths.cohort_table)


# --- the experiments ---------------------------------------------------------------------------


def training_subjects(work: Path, model: str) -> int:
    """Participants of Model ``model`` that passed QC (0 when the cache is not built yet)."""
    try:
        return len(training_table(work, model))
    except (OSError, ValueError):
        return 0


@functools.cache
def step_timing(preset: str, branch: str, precision: str | None, device: str | None) -> StepTiming:
    """Seconds per subject-epoch of ``preset`` with ``branch``, timed here once per combination."""
    overrides = [f"model.branch={branch}"]
    overrides += [f"runtime.precision={precision}"] if precision else []
    overrides += [f"runtime.device={device}"] if device else []
    return time_training_step(load_config(preset).with_overrides(overrides))


def training_seconds(options: PaperOptions, subject_epochs: float, branch: str = "kneenet") -> float:
    """Estimated seconds for ``subject_epochs`` subject passes at the preset's epochs (or --epochs)."""
    config = load_config(options.training_preset)
    epochs = options.training_epochs or config.optim.epochs
    timing = step_timing(options.training_preset, branch, options.precision, options.device)
    return timing.seconds_per_subject_epoch * subject_epochs * epochs


def truth_folder(work: Path) -> Path | None:
    """The synthetic generator's truth/ folder beside the images the ingest read (None for real data)."""
    from kneepain.evaluate.provenance import truth_beside

    series = WorkPaths(work).series_table
    if not series.exists():
        return None
    import pandas as pd

    paths = pd.read_csv(series, usecols=["path"], dtype=str, nrows=5)["path"].dropna()
    for path in paths:
        truth = truth_beside(Path(path))
        if truth is not None:
            return truth
    return None


def _cv_experiment(
    options: PaperOptions, work: Path, name: str, title: str, run: str, model: str, compare: Path | None
) -> list[Step]:
    run_dir = WorkPaths(work).runs / run
    n = training_subjects(work, model) or training_subjects(options.work, model)
    folds = options.cv_folds
    cv = Step(
        f"{title}: {folds}-fold cross-validation",
        ["cv", str(work), "--run", run, "--model", model, "--folds", str(folds), *options.training_args()],
        done=lambda: run_finished(run_dir),
        estimate_s=training_seconds(options, n * (folds - 1)) + STAGE_OVERHEAD_SECONDS * folds,
        resume_run=run_dir,
    )
    compared = [compare] if compare is not None else []
    evaluate = Step(
        f"{title}: evaluate",
        ["evaluate", str(run_dir), "--seed", str(options.seed), "--bootstrap", str(options.bootstrap)]
        + [arg for other in compared for arg in ("--compare", str(other))],
        done=lambda: evaluation_done(run_dir, compared, options.bootstrap, options.seed),
    )
    return [cv, evaluate]


def _split_experiment(options: PaperOptions, branch: str, compare: Path | None) -> list[Step]:
    work = options.work
    run = REVIEW_RUN if branch == "kneenet" else f"{REVIEW_RUN}-{branch.replace('_', '-')}"
    run_dir = WorkPaths(work).runs / run
    n = training_subjects(work, "B")
    split = Step(
        f"review split ({branch}): 70/15/15 split of Model B",
        ["split", str(work), "--run", run, "--model", "B", "--seed", str(options.seed)],
        done=lambda: (run_dir / SPLIT_FILE).exists(),
    )
    train = Step(
        f"review split ({branch}): train",
        [
            "train",
            str(work),
            "--run",
            run,
            "--model",
            "B",
            *options.training_args(),
            *architecture_args(branch),
        ],
        done=lambda: run_finished(run_dir),
        estimate_s=training_seconds(options, 0.85 * n, branch) + STAGE_OVERHEAD_SECONDS,
        resume_run=run_dir,
    )
    compared = [compare] if compare is not None else []
    evaluate = Step(
        f"review split ({branch}): evaluate",
        ["evaluate", str(run_dir), "--seed", str(options.seed), "--bootstrap", str(options.bootstrap)]
        + [arg for other in compared for arg in ("--compare", str(other))],
        done=lambda: evaluation_done(run_dir, compared, options.bootstrap, options.seed),
    )
    truth = truth_folder(work)
    cam = Step(
        f"review split ({branch}): class activation maps",
        ["cam", str(run_dir), *(["--truth", str(truth)] if truth is not None else [])],
        done=lambda: cam_done(run_dir),
    )
    return [split, train, evaluate, cam]


def review_run_dir(work: Path, branch: str = "kneenet") -> Path:
    """The run folder of the review split trained with ``branch``."""
    name = REVIEW_RUN if branch == "kneenet" else f"{REVIEW_RUN}-{branch.replace('_', '-')}"
    return WorkPaths(work).runs / name


def unregistered_work(work: Path) -> Path:
    """The second work folder: the same ingest tables, the --no-register cache, its own runs/."""
    return work / UNREGISTERED_DIR


def copy_ingest(source: Path, target: Path) -> None:
    """Copy the ingest tables into the second work folder (whole folder swapped in at once)."""
    from kneepain.fileio import atomic_dir

    with atomic_dir(target) as tmp:
        for name in OUTPUT_FILES:
            if (source / name).exists():
                (tmp / name).write_bytes((source / name).read_bytes())


def plan(options: PaperOptions) -> list[Experiment]:
    """Every experiment of the paper with its steps; the optional ones chosen by budget and --with."""
    work = options.work
    runs = WorkPaths(work).runs
    review = review_run_dir(work)
    unregistered = unregistered_work(work)
    experiments = [
        Experiment(
            "model-a",
            f"Model A: {options.cv_folds}-fold cross-validation (Figure 4A, 4C)",
            _cv_experiment(options, work, "model-a", "Model A", RUN_A, "A", None),
        ),
        Experiment(
            "model-b",
            f"Model B: {options.cv_folds}-fold cross-validation (Figure 4B, 4C)",
            _cv_experiment(options, work, "model-b", "Model B", RUN_B, "B", None),
        ),
        Experiment(
            "review",
            "The 70/15/15 split of Model B and its review set",
            _split_experiment(options, "kneenet", None),
        ),
        Experiment(
            "architectures",
            "KneeNet vs VGG16-GAP and AlexNet-GAP on the review split (Figure 3A/B)",
            [step for branch in BRANCHES[1:] for step in _split_experiment(options, branch, review)],
        ),
    ]
    source, target = WorkPaths(work).ingest, WorkPaths(unregistered).ingest
    n_all = training_subjects(work, "A")
    unregistered_steps = [
        Step(
            "unregistered: copy the ingest tables into a second work folder",
            [],
            done=lambda: ingest_copy_done(source, target),
            estimate_s=1.0,
            action=lambda: copy_ingest(source, target),
        ),
        Step(
            "unregistered: preprocess --no-register (slices 8-30, no alignment)",
            ["preprocess", str(unregistered), "--no-register"],
            done=lambda: unregistered_cache_done(unregistered),
            estimate_s=PREPROCESS_SECONDS_PER_SUBJECT * max(n_all, 1) + STAGE_OVERHEAD_SECONDS,
        ),
    ]
    for model, run in (("A", RUN_A), ("B", RUN_B)):
        unregistered_steps += _cv_experiment(
            options,
            unregistered,
            "unregistered",
            f"Model {model} unregistered",
            f"{run}-unregistered",
            model,
            runs / run,
        )
    experiments.append(
        Experiment("unregistered", "Registered vs unregistered input (Models A and B)", unregistered_steps)
    )
    if options.review_db is not None:
        db = options.review_db
        experiments[2].steps.append(
            Step(
                "review set: export the radiologist review (Figure 3I, agreement)",
                ["review", "export", str(review), "--db", str(db)],
                done=lambda: False,  # cheap, and the database may have grown since
            )
        )
    choose(experiments, options)
    return experiments


def choose(experiments: list[Experiment], options: PaperOptions) -> None:
    """Select the core experiments, then each optional one asked for by --with or fitting the budget."""
    unknown = sorted(set(options.include) - set(OPTIONAL) - {"all"})
    if unknown:
        raise PaperError(
            f"--with {unknown[0]}: unknown experiment; expected one of {', '.join(OPTIONAL)} or all"
        )
    budget = options.budget_minutes * 60.0
    for experiment in experiments:
        experiment.selected, experiment.why_not = True, ""
    total = sum(e.estimate_s for e in experiments if e.name in CORE)
    for experiment in experiments:
        if experiment.name in CORE:
            continue
        asked = experiment.name in options.include or "all" in options.include
        if asked or total + experiment.estimate_s <= budget:
            total += experiment.estimate_s
            continue
        experiment.selected = False
        experiment.why_not = (
            f"left out: estimated {minutes(experiment.estimate_s)} would pass the budget of "
            f"{options.budget_minutes:g} min; run it with --with {experiment.name}"
        )


def minutes(seconds: float) -> str:
    """'12 min', '1.5 h', '< 1 min' for the printed estimate."""
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 60:
        return "< 1 min"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
