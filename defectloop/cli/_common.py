"""What the command groups share: the consoles, the settings of an invocation, the database as a context,
the option parsers and the report of a champion change.

Imports here and in the command modules stay cheap (typer, rich, settings, errors): ``defectloop --help``
must start in a fraction of a second and never import torch. The service stack (``defectloop.app`` with
Celery and SQLAlchemy, ``workers``, ``models``, ``db``) is imported inside the commands that use it.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
from kombu.exceptions import OperationalError
from rich.console import Console

from defectloop.settings import Settings

if TYPE_CHECKING:
    from defectloop.app import Database
    from workers.retraining import ChampionChange

console = Console()
err_console = Console(stderr=True)


def settings_of(ctx: typer.Context) -> Settings:
    """The settings the root callback loaded for this invocation."""
    settings = ctx.obj
    if not isinstance(settings, Settings):
        raise RuntimeError("settings were not loaded by the CLI callback")
    return settings


@contextmanager
def opened_database(settings: Settings, *, require_migrated: bool = True) -> Iterator[Database]:
    """The configured database, disposed of on the way out; an unreachable or unmigrated one raises
    here with the fix in its message (see ``defectloop.app.open_database``)."""
    from defectloop.app import open_database

    database = open_database(settings, require_migrated=require_migrated)
    try:
        yield database
    finally:
        database.dispose()


def check_database(settings: Settings) -> None:
    """Refuse at once on an unreachable or unmigrated database: one clear error before a long-running
    process (or its children) starts."""
    with opened_database(settings):
        pass


class TaskName(StrEnum):
    """The two tasks (db.schema.ModelTask, repeated here so that --help needs no database import)."""

    BINARY = "binary"
    MULTICLASS = "multiclass"


def parse_class_map(values: list[str] | None) -> dict[str, str]:
    """``["defect=defective", ...]`` -> ``{"defect": "defective"}``; a malformed entry is a usage error."""
    mapping: dict[str, str] = {}
    for value in values or []:
        folder, sep, label = (part.strip() for part in value.partition("="))
        if not sep or not folder or not label or "=" in label:
            raise typer.BadParameter(
                f"expected FOLDER=LABEL (e.g. defect=defective), got {value!r}", param_hint="--class-map"
            )
        if mapping.get(folder, label) != label:
            raise typer.BadParameter(
                f"folder {folder!r} is mapped twice ({mapping[folder]!r} and {label!r})",
                param_hint="--class-map",
            )
        mapping[folder] = label
    return mapping


def default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "engineer"


ActorOption = Annotated[
    str | None, typer.Option(help="Who acts (recorded with the reason); default: the login name.")
]


def _print_change(change: ChampionChange) -> None:
    was = f" (was {change.previous})" if change.previous else ""
    evidence = f", comparison {change.comparison_id}" if change.comparison_id else ""
    console.print(
        f"{change.action}: [bold]{change.version}[/] is the {change.task} champion{was}; recorded as "
        f"promotion {change.promotion_id}{evidence}",
        highlight=False,
    )


def _publish_rescore(settings: Settings, image_ids: list[int]) -> None:
    """Send the pool that a champion change re-queued to the workers; if the broker is down, the
    images wait in ``queued`` and the beat sweeper sends them later."""
    if not image_ids:
        return
    from defectloop.app import create_celery_app
    from workers.celery_app import WorkerConfig, publish_in_batches

    celery_app = create_celery_app(settings)
    try:
        publish_in_batches(celery_app, image_ids, batch_size=WorkerConfig.publish_batch_size, retry=False)
    except (OperationalError, OSError) as exc:
        err_console.print(
            f"[yellow]the broker is not reachable ({type(exc).__name__}); the {len(image_ids)} image(s) wait "
            "in queued and the sweeper (defectloop beat) sends them[/]",
            highlight=False,
        )
    else:
        console.print(f"{len(image_ids)} unlabelled image(s) sent to be scored by the new champion")


def announce_change(settings: Settings, change: ChampionChange) -> None:
    """A champion change as every command that makes one reports it: the change, then the rescoring of
    the unlabelled pool it re-queued."""
    _print_change(change)
    _publish_rescore(settings, change.requeued_image_ids)
