"""`kneepain cv` (k-fold cross-validation), `kneepain split` (70/15/15) and `kneepain train` (one model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

# Options shared by `cv` and `train` (typer reads an OptionInfo afresh for every command).
PRESET = typer.Option(
    "paper",
    "--preset",
    help="paper (the published configuration) | small (CPU, minutes) | tiny (smoke test).",
)
BRANCH = typer.Option(None, help="kneenet | vgg16_gap | alexnet_gap.")
WIDTH = typer.Option(None, help="Channel scale of the branch (1.0 = paper).")
INPUT_SIZE = typer.Option(None, help="Slice size fed to the network (area downsampling of the cache).")
COMBINE = typer.Option(None, help="relu_diff (published) | diff | concat.")
MODE = typer.Option(None, help="paper (23 location models + logistic fusion) | joint (end to end).")
EPOCHS = typer.Option(None, help="Maximum epochs.")
LR = typer.Option(None, help="Initial learning rate.")
BATCH = typer.Option(None, help="Subjects per step (over all processes).")
OPTIMIZER = typer.Option(None, help="sgd | adam.")
DECAY = typer.Option(None, help="L2 weight decay.")
PATIENCE = typer.Option(None, help="Early-stopping patience in epochs (0 = off).")
SWAP = typer.Option(None, "--swap-knees/--no-swap-knees", help="Augmentation: swap knees, flip label.")
PRECISION = typer.Option(None, help="fp32 | bf16 | fp16 (CUDA only).")
CHANNELS_LAST = typer.Option(None, "--channels-last/--no-channels-last", help="channels_last memory format.")
COMPILE = typer.Option(None, "--compile/--no-compile", help="torch.compile the model.")
DEVICE = typer.Option(None, help="auto | cpu | cuda.")
SEED = typer.Option(0, help="Seed of folds/splits, initialisation and augmentation.")
RESUME = typer.Option(False, "--resume", help="Continue a stopped run exactly (same cache and settings).")


def _configs(preset_name: str, **values: Any):
    """(ModelConfig, TrainConfig) of a preset with the options the user gave."""
    from kneepain.train.loop import preset

    arch_keys = ("branch", "width", "input_size", "combine", "mode")
    arch = {k: v for k, v in values.items() if k in arch_keys and v is not None}
    train = {k: v for k, v in values.items() if k not in arch_keys and v is not None}
    return preset(preset_name, arch, train)


def _fail(name: str, error: Exception) -> None:
    from kneepain.console import console

    console.print(f"[red]{name}: {error}[/red]", soft_wrap=True)
    raise typer.Exit(code=2) from error


def _errors() -> tuple[type[Exception], ...]:
    from kneepain.model.bundle import BundleError
    from kneepain.train import RunInputError, SplitError, TrainingError

    return (RunInputError, SplitError, TrainingError, BundleError, ValueError)


def register(app: typer.Typer) -> None:
    """Add the `cv`, `split` and `train` commands."""

    @app.command("cv")
    def cv(
        work: Path = typer.Argument(..., help="Work folder with ingest/ and preprocess/."),
        run: str = typer.Option("cv", "--run", help="Run name: writes WORK/runs/<run>/."),
        folds: int = typer.Option(10, "--folds", help="Number of folds (stratified by label)."),
        model: str = typer.Option("A", "--model", help="Cohort: A or B."),
        resume: bool = RESUME,
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run of that name."),
        preset_name: str = PRESET,
        branch: str | None = BRANCH,
        width: float | None = WIDTH,
        input_size: int | None = INPUT_SIZE,
        combine: str | None = COMBINE,
        mode: str | None = MODE,
        epochs: int | None = EPOCHS,
        lr: float | None = LR,
        batch_size: int | None = BATCH,
        optimizer: str | None = OPTIMIZER,
        weight_decay: float | None = DECAY,
        patience: int | None = PATIENCE,
        swap_knees: bool | None = SWAP,
        precision: str | None = PRECISION,
        channels_last: bool | None = CHANNELS_LAST,
        compile_model: bool | None = COMPILE,
        device: str | None = DEVICE,
        seed: int = SEED,
    ) -> None:
        """k-fold cross-validation: folds.json, a bundle per fold, out-of-fold predictions.csv."""
        from kneepain.console import stage
        from kneepain.train import run_cv

        try:
            config = _configs(
                preset_name, branch=branch, width=width, input_size=input_size, combine=combine, mode=mode,
                epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay,
                patience=patience, swap_knees=swap_knees, precision=precision, channels_last=channels_last,
                compile=compile_model, device=device, seed=seed,
            )  # fmt: skip
            with stage("cv") as info:
                out = run_cv(
                    work,
                    run,
                    folds=folds,
                    model=model,
                    config=config,
                    seed=seed,
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
        seed: int = SEED,
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
    def train(
        work: Path = typer.Argument(..., help="Work folder with ingest/ and preprocess/."),
        run: str = typer.Option("review", "--run", help="Run name (its split.json is made if absent)."),
        model: str = typer.Option("B", "--model", help="Cohort: A or B."),
        resume: bool = RESUME,
        preset_name: str = PRESET,
        branch: str | None = BRANCH,
        width: float | None = WIDTH,
        input_size: int | None = INPUT_SIZE,
        combine: str | None = COMBINE,
        mode: str | None = MODE,
        epochs: int | None = EPOCHS,
        lr: float | None = LR,
        batch_size: int | None = BATCH,
        optimizer: str | None = OPTIMIZER,
        weight_decay: float | None = DECAY,
        patience: int | None = PATIENCE,
        swap_knees: bool | None = SWAP,
        precision: str | None = PRECISION,
        channels_last: bool | None = CHANNELS_LAST,
        compile_model: bool | None = COMPILE,
        device: str | None = DEVICE,
        seed: int = SEED,
    ) -> None:
        """Train one model on the 70/15/15 split (early stopping on validation; test predicted)."""
        from kneepain.console import stage
        from kneepain.train import run_split

        try:
            config = _configs(
                preset_name, branch=branch, width=width, input_size=input_size, combine=combine, mode=mode,
                epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay,
                patience=patience, swap_knees=swap_knees, precision=precision, channels_last=channels_last,
                compile=compile_model, device=device, seed=seed,
            )  # fmt: skip
            with stage("train") as info:
                out = run_split(work, run, model=model, config=config, seed=seed, resume=resume)
                info["run"] = str(out)
        except _errors() as error:
            _fail("train", error)
