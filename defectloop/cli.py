"""The ``defectloop`` command line: one entry point for cameras, annotators' tooling and engineers.

Settings are built here (and only here, for the CLI) and passed down. Errors the user can fix come
out as one line saying what to do, never as a traceback; exit codes: 1 = failed, 2 = bad usage or
settings, or a command that is not built yet.
"""

from __future__ import annotations

import logging
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from db.errors import DatabaseError
from defectloop.errors import DefectloopError, NotBuiltYetError, SettingsError
from defectloop.settings import Settings, load_settings
from labelling.errors import LabellingError
from models.errors import ModelError
from workers.errors import WorkerError

if TYPE_CHECKING:
    from models.comparison import Evaluation
    from workers.importing import ImportReport

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
        # Alembic narrates every plugin it loads, and httpx every request the Label Studio SDK makes, at
        # INFO; users only need to hear about failures.
        for noisy in ("alembic", "httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
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
    from db.schema import ModelTask, TrainingRunStatus
    from defectloop.app import open_database
    from workers.retrain_policy import REQUEST_ARCHITECTURE

    database = open_database(_settings(ctx))
    try:
        with database.sessions() as session:
            by_status = repo.count_images_by_status(session=session)
            by_reason = repo.count_quarantined_by_reason(session=session)
            champions = {task: repo.get_champion(session=session, task=task) for task in ModelTask}
            evaluation_sets = {}
            for task in ModelTask:
                evaluation_set = repo.get_evaluation_set(session=session, name=f"frozen-{task}")
                if evaluation_set is not None:
                    members = repo.list_evaluation_members(
                        session=session, evaluation_set_id=evaluation_set.id
                    )
                    evaluation_sets[task] = len(members)
            requests = [
                f"{run.task} {run.status} ({run.trigger})"
                for run in repo.list_training_runs(
                    session=session,
                    architecture=REQUEST_ARCHITECTURE,
                    statuses=(TrainingRunStatus.QUEUED, TrainingRunStatus.RUNNING),
                )
            ]
    finally:
        database.dispose()
    console.print(f"data dir: {_settings(ctx).data_dir}", highlight=False)
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
        if champion is None:
            console.print(f"champion {task}: (none yet)")
            continue
        call = ""
        if task is ModelTask.BINARY:
            from models.comparison import stored_threshold, threshold_flag

            call = f" (defective at p >= {stored_threshold(champion.metrics):.3f})"
            if (flag := threshold_flag(champion.metrics)) is not None:
                call += f" [yellow]warning: threshold {escape(flag)}[/]"
        console.print(f"champion {task}: {champion.name}{call}", highlight=False)
    for task, n in evaluation_sets.items():
        console.print(f"evaluation set frozen-{task}: {n} images", highlight=False)
    if requests:
        console.print(f"retrain requested: {', '.join(requests)}", highlight=False)


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


# --- engineers: train, evaluate, import labelled folders ------------------------------------------


class TaskName(StrEnum):
    """The two tasks (db.schema.ModelTask, repeated here so that --help needs no database import)."""

    BINARY = "binary"
    MULTICLASS = "multiclass"


def _parse_class_map(values: list[str] | None) -> dict[str, str]:
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


def _check_positive(value: float) -> float:
    if not value > 0:
        raise typer.BadParameter(f"must be positive, got {value}")
    return value


def _check_fraction(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise typer.BadParameter(f"must lie strictly between 0 and 1, got {value}")
    return value


def _check_channels(value: int | None) -> int | None:
    if value is not None and value not in (1, 3):
        raise typer.BadParameter(f"must be 1 (grayscale) or 3 (RGB), got {value}")
    return value


_ClassMapOption = Annotated[
    list[str] | None,
    typer.Option(
        "--class-map",
        metavar="FOLDER=LABEL",
        help="Label of a class folder named otherwise, e.g. defect=defective; repeat for more folders.",
    ),
]
_DATASET = typer.Option(
    "--dataset",
    exists=True,
    file_okay=False,
    dir_okay=True,
    help="Labelled folder: one sub-folder per class (ImageFolder layout).",
)
_DatasetOption = Annotated[Path, _DATASET]


def _print_evaluation(evaluation: Evaluation, title: str) -> None:
    """Per-class precision / recall / F1 / support, the summary figures and the confusion matrix."""
    table = Table(title=title)
    for column in ("class", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for i, name in enumerate(evaluation.class_names):
        table.add_row(
            name,
            f"{evaluation.precision[i]:.3f}",
            f"{evaluation.recall[i]:.3f}",
            f"{evaluation.f1[i]:.3f}",
            str(evaluation.support[i]),
        )
    console.print(table)
    ece = "n/a" if evaluation.ece is None else f"{evaluation.ece:.3f}"
    console.print(
        f"accuracy {evaluation.accuracy:.3f}   macro-F1 {evaluation.macro_f1:.3f}   ECE {ece}   "
        f"images {evaluation.n}",
        highlight=False,
    )
    confusion = Table(title="confusion matrix")
    confusion.add_column("true \\ predicted")
    for name in evaluation.class_names:
        confusion.add_column(name, justify="right")
    for name, row in zip(evaluation.class_names, evaluation.confusion, strict=True):
        confusion.add_row(name, *(str(v) for v in row))
    console.print(confusion)


@app.command()
def train(
    ctx: typer.Context,
    task: Annotated[TaskName, typer.Option(help="binary: ok vs defective; multiclass: defect type.")],
    arch: Annotated[
        str, typer.Option(help="Architecture: baseline_cnn, improved_cnn, efficientnet_b0, resnet18.")
    ],
    dataset: Annotated[Path | None, _DATASET] = None,
    from_database: Annotated[
        bool,
        typer.Option(
            "--from-database",
            help="Train on the images the database holds a label for (Label Studio annotations, imports).",
        ),
    ] = False,
    class_map: _ClassMapOption = None,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs (early stopping may end sooner).")] = 15,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(callback=_check_positive, help="AdamW learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initial weights and the batches.")] = 0,
    val_fraction: Annotated[
        float, typer.Option(callback=_check_fraction, help="Share of the groups held out for validation.")
    ] = 0.2,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without a better val macro-F1.")] = 4,
    image_size: Annotated[
        int | None,
        typer.Option(min=16, max=1024, show_default="DEFECTLOOP_IMAGE_SIZE", help="Input size in px."),
    ] = None,
    channels: Annotated[
        int | None,
        typer.Option(
            callback=_check_channels, show_default="DEFECTLOOP_IMAGE_CHANNELS", help="1 = grayscale, 3 = RGB."
        ),
    ] = None,
    pretrained: Annotated[
        bool, typer.Option(help="Start from timm's pretrained weights (needs a reachable model hub).")
    ] = False,
    weights: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="Local pretrained weights file (state dict) to start from."
        ),
    ] = None,
    warm_start: Annotated[
        str | None, typer.Option(metavar="VERSION", help="Start from an earlier version's weights.")
    ] = None,
) -> None:
    """Train a model version on a labelled folder or on the database's labels and register it (the
    first of a task becomes champion)."""
    if (dataset is None) == (not from_database):
        raise typer.BadParameter(
            "give either --dataset DIR (a labelled folder) or --from-database (the labels in the database)",
            param_hint="--dataset / --from-database",
        )
    if from_database and class_map:
        raise typer.BadParameter(
            "--class-map maps folder names: use it with --dataset", param_hint="--class-map"
        )
    mapping = _parse_class_map(class_map)
    from defectloop.app import open_database

    settings = _settings(ctx)
    database = open_database(settings)  # before torch is imported: a database problem is reported at once
    try:
        from db.schema import ModelTask
        from models.data import InputSpec
        from workers.training import Hyperparameters, TrainingRequest, train_from_database, train_from_folder

        request = TrainingRequest(
            task=ModelTask(task.value),
            architecture=arch,
            label_space=settings.label_space,
            input_spec=InputSpec(
                image_size=image_size or settings.image_size,
                channels=channels or settings.image_channels,
            ),
            hyperparameters=Hyperparameters(
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                val_fraction=val_fraction,
                patience=patience,
            ),
            pretrained=pretrained,
            weights=weights,
            warm_start_version=warm_start,
            progress=err_console.is_terminal,
        )
        sessions, artifacts_dir = database.sessions, settings.artifacts_dir
        if dataset is not None:
            outcome = train_from_folder(
                request, sessions=sessions, dataset=dataset, class_map=mapping, artifacts_dir=artifacts_dir
            )
        else:
            from workers.retraining import held_out_image_ids

            held_out = held_out_image_ids(sessions)  # the frozen evaluation sets stay unseen
            outcome = train_from_database(
                request, sessions=sessions, exclude_image_ids=held_out, artifacts_dir=artifacts_dir
            )
    finally:
        database.dispose()
    role = "champion" if outcome.is_champion else "candidate (the champion stays; compare before promoting)"
    console.print(f"registered [bold]{outcome.version_name}[/] as {role}", highlight=False)
    parent = f", warm-started from {outcome.parent_name}" if outcome.parent_name else ""
    console.print(
        f"trained on {outcome.n_train} images, validated on {outcome.n_val}; best epoch "
        f"{outcome.best_epoch}{parent}; training run {outcome.training_run_id}",
        highlight=False,
    )
    console.print(f"artifact {outcome.artifact_path}", highlight=False, soft_wrap=True)
    console.print(f"sha256 {outcome.artifact_sha256}", highlight=False, soft_wrap=True)
    _print_evaluation(outcome.val_evaluation, f"{outcome.version_name}: validation")
    if outcome.threshold is not None:
        t = outcome.threshold
        console.print(
            f"decision threshold {t.threshold:.3f}, tuned on validation for defect F1: {t.f1:.3f} "
            f"(precision {t.precision:.3f}, recall {t.recall:.3f}) vs {t.f1_at_default:.3f} at 0.5, on "
            f"{t.support} defective images; the table above calls at 0.5, workers and `evaluate` call at "
            "the tuned threshold",
            highlight=False,
        )


@app.command()
def evaluate(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Model version name, e.g. binary-resnet18-0003.")],
    dataset: _DatasetOption,
    class_map: _ClassMapOption = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
) -> None:
    """Score a model version on a labelled folder, print the metrics and store them."""
    mapping = _parse_class_map(class_map)
    from defectloop.app import open_database

    settings = _settings(ctx)
    database = open_database(settings)
    try:
        from workers.training import evaluate_on_folder

        outcome = evaluate_on_folder(
            sessions=database.sessions,
            version_name=version,
            dataset=dataset,
            label_space=settings.label_space,
            class_map=mapping,
            batch_size=batch_size,
        )
    finally:
        database.dispose()
    at = "" if outcome.threshold is None else f", defective at p >= {outcome.threshold:.3f}"
    _print_evaluation(outcome.evaluation, f"{outcome.version_name} on {outcome.dataset}{at}")
    console.print(
        f"recorded as evaluation {outcome.evaluation_id} ({outcome.n_images} images, "
        f"data set sha256 {outcome.dataset_sha256[:12]})",
        highlight=False,
    )


@app.command("import")
def import_(
    ctx: typer.Context,
    folder: Annotated[
        Path,
        typer.Argument(
            exists=True, file_okay=False, help="Labelled folder: one sub-folder per class (ImageFolder)."
        ),
    ],
    class_map: _ClassMapOption = None,
    source: Annotated[
        str | None, typer.Option(help="Source name to record [default: import:<absolute folder path>].")
    ] = None,
) -> None:
    """Import a labelled folder as images with annotations (origin import); running it again adds nothing."""
    mapping = _parse_class_map(class_map)
    from defectloop.app import open_database

    settings = _settings(ctx)
    database = open_database(settings)
    try:
        from models.data import DEFECTIVE
        from workers.importing import import_folder

        report = import_folder(
            sessions=database.sessions,
            root=folder,
            known_labels=(*settings.classes, DEFECTIVE),
            class_map=mapping,
            source_name=source,
            progress=err_console.is_terminal,
        )
    finally:
        database.dispose()
    _print_import(report)


def _print_import(report: ImportReport) -> None:
    console.print(
        f"import of {report.root} as source {report.source_name!r}", highlight=False, soft_wrap=True
    )
    table = Table()
    table.add_column("files")
    table.add_column("count", justify="right")
    rows = [
        ("imported (new images)", report.imported),
        ("labelled (already known, now labelled)", report.labelled_existing),
        ("already present", report.already_present),
        ("relabelled", report.relabelled),
        ("duplicates (same bytes as an earlier file)", report.duplicates),
        *((f"quarantined: {reason}", n) for reason, n in report.quarantined.items()),
        *((f"skipped: {reason}", n) for reason, n in report.skipped.items()),
        ("total", report.files),
    ]
    for what, count in rows:
        table.add_row(what, str(count))
    console.print(table)
    labels = ", ".join(f"{label} {n}" for label, n in report.labels.items()) or "(none)"
    console.print(f"labels: {labels}", highlight=False)


# --- engineers: champion / challenger ---------------------------------------------------------


def _default_actor() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "engineer"


_ActorOption = Annotated[
    str | None, typer.Option(help="Who acts (recorded with the reason); default: the login name.")
]
_ReasonOption = Annotated[str, typer.Option("--reason", help="Why (recorded in the promotion history).")]


def _policy(settings: Settings) -> Any:
    from defectloop.app import retraining_config

    return retraining_config(settings).plan.policy


def _publish_rescore(settings: Settings, image_ids: list[int]) -> None:
    """Send the pool that a champion change re-queued to the workers; if the broker is down, the
    images wait in ``queued`` and the beat sweeper sends them later."""
    if not image_ids:
        return
    from kombu.exceptions import OperationalError

    from defectloop.app import create_celery_app
    from workers.celery_app import publish_classification

    celery_app = create_celery_app(settings)
    try:
        for start in range(0, len(image_ids), 64):
            publish_classification(celery_app, image_ids[start : start + 64], retry=False)
    except (OperationalError, OSError) as exc:
        err_console.print(
            f"[yellow]the broker is not reachable ({type(exc).__name__}); the {len(image_ids)} image(s) wait "
            "in queued and the sweeper (defectloop beat) sends them[/]",
            highlight=False,
        )
    else:
        console.print(f"{len(image_ids)} unlabelled image(s) sent to be scored by the new champion")


def _print_change(change: Any) -> None:
    was = f" (was {change.previous})" if change.previous else ""
    evidence = f", comparison {change.comparison_id}" if change.comparison_id else ""
    console.print(
        f"{change.action}: [bold]{change.version}[/] is the {change.task} champion{was}; recorded as "
        f"promotion {change.promotion_id}{evidence}",
        highlight=False,
    )


def _print_comparison(report: Any) -> None:
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

    def row(scored: Any, role: str, decision: str) -> None:
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


@app.command()
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
    actor: _ActorOption = None,
) -> None:
    """Train challengers of every architecture on the database's labels (outside the frozen evaluation
    sets, which this first creates or tops up), then compare them with the champions."""
    from defectloop.app import open_database

    settings = _settings(ctx)
    database = open_database(settings)
    who = actor or _default_actor()
    try:
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
    finally:
        database.dispose()
    for change in changes:
        _print_change(change)
        _publish_rescore(settings, change.requeued_image_ids)
    if not report.trained:
        raise typer.Exit(1)


@app.command("compare")
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
    actor: _ActorOption = None,
) -> None:
    """Score the champion and challengers on the frozen evaluation set in one run; record the decisions."""
    from defectloop.app import open_database

    settings = _settings(ctx)
    database = open_database(settings)
    try:
        from db.schema import ModelTask
        from workers.retraining import compare_challengers

        report = compare_challengers(
            sessions=database.sessions,
            task=ModelTask(task.value),
            challengers=versions or None,
            policy=_policy(settings),
            auto_promote=auto_promote,
            batch_size=batch_size,
            actor=f"policy (compare by {actor or _default_actor()})",
        )
    finally:
        database.dispose()
    _print_comparison(report)
    if report.change is not None:
        _print_change(report.change)
        _publish_rescore(settings, report.change.requeued_image_ids)


@app.command()
def promote(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Model version name, e.g. binary-resnet18-0003.")],
    reason: _ReasonOption,
    override: Annotated[
        bool, typer.Option(help="Promote although no comparison supports it (say why in --reason).")
    ] = False,
    actor: _ActorOption = None,
) -> None:
    """Make a version the champion of its task; its comparison with the champion must say promote."""
    from defectloop.app import open_database

    settings = _settings(ctx)
    database = open_database(settings)
    try:
        from workers.retraining import promote_version

        change = promote_version(
            sessions=database.sessions,
            version_name=version,
            actor=actor or _default_actor(),
            reason=reason,
            override=override,
        )
    finally:
        database.dispose()
    _print_change(change)
    _publish_rescore(settings, change.requeued_image_ids)


@app.command()
def reject(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Model version name.")],
    reason: _ReasonOption,
    actor: _ActorOption = None,
) -> None:
    """Reject a challenger (or a retired champion) for good, with a reason."""
    from defectloop.app import open_database

    database = open_database(_settings(ctx))
    try:
        from workers.retraining import reject_version

        change = reject_version(
            sessions=database.sessions, version_name=version, actor=actor or _default_actor(), reason=reason
        )
    finally:
        database.dispose()
    console.print(f"rejected {change.version}; recorded as promotion {change.promotion_id}", highlight=False)


@app.command()
def rollback(
    ctx: typer.Context,
    task: Annotated[TaskName, typer.Argument(help="binary or multiclass.")],
    reason: _ReasonOption,
    to: Annotated[
        str | None, typer.Option(metavar="VERSION", help="A retired champion (default: the previous one).")
    ] = None,
    actor: _ActorOption = None,
) -> None:
    """Return a task to its previous champion (or to an earlier one), with a reason."""
    from defectloop.app import open_database

    settings = _settings(ctx)
    database = open_database(settings)
    try:
        from db.schema import ModelTask
        from workers.retraining import rollback_champion

        change = rollback_champion(
            sessions=database.sessions,
            task=ModelTask(task.value),
            actor=actor or _default_actor(),
            reason=reason,
            to_version=to,
        )
    finally:
        database.dispose()
    _print_change(change)
    _publish_rescore(settings, change.requeued_image_ids)


class StatusName(StrEnum):
    CANDIDATE = "candidate"
    CHAMPION = "champion"
    RETIRED = "retired"
    REJECTED = "rejected"


@app.command()
def versions(
    ctx: typer.Context,
    task: Annotated[TaskName | None, typer.Option(help="Only this task.")] = None,
    status: Annotated[StatusName | None, typer.Option(help="Only versions in this status.")] = None,
    history: Annotated[int, typer.Option(min=0, help="Rows of promotion history to show.")] = 10,
) -> None:
    """Model versions with their validation figures, and the promotion history."""
    from db import repositories as repo
    from db.schema import ModelStatus, ModelTask
    from defectloop.app import open_database

    database = open_database(_settings(ctx))
    model_task = None if task is None else ModelTask(task.value)
    try:
        with database.sessions() as session:
            rows = repo.list_model_versions(
                session=session, task=model_task, status=None if status is None else ModelStatus(status.value)
            )
            names = {v.id: v.name for v in repo.list_model_versions(session=session)}
            table = Table(title="model versions")
            for column in (
                "version",
                "status",
                "arch",
                "input",
                "val macro-F1",
                "threshold",
                "parent",
                "created",
            ):
                table.add_column(column, overflow="fold")  # a name cut to "binary-ba…" says nothing
            for v in rows:
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
            events = repo.list_promotions(session=session, task=model_task)[-history:] if history else []
            log = Table(title="promotion history")
            for column in ("when", "task", "action", "version", "from", "actor", "reason"):
                log.add_column(column, overflow="fold")
            for p in events:
                log.add_row(
                    p.created_at.strftime("%Y-%m-%d %H:%M"),
                    str(p.task),
                    str(p.action),
                    names.get(p.to_version_id, str(p.to_version_id)),
                    names.get(p.from_version_id, "") if p.from_version_id else "",
                    p.actor,
                    escape(p.reason),
                )
    finally:
        database.dispose()
    console.print(table)
    if events:
        console.print(log)


# --- processes: worker, beat, camera watcher -------------------------------------------------


class PoolName(StrEnum):
    SOLO = "solo"
    PREFORK = "prefork"
    THREADS = "threads"


class InferenceBackend(StrEnum):
    AUTO = "auto"
    EAGER = "eager"
    CHANNELS_LAST = "channels_last"
    ONNXRUNTIME = "onnxruntime"


def _threshold_cell(metrics: dict[str, Any]) -> str:
    """A binary version's decision threshold, with a warning when it was not tuned or is degenerate."""
    from models.comparison import stored_threshold, threshold_flag

    flag = threshold_flag(metrics)
    cell = f"{stored_threshold(metrics):.3f}"
    return cell if flag is None else f"{cell} (!) {escape(flag)}"


def _parse_queues(value: str) -> list[str]:
    from workers.queues import Queue

    names = [part.strip() for part in value.split(",") if part.strip()]
    valid = [q.value for q in Queue]
    bad = [name for name in names if name not in valid]
    if bad or not names:
        raise typer.BadParameter(f"unknown queue(s) {bad or value!r}; choose from {', '.join(valid)}")
    return names


@app.command("worker")
def worker(
    ctx: typer.Context,
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues to consume.")
    ] = "inference,labelling,training,maintenance",
    concurrency: Annotated[int, typer.Option(min=1, help="Processes (prefork) or threads.")] = 1,
    pool: Annotated[PoolName, typer.Option(help="Execution pool; solo runs tasks in this process.")] = (
        PoolName.SOLO
    ),
    inference_backend: Annotated[
        InferenceBackend, typer.Option(help="How champions run: auto picks the fastest that loads.")
    ] = InferenceBackend.AUTO,
    visibility_timeout: Annotated[
        int, typer.Option(min=1, help="Redis: seconds before an unacknowledged message is handed out again.")
    ] = 3600,
) -> None:
    """Run a Celery worker with the defectloop app (SIGTERM: finish the batch in hand, then exit)."""
    from workers.queues import Queue

    names = _parse_queues(queues)
    settings = _settings(ctx)
    from defectloop.app import create_workers, open_database

    open_database(settings).dispose()  # refuse at once on an unreachable or unmigrated database
    from workers.celery_app import run_worker

    workers = create_workers(
        settings, inference_backend=inference_backend.value, visibility_timeout_s=visibility_timeout
    )
    code = run_worker(
        workers.celery,
        runtime=workers.runtime,
        queues=[Queue(name) for name in names],
        concurrency=concurrency,
        pool=pool.value,
        loglevel=settings.log_level,
    )
    raise typer.Exit(code)


@app.command("beat")
def beat(
    ctx: typer.Context,
    sweep_every: Annotated[
        float, typer.Option(min=0.1, help="Seconds between sweeps for images waiting or stuck.")
    ] = 60.0,
    stuck_after: Annotated[
        float, typer.Option(min=0.0, help="An image waiting this many seconds is published again.")
    ] = 300.0,
) -> None:
    """Run the Celery beat scheduler: the sweeper that re-queues waiting and stuck images."""
    settings = _settings(ctx)
    from defectloop.app import create_celery_app, open_database

    open_database(settings).dispose()
    from workers.celery_app import run_beat

    celery_app = create_celery_app(settings, sweep_interval_s=sweep_every, stuck_after_s=stuck_after)
    code = run_beat(
        celery_app, schedule_path=settings.data_dir / "celerybeat-schedule", loglevel=settings.log_level
    )
    raise typer.Exit(code)


@app.command("watch")
def watch(
    ctx: typer.Context,
    folders: Annotated[
        list[Path], typer.Argument(exists=True, file_okay=False, help="Camera folders to watch.")
    ],
) -> None:
    """Ingest photos from camera folders and send them to classification (SIGTERM/Ctrl-C: stop cleanly)."""
    import signal

    settings = _settings(ctx)
    from defectloop.app import create_celery_app, ingest_config, open_database
    from workers.celery_app import publish_classification
    from workers.ingest import IngestService

    config = ingest_config(settings, folders)
    database = open_database(settings)
    celery_app = create_celery_app(settings)
    service = IngestService(
        config, database.sessions, lambda ids: publish_classification(celery_app, ids, retry=True)
    )
    previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: service.request_stop())
    try:
        service.run_forever()
    finally:
        signal.signal(signal.SIGTERM, previous)
        database.dispose()


@app.command("up")
def up(
    ctx: typer.Context,
    folders: Annotated[
        list[Path] | None,
        typer.Argument(exists=True, file_okay=False, help="Camera folders to watch (none: no watcher)."),
    ] = None,
    sweep_every: Annotated[float, typer.Option(min=0.1, help="Beat: seconds between sweeps.")] = 60.0,
    stuck_after: Annotated[
        float, typer.Option(min=0.0, help="Beat: an image waiting this many seconds is published again.")
    ] = 300.0,
    inference_backend: Annotated[
        InferenceBackend, typer.Option(help="Worker: how champions run.")
    ] = InferenceBackend.AUTO,
) -> None:
    """Start a worker, a training worker, beat, the camera watcher (given folders) and, with Label
    Studio configured, a labelling worker and the webhook receiver; keep them running (a child that
    exits is restarted); SIGTERM or Ctrl-C stops them all."""
    settings = _settings(ctx)
    from defectloop.app import open_database

    open_database(settings).dispose()  # one clear error here rather than three from the children
    from defectloop.supervise import run_processes

    # Every child finds the same data dir, whatever its working directory (the settings resolved it).
    os.environ["DEFECTLOOP_DATA_DIR"] = str(settings.data_dir)
    logger.info("data dir: %s", settings.data_dir)

    base = [sys.executable, "-m", "defectloop.cli"]
    commands = {
        "worker": [
            *base,
            "worker",
            "--queues=inference,maintenance",
            f"--inference-backend={inference_backend.value}",
        ],
        # Retraining on a worker of its own: a retrain takes minutes, new photos must not wait behind it.
        "trainer": [*base, "worker", "--queues=training"],
        "beat": [*base, "beat", f"--sweep-every={sweep_every}", f"--stuck-after={stuck_after}"],
    }
    if folders:
        commands["watch"] = [*base, "watch", *(str(folder) for folder in folders)]
    from defectloop.app import labelling_config

    if labelling_config(settings) is not None:
        # Label Studio configured: its receiver, and a worker for pushes (heat-maps take seconds) and
        # annotations, so that photos are classified while a push is drawn.
        commands["labeller"] = [
            *base,
            "worker",
            "--queues=labelling",
            f"--inference-backend={inference_backend.value}",
        ]
        commands["serve"] = [*base, "serve"]
    raise typer.Exit(run_processes(commands))


# --- labelling: the webhook / ML-backend app and the Label Studio project -------------------------


@app.command("serve")
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (default: DEFECTLOOP_HTTP_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: DEFECTLOOP_HTTP_PORT).")] = None,
) -> None:
    """Run the webhook receiver, the Label Studio ML backend and the image server (SIGTERM stops it)."""
    settings = _settings(ctx)
    from defectloop.app import create_http_app, create_workers, labelling_config, open_database
    from labelling.server import serve_http_app

    labelling_config(settings, required=True)  # names a missing variable before anything starts
    database = open_database(settings)
    try:
        http_app = create_http_app(settings, database, create_workers(settings))
        serve_http_app(
            http_app,
            host=host or settings.http_host,
            port=port or settings.http_port,
            log_level=settings.log_level.lower(),
        )
    finally:
        database.dispose()


@labelling_app.command("init")
def labelling_init(ctx: typer.Context) -> None:
    """Create or find the Label Studio project, its webhook and its queue view (idempotent)."""
    settings = _settings(ctx)
    from defectloop.app import label_studio_gateway, open_database
    from labelling.label_config import build_label_config
    from labelling.names import SECRET_HEADER, WEBHOOK_ACTIONS
    from workers.labelling import current_model_key

    gateway = label_studio_gateway(settings)
    gateway.check()
    assert settings.webhook_secret is not None  # label_studio_gateway required it
    project = gateway.ensure_project(
        title=settings.label_studio_project_title, label_config=build_label_config(settings.classes)
    )
    webhook_url = f"{settings.public_url}/webhooks/label-studio"
    webhook_created = gateway.ensure_webhook(
        project_id=project.id,
        url=webhook_url,
        headers={SECRET_HEADER: settings.webhook_secret.get_secret_value()},
        actions=WEBHOOK_ACTIONS,
    )
    view_created = gateway.ensure_view(project_id=project.id, title=MOST_INFORMATIVE_VIEW)
    database = open_database(settings)
    try:
        with database.sessions() as session:
            model_key = current_model_key(session)
    finally:
        database.dispose()
    # Label Studio refuses a model version no prediction carries yet: the first push sets it.
    shown = gateway.get_project(project_id=project.id)["model_version"] or "(set by the first push)"
    table = Table("what", "state", title=f"Label Studio {settings.label_studio_url}")
    table.add_row(f"project {project.id} '{settings.label_studio_project_title}'", _made(project.created))
    table.add_row(f"webhook -> {webhook_url}", _made(webhook_created))
    table.add_row(f"view '{MOST_INFORMATIVE_VIEW}'", _made(view_created))
    table.add_row("model version", shown)
    table.add_row("champions", model_key or "(none yet: nothing to push)")
    console.print(table)


MOST_INFORMATIVE_VIEW = "Most informative first"


def _made(created: bool) -> str:
    return "created" if created else "already there"


def _labelling_celery_app(settings: Settings) -> Any:
    from defectloop.app import create_celery_app, labelling_config, open_database

    labelling_config(settings, required=True)
    open_database(settings).dispose()
    return create_celery_app(settings)


@labelling_app.command("push")
def labelling_push(
    ctx: typer.Context,
    k: Annotated[
        int | None, typer.Option(min=1, help="How many images (default: DEFECTLOOP_LABELLING_BATCH_SIZE).")
    ] = None,
) -> None:
    """Push the most informative predicted images to Label Studio now, in this process."""
    settings = _settings(ctx)
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
    settings = _settings(ctx)
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
    from labelling import devserver

    folder = data_dir or _settings(ctx).data_dir / "label-studio"
    argv = ["serve", "--data-dir", str(folder)]
    if port is not None:
        argv += ["--port", str(port)]
    raise typer.Exit(devserver.main(argv))


# --- the main job: the whole loop against a random control arm -------------------------------------


from defectloop.demo.plan import DEFAULT_OPTIONS as _DEMO  # noqa: E402  (pure: no torch)


@app.command()
def demo(
    ctx: typer.Context,
    rounds: Annotated[int, typer.Option(min=1, help="Labelling rounds after the seed round.")] = _DEMO.rounds,
    batch: Annotated[int, typer.Option(min=1, help="Labels per round (each arm).")] = _DEMO.batch,
    seed_labels: Annotated[
        int, typer.Option(min=2, help="Round 0: labels drawn at random, shared by both arms.")
    ] = _DEMO.seed_labels,
    n: Annotated[
        int, typer.Option("--n", min=12, help="Photos in all: camera pool, frozen evaluation and test sets.")
    ] = _DEMO.n_images,
    dataset: Annotated[
        Path | None,
        typer.Option(
            exists=True, file_okay=False, help="A labelled ImageFolder instead of synthetic garments."
        ),
    ] = None,
    class_map: Annotated[
        list[str] | None,
        typer.Option(help="FOLDER=LABEL for --dataset folders not named after a class (repeatable)."),
    ] = None,
    image_size: Annotated[
        int, typer.Option(min=16, max=1024, help="Model input size in pixels.")
    ] = _DEMO.image_size,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs of each training.")] = _DEMO.epochs,
    arch: Annotated[
        list[str] | None,
        typer.Option(
            help="Architecture(s) the loop retrains each round (repeatable).", show_default="improved_cnn"
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the photos, the split and the random draws.")
    ] = _DEMO.seed,
    feed_seconds: Annotated[
        float, typer.Option(min=0.0, help="The camera folder is fed over this many seconds.")
    ] = _DEMO.feed_seconds,
    fresh: Annotated[
        bool, typer.Option(help="Start over: remove the demo's database, models and photos first.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Where to write report.html.", show_default="DATA_DIR/report.html")
    ] = None,
) -> None:
    """Run the whole loop (camera -> ranking -> simulated annotator -> retrain -> champion/challenger)
    for several rounds against a random control arm, and write the report; a rerun resumes the latest
    unfinished run, --fresh starts over."""
    from defectloop.demo.plan import DemoOptions
    from defectloop.demo.run import run_demo
    from defectloop.settings import ARCHITECTURE_NAMES

    settings = _settings(ctx)
    architectures = tuple(arch or _DEMO.architectures)
    bad = [a for a in architectures if a not in ARCHITECTURE_NAMES]
    if bad:
        raise typer.BadParameter(
            f"unknown architecture(s) {bad}; choose from {', '.join(ARCHITECTURE_NAMES)}"
        )
    try:
        options = DemoOptions(
            rounds=rounds,
            batch=batch,
            seed_labels=seed_labels,
            n_images=n,
            image_size=image_size,
            channels=settings.image_channels,
            epochs=epochs,
            train_batch_size=_DEMO.train_batch_size,
            patience=_DEMO.patience,
            architectures=architectures,
            dataset=None if dataset is None else str(dataset.expanduser().resolve()),
            class_map=_parse_class_map(class_map),
            seed=seed,
            feed_seconds=feed_seconds,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if settings.log_level != "DEBUG":
        # The bars and the round lines tell the story; the processes' own logs go to up.log.
        logging.getLogger().setLevel(logging.WARNING)
        # The random arm trains in this process; what its trainer warns about is in its round's numbers.
        logging.getLogger("models").setLevel(logging.ERROR)
    result = run_demo(settings=settings, options=options, console=console, fresh=fresh, out=out)
    if result.status != "finished":
        console.print(f"demo run {result.run_name} {result.status}; `defectloop demo` resumes it")
        raise typer.Exit(130 if result.status == "stopped" else 1)
    if result.report is not None:
        console.print(f"report: {result.report}", highlight=False)
    if result.verdict:
        console.print(f"verdict: {result.verdict}", highlight=False)


@app.command()
def report(
    ctx: typer.Context,
    out: Annotated[
        Path | None, typer.Option(help="HTML file to write (default: report.html in the data dir).")
    ] = None,
    run: Annotated[
        str | None, typer.Option("--run", help="Demo run to show (default: the latest one).")
    ] = None,
) -> None:
    """Write the HTML report: verdict, learning curves, champions, confusion matrices, heat-maps."""
    settings = _settings(ctx)
    from defectloop.report import write_report

    path = write_report(
        settings=settings,
        out=out or settings.data_dir / "report.html",
        run_name=run,
        show_progress=err_console.is_terminal,
    )
    console.print(str(path.resolve()), highlight=False, soft_wrap=True)


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


# Nothing is planned but unbuilt at present; a command designed ahead of its code is listed with
# ``_planned(app, name, summary, plan)``.


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
    except (DefectloopError, DatabaseError, ModelError, WorkerError, LabellingError) as exc:
        # escape: a message may hold brackets (a list of classes) that rich would read as markup.
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
