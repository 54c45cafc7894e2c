"""How a Siamese model is trained in each mode, on given train / validation cache rows.

``joint``: the whole model through :func:`kneepain.train.loop.fit`. ``paper``: stage 1 trains the
23 locations' branches and heads as one grouped network (:mod:`kneepain.model.grouped`) in one
``fit``: each batch is read once for all locations, the loss is the sum of the locations' losses
(so each location's gradients, optimiser and EMA updates are its own), and each location keeps
its own best epoch and stops on its own (:class:`~kneepain.train.strategies.LocationObjective`):
the same result, to rounding, as fitting each location alone on the same batches (every location
draws the same order and knee swaps from the seed), which remains the path for branches that
cannot be grouped. Stage 2 freezes them and fits the logistic ``classifier`` on their pooled,
combined features (LBFGS, full batch, L2), as the published code fused the 23 location models.
An ensemble trains its members one after another, each in its mode, with its own seed for the
order of the batches.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from kneepain.fileio import write_text
from kneepain.model.grouped import GroupedLocations, groupable
from kneepain.model.siamese import SiameseEnsemble, SiameseNet
from kneepain.train.data import CacheBatches
from kneepain.train.loop import (
    CHECKPOINT_DIR,
    METRICS_LOG,
    Dist,
    FitResult,
    TrainConfig,
    TrainingError,
    autocast,
    fit,
)
from kneepain.train.strategies import LocationObjective

MEMBER_SEED_STEP = 1000  # member m trains with seed + 1000 m (member 0: the single network's seed)
GROUPED_DIR = "location_grouped"  # paper mode, stage 1: the grouped fit's checkpoint and log


@dataclass(frozen=True)
class Part:
    """Cache rows and labels of one part of the data (train, validation or test)."""

    rows: np.ndarray
    labels: np.ndarray


class LocationModel(nn.Module):
    """One location's branch and head as a module of its own (``paper`` mode, stage 1).

    Its parameters are the parent's ``branches[i]`` and ``location_heads[i]`` (shared tensors), so
    training it trains the parent; input is a (B, 2, 1, H, W) batch of that location.
    """

    def __init__(self, parent: SiameseNet, location: int) -> None:
        super().__init__()
        self.branch = parent.branches[location]
        self.head = parent.location_heads[location]
        self.location = location
        object.__setattr__(self, "_parent", parent)  # not a submodule: only this location trains

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._parent.forward_location(x[:, :, 0], self.location)


def _batches(
    cache: np.ndarray,
    part: Part,
    model: SiameseNet,
    config: TrainConfig,
    *,
    train: bool,
    location: int | None = None,
    dist: Dist | None = None,
) -> CacheBatches:
    dist = dist or Dist()
    return CacheBatches(
        cache,
        part.rows,
        part.labels,
        batch_size=max(1, config.batch_size // dist.world) if train else config.batch_size,
        input_size=model.config.input_size,
        seed=config.seed,
        shuffle=train,
        swap_knees=train and config.swap_knees,
        location=location,
        rank=dist.rank if train else 0,
        world=dist.world if train else 1,
    )


def train_model(
    model: SiameseNet | SiameseEnsemble,
    cache: np.ndarray,
    train: Part,
    val: Part | None,
    config: TrainConfig,
    out_dir: Path,
    *,
    device: torch.device,
    dist: Dist | None = None,
    resume: bool = False,
    show_progress: bool = True,
    one_by_one: bool = False,
) -> dict[str, Any]:
    """Train ``model`` in its configured mode; returns a summary (epochs, best epoch, seconds).

    Writes ``out_dir/metrics.jsonl`` (``paper`` mode: every location's epochs with a
    ``location`` key, then one ``fusion`` line; an ensemble: every member's lines with a
    ``member`` key) and checkpoints under ``out_dir``. ``resume`` continues from whatever
    checkpoints are there (a part without one starts afresh). ``one_by_one`` (``paper`` mode)
    fits the locations one after another as before the grouped network (for the equivalence
    test; also the path for branches that cannot be grouped).
    """
    dist = dist or Dist()
    if isinstance(model, SiameseEnsemble):

        def train_member(member: SiameseNet, member_config: TrainConfig, member_dir: Path) -> dict[str, Any]:
            return train_model(
                member, cache, train, val, member_config, member_dir, device=device, dist=dist,
                resume=resume, show_progress=show_progress, one_by_one=one_by_one,
            )  # fmt: skip

        return _train_members(model, config, out_dir, train_member, dist)
    run = _Run(model, cache, train, val, config, out_dir, device, dist, resume, show_progress)
    if model.config.mode == "joint":
        result = run.fit(model, out_dir, label=out_dir.name, images_per_item=2 * model.config.n_locations)
        return {"epochs": result.epochs_run, "best_epoch": result.best_epoch, "seconds": result.seconds}
    stage = _train_locations_one_by_one if one_by_one or not groupable(model) else _train_locations_grouped
    summary, lines = stage(run)
    fusion = fit_fusion(model, cache, train, val, config, device=device)
    summary["fusion"] = fusion
    summary["seconds"] += fusion["seconds"]
    if dist.is_main:
        write_text(out_dir / METRICS_LOG, "".join([*lines, _json_line({"fusion": True, **fusion})]))
    return summary


@dataclass(frozen=True)
class _Run:
    """One :func:`train_model` call's model, data, settings and folder: what each of its fits shares."""

    model: SiameseNet
    cache: np.ndarray
    train: Part
    val: Part | None
    config: TrainConfig
    out_dir: Path
    device: torch.device
    dist: Dist
    resume: bool
    show_progress: bool

    def fit(
        self,
        module: nn.Module,
        folder: Path,
        *,
        label: str,
        images_per_item: int,
        location: int | None = None,
        objective: LocationObjective | None = None,
    ) -> FitResult:
        """``fit`` ``module`` on the run's batches (of one ``location``, or all), checkpoints in ``folder``;
        resumes if the run resumes and ``folder`` has a checkpoint."""
        model, cache, config = self.model, self.cache, self.config
        train = _batches(cache, self.train, model, config, train=True, location=location, dist=self.dist)
        val = (
            _batches(cache, self.val, model, config, train=False, location=location)
            if self.val is not None
            else None
        )
        return fit(
            module,
            train,
            val,
            config,
            folder,
            device=self.device,
            dist=self.dist,
            resume=self.resume and (folder / CHECKPOINT_DIR).exists(),
            label=label,
            images_per_item=images_per_item,
            show_progress=self.show_progress,
            objective=objective,
        )


def _train_locations_grouped(run: _Run) -> tuple[dict[str, Any], list[str]]:
    """``paper`` mode, stage 1, all locations in one grouped ``fit`` (checkpoint in ``location_grouped``);
    the kept weights are written back into ``model``'s branches and heads. Returns the summary
    and the per-location metrics lines (their ``images_per_s`` and ``seconds`` are the grouped
    pass's, all locations together)."""
    model = run.model
    n_slices = model.config.n_locations
    grouped = GroupedLocations.from_siamese(model)
    objective = LocationObjective(n_slices)
    result = run.fit(
        grouped,
        run.out_dir / GROUPED_DIR,
        label=f"{run.out_dir.name} locations",
        images_per_item=2 * n_slices,
        objective=objective,
    )
    selections = objective.selections
    assert selections is not None  # made by fit
    grouped.write_into(model, selections.kept_states)
    model.to(run.device)
    summary: dict[str, Any] = {"locations": [], "seconds": result.seconds}
    lines: list[str] = []
    for location, selection in enumerate(selections.locations):
        best = int(selection.progress["best_epoch"])
        summary["locations"].append({"location": location, "epochs": selection.epoch, "best_epoch": best})
        for entry in result.history:
            if entry["epoch"] <= selection.epoch:  # its epochs up to its own stop
                own = {k: v[location] if isinstance(v, list) else v for k, v in entry.items()}
                lines.append(_json_line({"location": location, **own}))
    return summary, lines


def _train_locations_one_by_one(run: _Run) -> tuple[dict[str, Any], list[str]]:
    """``paper`` mode, stage 1, one ``fit`` per location (checkpoints in ``location_XX``), each reading
    only its slice location. Returns the summary and the per-location metrics lines."""
    summary: dict[str, Any] = {"locations": [], "seconds": 0.0}
    lines: list[str] = []
    for location in range(run.model.config.n_locations):
        result = run.fit(
            LocationModel(run.model, location),
            run.out_dir / f"location_{location:02d}",
            label=f"{run.out_dir.name} location {location}",
            images_per_item=2,
            location=location,
        )
        summary["locations"].append(
            {"location": location, "epochs": result.epochs_run, "best_epoch": result.best_epoch}
        )
        summary["seconds"] += result.seconds
        lines += [_json_line({"location": location, **h}) for h in result.history]
    return summary, lines


def _train_members(
    model: SiameseEnsemble,
    config: TrainConfig,
    out_dir: Path,
    train_member: Callable[[SiameseNet, TrainConfig, Path], dict[str, Any]],
    dist: Dist,
) -> dict[str, Any]:
    """Train each member in ``out_dir/member_XX`` (seed + 1000 m); one metrics log for all of them."""
    summary: dict[str, Any] = {"members": [], "seconds": 0.0}
    lines: list[str] = []
    for m, member in enumerate(model.members):
        member_dir = out_dir / f"member_{m:02d}"
        result = train_member(member, replace(config, seed=config.seed + MEMBER_SEED_STEP * m), member_dir)
        summary["members"].append({"member": m, **result})
        summary["seconds"] += result["seconds"]
        log = member_dir / METRICS_LOG
        if log.exists():
            lines += [
                _json_line({"member": m, **json.loads(line)})
                for line in log.read_text(encoding="utf-8").splitlines()
                if line.strip()
            ]
    if dist.is_main:
        write_text(out_dir / METRICS_LOG, "".join(lines))
    return summary


def _json_line(obj: dict[str, Any]) -> str:
    return json.dumps(obj) + "\n"


@torch.no_grad()
def extract_features(
    model: SiameseNet,
    cache: np.ndarray,
    part: Part,
    config: TrainConfig,
    device: torch.device,
    swap: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened combined features (N, S*D) and labels of ``part`` (knees swapped if ``swap``)."""
    model.eval()
    batches = _batches(cache, part, model, config, train=False)
    feats, labels = [], []
    for x, y in batches.epoch(0):
        if swap:
            x, y = x.flip(1), 1 - y
        with autocast(config, device):
            feats.append(model.features(x.to(device)).flatten(1).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def fit_fusion(
    model: SiameseNet,
    cache: np.ndarray,
    train: Part,
    val: Part | None,
    config: TrainConfig,
    *,
    device: torch.device,
) -> dict[str, Any]:
    """``paper`` mode, stage 2: fit the logistic classifier on the frozen locations' features.

    Starts from the location heads (each scaled by 1/S, so the start is their average vote) and
    runs full-batch LBFGS on cross-entropy + ``fusion_l2`` * |W|^2; deterministic.
    """
    import time

    start = time.perf_counter()
    x, y = extract_features(model, cache, train, config, device)
    if config.swap_knees:
        xs, ys = extract_features(model, cache, train, config, device, swap=True)
        x, y = torch.cat([x, xs]), torch.cat([y, ys])
    n_slices = model.config.n_locations
    shared = model.config.head == "shared"

    def head_input(features: torch.Tensor) -> torch.Tensor:
        """The shared head's one weight vector sees the locations' features summed."""
        return features.reshape(features.shape[0], n_slices, -1).sum(dim=1) if shared else features

    x = head_input(x)
    with torch.no_grad():
        if shared:
            heads_w = torch.stack([h.weight for h in model.location_heads]).mean(0) / n_slices
        else:
            heads_w = torch.cat([h.weight for h in model.location_heads], dim=1) / n_slices
        heads_b = torch.stack([h.bias for h in model.location_heads]).mean(0)
    weight = heads_w.detach().cpu().clone().requires_grad_(True)
    bias = heads_b.detach().cpu().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=config.fusion_steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = functional.cross_entropy(x @ weight.T + bias, y) + config.fusion_l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    final = float(closure().item())
    if not np.isfinite(final):
        raise TrainingError(f"fusion: loss is {final}; stopped")
    with torch.no_grad():
        target = model.classifier.shared_weight if shared else model.classifier.weight
        target.copy_(weight.to(target.device))
        model.classifier.bias.copy_(bias.to(model.classifier.bias.device))
    record: dict[str, Any] = {"train_loss": final, "seconds": time.perf_counter() - start}
    if val is not None:
        xv, yv = extract_features(model, cache, val, config, device)
        xv = head_input(xv)
        with torch.no_grad():
            record["val_loss"] = float(functional.cross_entropy(xv @ weight.T + bias, yv).item())
    return record


def remove_checkpoints(out_dir: Path) -> None:
    """Delete a finished fold's checkpoints (paper-size ones are large) and per-location and
    per-member folders (their epochs are in the fold's metrics.jsonl); the bundle remains."""
    for folder in [out_dir / CHECKPOINT_DIR, *out_dir.glob("location_*"), *out_dir.glob("member_*")]:
        if folder.is_dir():
            shutil.rmtree(folder)
