"""Latency of ``kneepain predict`` for one person with the paper-size network, fp32 and bf16.

    .venv/bin/python benchmarks/predict_latency.py --out predict-latency.json
    .venv/bin/python benchmarks/predict_latency.py --work WORK --repeats 3 --out latency.json

Without ``--work`` a 2-participant synthetic cohort is made, ingested and preprocessed in a
temporary folder. A bundle of the ``paper`` preset (23 KneeNet branches at width 1, 224 px input;
random weights: latency does not depend on them) is written with the cache's templates. Each
precision runs in a fresh process (``first``: imports and cold caches included, as one CLI call)
followed by ``--repeats`` calls in that process; every step is reported as wall seconds and
process CPU seconds (on a machine shared with other work the CPU seconds are the steadier figure).
``--network`` also times the network alone, side by side in one process: a plain ``no_grad``
NCHW pass (before), channels_last only, and predict's prepared pass (after: merged branches,
folded BatchNorm, channels_last, ``inference_mode``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def make_work(root: Path) -> Path:
    """A preprocessed 2-participant synthetic work folder under ``root``."""
    from kneepain.ingest.pipeline import run_ingest
    from kneepain.preprocess import run_preprocess
    from kneepain.synth.cohort import generate_cohort

    generate_cohort(root / "cohort", 2, seed=3, workers=1)
    run_ingest(root / "cohort" / "images", root / "cohort" / "clinical", root / "work", workers=1)
    run_preprocess(root / "work", workers=1)
    return root / "work"


def make_bundle(work: Path, folder: Path) -> Path:
    """A paper-preset bundle with random weights and ``work``'s preprocessing record and templates."""
    import torch

    from kneepain.model import build_model
    from kneepain.train.cv import bundle_templates, cache_fingerprint, write_fold_bundle
    from kneepain.train.loop import preset

    arch, train = preset("paper")
    torch.manual_seed(0)
    fingerprint = cache_fingerprint(work)
    return write_fold_bundle(
        build_model(arch).eval(),
        folder,
        fingerprint=fingerprint,
        templates=bundle_templates(work, fingerprint),
        training=train.to_json(),
        cohort_model="benchmark (random weights)",
        fold=0,
        summary={},
        test_loss=float("nan"),
    )


def person(work: Path) -> tuple[Path, Path]:
    """Left and right series folders of the first participant with a QC-passed cache row."""
    import pandas as pd

    from kneepain.contracts import WorkPaths, read_cache_index

    index = read_cache_index(WorkPaths(work).cache_index)
    series = pd.read_csv(WorkPaths(work).series_table, dtype={"subject_id": str})
    subject = index.loc[index["qc_pass"].astype(bool), "subject_id"].iloc[0]
    mine = series[series["subject_id"] == subject].set_index("side")["path"]
    return Path(mine["left"]), Path(mine["right"])


def child(left: str, right: str, bundle: str, precision: str, repeats: int) -> None:
    """In a fresh process: the first call and ``repeats`` more, per-step wall and CPU seconds (JSON)."""
    from kneepain.predict import predict_person

    runs = []
    for _ in range(1 + repeats):
        with tempfile.TemporaryDirectory() as out:
            document = predict_person(left, right, bundle, Path(out) / "prediction", precision=precision)
        runs.append({"wall": document["timing_s"], "cpu": document["cpu_s"]})
    print(json.dumps({"precision": precision, "prob_right": document["prob_right_painful"], "runs": runs}))


def network_before_after(bundle: Path, repeats: int) -> dict[str, Any]:
    """The network step alone: a plain ``no_grad`` pass, channels_last only, and predict's pass."""
    import torch

    from kneepain.model import load_bundle
    from kneepain.predict.network import prepare_for_inference, run_network

    x = torch.rand(1, 2, 23, 224, 224)
    plain, _ = load_bundle(bundle)
    channels_last, _ = load_bundle(bundle)
    with torch.no_grad():
        channels_last.to(memory_format=torch.channels_last)
    channels_last.channels_last = True
    prepared, _ = load_bundle(bundle)
    start, cpu = time.perf_counter(), time.process_time()
    prepared = prepare_for_inference(prepared)
    preparation = {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu}

    def before() -> None:
        with torch.no_grad():
            plain.forward_with_cams(x)

    variants = {
        "before": before,
        "channels_last": lambda: run_network(channels_last, x, "fp32"),
        "after": lambda: run_network(prepared, x, "fp32"),
    }
    times: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for _ in range(1 + repeats):  # alternated, so all see the same load on a shared machine
        for name, call in variants.items():
            start, cpu = time.perf_counter(), time.process_time()
            call()
            times[name].append({"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu})
    summary = {
        name: {key: statistics.median(t[key] for t in runs[1:]) for key in ("wall", "cpu")}
        for name, runs in times.items()
    }
    return {"preparation": preparation, "median_of_repeats": summary, "all": times}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work", type=Path, help="Preprocessed work folder (default: a new 2-person cohort)."
    )
    parser.add_argument("--repeats", type=int, default=2, help="Calls after the first, per precision.")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--network", action="store_true", help="Also time the network before/after.")
    parser.add_argument("--out", type=Path, help="Write the figures here as JSON.")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        left, right, bundle, precision, repeats = args.child
        child(left, right, bundle, precision, int(repeats))
        return
    import torch

    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or make_work(Path(scratch))
        bundle = make_bundle(work, Path(scratch) / "bundle")
        left, right = person(work)
        result: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "load": os.getloadavg(),
            },
            "network": "paper preset (23 KneeNet branches, width 1.0, 224 px), random weights",
            "predict": [],
        }
        for precision in args.precisions.split(","):
            command = [sys.executable, __file__, "--child", str(left), str(right), str(bundle), precision]
            done = subprocess.run([*command, str(args.repeats)], capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            result["predict"].append(row)
            labels = ["first", *(f"repeat {i + 1}" for i in range(args.repeats))]
            for label, run in zip(labels, row["runs"], strict=True):
                steps = ", ".join(f"{k} {v:.2f}/{run['cpu'][k]:.2f}" for k, v in run["wall"].items())
                print(f"{precision} {label}: {steps}  (wall/CPU s)", flush=True)
        if args.network:
            result["network_before_after"] = network_before_after(bundle, args.repeats)
            for name, value in result["network_before_after"]["median_of_repeats"].items():
                print(f"network {name}: wall {value['wall']:.2f} s, CPU {value['cpu']:.2f} s", flush=True)
        result["machine"]["load_after"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
