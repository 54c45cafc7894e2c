"""How long a training run will take here, from a few timed steps of its own branch.

``cv`` and ``train`` print the expected duration before they start (issue 21), and ``kneepain
paper`` plans its experiments with it (issue 23), so an estimate follows the machine it runs on
(cores, native bf16, a GPU) instead of constants measured on one machine.

The cost of a subject is the cost of its slice passes: both knees x the window's slices go
through a branch once per epoch in both modes (``joint``: one branch sees all 2 x 23 slices;
``paper``: each of the 23 location branches sees its 2 slices), so timing one branch on a batch
of slices and scaling by 2 x n_locations gives the per-subject cost whatever the mode. Evaluation
passes (validation every epoch, the test part once) are forward only, counted at a third of a
training pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from kneepain.config import RunConfig, load_config
from kneepain.hardware import autocast_for, resolve_precision
from kneepain.model.branches import build_branch

FORWARD_SHARE = 1 / 3  # a forward pass against forward + backward + optimiser step
BATCH_SECONDS = 2.0  # the timed batch is cut to about this long a step
MIN_TIMED_SECONDS = 0.5  # time at least this long (or MAX_REPEATS calls) for a stable figure
MAX_REPEATS = 5
HOURS_CPU_WARNING = 24.0  # above this on a CPU the estimate names the small preset


@dataclass(frozen=True)
class StepTiming:
    """Seconds a training epoch costs per subject with this configuration on this device."""

    seconds_per_subject_epoch: float
    device: str
    precision: str
    slices_timed: int
    threads: int

    def to_json(self) -> dict[str, float | int | str]:
        """The timing as recorded beside an estimate."""
        return {
            "seconds_per_subject_epoch": self.seconds_per_subject_epoch,
            "device": self.device,
            "precision": self.precision,
            "slices_timed": self.slices_timed,
            "threads": self.threads,
        }


def time_training_step(config: RunConfig, device: torch.device | str | None = None) -> StepTiming:
    """Time forward + backward + an optimiser step of ``config``'s branch on random slices.

    The timed batch grows from two slices, doubling, up to the real one (batch_size subjects x
    2 knees x the slices one branch sees per step) or to what runs in about
    :data:`BATCH_SECONDS`, so that the paper preset's full-width 224-px branch on a CPU is
    timed in seconds while a small network is timed at the batch it trains with (per-slice cost
    falls with the batch). One warm-up call, then calls for :data:`MIN_TIMED_SECONDS` (at most
    :data:`MAX_REPEATS`), of which the fastest counts. Other jobs on the machine still slow it
    down (two processes each running a thread per core slow each other far more than twice), so
    cv also reports the time left after each fold, from the folds it has run. ``device``
    defaults to the one training would pick.
    """
    if device is None:
        from kneepain.train.loop import pick_device

        device = pick_device(config.training())
    device = torch.device(device)
    model_config = config.model
    precision = resolve_precision(config.runtime.precision, device).precision
    branch = build_branch(model_config.branch, model_config.width).to(device)
    if config.runtime.channels_last:
        branch.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(branch.parameters(), lr=1e-6)
    size = model_config.input_size

    def per_slice(slices: int, repeats: int) -> float:
        x = torch.rand(slices, 1, size, size, device=device)
        if config.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast_for(precision, device):
                loss = branch(x).float().mean()
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        step()  # warm-up: allocation, kernel choice
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < repeats and (not times or time.perf_counter() - start < MIN_TIMED_SECONDS):
            began = time.perf_counter()
            step()
            times.append(time.perf_counter() - began)
        return min(times) / slices  # the fastest call: other jobs on the machine only slow calls down

    slices_per_step = 2 * config.optim.batch_size
    if model_config.mode == "joint":
        slices_per_step *= model_config.n_locations
    slices = 2
    cost = per_slice(slices, 2)
    while slices < slices_per_step and 2 * slices * cost < BATCH_SECONDS:  # double while it fits
        slices = min(2 * slices, slices_per_step)
        cost = per_slice(slices, 2)
    cost = per_slice(slices, MAX_REPEATS)
    passes = 2 * model_config.n_locations * model_config.members
    return StepTiming(cost * passes, str(device), precision, slices, torch.get_num_threads())


def run_seconds(
    timing: StepTiming, train_subjects: int, eval_subjects: int, epochs: int, validation_subjects: int = 0
) -> float:
    """Seconds of one model's training: ``epochs`` over the training part, validation each epoch,
    the test part once."""
    train = timing.seconds_per_subject_epoch * train_subjects * epochs
    evaluation = (
        timing.seconds_per_subject_epoch * FORWARD_SHARE * (validation_subjects * epochs + eval_subjects)
    )
    return train + evaluation


def describe_duration(seconds: float) -> str:
    """``42 s``, ``14 min``, ``3.2 h`` or ``12 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def expected_duration_line(
    config: RunConfig,
    timing: StepTiming,
    *,
    models: int,
    train_subjects: int,
    eval_subjects: int,
    validation_subjects: int = 0,
) -> str:
    """The line cv and train print before training: the total, how it was reckoned, and, when the
    paper's network would take over a day on a CPU, the preset that runs there in minutes."""
    epochs = config.optim.epochs
    total = models * run_seconds(timing, train_subjects, eval_subjects, epochs, validation_subjects)
    line = (
        f"expected duration: about {describe_duration(total)} ({models} model(s) x {epochs} epochs x "
        f"{train_subjects} training subjects at {timing.seconds_per_subject_epoch:.3g} s per subject-epoch, "
        f"timed here: {timing.device}, {timing.precision}, {timing.threads} thread(s))"
    )
    paper_network = config.model == load_config("paper").model
    if timing.device.startswith("cpu") and total > HOURS_CPU_WARNING * 3600 and paper_network:
        line += (
            "; over a day on this CPU: the paper configuration is meant for a GPU, and "
            "`--preset small` runs on a CPU in minutes"
        )
    return line
