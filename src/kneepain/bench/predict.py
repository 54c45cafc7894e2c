"""Predict latency: one person's two knee series to a probability (and maps), fp32 against bf16.

Uses ``kneepain.predict.predict_person`` exactly as ``kneepain predict`` does, with a bundle of
the paper-size network (``paper`` preset architecture, freshly initialised: latency does not
depend on the weights) and the preprocessing configuration of the bench's slice cache. The first
call (bundle loading, template, caches cold) is reported apart from the median of the repeats.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from kneepain.bench.report import OK, failed, unavailable
from kneepain.bench.workspace import BenchInputError, Workspace
from kneepain.contracts import WorkPaths

MEASURED_PRECISIONS = ("fp32", "bf16")  # predict runs on the CPU: no fp16
INFORMATIVE_KEYS = ("package_version", "subjects")


def make_bundle(work: Path, folder: Path, width: float, input_size: int) -> Path:
    """A bundle of a fresh ``paper``-architecture network with ``work``'s preprocessing record."""
    import torch

    from kneepain.config import preset
    from kneepain.model import build_model, save_bundle

    arch, train = preset("paper", {"width": width, "input_size": input_size})
    torch.manual_seed(0)
    model = build_model(arch).eval()
    paths = WorkPaths(work)
    config = json.loads(paths.cache_config.read_text(encoding="utf-8"))
    meta = {
        "preprocessing": {k: v for k, v in config.items() if k not in INFORMATIVE_KEYS},
        "training": train.to_json(),
        "note": "kneepain bench: untrained weights, for timing only",
    }
    template = paths.preprocess / "template.npy"
    templates = np.load(template, allow_pickle=False) if template.exists() else None
    save_bundle(model, meta, folder, templates=templates)
    return folder


def person_series(space: Workspace, work: Path) -> tuple[Path, Path, str]:
    """Left and right series folders of the first subject whose knees both passed QC in ``work``."""
    from kneepain.contracts import read_cache_index

    index = read_cache_index(WorkPaths(work).cache_index)
    passed = set(index.loc[index["qc_pass"].astype(bool), "subject_id"])
    series = space.series()
    for subject in [s for s in space.subjects_with_both_knees() if s in passed]:
        mine = series[series["subject_id"] == subject]
        by_side = {str(r.side).lower(): Path(r.path) for r in mine.itertuples()}
        if "left" in by_side and "right" in by_side:
            return by_side["left"], by_side["right"], subject
    raise BenchInputError(
        f"{WorkPaths(work).cache_index}: no subject with both knee series passed QC; nothing to predict"
    )


def measure_predict(
    space: Workspace, width: float, input_size: int, repeats: int, budget_s: float = 60.0
) -> dict[str, Any]:
    """Seconds per ``predict_person`` call in fp32 and bf16: the first call, and the median of
    up to ``repeats`` more (fewer once a precision's calls took ``budget_s``; the first call
    alone when there are none)."""
    try:
        from kneepain.predict import predict_person
    except ImportError as error:
        return {"status": unavailable(f"kneepain.predict.predict_person cannot be imported ({error})")}
    work = space.cache_work()
    left, right, subject = person_series(space, work)
    bundle = make_bundle(work, space.scratch / "predict_bundle", width, input_size)
    rows = []
    for precision in MEASURED_PRECISIONS:
        times: list[float] = []
        steps: list[dict[str, float]] = []
        try:
            for index in range(1 + max(0, repeats)):
                if index and sum(times) > budget_s:  # bf16 emulated on a CPU: minutes per call
                    break
                out = space.scratch / f"predict_{precision}_{index}"
                start = time.perf_counter()
                result = predict_person(left, right, bundle, out, precision=precision)
                times.append(time.perf_counter() - start)
                steps.append(result.get("timing_s", {}) if isinstance(result, dict) else {})
        except Exception as error:  # e.g. a precision this device cannot run
            rows.append({"name": precision, "status": failed(error)})
            continue
        rows.append(
            {
                "name": precision,
                "first_s": times[0],
                "median_s": statistics.median(times[1:] or times),
                "repeats": len(times) - 1,
                "network_s": _median_step(steps[1:] or steps, "network"),
                "preprocess_s": _median_step(steps[1:] or steps, "preprocess"),
                "steps_s": {k: _median_step(steps[1:] or steps, k) for k in steps[-1]},
                "prob_right": _probability(result),
                "status": OK,
            }
        )
    fp32 = next((r for r in rows if r["name"] == "fp32" and r["status"] == OK), None)
    for row in rows:
        if fp32 and row["status"] == OK:
            row["vs_fp32"] = fp32["median_s"] / row["median_s"]
    return {
        "subject": subject,
        "network": {"preset": "paper", "width": width, "input_size": input_size},
        "rows": rows,
    }


def _median_step(steps: list[dict[str, float]], name: str) -> float | None:
    values = [s[name] for s in steps if isinstance(s.get(name), int | float)]
    return statistics.median(values) if values else None


def _probability(result: Any) -> float | None:
    if isinstance(result, dict):
        for key in ("prob_right_painful", "prob_right", "probability"):
            if isinstance(result.get(key), int | float):
                return float(result[key])
    return None
