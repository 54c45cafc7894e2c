"""Status strings, the JSON report and the tables printed for people.

Every section and every row carries a ``status``: ``ok``, or ``failed: <reason>`` (it was tried
and raised), ``unavailable: <reason>`` (a piece it needs is missing here) or ``skipped: <reason>``
(not tried, e.g. in ``--quick`` mode). A failure in one row or section never stops the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kneepain.fileio import write_json

OK = "ok"
STATUS_PREFIXES = ("failed: ", "unavailable: ", "skipped: ")


def failed(error: BaseException) -> str:
    """The status of something that raised ``error`` (first line of the message, type named)."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"failed: {type(error).__name__}{': ' + message[:300] if message else ''}"


def unavailable(reason: str) -> str:
    """The status of a measurement this installation cannot make."""
    return f"unavailable: {reason}"


def skipped(reason: str) -> str:
    """The status of a measurement left out on purpose."""
    return f"skipped: {reason}"


def is_well_formed(status: object) -> bool:
    """True for ``ok`` or one of the prefixed statuses with a non-empty reason."""
    if status == OK:
        return True
    return isinstance(status, str) and any(
        status.startswith(prefix) and len(status) > len(prefix) for prefix in STATUS_PREFIXES
    )


def guarded(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one section or row; an exception becomes ``{"status": "failed: ..."}`` instead of a crash."""
    try:
        result = measure()
    except Exception as error:  # a bench reports what broke and goes on with the rest
        return {"status": failed(error)}
    result.setdefault("status", OK)
    return result


def clean_for_json(value: Any) -> Any:
    """Strict JSON: NaN and infinities become null, tuples lists, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): clean_for_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_for_json(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write the report as strict JSON, atomically (an earlier report stays whole on failure)."""
    write_json(path, clean_for_json(report))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        magnitude = abs(value)
        if magnitude >= 1e9:
            return f"{value:.3g}"
        if magnitude >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


# What each section's table shows: (row key, column header, scale applied for display).
DISPLAY: dict[str, list[tuple[str, str, float]]] = {
    "preprocessing": [
        ("subjects", "subjects", 1.0),
        ("knees_per_s", "knees/s", 1.0),
        ("knees_per_s_incl_template", "knees/s incl. template", 1.0),
        ("template_s", "template s", 1.0),
        ("peak_rss_main_mb", "peak MB main", 1.0),
        ("peak_rss_worker_mb", "peak MB worker", 1.0),
        ("peak_rss_total_mb", "peak MB total", 1.0),
    ],
    "headers": [
        ("headers", "headers", 1.0),
        ("headers_per_s", "headers/s", 1.0),
        ("vs_pydicom", "x pydicom", 1.0),
    ],
    "training": [
        ("images_per_s", "images/s", 1.0),
        ("vs_fp32", "x fp32", 1.0),
        ("step_s", "s/step", 1.0),
        ("data_wait_share", "data wait", 1.0),
        ("achieved_flops", "GFLOP/s", 1e-9),
        ("peak_flops", "peak GFLOP/s", 1e-9),
        ("peak_precision", "peak of", 1.0),
        ("share_of_peak", "share of peak", 1.0),
        ("compile_s", "compile s", 1.0),
    ],
    "published_vs_ours": [
        ("seconds", "seconds", 1.0),
        ("seconds_per_epoch", "s/epoch", 1.0),
        ("speedup_vs_published", "x published", 1.0),
    ],
    "predict": [
        ("first_s", "first call s", 1.0),
        ("median_s", "median s", 1.0),
        ("preprocess_s", "preprocess s", 1.0),
        ("network_s", "network s", 1.0),
        ("vs_fp32", "x fp32", 1.0),
        ("repeats", "repeats", 1.0),
    ],
}


def _scaled(value: Any, scale: float) -> Any:
    return value * scale if isinstance(value, int | float) and not isinstance(value, bool) else value


def section_table(name: str, section: dict[str, Any]) -> Table:
    """One rich table of a section: its rows, with the section's own facts in the caption."""
    rows: list[dict[str, Any]] = section.get("rows") or []
    columns = [c for c in DISPLAY.get(name, []) if any(row.get(c[0]) is not None for row in rows)]
    show_status = any(row.get("status", OK) != OK for row in rows)
    facts = {
        k: v
        for k, v in section.items()
        if k not in ("rows", "status", "note") and not isinstance(v, dict | list)
    }
    caption = ", ".join(f"{k} {_cell(v)}" for k, v in facts.items())
    status = section.get("status", OK)
    title = name if status == OK else f"{name}: {status}"
    table = Table(title=title, caption=caption or None, title_justify="left", caption_justify="left")
    table.add_column("")
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    if show_status:
        table.add_column("status")
    for row in rows:
        cells = [_cell(_scaled(row.get(key), scale)) for key, _, scale in columns]
        table.add_row(
            str(row.get("name", "")), *cells, *([str(row.get("status", OK))] if show_status else [])
        )
    return table


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    """Print the machine line and one table per section."""
    if console is None:
        plain = Console(highlight=False)
        console = plain if plain.is_terminal else Console(highlight=False, width=140)
    machine = report.get("machine", {})
    console.print(
        f"[bold]kneepain bench[/bold] on {machine.get('device_name')} ({machine.get('device')}), "
        f"{machine.get('usable_cores')} cores, torch {machine.get('torch')} "
        f"({machine.get('torch_threads')} threads), load average {report.get('load_average')}",
        soft_wrap=True,
    )
    for name, section in report.get("sections", {}).items():
        if section.get("rows"):
            console.print(section_table(name, section))
        else:
            console.print(f"[bold]{name}[/bold]: {section.get('status', OK)}", soft_wrap=True)
