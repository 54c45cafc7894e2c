"""`kneepain cv` (k-fold cross-validation), `kneepain split` (70/15/15) and `kneepain train` (one model)."""

from __future__ import annotations

from pathlib import Path

import typer

from kneepain.hardware import REQUESTS

RESUME = typer.Option(False, "--resume", help="Continue a stopped run exactly (same cache and settings).")
PRESET = typer.Option(
    "paper",
    "--preset",
    help="paper (the published configuration) | small (CPU, minutes) | tiny (smoke test) | FILE.toml.",
)
SET = typer.Option(
    None,
    "--set",
    help="Override one setting, section.key=value (sections model, data, optim, runtime); repeatable. "
    "E.g. --set model.branch=vgg16_gap --set optim.lr=1e-3.",
)
EPOCHS = typer.Option(None, "--epochs", help="Epochs (= --set optim.epochs=N).")
SEED = typer.Option(
    None, "--seed", help="Seed of folds/splits, initialisation and augmentation (presets: 0)."
)
PRECISION = typer.Option(
    None, "--precision", help=f"{' | '.join(REQUESTS)} (presets: auto = bf16 where native, else fp32)."
)
DEVICE = typer.Option(None, "--device", help="auto | cpu | cuda.")


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
    def cv(
        work: Path = typer.Argument(..., help="Work folder with ingest/ and preprocess/."),
        run: str = typer.Option("cv", "--run", help="Run name: writes WORK/runs/<run>/."),
        folds: int = typer.Option(10, "--folds", help="Number of folds (stratified by label)."),
        model: str = typer.Option("A", "--model", help="Cohort: A or B."),
        preset: str = PRESET,
        assignments: list[str] | None = SET,
        epochs: int | None = EPOCHS,
        seed: int | None = SEED,
        precision: str | None = PRECISION,
        device: str | None = DEVICE,
        resume: bool = RESUME,
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run of that name."),
    ) -> None:
        """k-fold cross-validation: folds.json, a bundle per fold, out-of-fold predictions.csv."""
        from kneepain.config import cli_config
        from kneepain.console import stage
        from kneepain.train import run_cv

        try:
            config = cli_config(
                preset, assignments, epochs=epochs, seed=seed, precision=precision, device=device
            )
            with stage("cv") as info:
                out = run_cv(
                    work, run, folds=folds, model=model, config=config, resume=resume, overwrite=overwrite
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
        seed: int = typer.Option(0, help="Seed of the split."),
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
        preset: str = PRESET,
        assignments: list[str] | None = SET,
        epochs: int | None = EPOCHS,
        seed: int | None = SEED,
        precision: str | None = PRECISION,
        device: str | None = DEVICE,
        resume: bool = RESUME,
    ) -> None:
        """Train one model on the 70/15/15 split (early stopping on validation; test predicted)."""
        from kneepain.config import cli_config
        from kneepain.console import stage
        from kneepain.train import run_split

        try:
            config = cli_config(
                preset, assignments, epochs=epochs, seed=seed, precision=precision, device=device
            )
            with stage("train") as info:
                out = run_split(work, run, model=model, config=config, resume=resume)
                info["run"] = str(out)
        except _errors() as error:
            _fail("train", error)
