"""The training loop: SGD recipe, early stopping, precision switches, DDP, resumable checkpoints.

One function, :func:`fit`, trains any module whose forward maps a batch to logits (B, 2): the
whole Siamese model (``joint`` mode) or one location's branch and head (``paper`` mode, stage 1).
Like nanoGPT's loop: one precision switch (an autocast context; a GradScaler only for fp16), DDP
detected from the environment (``torchrun``), only rank 0 logs and writes, and a checkpoint is
one record of everything needed to continue exactly (weights, optimizer, scheduler, epoch, early
stopping state). Checkpoints hold no pickle either: tensors in safetensors, the rest in JSON.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from kneepain.config import TrainConfig
from kneepain.config import preset as preset  # re-exported for library callers
from kneepain.fileio import atomic_dir, write_text
from kneepain.hardware import autocast_for, resolve_precision
from kneepain.train.data import CacheBatches
from kneepain.train.strategies import Objective, Selection, WeightAverage, cpu_state, prefixed
from kneepain.train.strategies import auc_or_nan as auc_or_nan  # re-exported for kneepain.train.cv

CHECKPOINT_DIR = "checkpoint"
METRICS_LOG = "metrics.jsonl"


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, bad configuration, mismatched resume): stop cleanly."""


# -- processes and devices ----------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    """Where this process stands in a (possibly single-process) DDP job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> Dist:
    """Rank and world size from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    return Dist(
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device: torch.device) -> Dist:
    """Join the process group when started by torchrun (nccl on CUDA, gloo on CPU)."""
    import torch.distributed as td

    info = dist_from_env()
    if info.world > 1 and not td.is_initialized():
        td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info


def pick_device(config: TrainConfig, dist: Dist | None = None) -> torch.device:
    """The training device: CUDA (this process's local GPU) when asked for or available."""
    if config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrainingError("device 'cuda' requested but no CUDA device is available")
    local = (dist or dist_from_env()).local_rank
    return torch.device("cuda", local % torch.cuda.device_count())


def autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The precision switch of ``config`` on ``device`` (``auto`` resolved by kneepain.hardware)."""
    return autocast_for(resolve_precision(config.precision, device).precision, device)


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: Any | None) -> None:
    """One optimiser step from ``loss``; through the GradScaler when training in fp16 on CUDA."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


# -- checkpoints (no pickle) --------------------------------------------------------------------
def _optimizer_to_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (safetensors) and plain values (JSON)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous().clone()
            else:
                plain.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def _optimizer_from_parts(tensors: dict[str, torch.Tensor], record: dict) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entry in record["plain"].items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": record["param_groups"]}


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
    """Write folder/checkpoint/ (tensors in safetensors, the rest in JSON) atomically."""
    from safetensors.torch import save_file

    with atomic_dir(folder / CHECKPOINT_DIR) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(record, indent=1, default=float))


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and JSON record of folder/checkpoint/ (both must exist)."""
    from safetensors.torch import load_file

    target = folder / CHECKPOINT_DIR
    if not (target / "state.json").exists() or not (target / "state.safetensors").exists():
        raise TrainingError(f"{target}: no checkpoint to resume from")
    return load_file(str(target / "state.safetensors")), json.loads((target / "state.json").read_text())


# -- evaluation ---------------------------------------------------------------------------------
@torch.no_grad()
def predict(
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: CacheBatches,
    device: torch.device,
    cast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[np.ndarray, np.ndarray, float]:
    """P(right painful), labels and mean cross-entropy over ``batches`` (in their stored order)."""
    probs, labels, losses = [], [], []
    for x, y in batches.epoch(0):
        with cast():
            logits = forward(x.to(device)).float()
        losses.append(functional.cross_entropy(logits, y.to(device), reduction="sum").item())
        probs.append(torch.softmax(logits, dim=1)[:, 1].cpu().numpy())
        labels.append(y.numpy())
    if not probs:
        return np.zeros(0), np.zeros(0, dtype=int), math.nan
    prob, label = np.concatenate(probs), np.concatenate(labels)
    return prob, label, float(np.sum(losses) / len(label))


# -- the loop -----------------------------------------------------------------------------------
@dataclass
class FitResult:
    """What :func:`fit` reports: epochs run, best epoch and validation loss, time."""

    epochs_run: int
    best_epoch: int
    best_val_loss: float
    seconds: float
    history: list[dict[str, Any]]


def _make_optimizer(module: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _epoch_bar(batches: Iterator, total: int, label: str, show: bool) -> Iterator:
    """A batch bar on a terminal; in a log, one plain line at the end of each epoch (not ten)."""
    if not show:
        return batches
    from kneepain.console import console, progress, safe

    if console.is_terminal:
        return progress(batches, label, total=total)

    def counted() -> Iterator:
        done = 0
        for batch in batches:
            yield batch
            done += 1
        console.print(f"{safe(label)}: {done}/{total} batches")

    return counted()


@dataclass
class Training:
    """What one fit trains and with what: the module (and its DDP/compiled runner), the optimiser,
    its schedule, the precision switch, and the averaging and selection strategies."""

    module: nn.Module
    runner: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: Any | None
    cast: Callable[[], contextlib.AbstractContextManager]
    average: WeightAverage
    selection: Selection
    objective: Objective

    def checkpoint(self, folder: Path) -> None:
        """Everything needed to continue exactly: weights, optimiser, schedule, strategies' state."""
        tensors = {f"model.{k}": v for k, v in cpu_state(self.module).items()}
        optim_tensors, optim_record = _optimizer_to_parts(self.optimizer)
        tensors.update({**optim_tensors, **self.selection.tensors(), **self.average.tensors()})
        record = {
            "optimizer": optim_record,
            "scheduler": self.scheduler.state_dict(),
            "progress": self.selection.progress,
        }
        save_checkpoint(folder, tensors, record)

    def restore(self, folder: Path) -> list[dict[str, Any]]:
        """Continue from folder/checkpoint/; returns the metrics log up to its epoch."""
        tensors, record = load_checkpoint(folder)
        self.module.load_state_dict(prefixed(tensors, "model."))
        self.average.restore(tensors)
        self.optimizer.load_state_dict(_optimizer_from_parts(tensors, record["optimizer"]))
        self.scheduler.load_state_dict(record["scheduler"])
        self.selection.restore(record["progress"], tensors)
        log = folder / METRICS_LOG
        if not log.exists():
            return []
        history = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        return [h for h in history if h["epoch"] <= self.selection.epoch]


def _setup(
    module: nn.Module,
    config: TrainConfig,
    validated: bool,
    device: torch.device,
    dist: Dist,
    objective: Objective | None = None,
) -> Training:
    """Move ``module`` to ``device``, wrap it for DDP/compile and build its optimiser and strategies."""
    module.to(device)
    if config.channels_last:
        module.to(memory_format=torch.channels_last)
    optimizer = _make_optimizer(module, config)
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=config.lr_step_epochs, gamma=config.lr_gamma
    )
    average = WeightAverage(module, config.ema_decay)  # before any wrapping: it averages the bare module
    runner: nn.Module = module
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        runner = torch.compile(runner)
    precision = resolve_precision(config.precision, device).precision  # "auto" resolved once
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    objective = objective or Objective()
    return Training(
        module, runner, optimizer, scheduler, scaler, lambda: autocast_for(precision, device), average,
        objective.selection(config.select_on, config.patience, validated), objective,
    )  # fmt: skip


def _train_epoch(
    training: Training, batches: CacheBatches, epoch: int, device: torch.device, label: str, show: bool
) -> dict[str, float]:
    """One pass over ``batches``: the epoch's mean loss (per model of the objective), items seen,
    seconds and data-wait seconds."""
    training.module.train()
    seen, loss_sum, wait, start = 0, torch.zeros(1, dtype=torch.float64), 0.0, time.perf_counter()
    bar = _epoch_bar(iter(batches.epoch(epoch)), len(batches), f"{label} epoch {epoch}", show)
    tick = time.perf_counter()
    for x, y in bar:
        wait += time.perf_counter() - tick
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with training.cast():
            logits = training.runner(x).float()
        losses = training.objective.losses(logits, y)
        loss = training.objective.total(losses)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"{label}: loss is {loss.item()} at epoch {epoch}; stopped (try a lower --lr)"
            )
        backward_and_step(loss, training.optimizer, training.scaler)
        training.average.update(training.module)
        seen += len(y)
        loss_sum = loss_sum + losses.detach().double().cpu() * len(y)
        tick = time.perf_counter()
    return {
        "loss": training.objective.report(loss_sum / max(seen, 1)),
        "seen": seen,
        "seconds": time.perf_counter() - start,
        "wait": wait,
    }


def _broadcast_buffers(module: nn.Module, dist: Dist) -> None:
    """BN running statistics: each rank updated its own after its last forward; rank 0's win."""
    if dist.world > 1:
        import torch.distributed as td

        for buffer in module.buffers():
            td.broadcast(buffer, src=0)


def _validate(
    kept: nn.Module, val: CacheBatches, training: Training, device: torch.device, where: str
) -> dict:
    """Validation loss and AUC of the kept weights (per model of the objective); a non-finite loss
    stops training."""
    kept.eval()
    result = training.objective.validate(kept, val, device, training.cast)
    if not np.all(np.isfinite(result["val_loss"])):
        raise TrainingError(f"{where}: validation loss is {result['val_loss']}; stopped")
    return result


def _plain(value: Any) -> Any:
    """A metrics value for JSON: non-finite floats (also in a list) as None."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def fit(
    module: nn.Module,
    train: CacheBatches,
    val: CacheBatches | None,
    config: TrainConfig,
    out_dir: Path,
    *,
    device: torch.device,
    dist: Dist | None = None,
    resume: bool = False,
    label: str = "train",
    images_per_item: int = 46,
    show_progress: bool = True,
    objective: Objective | None = None,
) -> FitResult:
    """Train ``module`` (logits (B, 2) from a batch) on ``train``; select and early-stop on ``val``.

    Writes ``out_dir/metrics.jsonl`` (one line per epoch) and ``out_dir/checkpoint/`` after every
    epoch (rank 0 only). ``resume`` continues from that checkpoint exactly. On return the module
    holds the kept weights (:class:`Selection`; the last epoch's, or their average, when there is
    no ``val``). Raises :class:`TrainingError` on a non-finite loss, leaving earlier files untouched.
    ``objective`` (default: one model's cross-entropy) may train several models in one module
    (:class:`~kneepain.train.strategies.LocationObjective`): their losses and validation figures
    are then lists, one per model, and each keeps its own best epoch.
    """
    dist = dist or Dist()
    training = _setup(module, config, val is not None, device, dist, objective)
    selection = training.selection
    history = training.restore(out_dir) if resume else []
    start = time.perf_counter()
    while selection.epoch < config.epochs and not selection.stop():
        epoch = selection.epoch + 1
        done = _train_epoch(training, train, epoch, device, label, show_progress and dist.is_main)
        _broadcast_buffers(module, dist)
        entry: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": done["loss"],
            "lr": training.optimizer.param_groups[0]["lr"],
            "images_per_s": done["seen"] * images_per_item * dist.world / max(done["seconds"], 1e-9),
            "data_wait_share": done["wait"] / max(done["seconds"], 1e-9),
            "seconds": done["seconds"],
        }
        training.scheduler.step()
        kept = training.average.kept(module)  # the weights validated and kept
        if val is not None:
            entry.update(_validate(kept, val, training, device, f"{label} epoch {epoch}"))
        selection.observe(epoch, entry.get("val_loss"), kept)
        history.append({k: _plain(v) for k, v in entry.items()})
        if dist.is_main:
            # The log first: a kill between the two leaves a line past the checkpoint (dropped on
            # resume), never a checkpoint whose epoch is missing from the log.
            write_text(out_dir / METRICS_LOG, "".join(json.dumps(h) + "\n" for h in history))
            training.checkpoint(out_dir)
    selection.finish(module, training.average)
    return FitResult(
        epochs_run=selection.epoch,
        best_epoch=int(selection.progress["best_epoch"]),
        best_val_loss=float(selection.progress["best_val_loss"]),
        seconds=time.perf_counter() - start,
        history=history,
    )
