"""Training speed is now the ``training`` section of ``kneepain bench``; this script forwards to it.

Any ``kneepain bench`` option may follow, e.g.:

    .venv/bin/python benchmarks/train_speed.py --out train-speed.json
    .venv/bin/python benchmarks/train_speed.py --width 0.125 --input-size 64 --pairs 16 --out small.json
    .venv/bin/python benchmarks/train_speed.py --device cuda --out gpu-train.json     # on a GPU
"""

from __future__ import annotations

import sys

from kneepain.cli import app

if __name__ == "__main__":
    app(["bench", "--sections", "training", *sys.argv[1:]])
