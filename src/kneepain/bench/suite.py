"""``kneepain bench``: every section measured in one run, into one JSON report.

Sections: ``training`` (images/s and share of peak per precision and format),
``published_vs_ours`` (the same training run done the published way and ours), ``preprocessing``
(knees/s, peak memory), ``headers`` (DICOM headers/s) and ``predict`` (latency). Each is guarded:
one that fails is recorded as ``failed: ...`` and the others still run. ``quick`` shrinks every
section to seconds (small network, few subjects, one round) for tests; its figures are for
checking the bench, not for quoting.
"""

from __future__ import annotations

import datetime
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kneepain import __version__
from kneepain.bench.machine import load_average, machine_info
from kneepain.bench.report import guarded, skipped
from kneepain.config import preset_path
from kneepain.hardware import REQUESTS, resolve_precision

SECTIONS = ("preprocessing", "headers", "training", "published_vs_ours", "predict")


@dataclass(frozen=True)
class BenchOptions:
    """What to measure and how hard; ``None`` fields take the quick or full default."""

    sections: tuple[str, ...] = SECTIONS
    device: str = "auto"  # auto | cpu | cuda
    quick: bool = False
    work_dir: Path | None = None
    subjects: int | None = None
    seed: int = 0
    workers: int | None = None
    threads: int | None = None
    pairs: int | None = None
    steps: int | None = None
    rounds: int | None = None
    epochs: int | None = None
    width: float | None = None  # training section's network (default: the paper's 1.0; quick 0.125)
    input_size: int | None = None  # (default 224; quick 64)
    comparison_preset: str | None = None  # published_vs_ours network and optimizer (small; quick tiny)
    comparison_precision: str | None = None  # our rows' precision (default: the preset's)

    def __post_init__(self) -> None:
        unknown = [s for s in self.sections if s not in SECTIONS]
        if unknown:
            raise ValueError(f"unknown section(s) {unknown}; expected some of {list(SECTIONS)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.width is not None and self.width <= 0:
            raise ValueError(f"width must be positive, got {self.width}")
        if self.comparison_preset is not None:
            preset_path(self.comparison_preset)  # an unknown name or a missing file fails before any work
        if self.comparison_precision not in (None, *REQUESTS):
            asked = self.comparison_precision
            raise ValueError(f"comparison precision must be one of {', '.join(REQUESTS)}, got {asked!r}")
        if self.input_size is not None and self.input_size < 16:
            raise ValueError(f"input_size must be at least 16, got {self.input_size}")
        for name in ("subjects", "pairs", "steps", "rounds", "epochs", "threads", "workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _sections(options: BenchOptions, device: torch.device, space) -> dict[str, Callable[[], dict]]:
    """The measuring call of each section with its sizes for this run."""
    from kneepain.bench.headers import measure_headers
    from kneepain.bench.predict import measure_predict
    from kneepain.bench.preprocessing import measure_preprocessing
    from kneepain.bench.published_style import ComparisonOptions, measure_published_vs_ours
    from kneepain.bench.training import TrainingOptions, measure_training

    quick, gpu = options.quick, device.type == "cuda"
    rounds = options.rounds or (1 if quick else 3 if gpu else 2)
    training = TrainingOptions(
        width=options.width or (0.125 if quick else 1.0),
        input_size=options.input_size or (64 if quick else 224),
        pairs=options.pairs or (2 if quick else 64 if gpu else 2),
        steps=options.steps or (1 if quick else 20 if gpu else 2),
        warmup=1 if quick else 5 if gpu else 1,
        rounds=rounds,
        compile=not quick,
        peak_seconds=0.3 if quick else 1.0,
    )
    comparison = ComparisonOptions(
        preset=options.comparison_preset or ("tiny" if quick else "small"),
        precision=options.comparison_precision,
        epochs=options.epochs or (1 if quick else 2),
        subjects=space.subjects,
    )
    predict_size = (0.125, 64) if quick else (1.0, 224)
    return {
        "preprocessing": lambda: measure_preprocessing(space),
        "headers": lambda: measure_headers(space, rounds),
        "training": lambda: measure_training(device, training),
        "published_vs_ours": lambda: measure_published_vs_ours(space, device, comparison),
        "predict": lambda: measure_predict(space, *predict_size, repeats=0 if quick else 2),
    }


def run_bench(options: BenchOptions, on_section: Callable[[str, dict], None] | None = None) -> dict[str, Any]:
    """Measure the chosen sections; returns the report (machine, load, options, sections)."""
    device = resolve_device(options.device)
    if options.comparison_precision is not None:
        resolve_precision(options.comparison_precision, device)  # fp16 without CUDA fails before any work
    threads_before = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        return _run(options, device, on_section)
    finally:
        torch.set_num_threads(threads_before)  # an in-process caller (a test) keeps its own setting


def _run(
    options: BenchOptions, device: torch.device, on_section: Callable[[str, dict], None] | None
) -> dict[str, Any]:
    """The measurement itself, with torch's threads already set."""
    from kneepain.bench.workspace import Workspace

    started = time.perf_counter()
    report: dict[str, Any] = {
        "kneepain_bench": 1,
        "package_version": __version__,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": options.quick,
        "synthetic": True,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
        "machine": machine_info(device),
        "load_average": {"start": load_average()},
        "sections": {},
    }
    subjects = options.subjects or (3 if options.quick else 24)
    with tempfile.TemporaryDirectory(prefix="kneepain-bench-") as tmp:
        scratch = Path(tmp)
        root = options.work_dir or scratch / "bench"
        space = Workspace(root, scratch, subjects, options.seed, options.workers)
        measures = _sections(options, device, space)
        for name in SECTIONS:
            if name not in options.sections:
                section = {"status": skipped("not in --sections")}
            else:
                load = load_average()
                start = time.perf_counter()
                section = guarded(measures[name])
                section["seconds_total"] = time.perf_counter() - start
                section["load_average_1m"] = load[0] if load else None
            report["sections"][name] = section
            if on_section:
                on_section(name, section)
    report["load_average"]["end"] = load_average()
    report["seconds"] = time.perf_counter() - started
    return report
