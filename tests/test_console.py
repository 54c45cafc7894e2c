"""Console output: escaped user text, one line per message, plain progress lines without a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from kneepain.console import progress, progress_counter, safe


def plain_console() -> tuple[Console, io.StringIO]:
    stream = io.StringIO()
    return Console(file=stream, highlight=False, soft_wrap=True, width=40), stream


def test_progress_without_a_terminal_is_a_few_plain_lines() -> None:
    out, stream = plain_console()
    assert not out.is_terminal
    assert list(progress(range(150), "CAMs", out=out)) == list(range(150))
    lines = stream.getvalue().splitlines()
    assert lines[0] == "CAMs 15/150" and lines[-1] == "CAMs 150/150"
    assert len(lines) == 10 and all(line.strip() for line in lines)  # every tenth; no blank lines
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()


def test_counter_reports_batches_and_the_end() -> None:
    out, stream = plain_console()
    with progress_counter("batches", total=7, out=out) as advance:
        for size in (3, 3, 1):
            advance(size)
    assert stream.getvalue().splitlines() == ["batches 3/7", "batches 6/7", "batches 7/7"]


def test_user_text_prints_literally_on_one_line() -> None:
    out, stream = plain_console()
    name = "/data/x[link=https://example.org]click[/link]/[red]a[/red]\x1b[31m\nend " + "long " * 20
    out.print(f"[red]ingest: {safe(name)}[/red]")
    text = stream.getvalue()
    assert text.count("\n") == 1  # soft wrap: one line however narrow the console
    assert "x[link=https://example.org]click[/link]/[red]a[/red]\\x1b[31m\\x0aend" in text
    assert "\x1b" not in text
