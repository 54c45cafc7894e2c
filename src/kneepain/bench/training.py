"""Training images/s of the paper-size network in each precision and memory format, and the share
of this machine's matrix-multiply peak that the achieved FLOP/s reach.

The unit measured is the one the ``paper`` preset trains: one slice location's model (the KneeNet
branch, width 1 at 224 x 224, shared by both knees, with its head) on a batch of pairs read from
a memory-mapped cache through ``CacheBatches``; a step is forward, cross-entropy, backward and
an SGD step (momentum 0.9), as in ``kneepain.train.loop.fit``. Settings are measured in turn,
round after round, and the median of the rounds is kept: on a shared machine only ratios within
one run mean something.
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from kneepain.bench.peak import forward_backward_flops, peak_flops
from kneepain.bench.report import OK, failed, skipped
from kneepain.contracts import N_SLICES
from kneepain.hardware import autocast_for
from kneepain.train.loop import backward_and_step

CENTRE_LOCATION = N_SLICES // 2


@dataclass(frozen=True)
class Setting:
    """One way to run the same training step."""

    precision: str  # fp32 | bf16 | fp16 (autocast; fp16 with a GradScaler)
    channels_last: bool = False
    compile: bool = False

    @property
    def name(self) -> str:
        parts = [self.precision]
        if self.channels_last:
            parts.append("channels_last")
        if self.compile:
            parts.append("compile")
        return " + ".join(parts)


def default_settings(device: torch.device) -> list[Setting]:
    """The settings worth comparing on ``device`` (fp16 needs CUDA; compile uses the best eager format)."""
    if device.type == "cuda":
        return [
            Setting("fp32"),
            Setting("fp32", True),
            Setting("bf16"),
            Setting("bf16", True),
            Setting("fp16", True),
            Setting("bf16", True, compile=True),
        ]
    return [
        Setting("fp32"),
        Setting("bf16"),
        Setting("fp32", True),
        Setting("bf16", True),
        Setting("fp32", True, compile=True),
    ]


@dataclass(frozen=True)
class TrainingOptions:
    """Size of the network and of the measurement."""

    width: float = 1.0
    input_size: int = 224
    pairs: int = 2  # subjects per step (paper: 64)
    steps: int = 2  # timed steps per setting and round (fewer once budget_s is spent, at least 1)
    warmup: int = 1  # untimed steps before them
    rounds: int = 2  # a setting over slow_factor x slower than fp32 is measured in the first round only
    budget_s: float = 30.0
    slow_factor: float = 5.0
    compile: bool = True  # False: report the compile row as skipped
    peak_seconds: float = 1.0


def random_cache(folder: Path, rows: int, size: int) -> np.ndarray:
    """A random uint8 cache (rows, 2, 23, size, size) on disk, opened read-only as a memmap."""
    path = folder / "cache.npy"
    cache = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, 2, N_SLICES, size, size))
    rng = np.random.default_rng(0)
    for row in range(rows):
        cache[row] = rng.integers(0, 256, size=cache.shape[1:], dtype=np.uint8)
    cache.flush()
    del cache
    return np.load(path, mmap_mode="r")


def _set_format(net: torch.nn.Module, channels_last: bool) -> None:
    net.channels_last = channels_last  # SiameseNet lays each input out the same way
    net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def time_steps(
    unit: torch.nn.Module,
    runner: torch.nn.Module,
    stream,
    device: torch.device,
    setting: Setting,
    steps: int,
    warmup: int,
    budget_s: float = math.inf,
) -> dict[str, float]:
    """Run ``warmup`` + up to ``steps`` training steps; images/s, seconds per step, data-wait share.

    Timed steps stop early (after at least one) once they have taken ``budget_s`` seconds, so
    a setting emulated in software (bf16 on a CPU without bf16 units) does not take many minutes.
    """
    optimizer = torch.optim.SGD(unit.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda") if setting.precision == "fp16" else None
    wait = compute = 0.0
    images = 0
    first_step = 0.0
    timed = 0
    for step in range(warmup + steps):
        if timed and wait + compute > budget_s:
            break
        t0 = time.perf_counter()
        x, y = next(stream)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        t1 = time.perf_counter()
        with autocast_for(setting.precision, device):
            loss = functional.cross_entropy(runner(x).float(), y)
        backward_and_step(loss, optimizer, scaler)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if step == 0:
            first_step = t2 - t0
        if step >= warmup:
            timed += 1
            wait += t1 - t0
            compute += t2 - t1
            images += x.shape[0] * x.shape[1] * x.shape[2]
    total = wait + compute
    return {
        "images_per_s": images / total,
        "step_s": total / timed,
        "timed_steps": timed,
        "data_wait_share": wait / total,
        "first_step_s": first_step,
    }


def _slow(samples: dict[str, list[dict[str, float]]], name: str, options: TrainingOptions) -> bool:
    """True when ``name`` ran over ``slow_factor`` x slower than fp32: one round tells enough."""
    if name not in samples or "fp32" not in samples:
        return False
    return samples[name][0]["step_s"] > options.slow_factor * samples["fp32"][0]["step_s"]


def _precision_problem(setting: Setting, device: torch.device) -> str | None:
    if setting.precision == "fp16" and device.type != "cuda":
        return "fp16 needs CUDA (GradScaler)"
    if setting.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16"
    return None


def measure_training(
    device: torch.device, options: TrainingOptions, settings: list[Setting] | None = None
) -> dict[str, Any]:
    """Images/s, achieved FLOP/s and share of the matmul peak for every setting."""
    from kneepain.model import build_model
    from kneepain.train.data import CacheBatches
    from kneepain.train.recipe import LocationModel

    settings = settings or default_settings(device)
    architecture = {
        "branch": "kneenet",
        "width": options.width,
        "input_size": options.input_size,
        "combine": "relu_diff",
        "mode": "paper",
    }
    torch.manual_seed(0)
    net = build_model(architecture).to(device).train()
    unit = LocationModel(net, CENTRE_LOCATION)
    rows: dict[str, dict[str, Any]] = {}
    samples: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="kneepain-bench-") as tmp:
        n_rows = max(2 * options.pairs, 8)
        cache = random_cache(Path(tmp), n_rows, options.input_size)
        batches = CacheBatches(
            cache, np.arange(n_rows), np.arange(n_rows) % 2, batch_size=options.pairs,
            input_size=options.input_size, shuffle=True, swap_knees=True, location=CENTRE_LOCATION,
        )  # fmt: skip
        stream = itertools.chain.from_iterable(batches.epoch(e) for e in itertools.count())
        example, _ = next(stream)
        flops = forward_backward_flops(unit, example.to(device))
        precisions = {s.precision for s in settings if _precision_problem(s, device) is None}
        if device.type == "cuda" and torch.backends.cudnn.allow_tf32 and "fp32" in precisions:
            precisions.add("tf32")
        peaks = peak_flops(sorted(precisions), device, options.peak_seconds)
        compiled: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}
        for setting in settings:
            problem = _precision_problem(setting, device)
            if problem:
                rows[setting.name] = {"status": f"unavailable: {problem}"}
            elif setting.compile and not options.compile:
                rows[setting.name] = {"status": skipped("compiling takes about a minute (--quick)")}
        for round_index in range(max(1, options.rounds)):
            for setting in settings:
                if setting.name in rows or (round_index and _slow(samples, setting.name, options)):
                    continue
                try:
                    if setting.compile:
                        if setting.name not in compiled:  # its own copy: format changes would recompile
                            own = copy.deepcopy(net)
                            _set_format(own, setting.channels_last)
                            own_unit = LocationModel(own, CENTRE_LOCATION)
                            compiled[setting.name] = (own_unit, torch.compile(own_unit))
                        own_unit, runner = compiled[setting.name]
                        result = time_steps(
                            own_unit, runner, stream, device, setting, options.steps, options.warmup,
                            options.budget_s,
                        )  # fmt: skip
                    else:
                        _set_format(net, setting.channels_last)
                        result = time_steps(
                            unit, unit, stream, device, setting, options.steps, options.warmup,
                            options.budget_s,
                        )  # fmt: skip
                except Exception as error:  # e.g. torch.compile without a working compiler
                    rows[setting.name] = {"status": failed(error)}
                    continue
                samples.setdefault(setting.name, []).append(result)
        # Peak again at the end, keeping the best: on a shared machine one sample may land in a busy moment.
        after = peak_flops(sorted(peaks), device, options.peak_seconds)
        peaks = {name: max(peaks[name], after[name]) for name in peaks}
    peak_key = {"fp32": "tf32" if "tf32" in peaks else "fp32", "bf16": "bf16", "fp16": "fp16"}
    table = []
    base = statistics.median(r["images_per_s"] for r in samples["fp32"]) if "fp32" in samples else None
    for setting in settings:
        row: dict[str, Any] = {"name": setting.name}
        if setting.name in samples:
            runs = samples[setting.name]
            images_per_s = statistics.median(r["images_per_s"] for r in runs)
            step_s = statistics.median(r["step_s"] for r in runs)
            achieved = flops / step_s
            peak_name = peak_key[setting.precision]
            row.update(
                images_per_s=images_per_s,
                vs_fp32=images_per_s / base if base else None,
                step_s=step_s,
                data_wait_share=statistics.median(r["data_wait_share"] for r in runs),
                timed_steps=sum(int(r["timed_steps"]) for r in runs),
                rounds=len(runs),
                achieved_flops=achieved,
                peak_flops=peaks[peak_name],
                peak_precision=peak_name,
                share_of_peak=achieved / peaks[peak_name],
                status=OK,
            )
            if setting.compile:
                row["compile_s"] = runs[0]["first_step_s"]
        else:
            row.update(rows[setting.name])
        table.append(row)
    return {
        "device": str(device),
        "unit": "one slice location's model (paper mode): branch + head, batch of pairs",
        "network": {k: architecture[k] for k in ("branch", "width", "input_size")},
        "batch_pairs": options.pairs,
        "images_per_step": 2 * options.pairs,
        "steps": options.steps,
        "rounds": max(1, options.rounds),
        "flops_per_step": flops,
        "peak_flops": peaks,
        "rows": table,
    }
