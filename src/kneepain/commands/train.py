"""`kneepain cv` (k-fold cross-validation), `kneepain split` (70/15/15) and `kneepain train` (one model)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_type_hints

import typer

if TYPE_CHECKING:
    from kneepain.model.siamese import ModelConfig
    from kneepain.train.loop import TrainConfig

RESUME = typer.Option(False, "--resume", help="Continue a stopped run exactly (same cache and settings).")
SEED_HELP = "Seed of folds/splits, initialisation and augmentation."
# ModelConfig's fields; the other options are TrainConfig's
ARCHITECTURE_OPTIONS = ("branch", "width", "input_size", "combine", "mode", "head", "members", "readout")


def _option(help_text: str, *flags: str, default: Any = None) -> Any:
    """A dataclass field that is also a CLI option (``default`` None leaves the preset's value)."""
    return field(default=default, metadata={"cli": typer.Option(default, *flags, help=help_text)})


@dataclass(frozen=True)
class TrainingOptions:
    """The options `cv` and `train` share, declared once; ``configs`` turns them into configurations."""

    preset_name: str = _option(
        "paper (the published configuration) | small (CPU, minutes) | tiny (smoke test).",
        "--preset",
        default="paper",
    )
    branch: str | None = _option("kneenet | vgg16_gap | alexnet_gap.")
    width: float | None = _option("Channel scale of the branch (1.0 = paper).")
    input_size: int | None = _option("Slice size fed to the network (area downsampling of the cache).")
    combine: str | None = _option("relu_diff (published) | diff | concat.")
    mode: str | None = _option("paper (23 location models + logistic fusion) | joint (end to end).")
    head: str | None = _option("location (published: one weight per slice location) | shared (one for all).")
    members: int | None = _option("Networks per model (different seeds); logits and CAMs averaged.")
    readout: str | None = _option("direct | swap_mean (predict with the mean over both knee orders).")
    epochs: int | None = _option("Maximum epochs.")
    lr: float | None = _option("Initial learning rate.")
    batch_size: int | None = _option("Subjects per step (over all processes).")
    optimizer: str | None = _option("sgd | adam.")
    weight_decay: float | None = _option("L2 weight decay.")
    patience: int | None = _option("Early-stopping patience in epochs (0 = off).")
    select_on: str | None = _option("Kept epoch: best validation loss (paper) | best validation auc | last.")
    ema_decay: float | None = _option("Average the weights (EMA per step, e.g. 0.95; 0 = off).")
    val_fraction: float | None = _option("Share of each training part held out for validation (0 = none).")
    swap_knees: bool | None = _option("Augmentation: swap knees, flip label.", "--swap-knees/--no-swap-knees")
    shift_augment: float | None = _option("Augmentation: max shift of each knee, share of the side.")
    precision: str | None = _option("fp32 | bf16 | fp16 (CUDA only).")
    channels_last: bool | None = _option("channels_last memory format.", "--channels-last/--no-channels-last")
    compile_model: bool | None = _option("torch.compile the model.", "--compile/--no-compile")
    device: str | None = _option("auto | cpu | cuda.")
    seed: int = _option(SEED_HELP, default=0)

    def configs(self) -> tuple[ModelConfig, TrainConfig]:
        """(ModelConfig, TrainConfig) of the preset with the options the user gave replacing its values."""
        from kneepain.train.loop import preset

        given = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "preset_name"}
        given["compile"] = given.pop("compile_model")
        given = {name: value for name, value in given.items() if value is not None}
        arch = {name: value for name, value in given.items() if name in ARCHITECTURE_OPTIONS}
        train = {name: value for name, value in given.items() if name not in ARCHITECTURE_OPTIONS}
        return preset(self.preset_name, arch, train)


def with_training_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` every TrainingOptions field as a CLI option, and call it with them gathered.

    typer builds a command's options from its signature, so the fields are spliced into the
    signature where ``command`` declares ``options: TrainingOptions`` (which keeps the --help order).
    """
    hints = get_type_hints(TrainingOptions)
    shared = [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.metadata["cli"], annotation=hints[f.name]
        )
        for f in fields(TrainingOptions)
    ]
    parameters: list[inspect.Parameter] = []
    for parameter in inspect.signature(command, eval_str=True).parameters.values():
        if parameter.name == "options":
            parameters += shared
        else:
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(command)
    def run(**values: Any) -> None:
        options = TrainingOptions(**{f.name: values.pop(f.name) for f in fields(TrainingOptions)})
        command(**values, options=options)

    run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    return run


def _fail(name: str, error: Exception) -> None:
    from kneepain.console import fail

    fail(name, error)
    raise typer.Exit(code=2) from error


def _errors() -> tuple[type[Exception], ...]:
    from kneepain.model.bundle import BundleError
    from kneepain.train import RunInputError, SplitError, TrainingError

    return (RunInputError, SplitError, TrainingError, BundleError, ValueError)


def register(app: typer.Typer) -> None:
    """Add the `cv`, `split` and `train` commands."""

    @app.command("cv")
    @with_training_options
    def cv(
        work: Path = typer.Argument(..., help="Work folder with ingest/ and preprocess/."),
        run: str = typer.Option("cv", "--run", help="Run name: writes WORK/runs/<run>/."),
        folds: int = typer.Option(10, "--folds", help="Number of folds (stratified by label)."),
        model: str = typer.Option("A", "--model", help="Cohort: A or B."),
        resume: bool = RESUME,
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run of that name."),
        *,
        options: TrainingOptions,
    ) -> None:
        """k-fold cross-validation: folds.json, a bundle per fold, out-of-fold predictions.csv."""
        from kneepain.console import stage
        from kneepain.train import run_cv

        try:
            config = options.configs()
            with stage("cv") as info:
                out = run_cv(
                    work,
                    run,
                    folds=folds,
                    model=model,
                    config=config,
                    seed=options.seed,
                    resume=resume,
                    overwrite=overwrite,
                )
                info["run"] = str(out)
                info["folds"] = folds
        except _errors() as error:
            _fail("cv", error)

    @app.command("split")
    def split(
        work: Path = typer.Argument(..., help="Work folder with ingest/ and preprocess/."),
        run: str = typer.Option("review", "--run", help="Run name: writes WORK/runs/<run>/split.json."),
        model: str = typer.Option("B", "--model", help="Cohort: A or B (the paper used B)."),
        seed: int = typer.Option(0, help=SEED_HELP),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing split."),
    ) -> None:
        """The paper's 70/15/15 split stratified by sex, age and BMI, with split_balance.csv (Table 2)."""
        from kneepain.console import stage
        from kneepain.train import write_split

        try:
            with stage("split") as info:
                out = write_split(work, run, model=model, seed=seed, overwrite=overwrite)
                info["split"] = str(out / "split.json")
        except _errors() as error:
            _fail("split", error)

    @app.command("train")
    @with_training_options
    def train(
        work: Path = typer.Argument(..., help="Work folder with ingest/ and preprocess/."),
        run: str = typer.Option("review", "--run", help="Run name (its split.json is made if absent)."),
        model: str = typer.Option("B", "--model", help="Cohort: A or B."),
        resume: bool = RESUME,
        *,
        options: TrainingOptions,
    ) -> None:
        """Train one model on the 70/15/15 split (early stopping on validation; test predicted)."""
        from kneepain.console import stage
        from kneepain.train import run_split

        try:
            config = options.configs()
            with stage("train") as info:
                out = run_split(work, run, model=model, config=config, seed=options.seed, resume=resume)
                info["run"] = str(out)
        except _errors() as error:
            _fail("train", error)
