"""Training batches straight from the memory-mapped slice cache (no per-item file opening).

The cache is opened once (``kneepain.contracts.open_cache``); a batch is one sorted fancy-index
read of its rows, converted to float in [0, 1] and area-downsampled to the model's input size.
When the model's input is smaller than the cache's slices, a part's rows are downsampled once, on
first use, and kept in memory (``max_resized_bytes``): every later epoch only indexes them.
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

from kneepain.model.inputs import to_input


@dataclass(frozen=True)
class EpochDraw:
    """The random choices of one epoch: positions into the subject list and knee swaps."""

    order: np.ndarray  # int positions, this process's share
    swap: np.ndarray  # bool, same length: swap the two knees and flip the label


def draw_epoch(
    n: int,
    epoch: int,
    seed: int,
    *,
    shuffle: bool,
    swap_knees: bool,
    rank: int = 0,
    world: int = 1,
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
        max_resized_bytes: int = 2 << 30,
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
        self.max_resized_bytes = max_resized_bytes
        self._resized: torch.Tensor | None = None
        self._resize_lock = threading.Lock()

    def __len__(self) -> int:
        """Batches per epoch for this process."""
        per_rank = -(-len(self.rows) // self.world)
        return -(-per_rank // self.batch_size)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """uint8 cache block of ``rows`` (in the given order) with one sorted memmap read."""
        sort = np.argsort(rows, kind="stable")
        if self.location is None:
            block = self.cache[rows[sort]]
        else:
            block = self.cache[rows[sort], :, self.location][:, :, None]
        return block[np.argsort(sort, kind="stable")]

    def _resized_part(self) -> torch.Tensor | None:
        """All of this part's rows at the input size (built once), or None when not worth or too big."""
        height, width = self.cache.shape[-2:]
        if (height, width) == (self.input_size, self.input_size):
            return None
        n_slices = self.cache.shape[2] if self.location is None else 1
        needed = len(self.rows) * self.cache.shape[1] * n_slices * self.input_size**2 * 4
        if needed > self.max_resized_bytes:
            return None
        with self._resize_lock:
            if self._resized is None:
                chunks = [
                    to_input(self._read(self.rows[start : start + 8]), self.input_size)
                    for start in range(0, len(self.rows), 8)
                ]
                self._resized = torch.cat(chunks) if chunks else None
        return self._resized

    def load(self, positions: np.ndarray, swap: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Subjects at ``positions`` (resized once, or one sorted memmap read) with knee swaps applied."""
        labels = np.where(swap, 1 - self.labels[positions], self.labels[positions])
        resized = self._resized_part()
        if resized is not None:
            x = resized[torch.from_numpy(np.asarray(positions, dtype=np.int64))]
            if swap.any():
                flip = torch.from_numpy(np.asarray(swap, dtype=bool))
                x[flip] = x[flip].flip(1)  # knee axis: left <-> right
        else:
            block = self._read(self.rows[positions])
            block[swap] = block[swap][:, ::-1]  # knee axis: left <-> right
            x = to_input(block, self.input_size)
        return x, torch.from_numpy(labels)

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
        parts = (slice(s, s + self.batch_size) for s in range(0, len(draw.order), self.batch_size))
        loads = (self.load(draw.order[part], draw.swap[part]) for part in parts)
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
