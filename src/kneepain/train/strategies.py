"""The choices the training loop delegates: what it minimises, which weights are averaged and kept.

:class:`Objective` is the loss of one model's logits and its validation; :class:`WeightAverage`
keeps an exponential moving average of the weights (or nothing); :class:`Selection` decides,
epoch by epoch, which weights are the model (the best validation loss, the paper's rule, or
simply the last epoch) and when patience runs out. :class:`LocationObjective` and
:class:`LocationSelections` are their per-location variants for G models trained as one grouped
network (``paper`` mode, :mod:`kneepain.model.grouped`): the loss is the sum of the locations'
losses and every location keeps its own best epoch and stops on its own. Averaging and selection
hand their state to the checkpoint and take it back on resume, so a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from kneepain.model.grouped import join_states, split_state

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

    def __init__(
        self,
        rule: str,
        patience: int,
        validated: bool,
        state_of: Callable[[nn.Module], dict[str, torch.Tensor]] = cpu_state,
    ) -> None:
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
        self.state_of = state_of  # the kept weights' CPU copy (one location's part of a grouped network)

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
                self.best = self.state_of(kept)
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


def auc_or_nan(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present (a tiny validation part can have that) or a score
    is not finite (a diverged network: the loop then stops on its loss with a clear message)."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2 or not np.all(np.isfinite(scores)):
        return math.nan
    return float(roc_auc_score(labels, scores))


Cast = Callable[[], contextlib.AbstractContextManager]


class Objective:
    """One model with logits (B, 2): cross-entropy, validated by its loss and AUC, one Selection."""

    def selection(self, rule: str, patience: int, validated: bool) -> Selection:
        return Selection(rule, patience, validated)

    def losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-model batch losses (P,) (here P = 1)."""
        return functional.cross_entropy(logits, labels).reshape(1)

    def total(self, losses: torch.Tensor) -> torch.Tensor:
        """The loss that is minimised."""
        return losses.sum()

    def report(self, values: torch.Tensor) -> float | list[float | None]:
        """Per-model values (P,) as the metrics log holds them."""
        return float(values[0])

    def validate(self, kept: nn.Module, batches: Any, device: torch.device, cast: Cast) -> dict[str, Any]:
        """Validation loss and AUC of ``kept`` on ``batches``."""
        from kneepain.train.loop import predict

        prob, truth, val_loss = predict(kept, batches, device, cast)
        return {"val_loss": val_loss, "val_auc": auc_or_nan(truth, prob)}


class LocationSelections:
    """One :class:`Selection` per location of a grouped network (the interface of one Selection).

    Location g keeps the weights of ITS best validation epoch (block g of the grouped state,
    :func:`kneepain.model.grouped.split_state`) and stops when ITS patience runs out; the run
    stops when every location has. ``kept_states`` holds each location's kept state after
    :meth:`finish` (with its own BatchNorm batch count, which the grouped network shares).
    """

    def __init__(self, rule: str, patience: int, validated: bool, n_locations: int) -> None:
        self.locations = [
            Selection(rule, patience, validated, state_of=self._location_state(g, n_locations))
            for g in range(n_locations)
        ]
        self.keep_last = self.locations[0].keep_last
        self.last_epoch = 0
        self.kept_states: list[dict[str, torch.Tensor]] = []

    @staticmethod
    def _location_state(location: int, n: int) -> Callable[[nn.Module], dict[str, torch.Tensor]]:
        def state_of(kept: nn.Module) -> dict[str, torch.Tensor]:
            own = split_state(kept.state_dict(), location, n)
            return {k: v.detach().cpu().contiguous().clone() for k, v in own.items()}

        return state_of

    @property
    def epoch(self) -> int:
        return self.last_epoch

    @property
    def progress(self) -> dict[str, Any]:
        """JSON state: the last epoch, each location's progress, and their latest best epoch."""
        each = [dict(selection.progress) for selection in self.locations]
        return {
            "epoch": self.last_epoch,
            "best_epoch": max(p["best_epoch"] for p in each),
            "best_val_loss": float(sum(p["best_val_loss"] for p in each)),
            "locations": each,
        }

    def active(self) -> list[bool]:
        """Which locations still train."""
        return [not selection.stop() for selection in self.locations]

    def stop(self) -> bool:
        return not any(self.active())

    def observe(self, epoch: int, val_loss: list[float | None] | None, kept: nn.Module) -> None:
        """Each still-training location observes its own validation loss (None: no validation)."""
        for g, (selection, training) in enumerate(zip(self.locations, self.active(), strict=True)):
            if training:
                selection.observe(epoch, None if val_loss is None else val_loss[g], kept)
        self.last_epoch = epoch

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"best.{g}.{k}": v for g, s in enumerate(self.locations) for k, v in (s.best or {}).items()}

    def restore(self, progress: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.last_epoch = int(progress["epoch"])
        for g, (selection, own) in enumerate(zip(self.locations, progress["locations"], strict=True)):
            selection.restore(own, {f"best.{k}": v for k, v in prefixed(tensors, f"best.{g}.").items()})

    def finish(self, module: nn.Module, average: WeightAverage) -> None:
        """Leave every location's kept weights in ``module`` and in ``kept_states``."""
        n = len(self.locations)
        if self.keep_last and average.averaged is not None:
            module.load_state_dict(average.averaged.module.state_dict())
        current = cpu_state(module)
        self.kept_states = [
            selection.best
            if selection.best is not None and not self.keep_last
            else split_state(current, g, n)
            for g, selection in enumerate(self.locations)
        ]
        module.load_state_dict(join_states(self.kept_states))


class LocationObjective(Objective):
    """G models in one grouped network, logits (B, G, 2): the loss is the SUM of the locations'
    cross-entropies, so each location's gradients are its own; validated per location."""

    def __init__(self, n_locations: int) -> None:
        self.n_locations = n_locations
        self.selections: LocationSelections | None = None

    def selection(self, rule: str, patience: int, validated: bool) -> LocationSelections:
        self.selections = LocationSelections(rule, patience, validated, self.n_locations)
        return self.selections

    def losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each location's mean batch loss (G,)."""
        per_item = functional.cross_entropy(
            logits.transpose(1, 2), labels[:, None].expand(-1, logits.shape[1]), reduction="none"
        )
        return per_item.mean(dim=0)

    def total(self, losses: torch.Tensor) -> torch.Tensor:
        """The sum over the locations still training (a stopped one no longer counts)."""
        if self.selections is None:
            return losses.sum()
        active = torch.tensor(self.selections.active(), device=losses.device)
        return torch.where(active, losses, torch.zeros_like(losses)).sum()

    def report(self, values: torch.Tensor) -> list[float | None]:
        return [float(v) if math.isfinite(float(v)) else None for v in values]

    @torch.no_grad()
    def validate(self, kept: nn.Module, batches: Any, device: torch.device, cast: Cast) -> dict[str, Any]:
        """Each location's validation loss and AUC (lists of G)."""
        probs, labels, sums = [], [], torch.zeros(self.n_locations, dtype=torch.float64)
        for x, y in batches.epoch(0):
            with cast():
                logits = kept(x.to(device)).float()
            y = y.to(device)
            per_item = functional.cross_entropy(
                logits.transpose(1, 2), y[:, None].expand(-1, logits.shape[1]), reduction="none"
            )
            sums += per_item.sum(dim=0).double().cpu()
            probs.append(torch.softmax(logits, dim=-1)[..., 1].cpu().numpy())
            labels.append(y.cpu().numpy())
        if not probs:
            return {"val_loss": [math.nan] * self.n_locations, "val_auc": [math.nan] * self.n_locations}
        prob, truth = np.concatenate(probs), np.concatenate(labels)
        return {
            "val_loss": (sums / len(truth)).tolist(),
            "val_auc": [auc_or_nan(truth, prob[:, g]) for g in range(self.n_locations)],
        }
