"""Ingest an OAI-format release: series table, clinical variables, cohorts, Table 1.

Modules: ``dicom_scan`` (find the visit folder, pick SAG_IW_TSE series, read headers only),
``clinical`` (find and parse the pipe-delimited clinical files), ``cohort`` (the paper's
selection with a reason for every exclusion, and the funnel), ``table1`` (baseline table with
p-values), ``pipeline`` (the whole stage, writing ``WORK/ingest/`` atomically).
"""

from __future__ import annotations


class IngestError(Exception):
    """Input that stops the ingest run (missing column, no visit folder); the message names the file."""
