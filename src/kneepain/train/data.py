"""Training batches straight from the memory-mapped slice cache (no per-item file opening).

The cache is opened once (``kneepain.contracts.open_cache``); a batch is one sorted fancy-index
read of its rows, converted to float in [0, 1] and area-downsampled to the model's input size.
Random choices (order, knee swaps) are drawn by :func:`draw_epoch` from (seed, epoch) alone and
applied by :meth:`CacheBatches.load`, so an epoch is the same bytes whether or not training was
interrupted and resumed, on any number of processes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional


@dataclass(frozen=True)
class EpochDraw:
    """The random choices of one epoch: positions into the subject list and per-item knee swaps."""

    order: np.ndarray  # int positions, this process's share
    swap: np.ndarray  # bool, same length: swap the two knees and flip the label


def draw_epoch(
    n: int, epoch: int, seed: int, *, shuffle: bool, swap_knees: bool, rank: int = 0, world: int = 1
) -> EpochDraw:
    """Draw the order and swaps of ``epoch`` for process ``rank`` of ``world``.

    Every process draws the same permutation from (seed, epoch); it is padded (wrapping around)
    to a multiple of ``world`` so all processes get equally many items (DDP needs equal step counts).
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n) if shuffle else np.arange(n)
    swap = rng.random(n) < 0.5 if swap_knees else np.zeros(n, dtype=bool)
    if world > 1:
        total = -(-n // world) * world
        pad = np.resize(np.arange(n), total)  # positions into order/swap, wrapping
        order, swap = order[pad], swap[pad]
    return EpochDraw(order[rank::world], swap[rank::world])


def to_input(block: np.ndarray, input_size: int) -> torch.Tensor:
    """uint8 cache block (..., H, W) -> float32 tensor in [0, 1] at ``input_size`` (area downsampling)."""
    x = torch.from_numpy(np.ascontiguousarray(block)).float().div_(255.0)
    if x.shape[-1] != input_size or x.shape[-2] != input_size:
        lead = x.shape[:-2]
        x = functional.interpolate(
            x.reshape(-1, 1, *x.shape[-2:]), size=(input_size, input_size), mode="area"
        )
        x = x.reshape(*lead, input_size, input_size)
    return x


class CacheBatches:
    """Batches (x, y) of subjects from the cache: x (B, 2, S, h, w) float, y (B,) int64 labels.

    ``location`` = None gives all slices; an int gives only that slice location, as
    (B, 2, 1, h, w), read without touching the other slices (``paper`` mode, stage 1).
    """

    def __init__(
        self,
        cache: np.ndarray,
        rows: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        input_size: int,
        seed: int = 0,
        shuffle: bool = False,
        swap_knees: bool = False,
        location: int | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if len(rows) != len(labels):
            raise ValueError(f"{len(rows)} cache rows but {len(labels)} labels")
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = batch_size
        self.input_size = input_size
        self.seed = seed
        self.shuffle = shuffle
        self.swap_knees = swap_knees
        self.location = location
        self.rank = rank
        self.world = world

    def __len__(self) -> int:
        """Batches per epoch for this process."""
        per_rank = -(-len(self.rows) // self.world)
        return -(-per_rank // self.batch_size)

    def load(self, positions: np.ndarray, swap: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Read subjects at ``positions`` in one sorted memmap read and apply the knee swaps."""
        rows = self.rows[positions]
        sort = np.argsort(rows, kind="stable")
        if self.location is None:
            block = self.cache[rows[sort]]
        else:
            block = self.cache[rows[sort], :, self.location][:, :, None]
        block = block[np.argsort(sort, kind="stable")]  # back to the drawn order
        block[swap] = block[swap][:, ::-1]  # knee axis: left <-> right
        labels = np.where(swap, 1 - self.labels[positions], self.labels[positions])
        return to_input(block, self.input_size), torch.from_numpy(labels)

    def epoch(self, epoch: int, prefetch: int = 2) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` (read ``prefetch`` batches ahead in a background thread)."""
        draw = draw_epoch(
            len(self.rows),
            epoch,
            self.seed,
            shuffle=self.shuffle,
            swap_knees=self.swap_knees,
            rank=self.rank,
            world=self.world,
        )
        starts = range(0, len(draw.order), self.batch_size)
        jobs = ((draw.order[s : s + self.batch_size], draw.swap[s : s + self.batch_size]) for s in starts)
        loads = (self.load(p, w) for p, w in jobs)
        return read_ahead(loads, prefetch) if prefetch > 0 else loads


def read_ahead(items: Iterator[tuple[torch.Tensor, torch.Tensor]], depth: int) -> Iterator:
    """Produce ``items`` in a background thread, up to ``depth`` ahead of the consumer.

    Hand-written instead of a torch DataLoader: the memmap read and the float conversion release
    the GIL, so one thread hides the reading without worker processes re-opening the cache.
    """
    box: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                box.put(item)
            box.put(done)
        except BaseException as error:  # re-raised in the consumer
            box.put(error)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = box.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                box.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
