"""Preprocess's protocol check: does every knee's series match the protocol the model expects?

The reference is a bundle's training cohort (``model.json`` "acquisition", written by the cv
stage) when one is given, else the cohort's own median. Each knee's slice thickness, slice
spacing, pixel spacing and sequence name (read from the first files' headers) are compared with
it (kneepain.protocol). The result is ``WORK/preprocess/protocol.csv`` (every knee, its values,
what differs) and one warning line per kind of difference; nothing is resampled or excluded
(docs/preprocess.md says why).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from kneepain.contracts import BUNDLE_META, WorkPaths
from kneepain.fileio import write_csv
from kneepain.protocol import protocol_mismatches, read_series_protocol, reference_protocol

PROTOCOL_TABLE = "protocol.csv"


class ProtocolInputError(ValueError):
    """The bundle given for the protocol check cannot be read."""


def bundle_acquisition(bundle: Path) -> dict[str, Any]:
    """The training cohort's acquisition recorded in a bundle (folder or its model.json)."""
    meta = bundle / BUNDLE_META if bundle.is_dir() else bundle
    try:
        acquisition = json.loads(meta.read_text(encoding="utf-8")).get("acquisition")
    except (OSError, ValueError) as error:
        raise ProtocolInputError(f"{meta}: not a readable bundle model.json ({error})") from error
    if not acquisition:
        raise ProtocolInputError(
            f"{meta}: records no training acquisition (bundles from before the protocol check); "
            "run without --bundle to compare with the cohort's own median"
        )
    return dict(acquisition) | {"source": f"bundle {meta}"}


def check_protocol(
    work: Path, knees: list[tuple[str, str, str]], bundle: Path | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Compare each knee (subject, side, series folder) with the reference; write protocol.csv.

    Returns (the reference used, warning lines: one per kind of difference, with counts and the
    first knees named).
    """
    records = [
        {"subject_id": s, "side": side, **read_series_protocol(Path(folder))} for s, side, folder in knees
    ]
    table = pd.DataFrame(
        records,
        columns=[
            "subject_id",
            "side",
            "slice_thickness_mm",
            "slice_spacing_mm",
            "pixel_spacing_mm",
            "sequence",
        ],
    )
    if table.empty:
        return {}, []
    reference = bundle_acquisition(bundle) if bundle is not None else reference_protocol(table)
    mismatches = protocol_mismatches(table, reference)
    table = table.merge(mismatches, on=["subject_id", "side"], how="left")
    table["differs"] = table["differs"].fillna("")
    write_csv(WorkPaths(work).preprocess / PROTOCOL_TABLE, table)
    warnings = []
    kinds: dict[str, list[str]] = {}
    for row in mismatches.itertuples(index=False):
        for part in row.differs.split("; "):
            kinds.setdefault(part.split(" ")[0] + " " + part.split(" ")[1], []).append(
                f"{row.subject_id} {row.side} ({part})"
            )
    for kind, named in kinds.items():
        shown = ", ".join(named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")
        warnings.append(
            f"protocol: {len(named)} knee(s) differ from {reference['source']} in {kind}: {shown}; "
            f"the 23-slice window of such a knee covers other anatomy (see {PROTOCOL_TABLE})"
        )
    return reference, warnings
