"""The preprocessing bench's child process: ``run_preprocess`` in a fresh interpreter.

Kept apart from the bench so neither this process nor its spawned workers (which import this
module again as ``__mp_main__``) load torch: their peak memory is the preprocessing stage's own.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


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
