"""One training run done the way the published code did it, against our pipeline, side by side.

Published style (the paper's Methods and released code, as far as the paper describes it: the
repository itself is not part of this project's reference material, so the data layout below is
our reading of it): one model per slice location, trained one after the other, each with its own
optimizer; every batch is built item by item from per-subject ``.npy`` files (float32, the whole
subject: 2 knees x 23 slices) that are opened again for every item, and each item is min-max
normalised to [0, 1] on the fly; after every epoch the class activation maps of every subject
are computed and written out; finally the 23 models' features are concatenated and the
classifier fitted on them ("the output features from all the 2D models were subsequently
concatenated for the binary prediction task").

Ours: the same subjects from the memory-mapped slice cache (``CacheBatches``: one sorted read
per batch, conversion in a read-ahead thread) through ``kneepain.train`` (``fit``, which also
writes a checkpoint every epoch), maps computed once from the trained model
(``forward_with_cams``). Two rows: ``paper`` mode (23 location models and the same fusion, so the
row isolates the data path) and ``joint`` mode (one branch for all locations, trained end to end).

All rows use the same subjects, network size, optimizer settings, batch size, number of epochs
and device; the time of each is the whole run (training plus maps). Writing the per-subject
files is the published pipeline's preprocessing output, so it is timed apart (``files_s``).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from kneepain.bench.report import OK, failed
from kneepain.bench.workspace import BenchInputError, Workspace
from kneepain.contracts import N_SLICES, WorkPaths, open_cache, training_table
from kneepain.hardware import resolve_precision
from kneepain.model.branches import build_branch
from kneepain.model.inputs import resize


@dataclass(frozen=True)
class ComparisonOptions:
    """Network size and training length shared by every row."""

    preset: str = "small"  # architecture and optimizer of this preset (joint/paper mode set per row)
    precision: str | None = None  # our rows' precision request; None: the preset's (published: fp32)
    epochs: int = 2
    subjects: int = 24


class LocationNet(nn.Module):
    """One slice location's Siamese model as the published code had it: branch, pooling, head."""

    def __init__(self, width: float) -> None:
        super().__init__()
        self.branch = build_branch("kneenet", width)
        self.head = nn.Linear(self.branch.out_channels, 2)

    def maps(self, pair: torch.Tensor) -> torch.Tensor:
        """Final maps of a (B, 2, H, W) pair batch: (B, 2, C, h, w)."""
        b, k, h, w = pair.shape
        maps = self.branch(pair.reshape(b * k, 1, h, w))
        return maps.reshape(b, k, *maps.shape[1:])

    def features(self, pair: torch.Tensor) -> torch.Tensor:
        """Pooled pair features (B, C): ReLU of left minus right, as the published code combined them."""
        pooled = self.maps(pair).mean(dim=(-2, -1))
        return torch.relu(pooled[:, 0] - pooled[:, 1])

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pair))

    @torch.no_grad()
    def cams(self, pair: torch.Tensor) -> torch.Tensor:
        """Maps times the head's weights on the logit difference: (B, 2, h, w)."""
        weight = self.head.weight[1] - self.head.weight[0]
        return torch.einsum("bkchw,c->bkhw", self.maps(pair), weight)


class PerSubjectFiles(torch.utils.data.Dataset):
    """Items of one location, each read from its subject's file and normalised on its own."""

    def __init__(self, files: list[Path], labels: np.ndarray, location: int, input_size: int) -> None:
        self.files = files
        self.labels = labels
        self.location = location
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        volume = np.load(self.files[index])  # the whole subject, for one slice of it
        pair = volume[:, self.location].astype(np.float32)
        low = pair.min(axis=(1, 2), keepdims=True)
        high = pair.max(axis=(1, 2), keepdims=True)
        x = torch.from_numpy((pair - low) / np.maximum(high - low, 1e-6))
        return resize(x, self.input_size), int(self.labels[index])


def write_subject_files(cache: np.ndarray, rows: np.ndarray, folder: Path) -> list[Path]:
    """One float32 .npy per subject (2, 23, H, W), as a per-subject preprocessing script leaves them."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for row in rows:
        path = folder / f"subject_{int(row):05d}.npy"
        np.save(path, np.asarray(cache[int(row)], dtype=np.float32))
        files.append(path)
    return files


def _optimizer(params, config) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def warm_up(width: float, input_size: int, config, device: torch.device) -> None:
    """One untimed step, so one-time costs (lazy imports, kernel selection) fall on no row."""
    model = LocationNet(width).to(device)
    optimizer = _optimizer(model.parameters(), config)
    x = torch.rand(2, 2, input_size, input_size, device=device)
    functional.cross_entropy(model(x), torch.tensor([0, 1], device=device)).backward()
    optimizer.step()


def run_published_style(
    files: list[Path], labels: np.ndarray, width: float, input_size: int, config, device, out: Path
) -> None:
    """Train the 23 location models one after the other, collecting and saving all maps every epoch;
    then fit the classifier on their concatenated features (read from the files once more)."""
    generator = torch.Generator().manual_seed(config.seed)
    features: list[torch.Tensor] = []
    for location in range(N_SLICES):
        torch.manual_seed(config.seed + location)
        model = LocationNet(width).to(device)
        optimizer = _optimizer(model.parameters(), config)
        dataset = PerSubjectFiles(files, labels, location, input_size)
        train = torch.utils.data.DataLoader(
            dataset, batch_size=config.batch_size, shuffle=True, generator=generator
        )
        every = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=False)
        for epoch in range(config.epochs):
            model.train()
            for x, y in train:
                loss = functional.cross_entropy(model(x.to(device)), y.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            model.eval()
            maps = [model.cams(x.to(device)).cpu().numpy() for x, _ in every]
            np.save(out / f"cams_location{location:02d}_epoch{epoch:03d}.npy", np.concatenate(maps))
        with torch.no_grad():
            features.append(torch.cat([model.features(x.to(device)).cpu() for x, _ in every]))
    fit_classifier(torch.cat(features, dim=1), torch.tensor(labels, dtype=torch.int64), config)


def fit_classifier(features: torch.Tensor, labels: torch.Tensor, config) -> torch.nn.Linear:
    """The fusion layer on the locations' concatenated features: full-batch LBFGS, as ours fits it."""
    classifier = nn.Linear(features.shape[1], 2)
    optimizer = torch.optim.LBFGS(
        classifier.parameters(), max_iter=config.fusion_steps, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = functional.cross_entropy(classifier(features), labels)
        loss = loss + config.fusion_l2 * classifier.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return classifier


def run_ours(
    model, cache: np.ndarray, rows: np.ndarray, labels: np.ndarray, config, device, out: Path
) -> None:
    """Train through ``kneepain.train`` from the memory-mapped cache; maps once, at the end."""
    from kneepain.train.data import CacheBatches
    from kneepain.train.recipe import Part, train_model

    train_model(
        model, cache, Part(rows, labels), None, config, out / "train", device=device, show_progress=False
    )
    model.eval()
    batches = CacheBatches(
        cache, rows, labels, batch_size=config.batch_size, input_size=model.config.input_size
    )
    with torch.no_grad():
        maps = [model.forward_with_cams(x.to(device))[1].cpu().numpy() for x, _ in batches.epoch(0)]
    np.save(out / "cams.npy", np.concatenate(maps))


def measure_published_vs_ours(
    space: Workspace, device: torch.device, options: ComparisonOptions
) -> dict[str, Any]:
    """Seconds per run of the published style, ours in paper mode and ours in joint mode."""
    from kneepain.config import preset
    from kneepain.model import build_model

    work = space.cache_work()
    table = training_table(work, "A").head(options.subjects)
    if table.empty:
        raise BenchInputError(f"{WorkPaths(work).cache_index}: no Model A subject passed QC")
    cache = open_cache(WorkPaths(work).cache_array)
    rows = table["row"].to_numpy(np.int64)
    labels = table["label"].to_numpy(np.int64)
    arch, config = preset(options.preset)
    config = replace(config, epochs=options.epochs, patience=0, device=device.type)
    if options.precision is not None:
        config = replace(config, precision=options.precision)
    precision = resolve_precision(config.precision, device)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="kneepain-bench-", dir=space.scratch) as tmp:
        scratch = Path(tmp)
        start = time.perf_counter()
        files = write_subject_files(cache, rows, scratch / "subjects")
        files_s = time.perf_counter() - start
        warm_up(arch.width, arch.input_size, config, device)
        runs = {
            "published style": lambda out: run_published_style(
                files, labels, arch.width, arch.input_size, config, device, out
            ),
            "ours, paper mode": lambda out: run_ours(
                build_model(replace(arch, mode="paper")), cache, rows, labels, config, device, out
            ),
            "ours, joint": lambda out: run_ours(
                build_model(replace(arch, mode="joint")), cache, rows, labels, config, device, out
            ),
        }
        for index, (name, run) in enumerate(runs.items()):
            out = scratch / f"run{index}"
            out.mkdir()
            torch.manual_seed(config.seed)
            start = time.perf_counter()
            try:
                run(out)
            except Exception as error:  # one broken row must not hide the others
                results[name] = {"status": failed(error)}
                continue
            seconds = time.perf_counter() - start
            results[name] = {"seconds": seconds, "seconds_per_epoch": seconds / options.epochs, "status": OK}
    published = next(iter(results.values())).get("seconds")
    table_rows = []
    for name, result in results.items():
        row = {"name": name, **result}
        if published and result.get("seconds"):
            row["speedup_vs_published"] = published / result["seconds"]
        table_rows.append(row)
    joint = table_rows[-1].get("speedup_vs_published")
    return {
        "subjects": len(rows),
        "epochs": options.epochs,
        "network": {"preset": options.preset, "width": arch.width, "input_size": arch.input_size},
        "batch_size": config.batch_size,
        "optimizer": config.optimizer,
        "precision": {"published style": "fp32", "ours": precision.to_json()},
        "device": str(device),
        "files_s": files_s,
        "speedup_joint_vs_published": joint,
        "note": (
            "published style: 23 location models, batches item by item from per-subject .npy files with "
            "per-item normalisation, all maps every epoch, fusion; ours, paper mode: 23 location models "
            "from the memory-mapped cache, fusion, maps once; ours, joint: one model for all locations, "
            "memory-mapped cache, maps once"
        ),
        "rows": table_rows,
    }
