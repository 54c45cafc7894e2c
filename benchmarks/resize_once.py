"""Epoch time with batches resized once per part vs resized every epoch (small preset, CPU).

    python benchmarks/resize_once.py WORK/preprocess/cache.npy [--subjects 120] [--epochs 3]

Both modes train the same network in turn, epoch after epoch, so the ratio is measured side by side.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from kneepain.contracts import open_cache
from kneepain.model.siamese import build_model
from kneepain.train.data import CacheBatches
from kneepain.train.loop import preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache")
    parser.add_argument("--subjects", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    cache = open_cache(args.cache)
    rows = np.arange(min(args.subjects, cache.shape[0]))
    labels = rows % 2
    model_config, _ = preset("small")
    net = build_model(model_config).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    options = dict(batch_size=16, input_size=model_config.input_size, shuffle=True, swap_knees=True)
    modes = {
        "resized_once": CacheBatches(cache, rows, labels, **options),
        "resized_each_epoch": CacheBatches(cache, rows, labels, max_resized_bytes=0, **options),
    }

    def epoch(batches: CacheBatches, number: int) -> float:
        start = time.perf_counter()
        for x, y in batches.epoch(number):
            loss = torch.nn.functional.cross_entropy(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start

    first = epoch(modes["resized_once"], 0)
    seconds: dict[str, list[float]] = {name: [] for name in modes}
    for number in range(1, args.epochs + 1):
        for name, batches in modes.items():
            seconds[name].append(epoch(batches, number))
    print(f"first epoch (includes the one-off resize): {first:.2f} s")
    for name, values in seconds.items():
        print(f"{name}: {[round(v, 2) for v in values]} s")
    ratio = statistics.median(seconds["resized_each_epoch"]) / statistics.median(seconds["resized_once"])
    print(f"speed-up of resizing once: {ratio:.2f}x")


if __name__ == "__main__":
    main()
