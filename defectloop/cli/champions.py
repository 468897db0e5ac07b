"""Champions: promote, reject and roll back model versions, and list the versions and their history."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from defectloop.cli._common import (
    ActorOption,
    TaskName,
    announce_change,
    console,
    default_actor,
    opened_database,
    settings_of,
)

_ReasonOption = Annotated[str, typer.Option("--reason", help="Why (recorded in the promotion history).")]


def promote(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Model version name, e.g. binary-resnet18-0003.")],
    reason: _ReasonOption,
    override: Annotated[
        bool, typer.Option(help="Promote although no comparison supports it (say why in --reason).")
    ] = False,
    actor: ActorOption = None,
) -> None:
    """Make a version the champion of its task; its comparison with the champion must say promote."""
    settings = settings_of(ctx)
    with opened_database(settings) as database:
        from workers.retraining import promote_version

        change = promote_version(
            sessions=database.sessions,
            version_name=version,
            actor=actor or default_actor(),
            reason=reason,
            override=override,
        )
    announce_change(settings, change)


def reject(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Model version name.")],
    reason: _ReasonOption,
    actor: ActorOption = None,
) -> None:
    """Reject a challenger (or a retired champion) for good, with a reason."""
    with opened_database(settings_of(ctx)) as database:
        from workers.retraining import reject_version

        change = reject_version(
            sessions=database.sessions, version_name=version, actor=actor or default_actor(), reason=reason
        )
    console.print(f"rejected {change.version}; recorded as promotion {change.promotion_id}", highlight=False)


def rollback(
    ctx: typer.Context,
    task: Annotated[TaskName, typer.Argument(help="binary or multiclass.")],
    reason: _ReasonOption,
    to: Annotated[
        str | None, typer.Option(metavar="VERSION", help="A retired champion (default: the previous one).")
    ] = None,
    actor: ActorOption = None,
) -> None:
    """Return a task to its previous champion (or to an earlier one), with a reason."""
    settings = settings_of(ctx)
    with opened_database(settings) as database:
        from db.schema import ModelTask
        from workers.retraining import rollback_champion

        change = rollback_champion(
            sessions=database.sessions,
            task=ModelTask(task.value),
            actor=actor or default_actor(),
            reason=reason,
            to_version=to,
        )
    announce_change(settings, change)


class StatusName(StrEnum):
    CANDIDATE = "candidate"
    CHAMPION = "champion"
    RETIRED = "retired"
    REJECTED = "rejected"


def versions(
    ctx: typer.Context,
    task: Annotated[TaskName | None, typer.Option(help="Only this task.")] = None,
    status: Annotated[StatusName | None, typer.Option(help="Only versions in this status.")] = None,
    history: Annotated[int, typer.Option(min=0, help="Rows of promotion history to show.")] = 10,
) -> None:
    """Model versions with their validation figures, and the promotion history."""
    from db.schema import ModelStatus, ModelTask
    from workers.status import read_versions

    with opened_database(settings_of(ctx)) as database:
        listing = read_versions(
            database.sessions,
            task=None if task is None else ModelTask(task.value),
            status=None if status is None else ModelStatus(status.value),
            history=history,
        )
    names = listing.names
    table = Table(title="model versions")
    for column in ("version", "status", "arch", "input", "val macro-F1", "threshold", "parent", "created"):
        table.add_column(column, overflow="fold")  # a name cut to "binary-ba…" says nothing
    for v in listing.versions:
        macro = v.metrics.get("macro_f1")
        table.add_row(
            v.name,
            str(v.status),
            v.architecture,
            f"{v.input_spec.get('image_size')} px x {v.input_spec.get('channels')}",
            "" if macro is None else f"{float(macro):.3f}",
            _threshold_cell(v.metrics) if v.task == ModelTask.BINARY else "",
            names.get(v.parent_id, "") if v.parent_id else "",
            v.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)
    if listing.promotions:
        log = Table(title="promotion history")
        for column in ("when", "task", "action", "version", "from", "actor", "reason"):
            log.add_column(column, overflow="fold")
        for p in listing.promotions:
            log.add_row(
                p.created_at.strftime("%Y-%m-%d %H:%M"),
                str(p.task),
                str(p.action),
                names.get(p.to_version_id, str(p.to_version_id)),
                names.get(p.from_version_id, "") if p.from_version_id else "",
                p.actor,
                escape(p.reason),
            )
        console.print(log)


def _threshold_cell(metrics: dict[str, Any]) -> str:
    """A binary version's decision threshold, with a warning when it was not tuned or is degenerate."""
    from models.comparison import stored_threshold, threshold_flag

    flag = threshold_flag(metrics)
    cell = f"{stored_threshold(metrics):.3f}"
    return cell if flag is None else f"{cell} (!) {escape(flag)}"
