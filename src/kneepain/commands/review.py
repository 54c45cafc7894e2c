"""`kneepain review serve|export`: the radiologist's review app over a run's CAMs, and its exports."""

from __future__ import annotations

from pathlib import Path

import typer

review_app = typer.Typer(
    help=(
        "Radiologist review of a run's CAMs. `kneepain review serve RUN --db review.sqlite` starts the "
        "web app (127.0.0.1 by default); `kneepain review export RUN --db review.sqlite` writes the "
        "Figure 3I lesion table and reviewer agreement to RUN/review/."
    ),
    no_args_is_help=True,
)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@review_app.command("serve")
def serve(
    run: Path = typer.Argument(..., help="Run folder with cam/ (run `kneepain cam RUN` first)."),
    db: Path = typer.Option(
        ..., "--db", help="SQLite file for the reviews (created if absent; tied to this run)."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind; any non-loopback address needs --token."),
    port: int = typer.Option(8765, min=1, max=65535, help="Port to listen on."),
    token: str | None = typer.Option(
        None, "--token", envvar="KNEEPAIN_REVIEW_TOKEN", help="Access token every request must carry."
    ),
    reviewer: str = typer.Option("", help="Reviewer name filled in on the case pages (each can change it)."),
) -> None:
    """Start the review web app: case list, blinded case pages, every save committed to --db at once."""
    import uvicorn

    from kneepain.cam.compute import CamInputError
    from kneepain.console import console
    from kneepain.review.app import create_app
    from kneepain.review.store import ReviewStoreError

    if not is_loopback(host) and not token:
        console.print(f"[red]review: binding to {host} exposes the app to the network; give --token")
        raise typer.Exit(2)
    if token is not None and len(token) < 12:
        console.print("[red]review: --token must have at least 12 characters")
        raise typer.Exit(2)
    try:
        hosts = ["127.0.0.1", "localhost", "[::1]", "::1", host] if is_loopback(host) else None
        app = create_app(run, db, reviewer=reviewer, token=token, allowed_hosts=hosts)
    except (CamInputError, ReviewStoreError) as error:
        console.print(f"[red]review: {error}")
        raise typer.Exit(2) from error
    query = f"?token={token}" if token else ""
    shown = f"[{host}]" if ":" in host else host
    console.print(f"review: {len(app.state.context.case_ids)} cases, reviews in {db}")
    console.print(f"open http://{shown}:{port}/{query}")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@review_app.command("export")
def export(
    run: Path = typer.Argument(..., help="Run folder with cam/."),
    db: Path = typer.Option(..., "--db", help="The review database of this run."),
    out: Path | None = typer.Option(None, help="Output folder (default RUN/review)."),
) -> None:
    """Write lesion_table.csv|md (Figure 3I per reviewer) and agreement.csv (Cohen's kappa per category)."""
    from kneepain.cam.compute import CamInputError
    from kneepain.console import console, stage
    from kneepain.review.export import export_reviews
    from kneepain.review.store import ReviewStoreError

    if not db.exists():
        console.print(f"[red]review export: {db}: review database not found")
        raise typer.Exit(2)
    with stage("review export") as info:
        try:
            written = export_reviews(run, db, out)
        except (CamInputError, ReviewStoreError) as error:
            console.print(f"[red]review export: {error}")
            raise typer.Exit(2) from error
        info["files"] = len(written)
        info["folder"] = written[0].parent


def register(app: typer.Typer) -> None:
    """Add the `review` command group (serve, export)."""
    app.add_typer(review_app, name="review")
