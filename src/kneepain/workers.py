"""Worker processes that never outlive the command that started them, and the fault-injection hook.

A process pool's workers are separate processes: when the main process is killed (``kill -9``,
the OOM killer, a scheduler's time limit) nothing tells them, and they would go on working for
a parent that no longer exists. :func:`die_with_parent` (a pool initializer) asks Linux to kill
the worker when its parent dies (``prctl(PR_SET_PDEATHSIG)``) and, as a second line and on other
systems, starts a thread that watches the parent's pid and exits when it changes.

:func:`kill_point` is how the fault-injection tests kill a stage at an exact place: when the
environment variable ``KNEEPAIN_KILL_AT`` names the point (``stage:point`` or
``stage:point:N`` for the N-th time the point is passed), the process kills itself with SIGKILL,
exactly as ``kill -9`` would. Unset (always, outside those tests) it costs one dictionary lookup.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

KILL_ENV = "KNEEPAIN_KILL_AT"
_PR_SET_PDEATHSIG = 1
_WATCH_SECONDS = 1.0
_passed: dict[str, int] = {}


def die_with_parent(parent: int | None = None) -> None:
    """Make this (worker) process end when its parent process ends; call first in the worker.

    ``parent`` is the pid of the process that started the pool (``os.getpid()`` there, passed as
    an initializer argument), so a parent that died before the worker got here is noticed too.
    """
    parent = os.getppid() if parent is None else parent
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the watchdog below still works
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the signal was armed

    def watch() -> None:
        while True:
            time.sleep(_WATCH_SECONDS)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="kneepain-parent-watch", daemon=True).start()


def kill_point(name: str) -> None:
    """SIGKILL this process when ``KNEEPAIN_KILL_AT`` names this point (tests only; see module doc)."""
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    _passed[name] = _passed.get(name, 0) + 1
    point, _, count = wanted.rpartition(":") if wanted.rsplit(":", 1)[-1].isdigit() else (wanted, "", "1")
    if point == name and _passed[name] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)
