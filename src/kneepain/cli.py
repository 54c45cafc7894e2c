"""The `kneepain` command line: one sub-command per pipeline stage.

Each stage lives in ``kneepain.commands.<stage>`` and adds its commands through
``register(app)``. Command modules import only typer at import time; the heavy libraries
(torch, SimpleITK, ...) are imported inside the commands so ``kneepain --help`` stays fast.

Bad input is each command's business (one line, exit code 2). Anything else that escapes a
command is a bug: the user sees one line saying where the traceback was written (the work
folder's ``logs/`` when the command was given one, else the temporary folder) and where to
report it, and the exit code is 70 (EX_SOFTWARE), never a traceback on the terminal.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import typer

from kneepain import __version__

STAGES = ("synth", "ingest", "preprocess", "train", "evaluate", "cam", "review", "predict", "demo", "bench")
STAGES += ("paper",)  # issue 23: `kneepain paper` runs the stages above

INTERNAL_ERROR_CODE = 70  # EX_SOFTWARE (sysexits.h): an internal error, not the user's input
REPORT_TO = "the kneepain maintainers (attach the log file and the command you ran)"
LOG_DIR = "logs"


def _work_folder(argv: list[str]) -> Path | None:
    """The first argument that is a work folder (holds ingest/ or preprocess/), if any."""
    for arg in argv:
        candidate = Path(arg.split("=", 1)[-1])
        try:
            for base in (candidate, *list(candidate.parents)[:3]):
                if (base / "ingest").is_dir() or (base / "preprocess").is_dir():
                    return base
        except OSError:
            continue
    return None


def write_error_log(error: BaseException, argv: list[str]) -> Path:
    """Write the command line and the traceback of ``error`` to a log file; return its path."""
    name = f"error-{time.strftime('%Y%m%d-%H%M%S')}-{id(error) % 100000:05d}.log"
    text = f"kneepain {__version__}\ncommand: {' '.join(argv)}\n\n" + "".join(
        traceback.format_exception(type(error), error, error.__traceback__)
    )
    work = _work_folder(argv[1:])
    for folder in ([work / LOG_DIR] if work is not None else []) + [Path(tempfile.gettempdir())]:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")
            return folder / name
        except OSError:
            continue
    raise error


class KneepainApp(typer.Typer):
    """The Typer app whose unexpected errors end in one line and a log file, not a traceback."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return typer.main.get_command(self)(*args, **kwargs)
        except KeyboardInterrupt:
            sys.stderr.write("kneepain: interrupted\n")
            sys.exit(130)
        except Exception as error:  # a bug: the traceback goes to a file, the user gets one line
            from kneepain.console import console, safe

            log = write_error_log(error, sys.argv)
            console.print(
                f"[red]kneepain: internal error ({safe(type(error).__name__)}); the traceback is in "
                f"{safe(log)}; please report it to {REPORT_TO}[/red]"
            )
            sys.exit(INTERNAL_ERROR_CODE)


app = KneepainApp(
    pretty_exceptions_enable=False,
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


def register_commands(target: typer.Typer, stages: tuple[str, ...]) -> None:
    """Add each stage's commands; a missing or broken command module raises ImportError (never skipped)."""
    for stage in stages:
        importlib.import_module(f"kneepain.commands.{stage}").register(target)


register_commands(app, STAGES)
