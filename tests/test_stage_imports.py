"""Stage boundaries as a test: a stage never reaches into another stage's internals.

What two stages share lives in the shared layers (contracts, fileio, model, config, hardware,
...), which import no stage at all. A stage may import another stage's module only where that
module is the other stage's public face, listed below with the reason; a private name (leading
underscore) or a private module of another stage is never allowed. Imports inside functions and
``importlib.import_module("...")`` calls count too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE = Path(__file__).parents[1] / "src"
STAGES = (
    "synth", "ingest", "preprocess", "train", "evaluate", "cam", "predict", "review", "report", "bench",
    "paper", "export", "dicomweb",
)  # fmt: skip
SHARED = ("contracts", "fileio", "model", "config", "hardware", "console", "workers", "protocol")

# importer stage -> {imported module: why it is that stage's public face}
ALLOWED: dict[str, dict[str, str]] = {
    "bench": {
        "kneepain.synth": "the bench makes its cohort with the generator's entry point",
        "kneepain.ingest.pipeline": "run_ingest: the ingest stage's entry point",
        "kneepain.ingest.dicom_scan": "the header-reading speed is the bench's measurement",
        "kneepain.preprocess": "run_preprocess: the stage's entry point",
        "kneepain.predict": "predict_person: the stage's entry point",
        "kneepain.train.data": "training speed measured on the trainer's own batches",
        "kneepain.train.loop": "training speed measured on the trainer's own step",
        "kneepain.train.recipe": "training speed measured on the trainer's own recipe",
    },
    "cam": {"kneepain.preprocess": "mask_to_cache maps synthetic lesion masks into cache space"},
    "dicomweb": {
        "kneepain.export": "writes predict's results as DICOM objects",
        "kneepain.predict": "predict_person: the stage's entry point",
        "kneepain.predict.checks": "the series checks predict applies, applied before download",
    },
    "export": {
        "kneepain.predict": "predict_person: the stage's entry point",
        "kneepain.predict.checks": "check_replaceable_dir",
        "kneepain.predict.geometry": "cache-to-scanner geometry of predict's maps",
        "kneepain.preprocess.registration": "Pose: the registration record of the cache",
        "kneepain.cam.overlay": "the overlay pictures cam draws",
    },
    "ingest": {"kneepain.preprocess.series_io": "one DICOM header reader for both stages"},
    "protocol": {"kneepain.preprocess.series_io": "the acquisition fields are read as preprocess reads them"},
    "paper": {
        "kneepain.evaluate.provenance": "synthetic evidence and versions of a run",
        "kneepain.evaluate.tables": "number formats and tables of evaluate",
        "kneepain.ingest.pipeline": "the ingest stage's output file names",
        "kneepain.ingest.table1": "Table 1",
        "kneepain.report.html": "the report's figure helpers",
        "kneepain.review.store": "the review's lesion categories",
        "kneepain.train.estimate": "the training time estimate cv prints, timed on this machine",
    },
    "predict": {
        "kneepain.preprocess.config": "PreprocessConfig: the bundle's preprocessing record",
        "kneepain.preprocess.knee": "predict reproduces the cache's preprocessing for one knee",
        "kneepain.preprocess.registration": "Pose: the registration record",
        "kneepain.preprocess.series_io": "one DICOM series reader",
        "kneepain.ingest.dicom_scan": "series_side: which knee a series shows",
        "kneepain.cam.compute": "best_slice: the paper's best-slice rule",
        "kneepain.cam.overlay": "the overlay pictures cam draws",
    },
    "report": {
        "kneepain.cam.overlay": "the overlay layout",
        "kneepain.evaluate.provenance": "synthetic evidence and versions of a run",
        "kneepain.evaluate.tables": "the evaluation's tables",
    },
    "review": {
        "kneepain.cam.compute": "read_cam_outputs: the reader of cam's files",
        "kneepain.cam.overlay": "the heat map pictures cam draws",
    },
}
# Private names imported across stages today, each to be made public by its owner (none left).
KNOWN_PRIVATE: set[tuple[str, str, str]] = set()


@dataclass(frozen=True)
class CrossImport:
    importer: str  # module that imports
    target: str  # module imported
    name: str  # name imported from it ("" for a module import)

    @property
    def stage(self) -> str:
        return self.importer.split(".")[1]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "kneepain" else None


def cross_imports(source: Path) -> list[CrossImport]:
    """Every import of a stage module made by a module of another stage or of a shared layer."""
    found = []
    for path in sorted((source / "kneepain").rglob("*.py")):
        module = ".".join(path.relative_to(source).with_suffix("").parts).removesuffix(".__init__")
        if _layer(module) not in STAGES + SHARED:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                pairs = [(node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                pairs = [(alias.name, "") for alias in node.names]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                pairs = [(str(node.args[0].value), "")]
            else:
                continue
            for target, name in pairs:
                if _layer(target) in STAGES and _layer(target) != _layer(module):
                    found.append(CrossImport(module, target, name))
    return found


def violations(found: list[CrossImport]) -> list[str]:
    """The imports that break the rules, one line each."""
    problems = []
    for item in found:
        private = any(part.startswith("_") for part in [*item.target.split("."), item.name] if part)
        if item.stage in SHARED and item.target not in ALLOWED.get(item.stage, {}):
            problems.append(f"{item.importer} (shared layer) imports stage module {item.target}")
        elif item.stage in SHARED:
            continue
        elif private and (item.importer, item.target, item.name) not in KNOWN_PRIVATE:
            problems.append(f"{item.importer} imports private {item.target} {item.name}".rstrip())
        elif not private and item.target not in ALLOWED.get(item.stage, {}):
            problems.append(f"{item.importer} imports {item.target} (not another stage's public face)")
    return problems


def test_no_stage_reaches_into_another_stages_internals() -> None:
    found = cross_imports(SOURCE)
    assert found, "the scan found no cross-stage import at all: it is not reading the sources"
    assert violations(found) == []


def test_every_allowed_import_is_still_used() -> None:
    used = {(item.stage, item.target) for item in cross_imports(SOURCE)}
    stale = [
        (stage, target)
        for stage, targets in ALLOWED.items()
        for target in targets
        if (stage, target) not in used
    ]
    assert stale == [], "drop these from ALLOWED: nothing imports them any more"


@pytest.mark.parametrize(
    ("planted", "expected"),
    [
        ("from kneepain.preprocess.cache import TEMPLATE_FILE\n", "imports kneepain.preprocess.cache (not"),
        ("from kneepain.cam.stage import _helper\n", "imports private kneepain.cam.stage _helper"),
        (
            "import importlib\nimportlib.import_module('kneepain.train._private')\n",
            "private kneepain.train._private",
        ),
    ],
)
def test_the_check_catches_a_planted_import(tmp_path: Path, planted: str, expected: str) -> None:
    package = tmp_path / "kneepain" / "predict"
    package.mkdir(parents=True)
    (package / "planted.py").write_text(planted)
    model = tmp_path / "kneepain" / "model"
    model.mkdir()
    (model / "uses_a_stage.py").write_text(
        "def f():\n    from kneepain.preprocess.config import array_sha256\n"
    )
    problems = violations(cross_imports(tmp_path))
    assert any(expected in line for line in problems), problems
    assert any("kneepain.model.uses_a_stage (shared layer) imports stage module" in line for line in problems)
