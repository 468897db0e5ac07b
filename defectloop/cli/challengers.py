"""Challengers: retrain every architecture on the database's labels, and compare challengers with the
champion on the frozen evaluation set."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from defectloop.cli._common import (
    ActorOption,
    TaskName,
    announce_change,
    console,
    default_actor,
    err_console,
    opened_database,
    settings_of,
)
from defectloop.settings import Settings

if TYPE_CHECKING:
    from models.comparison import PromotionPolicy
    from workers.retraining import ComparisonReport, ScoredVersion


def _policy(settings: Settings) -> PromotionPolicy:
    from defectloop.app import retraining_config

    return retraining_config(settings).plan.policy


def _print_comparison(report: ComparisonReport) -> None:
    binary = str(report.task) == "binary"
    table = Table(
        title=f"{report.task}: {report.evaluation_set}, {report.n_images} images, scored in one run"
    )
    for column in (
        "version",
        "role",
        "macro-F1",
        "accuracy",
        "defect recall" if binary else "min recall",
        "ECE",
    ):
        table.add_column(
            column, justify="left" if column in ("version", "role") else "right", overflow="fold"
        )
    table.add_column("decision")

    def row(scored: ScoredVersion, role: str, decision: str) -> None:
        e = scored.evaluation
        recall = (
            e.recall_of("defective")
            if binary
            else min((r for r, n in zip(e.recall, e.support, strict=True) if n), default=0.0)
        )
        ece = "n/a" if e.ece is None else f"{e.ece:.3f}"
        table.add_row(
            scored.name, role, f"{e.macro_f1:.3f}", f"{e.accuracy:.3f}", f"{recall:.3f}", ece, decision
        )

    if report.champion is not None:
        row(report.champion, "champion", "")
    for result in report.challengers:
        row(result.version, "challenger", "promote" if result.decision.promote else "keep")
    console.print(table)
    unclear = [
        s.name
        for s in (report.champion, *(r.version for r in report.challengers))
        if s is not None and not s.held_out_respected
    ]
    if unclear:
        console.print(
            f"[yellow]note:[/] {', '.join(unclear)} may have trained on images of the set (trained on a "
            "folder, or before the set existed): their figures here may be optimistic",
            highlight=False,
        )
    left = {k: v for k, v in report.left_out.items() if v}
    if left:
        console.print(f"left out of the evaluation set: {left}", highlight=False)
    for result in report.challengers:
        console.print(
            f"comparison {result.comparison_id}: {result.version.name}: {escape(result.decision.reason)}",
            highlight=False,
            soft_wrap=True,
        )
    for name, why in report.skipped.items():
        console.print(f"skipped {name}: {escape(why)}", highlight=False)
    if report.promoted:
        console.print(f"promoted by the policy: [bold]{report.promoted}[/]", highlight=False)
    elif report.best is not None:
        console.print(
            f"the rule would promote [bold]{report.best.version.name}[/]: "
            f"`defectloop promote {report.best.version.name} --reason ...`",
            highlight=False,
        )
    else:
        console.print("the champion stays: no challenger beat it by the policy", highlight=False)


def retrain(
    ctx: typer.Context,
    task: Annotated[
        list[TaskName] | None, typer.Option(help="Task(s) to retrain; repeat for both (default both).")
    ] = None,
    arch: Annotated[
        list[str] | None,
        typer.Option(
            help="Architecture(s); repeat for more.", show_default="DEFECTLOOP_RETRAIN_ARCHITECTURES"
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Most epochs.", show_default="DEFECTLOOP_TRAIN_EPOCHS")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    seed: Annotated[int, typer.Option(help="Seed of the splits, initial weights and batches.")] = 0,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without a better val macro-F1.")] = 4,
    compare: Annotated[
        bool, typer.Option(help="Score champion and challengers on the frozen evaluation set afterwards.")
    ] = True,
    auto_promote: Annotated[
        bool | None,
        typer.Option(
            help="Promote the best challenger the policy allows.", show_default="DEFECTLOOP_AUTO_PROMOTE"
        ),
    ] = None,
    actor: ActorOption = None,
) -> None:
    """Train challengers of every architecture on the database's labels (outside the frozen evaluation
    sets, which this first creates or tops up), then compare them with the champions."""
    settings = settings_of(ctx)
    who = actor or default_actor()
    with opened_database(settings) as database:
        from db.schema import ModelTask
        from models.data import InputSpec
        from workers.retraining import compare_new_challengers, retrain_challengers
        from workers.training import Hyperparameters

        tasks = [ModelTask(t.value) for t in (task or list(TaskName))]
        report = retrain_challengers(
            sessions=database.sessions,
            tasks=tasks,
            architectures=arch or settings.retrain_architectures,
            label_space=settings.label_space,
            input_spec=InputSpec(image_size=settings.image_size, channels=settings.image_channels),
            artifacts_dir=settings.artifacts_dir,
            evaluation_fraction=settings.evaluation_fraction,
            actor=who,
            hyperparameters=Hyperparameters(
                epochs=epochs or settings.train_epochs, batch_size=batch_size, seed=seed, patience=patience
            ),
            progress=err_console.is_terminal,
        )
        evaluation = report.evaluation
        made = "created" if evaluation.created else "kept"
        console.print(
            f"evaluation sets {made} (holding out {evaluation.rule.fraction:g} of photo groups): "
            + "; ".join(
                f"{t}: {evaluation.members[t]} images {evaluation.labels[t]} (+{evaluation.added[t]})"
                for t in ModelTask
            )
            + f"; held out of training: {len(evaluation.held_out_image_ids)} of "
            f"{evaluation.labelled_images} labelled",
            highlight=False,
            soft_wrap=True,
        )
        trained = Table(title="trained")
        for column in ("task", "version", "role", "val macro-F1", "train / val", "best epoch"):
            trained.add_column(column, overflow="fold")
        for outcome in report.trained:
            trained.add_row(
                str(outcome.task),
                outcome.version_name,
                "champion (first of its task)" if outcome.is_champion else "challenger",
                f"{outcome.val_evaluation.macro_f1:.3f}",
                f"{outcome.n_train} / {outcome.n_val}",
                str(outcome.best_epoch),
            )
        console.print(trained)
        for failure in report.failed:
            err_console.print(
                f"[yellow]{failure.task} {failure.architecture} not trained:[/] {escape(failure.error)}",
                highlight=False,
                soft_wrap=True,
            )
        changes = []
        if compare:
            for comparison in compare_new_challengers(
                sessions=database.sessions,
                report=report,
                tasks=tasks,
                policy=_policy(settings),
                auto_promote=settings.auto_promote if auto_promote is None else auto_promote,
                actor=f"policy (retrain by {who})",
            ):
                _print_comparison(comparison)
                if comparison.change is not None:
                    changes.append(comparison.change)
    for change in changes:
        announce_change(settings, change)
    if not report.trained:
        raise typer.Exit(1)


def compare_(
    ctx: typer.Context,
    task: Annotated[TaskName, typer.Argument(help="binary or multiclass.")],
    versions: Annotated[
        list[str] | None, typer.Argument(help="Challenger versions (default: every candidate of the task).")
    ] = None,
    auto_promote: Annotated[
        bool, typer.Option(help="Promote the best challenger the policy allows.")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    actor: ActorOption = None,
) -> None:
    """Score the champion and challengers on the frozen evaluation set in one run; record the decisions."""
    settings = settings_of(ctx)
    with opened_database(settings) as database:
        from db.schema import ModelTask
        from workers.retraining import compare_challengers

        report = compare_challengers(
            sessions=database.sessions,
            task=ModelTask(task.value),
            challengers=versions or None,
            policy=_policy(settings),
            auto_promote=auto_promote,
            batch_size=batch_size,
            actor=f"policy (compare by {actor or default_actor()})",
        )
    _print_comparison(report)
    if report.change is not None:
        announce_change(settings, report.change)
