"""The ``defectloop`` command line: one entry point for cameras, annotators' tooling and engineers.

Settings are built here (and only here, for the CLI) and passed down. Errors the user can fix come
out as one line saying what to do, never as a traceback; exit codes: 1 = failed, 2 = bad usage or
settings, or a command that is not built yet.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from db.errors import DatabaseError
from defectloop.errors import DefectloopError, NotBuiltYetError, SettingsError
from defectloop.settings import Settings, load_settings

logger = logging.getLogger(__name__)
console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="defectloop",
    help="Active-learning labelling loop for garment defect images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema: migrate, inspect.", no_args_is_help=True)
labelling_app = typer.Typer(help="Label Studio project, tasks and annotations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(labelling_app, name="labelling")

_PLANNED = "(not built yet)"


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.obj
    if not isinstance(settings, Settings):
        raise RuntimeError("settings were not loaded by the CLI callback")
    return settings


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Load settings once per invocation; a wrong value stops here, naming the variable."""
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    if settings.log_level != "DEBUG":
        # Alembic narrates every plugin it loads at INFO; users only need to hear about failures.
        logging.getLogger("alembic").setLevel(logging.WARNING)
    ctx.obj = settings


# --- built commands ---------------------------------------------------------------------------


@app.command()
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


@app.command()
def doctor(
    ctx: typer.Context,
    strict: Annotated[bool, typer.Option(help="Also fail when an optional service is missing.")] = False,
) -> None:
    """Check the database, broker and Label Studio: what is reachable, what is missing, what to set."""
    from defectloop.doctor import Outcome, run_checks

    results = run_checks(_settings(ctx))
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


@app.command("settings")
def show_settings(ctx: typer.Context) -> None:
    """Show the effective settings (secrets masked) and the variables that set them."""
    table = Table(title="settings")
    table.add_column("variable")
    table.add_column("value")
    for name, value in _settings(ctx).redacted().items():
        table.add_row(name, value)
    console.print(table)


@app.command()
def status(ctx: typer.Context) -> None:
    """Images by status, quarantined files by reason, and the champion of each task."""
    from db import repositories as repo
    from db.schema import ModelTask
    from defectloop.app import open_database

    database = open_database(_settings(ctx))
    try:
        with database.sessions() as session:
            by_status = repo.count_images_by_status(session=session)
            by_reason = repo.count_quarantined_by_reason(session=session)
            champions = {task: repo.get_champion(session=session, task=task) for task in ModelTask}
    finally:
        database.dispose()
    table = Table(title="images")
    table.add_column("status")
    table.add_column("count", justify="right")
    for name, count in sorted(by_status.items()):
        table.add_row(str(name), str(count))
    console.print(table)
    if by_reason:
        quarantine = Table(title="quarantined, by reason")
        quarantine.add_column("reason")
        quarantine.add_column("count", justify="right")
        for reason, count in sorted(by_reason.items(), key=lambda item: -item[1]):
            quarantine.add_row(reason, str(count))
        console.print(quarantine)
    for task, champion in champions.items():
        console.print(f"champion {task}: {champion.name if champion else '(none yet)'}")


@db_app.command("upgrade")
def db_upgrade(
    ctx: typer.Context, revision: Annotated[str, typer.Option(help="Target revision.")] = "head"
) -> None:
    """Migrate the database schema to the code's revision (creates the SQLite file if needed)."""
    from db.migrate import upgrade

    settings = _settings(ctx)
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
    downgrade(_settings(ctx).database_url, revision)
    console.print(f"database downgraded to {revision}")


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Print the database's schema revision and the one the code needs."""
    from db.migrate import current_revision, head_revision
    from db.session import create_engine_for

    engine = create_engine_for(_settings(ctx).database_url)
    try:
        current = current_revision(engine)
    finally:
        engine.dispose()
    console.print(f"database at {current or '(not migrated)'}; code needs {head_revision()}")


# --- planned commands: listed so --help shows the whole design, refusing loudly until built ----


def _planned(typer_app: typer.Typer, name: str, summary: str, plan: str) -> None:
    def command() -> NoReturn:
        raise NotBuiltYetError(f"`defectloop {name}` is not built yet: {plan}")

    command.__doc__ = f"{_PLANNED} {summary}"
    typer_app.command(
        name.split()[-1],
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )(command)


_ISSUE_3 = "planned in issue #3 (models, training, evaluation)"
_ISSUE_4 = "planned in issue #4 (ingestion and workers)"
_ISSUE_5 = "planned in issue #5 (Label Studio labelling)"
_LATER = "planned for the champion/challenger and demo work after issue #5"

for _name, _summary, _plan in (
    ("up", "Start worker, beat and receiver processes on the embedded default.", _ISSUE_4),
    ("watch", "Ingest photos from camera folders (watchdog).", _ISSUE_4),
    ("worker", "Run a Celery worker with the defectloop app.", _ISSUE_4),
    ("beat", "Run the Celery beat scheduler (sweeps, selection, reconciliation).", _ISSUE_4),
    ("serve", "Run the webhook receiver and Label Studio ML backend.", _ISSUE_5),
    ("train", "Train a model version from a labelled folder.", _ISSUE_3),
    ("evaluate", "Score a model version on a labelled folder.", _ISSUE_3),
    ("import", "Import a labelled folder as images with annotations.", _ISSUE_3),
    ("retrain", "Train challengers from the labels collected so far.", _LATER),
    ("compare", "Compare champion and challengers on the frozen evaluation set.", _LATER),
    ("promote", "Promote a model version to champion, with a reason.", _LATER),
    ("reject", "Reject a challenger, with a reason.", _LATER),
    ("rollback", "Return to the previous champion, with a reason.", _LATER),
    ("versions", "List model versions and their metrics.", _LATER),
    ("demo", "Run the whole loop with a simulated annotator and write a report.", _LATER),
    ("report", "Write the HTML report: learning curves, confusion matrices, heat-maps.", _LATER),
):
    _planned(app, _name, _summary, _plan)

for _name, _summary in (
    ("init", "Create or find the Label Studio project, webhook, storage and view."),
    ("push", "Push the most informative images as tasks with pre-annotations."),
    ("reconcile", "Record annotations that webhooks missed."),
    ("resync", "Re-read every annotation from Label Studio."),
    ("serve-dev", "Start a local Label Studio server for development."),
):
    _planned(labelling_app, f"labelling {_name}", _summary, _ISSUE_5)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SettingsError as exc:
        err_console.print(f"[red]{exc}[/]", highlight=False)
        sys.exit(2)
    except NotBuiltYetError as exc:
        err_console.print(f"[yellow]{exc}[/]", highlight=False)
        sys.exit(2)
    except (DefectloopError, DatabaseError) as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
