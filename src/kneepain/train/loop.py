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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from kneepain.contracts import JsonRecord
from kneepain.fileio import atomic_dir, write_text
from kneepain.train.data import CacheBatches

PRECISIONS = ("fp32", "bf16", "fp16")
CHECKPOINT_DIR = "checkpoint"
METRICS_LOG = "metrics.jsonl"


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, bad configuration, mismatched resume): stop cleanly."""


SELECT_ON = ("loss", "auc", "last")


def selection_score(select_on: str, val_loss: float, val_auc: float, epoch: int = 0) -> float:
    """Lower is better: the validation loss, minus the validation AUC (NaN AUC ranks last), or
    minus the epoch (``last``: every epoch beats the one before, so the final weights are kept).

    With a small validation part the loss can rise while the ranking improves (the model grows
    overconfident): selecting on loss then keeps an early, uninformative epoch; and a validation
    AUC on a dozen subjects can saturate at 1.0 in epoch 1. ``last`` trusts the schedule instead.
    """
    if select_on == "loss":
        return val_loss
    if select_on == "last":
        return -float(epoch)
    return -val_auc if math.isfinite(val_auc) else math.inf


@dataclass(frozen=True)
class TrainConfig(JsonRecord):
    """Optimisation and speed settings. Defaults are the paper's recipe."""

    optimizer: str = "sgd"  # "sgd" (paper) or "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step_epochs: int = 20  # learning rate x lr_gamma every this many epochs
    lr_gamma: float = 0.1
    batch_size: int = 64  # subjects (pairs of 23-slice stacks) per step, over all processes
    epochs: int = 500
    patience: int = 50  # early stopping on the validation score (0 = off)
    select_on: str = "loss"  # the kept epoch: lowest validation loss (paper), highest validation AUC, or last
    ema_decay: float = 0.0  # > 0: validate and keep an exponential moving average of the weights (per step)
    val_fraction: float = 0.1  # share of each training part held out for early stopping
    swap_knees: bool = False  # augmentation: swap the knees and flip the label (p = 0.5)
    shift_augment: float = 0.0  # augmentation: move each knee's stack up to this share of the side
    precision: str = "fp32"  # fp32 | bf16 (autocast, CPU and CUDA) | fp16 (CUDA, GradScaler)
    channels_last: bool = False
    compile: bool = False
    fusion_steps: int = 200  # paper mode: LBFGS iterations of the logistic fusion layer
    fusion_l2: float = 1e-4
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.select_on not in SELECT_ON:
            raise ValueError(f"select_on must be one of {SELECT_ON}, got {self.select_on!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0.0 <= self.shift_augment < 0.25:
            raise ValueError(f"shift_augment must be in [0, 0.25), got {self.shift_augment}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.batch_size < 1 or self.epochs < 1 or not (0.0 <= self.val_fraction < 0.5):
            raise ValueError(f"batch_size >= 1, epochs >= 1 and 0 <= val_fraction < 0.5 expected: {self}")


# Presets: (architecture, training). "paper" is the published configuration; "small" trains a
# 300-subject 10-fold CV on a 2-core CPU; "tiny" is for the demo's fast path and tests.
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "paper": (
        {"branch": "kneenet", "width": 1.0, "input_size": 224, "combine": "relu_diff", "mode": "paper"},
        {},
    ),
    "small": (
        {
            "branch": "kneenet",
            "width": 0.125,
            "input_size": 64,
            "combine": "relu_diff",
            "mode": "joint",
            "head": "shared",
            # Predict with the mean over both knee orders: +0.001 to +0.013 pooled AUC on all 8
            # stored small-preset runs, none lower (docs/training.md).
            "readout": "swap_mean",
        },
        {
            "optimizer": "adam",
            "lr": 3e-3,
            "lr_step_epochs": 10,
            "batch_size": 16,
            "epochs": 20,
            # A fixed schedule and the averaged weights of its end: with ~20 validation subjects
            # both best-epoch rules kept uninformative early epochs in some folds (docs/training.md).
            "patience": 0,
            "select_on": "last",
            "ema_decay": 0.95,
            # Nothing is selected on a validation part, so it trains too: +0.03 AUC on 10 folds.
            "val_fraction": 0.0,
            "swap_knees": True,
            "weight_decay": 1e-4,
            "channels_last": True,  # 1.33x on this CPU (docs/training.md); bf16 is 10x slower here
        },
    ),
    "tiny": (
        {
            "branch": "kneenet",
            "width": 0.0625,
            "input_size": 32,
            "combine": "relu_diff",
            "mode": "joint",
            "head": "shared",
            "readout": "swap_mean",
        },
        {
            "optimizer": "adam",
            "lr": 1e-2,
            "lr_step_epochs": 10,
            "batch_size": 16,
            "epochs": 8,
            "patience": 4,
            "swap_knees": True,
        },
    ),
}


def preset(name: str, model_overrides: dict | None = None, train_overrides: dict | None = None):
    """The (ModelConfig, TrainConfig) of preset ``name`` with the given fields replaced."""
    from kneepain.model.siamese import ModelConfig

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    arch, train = PRESETS[name]
    model_config = ModelConfig.from_json({**arch, **(model_overrides or {})})
    return model_config, TrainConfig.from_json({**train, **(train_overrides or {})})


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
    """The precision switch: bf16/fp16 autocast, or nothing for fp32."""
    if config.precision == "fp32":
        return contextlib.nullcontext()
    if config.precision == "fp16" and device.type != "cuda":
        raise TrainingError("fp16 needs CUDA (GradScaler); use --precision bf16 on a CPU")
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


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


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(
    folder: Path,
    module: nn.Module,
    optimizer,
    scheduler,
    progress: dict,
    best: dict | None,
    averaged: nn.Module | None = None,
) -> None:
    """Write folder/checkpoint/ (weights, optimizer tensors, best and averaged weights; JSON for the
    rest) atomically."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in _cpu_state(module).items()}
    optim_tensors, optim_record = _optimizer_to_parts(optimizer)
    tensors.update(optim_tensors)
    if best is not None:
        tensors.update({f"best.{k}": v for k, v in best.items()})
    if averaged is not None:
        tensors.update({f"ema.{k}": v for k, v in _cpu_state(averaged).items()})
    record = {"optimizer": optim_record, "scheduler": scheduler.state_dict(), "progress": progress}
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


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


# -- evaluation ---------------------------------------------------------------------------------
def auc_or_nan(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, NaN when only one class is present (a tiny validation part can have that)."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return math.nan
    return float(roc_auc_score(labels, scores))


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


def _moving_average(module: nn.Module, decay: float) -> nn.Module | None:
    """An exponential moving average of ``module``'s weights and BN statistics (None when decay is 0).

    Averaging damps the epoch-to-epoch swings that a small, noisy training set gives the raw
    weights, so the validated (and kept) model changes smoothly.
    """
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


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
) -> FitResult:
    """Train ``module`` (logits (B, 2) from a batch) on ``train``; early-stop on ``val`` loss.

    Writes ``out_dir/metrics.jsonl`` (one line per epoch) and ``out_dir/checkpoint/`` after every
    epoch (rank 0 only). ``resume`` continues from that checkpoint exactly. On return the module
    holds the weights of the best validation epoch (the last epoch when there is no ``val``).
    Raises :class:`TrainingError` on a non-finite loss, leaving earlier files untouched.
    """
    dist = dist or Dist()
    module.to(device)
    if config.channels_last:
        module.to(memory_format=torch.channels_last)
    optimizer = _make_optimizer(module, config)
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=config.lr_step_epochs, gamma=config.lr_gamma
    )
    progress_state: dict[str, Any] = {"epoch": 0, "best_val_loss": math.inf, "best_epoch": 0, "bad_epochs": 0}
    best: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = []
    averaged = _moving_average(module, config.ema_decay)
    keep_last = val is None or config.select_on == "last"
    if resume:
        tensors, record = load_checkpoint(out_dir)
        module.load_state_dict(_prefixed(tensors, "model."))
        if averaged is not None:
            averaged.load_state_dict(_prefixed(tensors, "ema."))
        optimizer.load_state_dict(_optimizer_from_parts(tensors, record["optimizer"]))
        scheduler.load_state_dict(record["scheduler"])
        progress_state = record["progress"]
        best = _prefixed(tensors, "best.") or None
        log = out_dir / METRICS_LOG
        if log.exists():
            history = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            history = [h for h in history if h["epoch"] <= progress_state["epoch"]]
    runner: nn.Module = module
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        runner = torch.compile(runner)
    scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None

    def cast() -> contextlib.AbstractContextManager:
        return autocast(config, device)

    start = time.perf_counter()
    epoch = progress_state["epoch"]
    while epoch < config.epochs:
        if config.patience and progress_state["bad_epochs"] >= config.patience:
            break
        epoch += 1
        module.train()
        seen, loss_sum, wait, t0 = 0, 0.0, 0.0, time.perf_counter()
        batches = iter(train.epoch(epoch))
        bar = _epoch_bar(batches, len(train), f"{label} epoch {epoch}", show_progress and dist.is_main)
        tick = time.perf_counter()
        for x, y in bar:
            wait += time.perf_counter() - tick
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with cast():
                loss = functional.cross_entropy(runner(x).float(), y)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"{label}: loss is {loss.item()} at epoch {epoch}; stopped (try a lower --lr)"
                )
            backward_and_step(loss, optimizer, scaler)
            if averaged is not None:
                averaged.update_parameters(module)
            seen += len(y)
            loss_sum += loss.item() * len(y)
            tick = time.perf_counter()
        seconds = time.perf_counter() - t0
        if dist.world > 1:  # BN running statistics: each rank updated its own after the last forward
            import torch.distributed as td

            for buffer in module.buffers():
                td.broadcast(buffer, src=0)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        entry: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "lr": lr,
            "images_per_s": seen * images_per_item * dist.world / max(seconds, 1e-9),
            "data_wait_share": wait / max(seconds, 1e-9),
            "seconds": seconds,
        }
        kept = module if averaged is None else averaged.module  # the weights validated and kept
        if val is not None:
            kept.eval()
            prob, truth, val_loss = predict(kept, val, device, cast)
            if not math.isfinite(val_loss):
                raise TrainingError(f"{label}: validation loss is {val_loss} at epoch {epoch}; stopped")
            entry.update(val_loss=val_loss, val_auc=auc_or_nan(truth, prob))
            score = selection_score(config.select_on, val_loss, entry["val_auc"], epoch)
            if score < progress_state.get("best_score", progress_state["best_val_loss"]):
                progress_state.update(best_val_loss=val_loss, best_score=score, best_epoch=epoch)
                progress_state["bad_epochs"] = 0
                if not keep_last:  # the last epoch's weights are the model (or its average) itself
                    best = _cpu_state(kept)
            else:
                progress_state["bad_epochs"] += 1
        else:
            progress_state["best_epoch"] = epoch
        progress_state["epoch"] = epoch
        history.append(
            {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in entry.items()}
        )
        if dist.is_main:
            # The log first: a kill between the two leaves a line past the checkpoint (dropped on
            # resume), never a checkpoint whose epoch is missing from the log.
            write_text(out_dir / METRICS_LOG, "".join(json.dumps(h) + "\n" for h in history))
            save_checkpoint(out_dir, module, optimizer, scheduler, progress_state, best, averaged)
    if keep_last:
        if averaged is not None:
            module.load_state_dict(averaged.module.state_dict())
    elif best is not None:
        module.load_state_dict(best)
    return FitResult(
        epochs_run=epoch,
        best_epoch=int(progress_state["best_epoch"]),
        best_val_loss=float(progress_state["best_val_loss"]),
        seconds=time.perf_counter() - start,
        history=history,
    )


def without(config: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of ``config`` with fields changed (validated again)."""
    return replace(config, **changes)
