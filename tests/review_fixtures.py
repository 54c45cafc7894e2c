"""Test helpers for the review app: a run folder with CAM outputs, a study with accounts, a real server.

The run folder is real files: a slice cache, predictions, and CAM outputs written by the CAM
stage's own writer (arrays made here, so these tests need no trained model).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from kneepain.cam.compute import CamResult, cam_index, run_identity, write_cam_outputs
from kneepain.review.store import ADMIN, Protocol, ReviewStore

SUBJECTS = ["9100001", "9100002", "9100003", "9100004"]
LABELS = [1, 0, 1, 0]
PROBS = [0.9, 0.2, 0.3, 0.6]  # the last two predicted wrong


def make_review_run(root: Path, name: str = "r1", subjects: list[str] | None = None, size: int = 224) -> Path:
    """WORK/preprocess cache + index, and WORK/runs/<name> with predictions and cam/ outputs.

    Without ``subjects`` the four cases above (labels and probabilities fixed); with them, labels
    alternate and probabilities are drawn. ``size`` is the cache's slice size.
    """
    ids = subjects if subjects is not None else SUBJECTS
    labels = LABELS if subjects is None else [i % 2 for i in range(len(ids))]
    probs = PROBS if subjects is None else np.random.default_rng(3).uniform(size=len(ids)).round(3).tolist()
    work = root / "work"
    pre = work / "preprocess"
    if not pre.exists():
        pre.mkdir(parents=True)
        rng = np.random.default_rng(1)
        cache = rng.integers(0, 200, size=(len(ids), 2, 23, size, size), dtype=np.uint8)
        np.save(pre / "cache.npy", cache)
        pd.DataFrame(
            {
                "row": range(len(ids)),
                "subject_id": ids,
                "centre_left": 30,
                "centre_right": 30,
                "qc_pass": True,
                "qc_reason": "",
            }
        ).to_csv(pre / "index.csv", index=False)
    run = work / "runs" / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"work": str(work)}))
    table = pd.DataFrame(
        {"subject_id": ids, "fold": [i % 2 for i in range(len(ids))], "split": "test", "prob_right": probs}
    )
    table["label"] = labels
    table.to_csv(run / "predictions.csv", index=False)
    table["cache_row"] = range(len(ids))
    cams = np.random.default_rng(2).normal(size=(len(ids), 2, 23, 28, 28)).astype(np.float32)
    cams[:, :, 9, 10:13, 10:13] += 30.0  # slice 9 has the highest mean for every knee
    write_cam_outputs(run / "cam", CamResult(cams, cam_index(table, cams), {"run_id": run_identity(run)}))
    return run


def make_study(
    run: Path, db: Path, reviewers: tuple[str, ...] = ("alice", "bob"), protocol: Protocol | None = None
) -> dict[str, str]:
    """A study database with the given reviewers and an admin; returns each account's token."""
    store = ReviewStore(db, run_identity(run))
    if protocol is not None:
        store.set_protocol(protocol)
    tokens = {ADMIN: store.add_account(ADMIN, "admin")}
    for name in reviewers:
        tokens[name] = store.add_account(name, "reviewer")
    return tokens


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(
    run: Path, db: Path, port: int, *extra: str, scheme: str = "http", verify: ssl.SSLContext | bool = True
) -> subprocess.Popen[bytes]:
    """`python -m kneepain review serve` on 127.0.0.1; returns once it answers (401: sign-in page)."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kneepain",
            "review",
            "serve",
            str(run),
            "--db",
            str(db),
            "--port",
            str(port),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"server exited: {server.stdout.read().decode() if server.stdout else ''}")
        try:
            if httpx.get(f"{scheme}://127.0.0.1:{port}/", timeout=1, verify=verify).status_code == 401:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise AssertionError("server did not answer within 60 s")


def rss_kib(pid: int) -> tuple[int, int]:
    """A process's resident memory now and its peak (VmRSS, VmHWM from /proc), in KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
