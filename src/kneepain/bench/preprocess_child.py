"""The preprocessing bench's child process: ``run_preprocess`` in a fresh interpreter, and the
function that starts it.

Kept apart from the bench so neither this process nor its spawned workers (which import this
module again as ``__mp_main__``) load torch: their peak memory is the preprocessing stage's own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class PreprocessChildError(RuntimeError):
    """The preprocessing child process failed; the message carries the end of its output."""


def preprocess_in_child(work: Path, workers: int | None) -> dict[str, Any]:
    """Run ``run_preprocess(work)`` in a new Python process; its summary plus wall time."""
    out = work / "bench_preprocess.json"
    command = [sys.executable, "-m", "kneepain.bench.preprocess_child", str(work), "--out", str(out)]
    if workers:
        command += ["--workers", str(workers)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0 or not out.exists():
        tail = (completed.stderr or completed.stdout).strip()[-600:]
        raise PreprocessChildError(f"preprocess of {work} exited {completed.returncode}: {tail}")
    return json.loads(out.read_text())


def main() -> None:
    """Preprocess WORK, then write the stage's summary (plus wall time) as JSON to --out."""
    parser = argparse.ArgumentParser(description="kneepain bench: preprocessing child")
    parser.add_argument("work", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    from kneepain.fileio import write_json
    from kneepain.preprocess import run_preprocess

    start = time.perf_counter()
    summary = run_preprocess(args.work, workers=args.workers or None)
    summary["wall_seconds"] = time.perf_counter() - start
    write_json(args.out, summary)


if __name__ == "__main__":
    main()
