"""The two choices the training loop delegates: which weights are averaged, and which are kept.

:class:`WeightAverage` keeps an exponential moving average of the weights (or nothing);
:class:`Selection` decides, epoch by epoch, which weights are the model (the best validation
loss, the paper's rule, or simply the last epoch) and when patience runs out. Both hand their
state to the checkpoint and take it back on resume, so a resumed run continues exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

RULES = ("loss", "last")


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached, contiguous CPU copy of ``module``'s state dict (safetensors accepts it)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose key starts with ``prefix``, the prefix removed."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


class WeightAverage:
    """An exponential moving average of a module's weights and BN statistics, updated per step.

    Averaging damps the epoch-to-epoch swings that a small, noisy training set gives the raw
    weights, so the validated (and kept) model changes smoothly. With ``decay`` 0 it does nothing
    and the raw weights are validated and kept.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.averaged: nn.Module | None = None
        if decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.averaged = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    def update(self, module: nn.Module) -> None:
        """Fold the weights after one optimiser step into the average."""
        if self.averaged is not None:
            self.averaged.update_parameters(module)

    def kept(self, module: nn.Module) -> nn.Module:
        """The weights that are validated and kept: the average, or ``module`` itself."""
        return module if self.averaged is None else self.averaged.module

    def tensors(self) -> dict[str, torch.Tensor]:
        """Checkpoint tensors (``ema.`` keys)."""
        return {} if self.averaged is None else {f"ema.{k}": v for k, v in cpu_state(self.averaged).items()}

    def restore(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.averaged is not None:
            self.averaged.load_state_dict(prefixed(tensors, "ema."))


class Selection:
    """Which epoch's weights are the model, and when to stop early.

    ``loss`` keeps the epoch of the lowest validation loss and stops after ``patience`` epochs
    without a better one (the paper's recipe). ``last`` (or no validation part) keeps the final
    weights: with ~20 validation subjects the loss rule kept uninformative early epochs in some
    folds, and a fixed schedule did better (docs/experiments.md).
    """

    def __init__(self, rule: str, patience: int, validated: bool) -> None:
        if rule not in RULES:
            raise ValueError(f"select_on must be one of {RULES}, got {rule!r}")
        self.rule, self.patience = rule, patience
        self.keep_last = not validated or rule == "last"
        self.progress: dict[str, Any] = {
            "epoch": 0,
            "best_val_loss": math.inf,
            "best_epoch": 0,
            "bad_epochs": 0,
        }
        self.best: dict[str, torch.Tensor] | None = None

    @property
    def epoch(self) -> int:
        """The last epoch observed (0 before training)."""
        return int(self.progress["epoch"])

    def stop(self) -> bool:
        """Whether patience has run out."""
        return bool(self.patience) and self.progress["bad_epochs"] >= self.patience

    def score(self, val_loss: float, epoch: int) -> float:
        """Lower is better: the validation loss, or minus the epoch (every epoch beats the one before)."""
        return -float(epoch) if self.rule == "last" else val_loss

    def observe(self, epoch: int, val_loss: float | None, kept: nn.Module) -> None:
        """Record ``epoch``'s validation loss (None: no validation part) and keep ``kept`` if it is best."""
        if val_loss is None:
            self.progress["best_epoch"] = epoch
        elif self.score(val_loss, epoch) < self.progress.get("best_score", self.progress["best_val_loss"]):
            score = self.score(val_loss, epoch)
            self.progress.update(best_val_loss=val_loss, best_score=score, best_epoch=epoch, bad_epochs=0)
            if not self.keep_last:  # the last epoch's weights are the model (or its average) itself
                self.best = cpu_state(kept)
        else:
            self.progress["bad_epochs"] += 1
        self.progress["epoch"] = epoch

    def tensors(self) -> dict[str, torch.Tensor]:
        """Checkpoint tensors (``best.`` keys)."""
        return {} if self.best is None else {f"best.{k}": v for k, v in self.best.items()}

    def restore(self, progress: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.progress = dict(progress)
        self.best = prefixed(tensors, "best.") or None

    def finish(self, module: nn.Module, average: WeightAverage) -> None:
        """Leave the kept weights in ``module``."""
        if self.keep_last:
            if average.averaged is not None:
                module.load_state_dict(average.averaged.module.state_dict())
        elif self.best is not None:
            module.load_state_dict(self.best)
