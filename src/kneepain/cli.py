"""The `kneepain` command line: one sub-command per pipeline stage.

Each stage lives in ``kneepain.commands.<stage>`` and adds its commands through
``register(app)``. Command modules import only typer at import time; the heavy libraries
(torch, SimpleITK, ...) are imported inside the commands so ``kneepain --help`` stays fast.
"""

from __future__ import annotations

import importlib

import typer

from kneepain import __version__

STAGES = ("synth", "ingest", "preprocess", "train", "evaluate", "cam", "review", "predict", "demo", "bench")

app = typer.Typer(
    help="Which knee hurts, and what in the MRI explains it. Stages pass files through a work folder.",
    no_args_is_help=True,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"kneepain {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """kneepain: convolutional Siamese network for unilateral knee pain from bilateral knee MRI."""


for _stage in STAGES:
    try:
        _module = importlib.import_module(f"kneepain.commands.{_stage}")
    except ModuleNotFoundError as error:
        if error.name != f"kneepain.commands.{_stage}":
            raise
        continue
    _module.register(app)
