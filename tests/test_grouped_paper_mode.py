"""Paper mode as one grouped network: exact conversion, and the same training as one by one.

The equivalence runs train a ``paper``-mode network twice from one seed on a real (tiny) work
folder, once with the locations fitted one after another (``one_by_one=True``, the loop the
grouped pass replaced) and once grouped, and compare per location: epochs run, best epochs, the
metrics log, weights and test probabilities. Four of the cache's 23 slice locations keep the
one-by-one run within seconds; the grouped code does not depend on the count.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from kneepain.config import preset
from kneepain.contracts import open_cache
from kneepain.model.branches import BRANCHES
from kneepain.model.grouped import GroupedLocations, groupable
from kneepain.model.inputs import to_input
from kneepain.model.siamese import ModelConfig, SiameseNet, build_model
from kneepain.train.recipe import GROUPED_DIR, Part, train_model
from workfolder import make_work

LOCATIONS = 4
SIZE = 16
# fp32 differences between a grouped and 4 separate convolution calls (other summation order),
# measured: stage-1 weights and BN statistics <= 2.4e-5, fusion weights <= 3e-4 (LBFGS on
# nearly collinear features amplifies them), test probabilities <= 2.1e-5.
WEIGHTS = {"rtol": 1e-3, "atol": 1e-4}
FUSION = {"rtol": 1e-2, "atol": 2e-3}
PROBABILITIES = {"rtol": 0, "atol": 2e-4}
CASES = {  # the first two stop locations at different epochs on this folder (asserted below)
    "sgd, early stopping": {"optimizer": "sgd", "lr": 0.3, "epochs": 8, "patience": 2, "ema_decay": 0.0},
    "sgd + ema, early stopping": {
        "optimizer": "sgd",
        "lr": 0.3,
        "epochs": 6,
        "patience": 1,
        "ema_decay": 0.5,
    },
    "adam, last epoch": {"optimizer": "adam", "lr": 3e-3, "epochs": 3, "patience": 0, "select_on": "last"},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[np.ndarray, Part, Part, Part]:
    work = make_work(tmp_path_factory.mktemp("work"), n=50, size=SIZE, flip=0.1)
    cache = open_cache(work / "preprocess" / "cache.npy")[:, :, :LOCATIONS]
    labels = pd.read_csv(work / "ingest" / "cohort.csv")["label"].to_numpy(np.int64)  # row i: subject i
    train, val, test = (Part(np.arange(a, b), labels[a:b]) for a, b in ((0, 30), (30, 40), (40, 50)))
    return cache, train, val, test


def _configs(**train: object):
    return preset(
        "tiny",
        {"mode": "paper", "head": "location", "input_size": SIZE, "n_locations": LOCATIONS},
        {"device": "cpu", "precision": "fp32", "batch_size": 8, "fusion_steps": 50, **train},
    )


def _train(data, out: Path, train: dict, *, one_by_one: bool = False, resume: bool = False):
    cache, train_part, val_part, _ = data
    arch, config = _configs(**train)
    torch.manual_seed(0)
    model = build_model(arch)
    summary = train_model(
        model, cache, train_part, val_part, config, out, device=torch.device("cpu"), resume=resume,
        show_progress=False, one_by_one=one_by_one,
    )  # fmt: skip
    return model, summary


def _probabilities(model: SiameseNet, data) -> torch.Tensor:
    cache, _, _, test = data
    model.eval()
    with torch.no_grad():
        return torch.softmax(model(to_input(np.asarray(cache[test.rows]), SIZE)), dim=1)[:, 1]


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("combine", ["relu_diff", "concat"])
def test_grouped_network_converts_exactly_and_computes_each_location(branch: str, combine: str) -> None:
    size = 64 if branch == "alexnet_gap" else 32  # AlexNet's 11 x 11 / 4 stem needs room
    torch.manual_seed(0)
    net = SiameseNet(
        ModelConfig(branch=branch, width=0.0625, input_size=size, combine=combine, n_locations=4)
    )
    assert groupable(net)
    grouped = GroupedLocations.from_siamese(net)
    x = torch.rand(3, 2, 4, size, size)
    separate = torch.stack([net.forward_location(x[:, :, g], g) for g in range(4)], dim=1)  # train mode
    torch.testing.assert_close(grouped(x), separate, rtol=1e-5, atol=1e-6)
    back = SiameseNet(net.config)
    back.classifier.load_state_dict(net.classifier.state_dict())
    grouped.write_into(back)
    for key, value in net.state_dict().items():  # weights and the BN statistics both forwards updated
        torch.testing.assert_close(back.state_dict()[key], value, rtol=0, atol=0)


def test_a_joint_network_is_not_grouped() -> None:
    assert not groupable(SiameseNet(ModelConfig(width=0.0625, input_size=32, mode="joint")))


@pytest.mark.parametrize("case", CASES)
def test_grouped_training_equals_one_by_one_per_location(data, tmp_path: Path, case: str) -> None:
    alone, alone_summary = _train(data, tmp_path / "one", CASES[case], one_by_one=True)
    grouped, grouped_summary = _train(data, tmp_path / "grouped", CASES[case])
    assert grouped_summary["locations"] == alone_summary["locations"]  # epochs run and best epoch
    if "early stopping" in case:
        assert len({entry["epochs"] for entry in grouped_summary["locations"]}) > 1  # stopped apart
    alone_log, grouped_log = _log(tmp_path / "one"), _log(tmp_path / "grouped")
    assert [(e.get("location"), e.get("epoch")) for e in grouped_log] == [
        (e.get("location"), e.get("epoch")) for e in alone_log
    ]
    for mine, theirs in zip(grouped_log[:-1], alone_log[:-1], strict=True):
        assert mine.keys() == theirs.keys()
        for key in ("train_loss", "val_loss"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5)
    reference = alone.state_dict()
    for key, value in grouped.state_dict().items():
        tolerance = FUSION if key.startswith("classifier") else WEIGHTS
        torch.testing.assert_close(value, reference[key], **tolerance, msg=lambda m, key=key: f"{key}: {m}")
    torch.testing.assert_close(_probabilities(grouped, data), _probabilities(alone, data), **PROBABILITIES)
    assert (tmp_path / "grouped" / GROUPED_DIR / "checkpoint").is_dir()


def test_grouped_training_resumes_exactly(data, tmp_path: Path) -> None:
    train = CASES["sgd + ema, early stopping"]
    straight, summary = _train(data, tmp_path / "a", train)
    stopped_early = min(entry["epochs"] for entry in summary["locations"])
    _train(data, tmp_path / "b", {**train, "epochs": stopped_early})  # killed after that epoch
    resumed, resumed_summary = _train(data, tmp_path / "b", train, resume=True)
    assert resumed_summary["locations"] == summary["locations"]
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
    assert _untimed(_log(tmp_path / "b")) == _untimed(_log(tmp_path / "a"))


def _untimed(log: list[dict]) -> list[dict]:
    timing = {"seconds", "images_per_s", "data_wait_share"}
    return [{k: v for k, v in entry.items() if k not in timing} for entry in log]
