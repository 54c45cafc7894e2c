"""`kneepain bench`: speed figures measured side by side in one run, printed and written as JSON."""

from __future__ import annotations

from pathlib import Path

import typer

SECTION_NAMES = "preprocessing,headers,training,published_vs_ours,predict"


def _progress_line(name: str, section: dict) -> None:
    """One line on stderr as each section ends, so a long run shows where it is."""
    from kneepain.console import console

    seconds = section.get("seconds_total")
    took = f" in {seconds:.1f} s" if isinstance(seconds, float) else ""
    console.print(f"[bold]bench[/bold]: {name} {section.get('status', 'ok')}{took}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the `bench` command."""

    @app.command("bench")
    def bench(
        out: Path = typer.Option(Path("bench-results.json"), "--out", help="JSON report to write."),
        sections: str = typer.Option(SECTION_NAMES, help="Comma-separated sections to measure."),
        quick: bool = typer.Option(
            False, "--quick", help="Seconds-scale run (small network, 3 subjects): checks the bench only."
        ),
        work_dir: Path | None = typer.Option(
            None,
            "--work-dir",
            help="Bench folder to reuse: cohort/ (synthetic OAI tree) and work/ (ingest/, optional "
            "preprocess/), as `kneepain demo` writes them; missing parts are made there.",
        ),
        device: str = typer.Option("auto", help="auto | cpu | cuda (training and predict)."),
        subjects: int | None = typer.Option(None, help="Subjects to preprocess and train on (24; quick 3)."),
        seed: int = typer.Option(0, help="Seed of a cohort the bench synthesises."),
        workers: int | None = typer.Option(None, help="Processes for synth/ingest/preprocess (all cores)."),
        threads: int | None = typer.Option(None, help="torch threads (default: torch's own choice)."),
        pairs: int | None = typer.Option(None, help="Training section: pairs per step (CPU 2, GPU 64)."),
        steps: int | None = typer.Option(None, help="Training section: timed steps per setting and round."),
        rounds: int | None = typer.Option(None, help="Alternating rounds over the settings."),
        epochs: int | None = typer.Option(None, help="Published-vs-ours: epochs of every run (2)."),
        width: float | None = typer.Option(None, help="Training section: channel scale (1.0; quick 0.125)."),
        input_size: int | None = typer.Option(None, help="Training section: slice size (224; quick 64)."),
        comparison_preset: str | None = typer.Option(
            None,
            "--comparison-preset",
            help="Published-vs-ours: network, input size and optimizer of this preset or TOML file "
            "(small; quick tiny; paper = width 1.0 at 224 px).",
        ),
        comparison_precision: str | None = typer.Option(
            None,
            "--comparison-precision",
            help="Published-vs-ours: precision of our rows, auto | fp32 | bf16 | fp16 (CUDA) (default: "
            "the preset's; the published row is fp32, as the published code).",
        ),
    ) -> None:
        """Measure training, published-vs-ours, preprocessing, DICOM headers and predict speed."""
        from kneepain.bench.report import print_report, write_report
        from kneepain.bench.suite import BenchOptions, run_bench

        try:
            options = BenchOptions(
                sections=tuple(s.strip() for s in sections.split(",") if s.strip()),
                device=device, quick=quick, work_dir=work_dir, subjects=subjects, seed=seed,
                workers=workers, threads=threads, pairs=pairs, steps=steps, rounds=rounds, epochs=epochs,
                width=width, input_size=input_size, comparison_preset=comparison_preset,
                comparison_precision=comparison_precision,
            )  # fmt: skip
            if work_dir is not None and work_dir.exists() and not work_dir.is_dir():
                raise ValueError(f"--work-dir {work_dir}: not a folder")
            report = run_bench(options, on_section=_progress_line)
        except ValueError as error:
            raise typer.BadParameter(str(error)) from error
        write_report(out, report)
        print_report(report)
        typer.echo(f"written {out}")
