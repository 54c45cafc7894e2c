"""People-facing logging: one line per stage with counts and time, progress on long loops.

Text that comes from the user or the data (paths, file names, error messages quoting them) goes
through :func:`safe` before it is printed, so ``[`` and ``]`` in a folder name are shown as typed
instead of being read as Rich markup, and control characters (ANSI escapes, newlines) are shown
escaped instead of reaching the terminal. Lines are never wrapped by Rich (``soft_wrap``), so a
message stays one line in a log file.

Progress is a bar only when stderr is a terminal; otherwise (a log file, a pipe, a batch job)
it is a plain line such as ``CAMs 40/150`` about every tenth of the way or every
``PLAIN_PROGRESS_SECONDS``, whichever comes first, so logs stay short and readable.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

# Under torchrun every process runs the same command; only rank 0 speaks (errors still reach stderr).
console = Console(stderr=True, highlight=False, soft_wrap=True, quiet=os.environ.get("RANK", "0") != "0")
T = TypeVar("T")
PLAIN_PROGRESS_SECONDS = 30.0  # without a terminal: at least one line this often while work goes on
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def safe(value: object) -> str:
    """``value`` as text that prints literally: Rich markup escaped, control characters as ``\\xNN``."""
    text = _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", str(value))
    return escape(text)


def fail(stage_name: str, error: object) -> None:
    """Print one red line ``<stage>: <error>``, the error's text escaped (it quotes user paths)."""
    console.print(f"[red]{stage_name}: {safe(error)}[/red]")


@contextmanager
def stage(name: str) -> Iterator[dict[str, object]]:
    """Time a stage and print one summary line; put counts into the yielded dict."""
    info: dict[str, object] = {}
    start = time.perf_counter()
    yield info
    seconds = time.perf_counter() - start
    details = ", ".join(f"{safe(key)} {safe(value)}" for key, value in info.items())
    console.print(f"[bold]{name}[/bold]: {details}{', ' if details else ''}{seconds:.1f} s")


class _PlainProgress:
    """Progress as occasional plain lines (``description done/total``) for a non-terminal stream."""

    def __init__(self, description: str, total: int | None, out: Console) -> None:
        self.description, self.total, self.out = safe(description), total, out
        self.done, self.shown = 0, 0
        self.step = max(1, -(-total // 10)) if total else None  # about every tenth of the way
        self.last = time.monotonic()

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        due = self.step is not None and self.done - self.shown >= self.step
        finished = self.total is not None and self.done >= self.total
        if (due or finished or now - self.last >= PLAIN_PROGRESS_SECONDS) and self.done != self.shown:
            of = f"/{self.total}" if self.total is not None else ""
            self.out.print(f"{self.description} {self.done}{of}", markup=True)
            self.shown, self.last = self.done, now


@contextmanager
def progress_counter(
    description: str, total: int | None = None, out: Console | None = None
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``: a transient bar on a terminal, plain periodic lines otherwise."""
    out = out or console
    if out.is_terminal:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=out, transient=True) as bar:
            task = bar.add_task(safe(description), total=total)
            yield lambda count=1: bar.advance(task, count)
    else:
        plain = _PlainProgress(description, total, out)
        yield plain.advance


def progress(
    items: Iterable[T], description: str, total: int | None = None, out: Console | None = None
) -> Iterator[T]:
    """Iterate over ``items``, showing progress (see :func:`progress_counter`)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_counter(description, total, out) as advance:
        for item in items:
            yield item
            advance(1)
