"""`kneepain cam RUN`: class activation maps, overlays and measured localization of a trained run."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the `cam` command."""

    @app.command("cam")
    def cam(
        run: Path = typer.Argument(..., help="Run folder WORK/runs/<run> (predictions.csv, fold_XX/bundle)."),
        truth: Path | None = typer.Option(
            None, "--truth", help="Synthetic truth/ folder: measure localization against its lesion masks."
        ),
        cache_masks: Path | None = typer.Option(
            None, "--cache-masks", help="Folder of <ID>_<side>.npz lesion volumes already in cache space."
        ),
        batch_size: int = typer.Option(4, min=1, help="Subjects per forward pass."),
        device: str = typer.Option("cpu", help="torch device: cpu, cuda, or auto."),
        precision: str = typer.Option(
            "auto", help="auto (bf16 where the device computes it natively, else fp32) | fp32 | bf16 | fp16."
        ),
        overlays: bool = typer.Option(True, help="Write overlays/<ID>_<side>.png figures."),
        tolerance: int = typer.Option(1, min=0, help="Pointing-game tolerance in CAM cells."),
        dicom_out: Path | None = typer.Option(
            None,
            "--dicom-out",
            help="Instead: write each test subject's CAM parametric maps, findings SR and overlays as "
            "DICOM into this folder (from the source series; see docs/pacs.md).",
        ),
    ) -> None:
        """Compute each test subject's CAMs with the bundle of its held-out fold; write RUN/cam/.

        Writes cams.npy (raw maps, subjects x 2 knees x 23 slices x h x w), index.csv (best slice:
        highest mean CAM of the painful knee), overlays/, localization.csv|json (area above 0.5
        after min-max normalisation; with truth: pointing game, energy in lesions, lesion table).
        """
        from kneepain.cam.compute import CamInputError
        from kneepain.cam.stage import run_cam_stage
        from kneepain.console import fail, stage

        if dicom_out is not None:
            from kneepain.export.run_export import export_dicom_cli

            export_dicom_cli(run, dicom_out)
            return

        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        from kneepain.fileio import remove_stale_temporaries

        remove_stale_temporaries(run)  # what a killed earlier cam run left (its temporary RUN/cam)
        with stage("cam") as info:
            try:
                summary = run_cam_stage(
                    run,
                    truth,
                    cache_masks,
                    batch_size=batch_size,
                    device=device,
                    overlays=overlays,
                    tolerance_cells=tolerance,
                    precision=precision,
                )
            except CamInputError as error:
                fail("cam", error)
                raise typer.Exit(2) from error
            info["subjects"] = summary["subjects"]
            info["backbone"] = summary["backbone"]
            info["area>0.5"] = (
                f"{summary['area_above_half_pct_mean']:.1f} +/- {summary['area_above_half_pct_sd']:.1f}%"
            )
            if summary["pointing_hit_rate_correct"] is not None:
                info["pointing (correct)"] = (
                    f"{100 * summary['pointing_hit_rate_correct']:.1f}% of {summary['pointing_n_correct']}"
                )
                info["pointing (correct, difference map)"] = (
                    f"{100 * summary['pointing_hit_rate_correct_difference']:.1f}%"
                )
                info["pointing (correct, ours)"] = rule_against_fixed_point(summary, "ours")
                info["CAM-free fixed point"] = f"{100 * summary['pointing_hit_rate_correct_constant']:.1f}%"
                if summary["pointing_hit_rate_correct_prior"] is not None:
                    info["pointing (correct, ours + evidence prior)"] = rule_against_fixed_point(
                        summary, "prior"
                    )


def rule_against_fixed_point(summary: dict, rule: str) -> str:
    """A hot-spot rule's hit rate with its Wilson interval and its paired test against the fixed point."""
    low, high = summary[f"pointing_hit_rate_correct_{rule}_ci95"]
    paired = summary[f"{rule}_vs_constant_correct"]
    rate = 100 * summary[f"pointing_hit_rate_correct_{rule}"]
    return (
        f"{rate:.1f}% (95% CI {100 * low:.1f}-{100 * high:.1f}%;"
        f" against the fixed point {paired['ours_only']:g} vs {paired['baseline_only']:g},"
        f" McNemar p {paired['p_value']:.3g})"
    )
