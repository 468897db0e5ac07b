"""The Label Studio side: set up the project, push tasks, read annotations back, run a dev server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from defectloop.cli._common import check_database, console, opened_database, settings_of
from defectloop.settings import Settings

labelling_app = typer.Typer(help="Label Studio project, tasks and annotations.", no_args_is_help=True)


@labelling_app.command("init")
def labelling_init(ctx: typer.Context) -> None:
    """Create or find the Label Studio project, its webhook and its queue view (idempotent)."""
    settings = settings_of(ctx)
    from defectloop.app import label_studio_gateway
    from workers.label_studio_project import set_up_project
    from workers.labelling import current_model_key

    gateway = label_studio_gateway(settings)
    gateway.check()
    assert settings.webhook_secret is not None  # label_studio_gateway required it
    setup = set_up_project(
        gateway,
        title=settings.label_studio_project_title,
        classes=settings.classes,
        public_url=settings.public_url,
        webhook_secret=settings.webhook_secret.get_secret_value(),
    )
    with opened_database(settings) as database, database.sessions() as session:
        model_key = current_model_key(session)
    # Label Studio refuses a model version no prediction carries yet: the first push sets it.
    shown = gateway.get_project(project_id=setup.project_id)["model_version"] or "(set by the first push)"
    table = Table("what", "state", title=f"Label Studio {settings.label_studio_url}")
    table.add_row(
        f"project {setup.project_id} '{settings.label_studio_project_title}'", _made(setup.project_created)
    )
    table.add_row(f"webhook -> {setup.webhook_url}", _made(setup.webhook_created))
    table.add_row(f"view '{setup.view_title}'", _made(setup.view_created))
    table.add_row("model version", shown)
    table.add_row("champions", model_key or "(none yet: nothing to push)")
    console.print(table)


def _made(created: bool) -> str:
    return "created" if created else "already there"


def _labelling_celery_app(settings: Settings) -> Any:
    from defectloop.app import create_celery_app, labelling_config

    labelling_config(settings, required=True)
    check_database(settings)
    return create_celery_app(settings)


@labelling_app.command("push")
def labelling_push(
    ctx: typer.Context,
    k: Annotated[
        int | None, typer.Option(min=1, help="How many images (default: DEFECTLOOP_LABELLING_BATCH_SIZE).")
    ] = None,
) -> None:
    """Push the most informative predicted images to Label Studio now, in this process."""
    settings = settings_of(ctx)
    from workers.labelling_tasks import PUSH_TASK

    report = _labelling_celery_app(settings).tasks[PUSH_TASK](k)
    if report["skipped"]:
        console.print("another push to this project is running (beat's or an engineer's); nothing done")
        return
    console.print(
        f"pushed {report['pushed']} task(s) ({report['planned']} newly chosen, {report['retried']} retried); "
        f"{report['refreshed']} open task(s) re-ranked"
    )


@labelling_app.command("reconcile")
def labelling_reconcile(ctx: typer.Context) -> None:
    """Record the annotations changed in Label Studio since the last sync (what webhooks missed)."""
    _reconcile(ctx, full=False)


@labelling_app.command("resync")
def labelling_resync(ctx: typer.Context) -> None:
    """Re-read every annotation of the project from Label Studio (after a disaster); idempotent."""
    _reconcile(ctx, full=True)


def _reconcile(ctx: typer.Context, *, full: bool) -> None:
    settings = settings_of(ctx)
    from workers.labelling_tasks import RECONCILE_TASK

    report = _labelling_celery_app(settings).tasks[RECONCILE_TASK](full=full)
    console.print(
        f"{report['seen']} annotation(s) read: {report['created']} new, {report['updated']} updated, "
        f"{report['deleted']} deleted, {report['unchanged']} already recorded, {report['invalid']} invalid"
    )


@labelling_app.command("serve-dev")
def labelling_serve_dev(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="Port (default: a free one).")] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Server data: projects, login, token (default: label-studio/ in the data dir)."),
    ] = None,
) -> None:
    """Install (once) and run a local Label Studio server for development, until Ctrl-C.

    Its data (projects, annotations, the admin's login and API token) is kept across restarts.
    """
    from labelling import devserver  # httpx: only for this command

    folder = data_dir or settings_of(ctx).data_dir / "label-studio"
    argv = ["serve", "--data-dir", str(folder)]
    if port is not None:
        argv += ["--port", str(port)]
    raise typer.Exit(devserver.main(argv))
