"""One GPU check: training speed per precision, a paper-preset and a joint cv, predict latency.

    .venv/bin/python benchmarks/gpu_check.py --out docs/gpu_check.json          # on a GPU machine
    .venv/bin/python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check.json  # seconds, any CPU

Writes one JSON (rewritten after every step, so a run stopped by a time limit still leaves what it
measured):
- ``machine``: devices, compute capability, the precision ``auto`` picks and why;
- ``training``: ``kneepain bench --sections training`` (images/s per precision and memory format,
  share of the measured matmul peak);
- ``cv``: a ``paper``-preset and a ``small``-preset (joint) cross-validation on a small synthetic
  cohort for a fixed short schedule: pooled out-of-fold AUC (from ``kneepain evaluate``) and wall
  seconds per fold-epoch; with more than one GPU each cv runs as a multi-process DDP job
  (``torch.distributed.run``, one process per GPU);
- ``predict``: wall seconds of ``kneepain predict`` for one participant (first call, then repeats).

The whole check is sized for about 8 minutes on one recent GPU (``--budget-s``): a step that would
start after the budget is recorded as skipped, with the reason. ``--smoke`` shrinks every step
(tiny preset, a handful of participants, one epoch) so the test suite runs it on a CPU and the
script cannot rot; its figures check the script, they are not to be quoted. Synthetic data: no
figure here is a clinical result.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kneepain.hardware import resolve_precision, usable_cores


@dataclass(frozen=True)
class Plan:
    """How big each step is."""

    subjects: int
    folds: int
    epochs: int
    paper_preset: str
    joint_preset: str
    bench_args: tuple[str, ...]
    predict_repeats: int


FULL = Plan(48, 2, 2, "paper", "small", ("--steps", "6", "--rounds", "2"), 3)
# The tiny preset stands in for both presets: the smoke run checks the plumbing, not the figures.
SMOKE = Plan(8, 2, 1, "tiny", "tiny", ("--quick",), 0)


def kneepain_command() -> list[str]:
    """This interpreter running the kneepain CLI (the same environment as the script)."""
    return [sys.executable, "-m", "kneepain"]


class Check:
    """The JSON document, its budget and the steps run so far."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out = out
        self.budget_s = budget_s
        self.start = time.perf_counter()
        self.doc: dict[str, Any] = {"steps": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def save(self) -> None:
        self.doc["elapsed_s"] = round(self.elapsed(), 1)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.out)

    def run(self, name: str, command: list[str], timeout_s: float, env: dict[str, str] | None = None) -> bool:
        """Run one subprocess step within what is left of the budget; record its time and outcome."""
        left = self.budget_s - self.elapsed()
        if left < 5:
            self.doc["steps"][name] = {"status": f"skipped: the {self.budget_s:.0f} s budget was spent"}
            self.save()
            return False
        started = time.perf_counter()
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=min(timeout_s, left),
                env={**os.environ, **(env or {})},
            )
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
            tail = (done.stdout + done.stderr)[-1500:]
        except subprocess.TimeoutExpired:
            status, tail = "failed: timed out", ""
        record: dict[str, Any] = {
            "status": status,
            "seconds": round(time.perf_counter() - started, 2),
            "command": shlex.join(command),
        }
        if status != "ok":
            record["output_tail"] = tail
        self.doc["steps"][name] = record
        self.save()
        return status == "ok"


def machine_record() -> tuple[dict[str, Any], str, str]:
    """Devices and the precision ``auto`` resolves to; also the device and precision to ask for."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    choice = resolve_precision("auto", device)
    record: dict[str, Any] = {
        "torch": torch.__version__,
        "usable_cores": usable_cores(),
        "cuda_devices": torch.cuda.device_count() if cuda else 0,
        "precision_auto": choice.to_json(),
    }
    if cuda:
        record["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
    return record, ("cuda" if cuda else "cpu"), choice.precision


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def predict_pair(work: Path) -> tuple[str, str] | None:
    """Left and right series folders of the first participant read without a problem."""
    series: dict[str, dict[str, str]] = {}
    for row in read_rows(work / "ingest" / "series.csv"):
        if not row.get("problem"):
            series.setdefault(row["subject_id"], {})[row["side"]] = row["path"]
    for subject in sorted(series):
        if {"left", "right"} <= series[subject].keys():
            return series[subject]["left"], series[subject]["right"]
    return None


def cv_step(check: Check, work: Path, name: str, preset: str, plan: Plan, device: str, gpus: int) -> None:
    """One cross-validation for the fixed short schedule, its evaluation, AUC and s per fold-epoch."""
    args = ["cv", str(work), "--run", name, "--preset", preset, "--folds", str(plan.folds)]
    args += ["--epochs", str(plan.epochs), "--seed", "1", "--device", device, "--overwrite"]
    if gpus > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
        command = [*launcher, "-m", "kneepain", *args]
    else:
        command = [*kneepain_command(), *args]
    if not check.run(f"cv_{name}", command, timeout_s=240):
        return
    run = work / "runs" / name
    step = check.doc["steps"][f"cv_{name}"]
    step["processes"] = max(gpus, 1)
    step["seconds_per_fold_epoch"] = round(step["seconds"] / (plan.folds * plan.epochs), 2)
    record = json.loads((run / "run.json").read_text(encoding="utf-8"))
    step["precision"] = record.get("precision") or record.get("config", {}).get("runtime", {}).get(
        "precision"
    )
    if check.run(f"evaluate_{name}", [*kneepain_command(), "evaluate", str(run)], timeout_s=120):
        metrics = json.loads((run / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
        step["auc"] = find_auc(metrics)
    check.save()


def find_auc(metrics: dict[str, Any]) -> float | None:
    """The pooled out-of-fold AUC in evaluate's metrics.json (the first ``auc`` found, depth first)."""
    if isinstance(metrics.get("auc"), (int, float)):
        return float(metrics["auc"])
    for value in metrics.values():
        if isinstance(value, dict) and (found := find_auc(value)) is not None:
            return found
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--scratch", type=Path, default=Path("gpu-check-work"), help="Cohort and runs.")
    parser.add_argument("--smoke", action="store_true", help="Seconds-long run on any CPU (tests).")
    parser.add_argument("--budget-s", type=float, default=480.0, help="Start no step after this.")
    options = parser.parse_args(argv)
    plan = SMOKE if options.smoke else FULL
    options.scratch.mkdir(parents=True, exist_ok=True)
    check = Check(options.out, options.budget_s)
    machine, device, precision = machine_record()
    gpus = machine["cuda_devices"]
    check.doc.update(machine=machine, plan=plan.__dict__ | {"smoke": options.smoke}, synthetic=True)
    check.save()

    bench_json = options.scratch / "bench.json"
    bench = [*kneepain_command(), "bench", "--sections", "training", "--device", device, *plan.bench_args]
    if check.run("bench_training", [*bench, "--out", str(bench_json)], timeout_s=150):
        check.doc["training"] = json.loads(bench_json.read_text(encoding="utf-8"))["sections"]["training"]
        check.save()

    cohort, work = options.scratch / "cohort", options.scratch / "work"
    workers = str(min(usable_cores(), 8))
    kp = kneepain_command()
    synth = ["synth", "--subjects", str(plan.subjects), "--seed", "21", "--out", str(cohort)]
    ingest = ["ingest", "--images", str(cohort / "images"), "--clinical", str(cohort / "clinical")]
    ingest += ["--out", str(work)]
    made = check.run("synth", [*kp, *synth, "--workers", workers], timeout_s=120)
    made = made and check.run("ingest", [*kp, *ingest, "--workers", workers], timeout_s=60)
    preprocess = ["preprocess", str(work), "--workers", workers]
    made = made and check.run("preprocess", [*kp, *preprocess], timeout_s=120)
    if made:
        cv_step(check, work, "paper", plan.paper_preset, plan, device, gpus)
        cv_step(check, work, "joint", plan.joint_preset, plan, device, gpus)
        pair = predict_pair(work)
        bundle = work / "runs" / "paper" / "fold_00" / "bundle"
        if pair and bundle.is_dir():
            command = [*kneepain_command(), "predict", "--left", pair[0], "--right", pair[1]]
            command += ["--model", str(bundle), "--precision", precision, "--allow-qc-fail", "--json"]
            calls = []
            for i in range(1 + plan.predict_repeats):
                if check.run(f"predict_{i}", command, timeout_s=60):
                    calls.append(check.doc["steps"][f"predict_{i}"]["seconds"])
            # Each call is a whole CLI process (imports, reading the DICOM, preprocessing, network).
            check.doc["predict"] = {"cli_call_s": calls, "precision": precision, "device": "cpu"}
    check.save()
    failed = [name for name, step in check.doc["steps"].items() if step["status"].startswith("failed")]
    print(f"gpu check: {len(check.doc['steps'])} steps, failed: {failed or 'none'} -> {options.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
