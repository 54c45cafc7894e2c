"""`kneepain review init-study|add-reviewer|serve|export`: a blinded reader study over a run's CAMs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from kneepain.review.store import ReviewStore

review_app = typer.Typer(
    help=(
        "Radiologist reader study of a run's CAMs. `kneepain review init-study RUN --db review.sqlite` "
        "records the blinding protocol and prints the admin secret; `add-reviewer RUN --db DB NAME` prints "
        "a reviewer's secret; `serve RUN --db DB` starts the web app (127.0.0.1 by default; TLS on a "
        "network address); `export RUN --db DB` writes the Figure 3I table, blinding and agreement."
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


def open_store(run: Path, db: Path, must_exist: bool) -> ReviewStore:
    """The run's review store; exit 2 with one line when the run or the database is unusable."""
    from kneepain.cam.compute import CamInputError, run_identity
    from kneepain.console import console, safe
    from kneepain.review.store import ReviewStore, ReviewStoreError

    if must_exist and not db.exists():
        console.print(
            f"[red]review: {safe(db)}: review database not found; create it with "
            f"`kneepain review init-study {run} --db {db}`"
        )
        raise typer.Exit(2)
    try:
        return ReviewStore(db, run_identity(run))
    except (CamInputError, ReviewStoreError) as error:
        console.print(f"[red]review: {safe(error)}")
        raise typer.Exit(2) from error


def print_secret(role: str, name: str, token: str) -> None:
    """A secret, printed once, never stored in clear."""
    typer.echo(f"{role} {name}: secret {token}")
    typer.echo("  (shown once and stored only hashed; hand it over privately. Sign in by opening the")
    typer.echo("   server's address and pasting it, or by opening ADDRESS/?token=SECRET once.)")


@review_app.command("init-study")
def init_study(
    run: Path = typer.Argument(..., help="Run folder with cam/ (run `kneepain cam RUN` first)."),
    db: Path = typer.Option(..., "--db", help="SQLite file for the study (created; tied to this run)."),
    prediction: str = typer.Option(
        "after-label",
        help="When a reviewer may see the model's prediction of a case: after-label (once their label "
        "of it is saved) or never.",
    ),
    blind_pain_side: bool = typer.Option(
        False, "--blind-pain-side", help="Show the knees as A/B until the reviewer's label is saved."
    ),
    reset_admin: bool = typer.Option(
        False, "--reset-admin", help="Issue a new admin secret (old one stops)."
    ),
) -> None:
    """Create the study's database, record its blinding protocol, and print the admin secret once."""
    from kneepain.console import console, safe
    from kneepain.review.store import ADMIN, InvalidReviewError, Protocol, ReviewStoreError

    protocol = Protocol(prediction.replace("-", "_"), "after_label" if blind_pain_side else "shown")
    store = open_store(run, db, must_exist=False)
    try:
        store.set_protocol(protocol)
        if store.has_admin() and not reset_admin:
            console.print(
                f"review: {safe(db)}: protocol {protocol.prediction} / pain side {protocol.pain_side}; "
                "the admin secret was printed when the study was created (--reset-admin issues a new one)"
            )
            return
        token = store.add_account(ADMIN, "admin", replace=reset_admin)
    except (InvalidReviewError, ReviewStoreError) as error:
        console.print(f"[red]review init-study: {safe(error)}")
        raise typer.Exit(2) from error
    console.print(
        f"review: study in {safe(db)}: prediction shown {protocol.prediction.replace('_', ' ')}, "
        f"pain side {protocol.pain_side.replace('_', ' ')}"
    )
    print_secret("admin", ADMIN, token)


@review_app.command("add-reviewer")
def add_reviewer(
    run: Path = typer.Argument(..., help="Run folder with cam/."),
    name: str = typer.Argument(..., help="Reviewer name: 1-64 letters, digits, spaces or . _ @ -."),
    db: Path = typer.Option(..., "--db", help="The study's database (created with the default protocol)."),
    reset: bool = typer.Option(False, "--reset", help="Issue a new secret for an existing reviewer."),
) -> None:
    """Add a reviewer and print their secret once (the first call also creates the study and its admin)."""
    from kneepain.console import console, safe
    from kneepain.review.store import ADMIN, InvalidReviewError, ReviewStoreError

    store = open_store(run, db, must_exist=False)
    try:
        admin = None if store.has_admin() else store.add_account(ADMIN, "admin")
        token = store.add_account(name, "reviewer", replace=reset)
    except (InvalidReviewError, ReviewStoreError) as error:
        console.print(f"[red]review add-reviewer: {safe(error)}")
        raise typer.Exit(2) from error
    if admin is not None:
        protocol = store.protocol()
        console.print(
            f"review: new study in {safe(db)} with the default protocol (prediction shown "
            f"{protocol.prediction.replace('_', ' ')}, pain side {protocol.pain_side}); its admin secret:"
        )
        print_secret("admin", ADMIN, admin)
    print_secret("reviewer", name, token)


@review_app.command("serve")
def serve(
    run: Path = typer.Argument(..., help="Run folder with cam/ (run `kneepain cam RUN` first)."),
    db: Path = typer.Option(..., "--db", help="The study's database (init-study, add-reviewer)."),
    host: str = typer.Option(
        "127.0.0.1", help="Address to bind; a network address needs TLS (or --insecure)."
    ),
    port: int = typer.Option(8765, min=1, max=65535, help="Port to listen on."),
    ssl_certfile: Path | None = typer.Option(None, "--ssl-certfile", help="TLS certificate (PEM)."),
    ssl_keyfile: Path | None = typer.Option(None, "--ssl-keyfile", help="TLS private key (PEM)."),
    insecure: bool = typer.Option(
        False, "--insecure", help="Allow plain HTTP on a network address (secrets travel in clear)."
    ),
    max_body: int = typer.Option(64 * 1024, min=1024, help="Largest request body accepted (bytes)."),
) -> None:
    """Start the review web app: sign-in by secret, blinded case pages, every save committed to --db."""
    import uvicorn

    from kneepain.cam.compute import CamInputError
    from kneepain.console import console, safe
    from kneepain.review.app import create_app
    from kneepain.review.store import ReviewStoreError

    if (ssl_certfile is None) != (ssl_keyfile is None):
        console.print("[red]review: give both --ssl-certfile and --ssl-keyfile, or neither")
        raise typer.Exit(2)
    for path in (ssl_certfile, ssl_keyfile):
        if path is not None and not path.is_file():
            console.print(f"[red]review: {safe(path)}: TLS file not found")
            raise typer.Exit(2)
    tls = ssl_certfile is not None
    if not is_loopback(host) and not tls and not insecure:
        console.print(
            f"[red]review: binding to {host} exposes the app to the network; give --ssl-certfile and "
            "--ssl-keyfile (or --insecure to send secrets in clear)"
        )
        raise typer.Exit(2)
    store = open_store(run, db, must_exist=True)
    reviewers = store.reviewer_names()
    if not reviewers:
        console.print(
            f"[red]review: {safe(db)}: no reviewers yet; add them with `kneepain review add-reviewer`"
        )
        raise typer.Exit(2)
    try:
        hosts = ["127.0.0.1", "localhost", "[::1]", "::1", host] if is_loopback(host) else None
        app = create_app(run, db, allowed_hosts=hosts, max_body=max_body)
    except (CamInputError, ReviewStoreError) as error:
        console.print(f"[red]review: {safe(error)}")
        raise typer.Exit(2) from error
    protocol = app.state.context.protocol
    shown = f"[{host}]" if ":" in host else host
    console.print(
        f"review: {len(app.state.context.case_ids)} cases, {len(reviewers)} reviewers, labels in {safe(db)}; "
        f"prediction shown {protocol.prediction.replace('_', ' ')}, "
        f"pain side {protocol.pain_side.replace('_', ' ')}"
    )
    console.print(f"open {'https' if tls else 'http'}://{shown}:{port}/ and sign in with your secret")
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        ssl_certfile=str(ssl_certfile) if tls else None,
        ssl_keyfile=str(ssl_keyfile) if tls else None,
    )


@review_app.command("export")
def export(
    run: Path = typer.Argument(..., help="Run folder with cam/."),
    db: Path = typer.Option(..., "--db", help="The review database of this run."),
    out: Path | None = typer.Option(None, help="Output folder (default RUN/review)."),
) -> None:
    """Write lesion_table.csv|md (Figure 3I), blinding.csv, agreement.csv (kappa from blind labels)."""
    from kneepain.cam.compute import CamInputError
    from kneepain.console import console, safe, stage
    from kneepain.review.export import export_reviews
    from kneepain.review.store import ReviewStoreError

    if not db.exists():
        console.print(f"[red]review export: {safe(db)}: review database not found")
        raise typer.Exit(2)
    with stage("review export") as info:
        try:
            written = export_reviews(run, db, out)
        except (CamInputError, ReviewStoreError) as error:
            console.print(f"[red]review export: {safe(error)}")
            raise typer.Exit(2) from error
        info["files"] = len(written)
        info["folder"] = written[0].parent


def register(app: typer.Typer) -> None:
    """Add the `review` command group (init-study, add-reviewer, serve, export)."""
    app.add_typer(review_app, name="review")
