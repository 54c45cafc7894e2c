"""The synthetic cohort and work folders the bench measures on, made once and reusable.

A bench folder holds ``cohort/`` (an OAI-format tree from ``kneepain synth``) and ``work/``
(``ingest/``, optionally ``preprocess/``): the layout ``kneepain demo`` writes, so a demo's output
folder can be reused as is. The bench adds ``cohort/`` and ``work/ingest/`` when they are missing
and never writes into an existing ``work/preprocess/``: the preprocessing figure is measured on a
copy of the ingest tables in a scratch folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kneepain.contracts import WorkPaths, read_cohort


class BenchInputError(ValueError):
    """A bench folder that cannot be used (the message names the file)."""


@dataclass
class Workspace:
    """Where the bench's inputs live (``root``) and where it writes throw-away files (``scratch``)."""

    root: Path
    scratch: Path
    subjects: int
    seed: int = 0
    workers: int | None = None
    preprocessed: Path | None = field(default=None, init=False)  # a work folder with a cache

    @property
    def cohort(self) -> Path:
        return self.root / "cohort"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def ensure_cohort(self) -> Path:
        """The synthetic cohort, generated (``subjects`` participants, ``seed``) when absent."""
        if not (self.cohort / "images").is_dir():
            from kneepain.synth import generate_cohort

            generate_cohort(self.cohort, self.subjects, self.seed, workers=self.workers)
        return self.cohort

    def ensure_ingest(self) -> Path:
        """The work folder with ``ingest/`` (series and cohort tables), ingesting when absent."""
        paths = WorkPaths(self.work)
        if not (paths.series_table.exists() and paths.cohort_table.exists()):
            from kneepain.ingest.pipeline import run_ingest

            cohort = self.ensure_cohort()
            run_ingest(cohort / "images", cohort / "clinical", self.work, workers=self.workers)
        return self.work

    def series(self) -> pd.DataFrame:
        """The readable series of the ingested cohort (one row per knee series)."""
        path = WorkPaths(self.ensure_ingest()).series_table
        table = pd.read_csv(path, dtype={"subject_id": str, "problem": str, "path": str})
        missing = [c for c in ("subject_id", "side", "path", "problem") if c not in table.columns]
        if missing:
            raise BenchInputError(f"{path}: lacks column(s) {missing}")
        return table[table["problem"].fillna("") == ""]

    def subjects_with_both_knees(self) -> list[str]:
        """Sorted ids of subjects with a readable left and right series."""
        sides = self.series().groupby("subject_id")["side"].agg(lambda s: set(s.str.lower()))
        return sorted(sides[sides.apply(lambda s: {"left", "right"} <= s)].index)

    def subset_work(self, name: str, count: int) -> Path:
        """A scratch work folder whose ingest tables hold only the first ``count`` usable subjects."""
        chosen = self.subjects_with_both_knees()[:count]
        if not chosen:
            raise BenchInputError(f"{WorkPaths(self.work).series_table}: no subject has both knee series")
        source = WorkPaths(self.ensure_ingest())
        target = WorkPaths(self.scratch / name)
        target.ingest.mkdir(parents=True, exist_ok=False)
        series = pd.read_csv(source.series_table, dtype={"subject_id": str})
        cohort = read_cohort(source.cohort_table)
        series[series["subject_id"].isin(chosen)].to_csv(target.series_table, index=False)
        cohort[cohort["subject_id"].isin(chosen)].to_csv(target.cohort_table, index=False)
        return target.root

    def cache_work(self) -> Path:
        """A work folder with a slice cache: the bench folder's own, or one preprocessed in scratch."""
        if WorkPaths(self.work).cache_array.exists():
            return self.work
        if self.preprocessed is None:
            from kneepain.bench.preprocess_child import preprocess_in_child

            work = self.subset_work("cache", self.subjects)
            preprocess_in_child(work, self.workers)
            self.preprocessed = work
        return self.preprocessed
