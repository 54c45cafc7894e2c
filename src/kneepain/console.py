"""People-facing logging: one line per stage with counts and time, progress bars on long loops."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

# Under torchrun every process runs the same command; only rank 0 speaks (errors still reach stderr).
console = Console(stderr=True, highlight=False, quiet=os.environ.get("RANK", "0") != "0")
T = TypeVar("T")


@contextmanager
def stage(name: str) -> Iterator[dict[str, object]]:
    """Time a stage and print one summary line; put counts into the yielded dict."""
    info: dict[str, object] = {}
    start = time.perf_counter()
    yield info
    seconds = time.perf_counter() - start
    details = ", ".join(f"{key} {value}" for key, value in info.items())
    console.print(f"[bold]{name}[/bold]: {details}{', ' if details else ''}{seconds:.1f} s")


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on stderr (silent when stderr is not a terminal)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        yield from bar.track(items, total=total, description=description)
