"""Preprocessing speed (knees/s) and peak memory of the main process and its workers.

The stage runs in a fresh Python process so its peak resident memory is the stage's own, not
that of a bench process which has already loaded torch and trained networks. Peak memory is the
kernel's high-water mark (VmHWM) of the main process and of the largest worker, as
``run_preprocess`` reports them; the total is main + workers x largest worker (an upper bound of
the sum, since the workers' peaks need not coincide).
"""

from __future__ import annotations

from typing import Any

from kneepain.bench.preprocess_child import preprocess_in_child
from kneepain.bench.workspace import Workspace
from kneepain.hardware import usable_cores


def measure_preprocessing(space: Workspace) -> dict[str, Any]:
    """Preprocess the first ``space.subjects`` subjects from scratch; knees/s and peak memory."""
    work = space.subset_work("preprocess", space.subjects)
    workers = space.workers or usable_cores()
    summary = preprocess_in_child(work, workers)
    space.preprocessed = space.preprocessed or work  # later sections may train on this cache
    processed = int(summary.get("processed", 0))
    used_workers = max(1, min(workers, processed))
    main_mb = float(summary.get("peak_rss_main_mb") or 0.0)
    worker_mb = float(summary.get("peak_rss_worker_mb") or 0.0)
    row = {
        "name": f"run_preprocess, {used_workers} worker{'s' if used_workers > 1 else ''}",
        "subjects": processed,
        "knees": 2 * processed,
        "qc_pass": summary.get("qc_pass"),
        "template_s": summary.get("template_seconds"),
        "knees_s": summary.get("seconds"),
        "knees_per_s": summary.get("knees_per_s"),
        "knees_per_s_incl_template": 2 * processed / summary["wall_seconds"] if processed else None,
        "peak_rss_main_mb": main_mb,
        "peak_rss_worker_mb": worker_mb if used_workers > 1 else None,
        "peak_rss_total_mb": main_mb + (used_workers * worker_mb if used_workers > 1 else 0.0),
        "status": "ok",
    }
    return {
        "workers": used_workers,
        "note": "knees_per_s excludes building the registration template (template_s)",
        "rows": [row],
    }
