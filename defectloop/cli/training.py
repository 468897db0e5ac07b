"""Engineers' model work on labelled folders: train a version, evaluate one, import labels."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from defectloop.cli._common import (
    TaskName,
    console,
    err_console,
    opened_database,
    parse_class_map,
    settings_of,
)

if TYPE_CHECKING:
    from models.comparison import Evaluation
    from workers.importing import ImportReport


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
    mapping = parse_class_map(class_map)
    settings = settings_of(ctx)
    # The database before torch is imported: a database problem is reported at once.
    with opened_database(settings) as database:
        from db.schema import ModelTask
        from models.data import InputSpec
        from workers.training import Hyperparameters, TrainingRequest, train_from_folder

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
            from workers.retraining import train_clear_of_evaluation_sets

            outcome = train_clear_of_evaluation_sets(request, sessions=sessions, artifacts_dir=artifacts_dir)
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


def evaluate(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Model version name, e.g. binary-resnet18-0003.")],
    dataset: _DatasetOption,
    class_map: _ClassMapOption = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
) -> None:
    """Score a model version on a labelled folder, print the metrics and store them."""
    mapping = parse_class_map(class_map)
    settings = settings_of(ctx)
    with opened_database(settings) as database:
        from workers.training import evaluate_on_folder

        outcome = evaluate_on_folder(
            sessions=database.sessions,
            version_name=version,
            dataset=dataset,
            label_space=settings.label_space,
            class_map=mapping,
            batch_size=batch_size,
        )
    at = "" if outcome.threshold is None else f", defective at p >= {outcome.threshold:.3f}"
    _print_evaluation(outcome.evaluation, f"{outcome.version_name} on {outcome.dataset}{at}")
    console.print(
        f"recorded as evaluation {outcome.evaluation_id} ({outcome.n_images} images, "
        f"data set sha256 {outcome.dataset_sha256[:12]})",
        highlight=False,
    )


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
    mapping = parse_class_map(class_map)
    settings = settings_of(ctx)
    with opened_database(settings) as database:
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
