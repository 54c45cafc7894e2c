"""Atomic file writing: a stage's output either exists whole or not at all.

Every file is written under a temporary name in the same folder and renamed into place, so a
crash or a bad input never leaves a half-written file where a previous good one stood. The
temporary file or folder gets the mode a plain ``open`` or ``mkdir`` would give (0o666 or 0o777
less the umask), not the owner-only 0o600 / 0o700 of ``tempfile``, so outputs stay shareable.

Temporary names carry their writer (``.<name>.<host>~<pid>.<random>.tmp``), so the next start
of a stage can remove what a killed run left (:func:`remove_stale_temporaries`) without touching
the files of a run still writing beside it (another shard, say).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FILE_MODE = 0o666  # what open() asks for, before the umask
DIR_MODE = 0o777  # what mkdir() asks for, before the umask
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)~(?P<pid>\d+)\.(?:[^.]+\.tmp|old|staged)$")
_LEGACY_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")  # before writers were named
LEGACY_AGE_SECONDS = 3600.0  # an unnamed temporary this old is a dead run's


def owner_tag() -> str:
    """``host~pid``: who writes a temporary file (the host's name reduced to letters, digits, - and _)."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
    return f"{host}~{os.getpid()}"


def _alive(host: str, pid: int) -> bool:
    """Whether the writer may still run: another host's is assumed alive; here, the pid is asked."""
    if host != owner_tag().split("~")[0]:
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(
    folder: str | os.PathLike[str], recursive: bool = False, names: set[str] | None = None
) -> list[Path]:
    """Remove the temporary files and folders that dead runs left in ``folder``; return them.

    A temporary whose writer (host and pid in its name) is gone is removed; an ``.old`` folder
    kept while a folder was being replaced is put back when the replacement never arrived, so a
    run killed at that instant leaves the previous output, as it was. ``names`` limits the
    cleaning to the temporaries of those targets (for a folder that is the user's, not a stage's).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    entries = sorted(folder.rglob(".*") if recursive else folder.glob(".*"))
    for path in entries:
        named = _TEMPORARY.match(path.name)
        match = named or _LEGACY_TEMPORARY.match(path.name)
        if match is None or (names is not None and match["name"] not in names):
            continue
        if named is not None:
            if _alive(named["host"], int(named["pid"])):
                continue
            target = path.with_name(named["name"])
            if path.name.endswith(".old") and not target.exists():
                os.replace(path, target)  # the swap was cut between its two renames: keep the old output
                continue
        elif time.time() - path.lstat().st_mtime < LEGACY_AGE_SECONDS:
            continue
        _remove(path)
        removed.append(path)
    return removed


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
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{owner_tag()}.", suffix=".tmp", dir=target.parent)
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{owner_tag()}.", suffix=".tmp", dir=target.parent))
    try:
        tmp.chmod(DIR_MODE & ~_current_umask())
        yield tmp
        for path in tmp.rglob("*"):  # libraries that write through their own temp files leave 0600
            if path.is_file() and not path.is_symlink():
                path.chmod(FILE_MODE & ~_current_umask())
        if target.exists():
            old = target.with_name(f".{target.name}.{owner_tag()}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            from kneepain.workers import kill_point

            kill_point("fileio:swap")
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


def array_sha256(array: np.ndarray) -> str:
    """Content hash of an array (shape, dtype and bytes): how a cache, a run and a bundle pin the
    registration templates they were made with."""
    digest = hashlib.sha256()
    digest.update(str((array.shape, str(array.dtype))).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table of a small DataFrame (pandas' to_markdown needs tabulate, which we do not ship)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"
