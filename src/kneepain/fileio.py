"""Atomic file writing: a stage's output either exists whole or not at all.

Every file is written under a temporary name in the same folder and renamed into place, so a
crash or a bad input never leaves a half-written file where a previous good one stood. The
temporary file or folder gets the mode a plain ``open`` or ``mkdir`` would give (0o666 or 0o777
less the umask), not the owner-only 0o600 / 0o700 of ``tempfile``, so outputs stay shareable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

FILE_MODE = 0o666  # what open() asks for, before the umask
DIR_MODE = 0o777  # what mkdir() asks for, before the umask


def _current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (os.umask alone must set it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        tmp_path.chmod(FILE_MODE & ~_current_umask())
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; it replaces ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        tmp.chmod(DIR_MODE & ~_current_umask())
        yield tmp
        for path in tmp.rglob("*"):  # libraries that write through their own temp files leave 0600
            if path.is_file() and not path.is_symlink():
                path.chmod(FILE_MODE & ~_current_umask())
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``target`` atomically (UTF-8)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``target`` atomically."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(target: str | os.PathLike[str], frame: pd.DataFrame) -> None:
    """Write a table as CSV (no index column) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)
