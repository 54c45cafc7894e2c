"""benchmarks/gpu_check.py in its seconds-long CPU mode, so the GPU check cannot rot between GPU sessions."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_smoke_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--scratch", str(tmp_path / "scratch")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    doc = json.loads(out.read_text(encoding="utf-8"))
    failed = {name: step for name, step in doc["steps"].items() if step["status"] != "ok"}
    assert done.returncode == 0 and not failed, (done.stdout + done.stderr)[-2000:] + json.dumps(failed)
    assert doc["machine"]["precision_auto"]["precision"] in ("fp32", "bf16")
    assert doc["machine"]["precision_auto"]["reason"].startswith("auto: ")
    rows = doc["training"]["rows"]
    assert "fp32" in {row["name"] for row in rows}
    assert all(row["images_per_s"] > 0 and row["share_of_peak"] > 0 for row in rows if row["status"] == "ok")
    for name in ("paper", "joint"):
        step = doc["steps"][f"cv_{name}"]
        assert 0.0 <= step["auc"] <= 1.0 and not math.isnan(step["auc"])
        assert step["seconds_per_fold_epoch"] > 0
    assert len(doc["predict"]["cli_call_s"]) == 1
    assert doc["synthetic"] is True
