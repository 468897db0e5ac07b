"""Setting up and looking around: synthetic photos, service checks, settings, status, the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from defectloop.cli._common import console, err_console, opened_database, settings_of

db_app = typer.Typer(help="Database schema: migrate, inspect.", no_args_is_help=True)


def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write (ImageFolder layout + manifest.csv).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images.")] = 600,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 0,
    size: Annotated[int, typer.Option(min=16, max=1024, help="Image side in pixels.")] = 128,
    grayscale_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of grayscale photos.")
    ] = 0.3,
    balanced: Annotated[bool, typer.Option(help="Equal counts per class (else mostly ok).")] = True,
) -> None:
    """Generate seeded synthetic garment photos for the six classes."""
    from defectloop.synth import generate_dataset

    manifest = generate_dataset(
        out, n=n, seed=seed, size=size, grayscale_share=grayscale_share, balanced=balanced, progress=True
    )
    console.print(f"wrote {n} images under {out} (manifest: {manifest})")


def doctor(
    ctx: typer.Context,
    strict: Annotated[bool, typer.Option(help="Also fail when an optional service is missing.")] = False,
) -> None:
    """Check the database, broker and Label Studio: what is reachable, what is missing, what to set."""
    from defectloop.doctor import Outcome, run_checks

    results = run_checks(settings_of(ctx))
    colours = {Outcome.OK: "green", Outcome.WARNING: "yellow", Outcome.MISSING: "red"}
    for r in results:
        optional = "" if r.required else " [dim](optional)[/]"
        mark = f"[{colours[r.outcome]}]{r.outcome.value:<8}[/]"
        console.print(f"{mark}[bold]{r.component}[/]{optional}  {r.target}", highlight=False)
        setting = "" if r.setting in r.detail else f"  [dim]({r.setting})[/]"
        console.print(f"        {r.detail}{setting}", highlight=False)
    failed = [r for r in results if r.outcome is Outcome.MISSING and (r.required or strict)]
    if failed:
        err_console.print(f"[red]missing: {', '.join(r.component for r in failed)}[/]")
        raise typer.Exit(1)


def show_settings(ctx: typer.Context) -> None:
    """Show the effective settings (secrets masked) and the variables that set them."""
    table = Table(title="settings")
    table.add_column("variable")
    table.add_column("value")
    for name, value in settings_of(ctx).redacted().items():
        table.add_row(name, value)
    console.print(table)


def status(ctx: typer.Context) -> None:
    """Images by status, quarantined files by reason, and the champion of each task."""
    from db.schema import ModelTask
    from models.comparison import stored_threshold, threshold_flag
    from workers.status import read_status

    settings = settings_of(ctx)
    with opened_database(settings) as database:
        summary = read_status(database.sessions)
    console.print(f"data dir: {settings.data_dir}", highlight=False)
    table = Table(title="images")
    table.add_column("status")
    table.add_column("count", justify="right")
    for name, count in sorted(summary.images_by_status.items()):
        table.add_row(str(name), str(count))
    console.print(table)
    if summary.quarantined_by_reason:
        quarantine = Table(title="quarantined, by reason")
        quarantine.add_column("reason")
        quarantine.add_column("count", justify="right")
        for reason, count in sorted(summary.quarantined_by_reason.items(), key=lambda item: -item[1]):
            quarantine.add_row(reason, str(count))
        console.print(quarantine)
    for task, champion in summary.champions.items():
        if champion is None:
            console.print(f"champion {task}: (none yet)")
            continue
        call = ""
        if task is ModelTask.BINARY:
            call = f" (defective at p >= {stored_threshold(champion.metrics):.3f})"
            if (flag := threshold_flag(champion.metrics)) is not None:
                call += f" [yellow]warning: threshold {escape(flag)}[/]"
        console.print(f"champion {task}: {champion.name}{call}", highlight=False)
    for task, n in summary.evaluation_set_sizes.items():
        console.print(f"evaluation set frozen-{task}: {n} images", highlight=False)
    if summary.retrain_requests:
        console.print(f"retrain requested: {', '.join(summary.retrain_requests)}", highlight=False)


@db_app.command("upgrade")
def db_upgrade(
    ctx: typer.Context, revision: Annotated[str, typer.Option(help="Target revision.")] = "head"
) -> None:
    """Migrate the database schema to the code's revision (creates the SQLite file if needed)."""
    from db.migrate import upgrade

    settings = settings_of(ctx)
    if settings.database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url, revision)
    console.print(f"database migrated to {revision}")


@db_app.command("downgrade")
def db_downgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. base (drops every table).")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: a downgrade can drop data.")] = False,
) -> None:
    """Migrate the database schema back to REVISION."""
    from db.migrate import downgrade

    if not yes:
        err_console.print("a downgrade can drop tables and their data; repeat with --yes to confirm")
        raise typer.Exit(2)
    downgrade(settings_of(ctx).database_url, revision)
    console.print(f"database downgraded to {revision}")


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Print the database's schema revision and the one the code needs."""
    from db.migrate import current_revision, head_revision

    with opened_database(settings_of(ctx), require_migrated=False) as database:
        current = current_revision(database.engine)
    console.print(f"database at {current or '(not migrated)'}; code needs {head_revision()}")
