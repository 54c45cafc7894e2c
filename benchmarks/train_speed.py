"""Training speed of the paper-size Siamese branch: images/s for fp32 vs bf16 autocast, channels_last
off vs on, and the share of step time spent waiting for data.

Runs real training steps (forward, cross-entropy, backward, SGD) of the ``joint`` model on batches
read from a memory-mapped cache (a temporary random one, the contract's shape) through
``kneepain.train.data.CacheBatches``. The settings are measured alternately (round-robin, several
rounds) because the CPU is shared: compare ratios within one run, not absolute numbers across runs.

    .venv/bin/python benchmarks/train_speed.py --pairs 1 --steps 2 --rounds 2
    .venv/bin/python benchmarks/train_speed.py --device cuda --pairs 64 --compile   # on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from kneepain.contracts import N_SLICES
from kneepain.model import build_model
from kneepain.train.data import CacheBatches
from kneepain.train.loop import TrainConfig, autocast


def make_cache(folder: Path, n: int, size: int) -> np.ndarray:
    """A random uint8 cache (n, 2, 23, size, size) on disk, opened as a read-only memmap."""
    path = folder / "cache.npy"
    cache = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 2, N_SLICES, size, size))
    rng = np.random.default_rng(0)
    for i in range(n):
        cache[i] = rng.integers(0, 256, size=cache.shape[1:], dtype=np.uint8)
    cache.flush()
    return np.load(path, mmap_mode="r")


def measure(
    model, batches, device, precision: str, channels_last: bool, steps: int, warmup: int, runner=None
) -> dict:
    """Time ``steps`` training steps after ``warmup``; images/s and data-wait share.

    ``runner`` (e.g. a torch.compile'd ``model``) does the forward pass when given.
    """
    runner = runner or model
    model.channels_last = channels_last
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    config = TrainConfig(precision=precision, channels_last=channels_last)
    wait = compute = 0.0
    images = 0
    stream = iter(itertools.chain.from_iterable(batches.epoch(e) for e in itertools.count()))
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        x, y = next(stream)
        x, y = x.to(device), y.to(device)
        t1 = time.perf_counter()
        with autocast(config, device) if precision != "fp32" else contextlib.nullcontext():
            loss = functional.cross_entropy(runner(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if step >= warmup:
            wait += t1 - t0
            compute += t2 - t1
            images += x.shape[0] * 2 * x.shape[2]
    total = wait + compute
    return {"images_per_s": images / total, "data_wait_share": wait / total, "seconds": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=8, help="subjects per step (each 2 x 23 slices)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per setting and round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over the settings")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--settings",
        default="fp32:off,bf16:off,fp32:on,bf16:on",
        help="precision:channels_last pairs measured in turn (add fp16:on on CUDA)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="also measure torch.compile (bf16 + channels_last)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = (
        build_model({"width": args.width, "input_size": args.input_size, "mode": "joint"}).to(device).train()
    )
    settings = [(p, cl == "on") for p, cl in (item.split(":") for item in args.settings.split(","))]
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        n = max(4 * args.pairs, 16)
        cache = make_cache(Path(tmp), n, args.input_size)
        batches = CacheBatches(
            cache, np.arange(n), np.arange(n) % 2, batch_size=args.pairs, input_size=args.input_size,
            shuffle=True, swap_knees=True,
        )  # fmt: skip
        for _ in range(args.rounds):
            for precision, cl in settings:
                key = f"{precision}{' channels_last' if cl else ''}"
                result = measure(model, batches, device, precision, cl, args.steps, args.warmup)
                results.setdefault(key, []).append(result)
                print(key, json.dumps({k: round(v, 4) for k, v in result.items()}), flush=True)
        if args.compile:
            compiled = torch.compile(model)
            result = measure(
                model, batches, device, "bf16", True, args.steps, args.warmup + 3, runner=compiled
            )
            results["bf16 channels_last compiled"] = [result]
            print("bf16 channels_last compiled", json.dumps({k: round(v, 4) for k, v in result.items()}))
    summary = {k: float(np.median([r["images_per_s"] for r in v])) for k, v in results.items()}
    waits = {k: float(np.median([r["data_wait_share"] for r in v])) for k, v in results.items()}
    print("\nmedian images/s:", json.dumps({k: round(v, 1) for k, v in summary.items()}))
    print("median data-wait share:", json.dumps({k: round(v, 4) for k, v in waits.items()}))
    for a, b in (("bf16", "fp32"), ("fp32 channels_last", "fp32"), ("bf16 channels_last", "bf16")):
        if a in summary and b in summary:
            print(f"{a} / {b}: {summary[a] / summary[b]:.2f}x")


if __name__ == "__main__":
    main()
