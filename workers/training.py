"""Train a model version from a labelled folder, and score a version on one (the engineers' commands).

``train_from_folder`` scans the folder, splits it by group, trains, writes the checkpoint atomically
under the artifacts folder and registers the version (the first of a task becomes its champion), with a
``training_runs`` row that says whether it succeeded and, if not, why. ``evaluate_on_folder`` verifies
a version's checkpoint against the registry's sha256, predicts a labelled folder and records the
metrics. Both take plain values (paths, a session factory, a ``LabelSpace``), never the settings
object; what to train is one ``TrainingRequest``, built once by the caller and passed through.

Transactions are kept short: nothing holds the database while a model trains or predicts, because on
SQLite every transaction takes the write lock that the camera watcher and the workers also need.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy.orm import Session, sessionmaker
from torch import nn

from db import repositories as repo
from db.errors import IntegrityViolation
from db.schema import ModelStatus, ModelTask, TrainingRunStatus, TrainingTrigger
from models.comparison import (
    THRESHOLD_KEY,
    Evaluation,
    ThresholdChoice,
    classification_report,
    stored_threshold,
    tune_threshold,
)
from models.data import (
    DEFECTIVE,
    ImageDataset,
    ImageRecord,
    InputSpec,
    Task,
    file_group,
    group_split,
    task_labels,
)
from models.errors import ModelError
from models.labels import LabelSpace
from models.registry import get_spec
from models.train import (
    TrainConfig,
    TrainResult,
    fsync_dir,
    load_checkpoint,
    predict_dataset,
    save_checkpoint,
    train_model,
)
from workers.errors import DatasetError, IncompatibleVersionError
from workers.folders import dataset_fingerprint, label_counts, scan_labelled_folder

logger = logging.getLogger(__name__)

__all__ = [
    "EvaluationOutcome",
    "Hyperparameters",
    "TrainOutcome",
    "TrainingRequest",
    "evaluate_on_folder",
    "image_group",
    "train_from_database",
    "train_from_folder",
]

_TASKS: dict[ModelTask, Task] = {ModelTask.BINARY: "binary", ModelTask.MULTICLASS: "multiclass"}
_MIN_IMAGES_PER_CLASS = 2  # one for training and one for validation
_REGISTER_ATTEMPTS = 3  # another process may take the next version name between our read and our insert
_ERROR_LENGTH = 2000


@dataclass(frozen=True)
class TrainOutcome:
    """A registered model version and how it was trained."""

    version_name: str
    version_id: int
    task: ModelTask
    is_champion: bool
    metrics: dict[str, Any]
    val_evaluation: Evaluation
    artifact_path: Path
    artifact_sha256: str
    n_train: int
    n_val: int
    best_epoch: int
    training_run_id: int
    parent_name: str | None = None
    threshold: ThresholdChoice | None = None  # binary: the decision threshold tuned on validation


@dataclass(frozen=True)
class EvaluationOutcome:
    """A model version's scores on a labelled folder, as recorded in ``evaluations``."""

    version_name: str
    task: ModelTask
    evaluation: Evaluation
    evaluation_id: int
    dataset: Path
    dataset_sha256: str
    n_images: int
    threshold: float | None = None  # binary: the version's decision threshold the calls were made at


@dataclass(frozen=True)
class Hyperparameters:
    """The numbers of a run that are chosen before its labels are read: the split's validation share
    and seed, and ``TrainConfig``'s optimisation settings (checked there, when the run's class names
    are known; an invalid one raises ``DatasetError`` before any run is recorded)."""

    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0  # of the split, the initial weights and the batches
    val_fraction: float = 0.2
    patience: int = 4


@dataclass(frozen=True)
class TrainingRequest:
    """What to train and how, whichever labels it is trained on (a folder or the database): built
    once by the caller (the ``train`` command, a retrain) and passed through unchanged.

    ``weights``: a local pretrained file for the architecture; ``warm_start_version``: an earlier
    version of the same task, architecture and input to start from; ``threads`` caps torch's CPU
    threads (None leaves the process setting); ``actor`` and ``trigger`` are recorded with the run.
    """

    task: ModelTask
    architecture: str
    label_space: LabelSpace
    input_spec: InputSpec
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    pretrained: bool = False
    weights: Path | None = None
    warm_start_version: str | None = None
    threads: int | None = None
    progress: bool = False
    actor: str = "cli"
    trigger: TrainingTrigger = TrainingTrigger.MANUAL

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", ModelTask(self.task))

    @property
    def model_task(self) -> Task:
        return _TASKS[self.task]


@dataclass(frozen=True)
class _WarmStart:
    name: str
    version_id: int
    artifact_path: Path
    artifact_sha256: str


@dataclass(frozen=True)
class _LabelledSet:
    """The images a run trains on, as both sources of labels prepare them."""

    where: str  # for messages: the folder, or the database's labelled images
    kept: Sequence[ImageRecord]
    labels: Sequence[int]
    class_names: tuple[str, ...]
    snapshot: Mapping[str, Any]  # what the version records about its data


@dataclass(frozen=True)
class _Split:
    train_idx: list[int]
    val_idx: list[int]

    def labels(self, data: _LabelledSet) -> tuple[list[int], list[int]]:
        return [data.labels[i] for i in self.train_idx], [data.labels[i] for i in self.val_idx]


# --- training ------------------------------------------------------------------------------------


def train_from_folder(
    request: TrainingRequest,
    *,
    sessions: sessionmaker[Session],
    dataset: Path,
    artifacts_dir: Path,
    class_map: Mapping[str, str] | None = None,
) -> TrainOutcome:
    """Train ``request`` on the ImageFolder ``dataset`` and register the result.

    Everything that can be checked before training is checked first (architecture, hyper-parameters,
    labels, class sizes, the split, the warm-start version), so a mistake costs no run. Then a
    ``training_runs`` row is committed as running; if training or registering fails the row is marked
    failed with the error, no version is registered and the error is raised again.

    Raises ``DatasetError`` (folder, labels, sizes), ``IncompatibleVersionError`` (warm start),
    ``ModelError`` (architecture, weights, unreadable image or checkpoint) and ``db.errors.NotFoundError``
    (no such warm-start version).
    """
    dataset = Path(dataset).expanduser().resolve()
    _check_request(request)
    kept, labels, class_names = _task_records(dataset, request.model_task, request.label_space, class_map)
    _check_class_sizes(str(dataset), request.model_task, labels, class_names)
    snapshot: dict[str, Any] = {
        "dataset": str(dataset),
        "dataset_sha256": dataset_fingerprint(kept, dataset),
        "class_map": dict(class_map or {}),
    }
    data = _LabelledSet(str(dataset), kept, labels, class_names, snapshot)
    return _train_and_register(request, sessions=sessions, data=data, artifacts_dir=artifacts_dir)


DATABASE = "database"  # the snapshot's ``dataset`` of a version trained on the database's labels
_DATABASE_WHERE = "the database's labelled images"


def train_from_database(
    request: TrainingRequest,
    *,
    sessions: sessionmaker[Session],
    artifacts_dir: Path,
    exclude_image_ids: Collection[int] = frozenset(),
) -> TrainOutcome:
    """Train ``request`` on every image the database holds a current label for (Label Studio
    annotations and imports: ``repo.list_labelled_images``) and register the result.
    ``exclude_image_ids`` (the frozen evaluation sets, see ``workers.retraining``) are never trained on.

    Groups for the split: the image's source and its file name without a tile index, so tiles of one
    photo stay on one side. An image whose file is gone, or whose label is not one of the configured
    classes (the classes changed since it was labelled), is left out and counted in the snapshot with
    a warning. The snapshot's fingerprint is over the (image sha256, label) pairs: the same labels, the
    same fingerprint. Otherwise as ``train_from_folder`` (same checks, run row, errors).
    """
    _check_request(request)
    with sessions() as session:
        rows = [
            _LabelledRow(image.id, image.path, image.sha256, image.source_id, label)
            for image, label in repo.list_labelled_images(session=session)
        ]
    found = _database_records(rows, request.label_space, exclude_image_ids)
    if not found.records:
        raise DatasetError(
            f"{_DATABASE_WHERE}: none to train on ({len(rows)} labelled, {len(found.missing)} with their "
            f"file gone, {sum(found.unknown.values())} with an unknown label); import a labelled folder "
            "(`defectloop import DIR`) or label images in Label Studio first"
        )
    model_task, label_space = request.model_task, request.label_space
    try:
        kept, labels, class_names = task_labels(found.records, model_task, label_space)
    except ValueError as exc:
        raise DatasetError(f"cannot label {_DATABASE_WHERE} for the {model_task} task: {exc}") from exc
    if not kept:
        raise DatasetError(
            f"{_DATABASE_WHERE} include no defect-type label ({', '.join(label_space.defect_classes)}): the "
            f"multiclass task trains on typed defects only, and the labels are {label_counts(found.records)}"
        )
    rare: dict[str, int] = {}
    if model_task == "multiclass":
        kept, labels, rare = _leave_out_rare_types(kept, labels, class_names)
    _check_class_sizes(_DATABASE_WHERE, model_task, labels, class_names)
    snapshot: dict[str, Any] = {
        "dataset": DATABASE,
        "dataset_sha256": found.fingerprint({r.image_id for r in kept}),
        "labelled_images": len(rows),
        "left_out_missing_file": len(found.missing),
        "left_out_unknown_label": dict(sorted(found.unknown.items())),
        "left_out_evaluation": found.held_out,
        "left_out_rare_class": rare,
    }
    data = _LabelledSet(_DATABASE_WHERE, kept, labels, class_names, snapshot)
    return _train_and_register(request, sessions=sessions, data=data, artifacts_dir=artifacts_dir)


class _LabelledRow(NamedTuple):
    image_id: int
    path: str
    sha256: str | None
    source_id: int
    label: str


@dataclass
class _DatabaseRecords:
    """The database's labelled images sorted into those to train on and those left out (and why)."""

    records: list[ImageRecord] = field(default_factory=list)
    digests: list[tuple[str, str]] = field(default_factory=list)  # (image sha256, label) per record
    missing: list[int] = field(default_factory=list)  # ids of the images whose file is gone
    unknown: Counter[str] = field(default_factory=Counter)  # labels that are not a configured class
    held_out: int = 0  # images of the evaluation sets

    def fingerprint(self, image_ids: Collection[int | None]) -> str:
        """The sha256 over the sorted (image sha256, label) pairs of the records in ``image_ids``."""
        digest = hashlib.sha256()
        pairs = (d for d, r in zip(self.digests, self.records, strict=True) if r.image_id in image_ids)
        for sha256, label in sorted(pairs):
            digest.update(f"{sha256}\t{label}\n".encode())
        return digest.hexdigest()


def _database_records(
    rows: Sequence[_LabelledRow], label_space: LabelSpace, exclude_image_ids: Collection[int]
) -> _DatabaseRecords:
    known = set(label_space.known_labels)
    found = _DatabaseRecords()
    for row in rows:
        if row.image_id in exclude_image_ids:
            found.held_out += 1
        elif row.label not in known:
            found.unknown[row.label] += 1
        elif not Path(row.path).is_file():
            found.missing.append(row.image_id)
        else:
            group = image_group(row.source_id, row.path)
            found.records.append(
                ImageRecord(path=Path(row.path), label=row.label, group=group, image_id=row.image_id)
            )
            found.digests.append((row.sha256 or f"path:{row.path}", row.label))
    if found.unknown:
        logger.warning(
            "left out %d labelled image(s) whose label is not a configured class: %s",
            sum(found.unknown.values()),
            dict(sorted(found.unknown.items())),
        )
    if found.missing:
        logger.warning(
            "left out %d labelled image(s) whose file is gone (first ids: %s)",
            len(found.missing),
            found.missing[:10],
        )
    return found


def _leave_out_rare_types(
    kept: list[ImageRecord], labels: list[int], class_names: Sequence[str]
) -> tuple[list[ImageRecord], list[int], dict[str, int]]:
    """Multiclass: leave out the defect types labelled only once, when two others remain. A type
    labelled once cannot be on both sides of the split; in a loop that labels as it goes, it must not
    hold the other types' model back until a second one turns up."""
    counts = Counter(labels)
    rare = {class_names[c]: n for c, n in sorted(counts.items()) if n < _MIN_IMAGES_PER_CLASS}
    if not rare or len(counts) - len(rare) < 2:
        return kept, labels, {}
    logger.warning("multiclass: left out defect type(s) labelled only once so far: %s", sorted(rare))
    pairs = [(r, y) for r, y in zip(kept, labels, strict=True) if class_names[y] not in rare]
    return [r for r, _ in pairs], [y for _, y in pairs], rare


def image_group(source_id: int, path: str | Path) -> str:
    """The split group of a database image: its source and its file name without a tile index, so
    tiles of one photo stay together (in a split, and on one side of the evaluation rule)."""
    return f"source-{source_id}/{file_group(Path(path).stem)}"


def _check_request(request: TrainingRequest) -> None:
    spec = get_spec(request.architecture)  # UnknownArchitectureError naming the valid ones
    size = request.input_spec.image_size
    if size < spec.min_input_size:
        raise DatasetError(
            f"{request.architecture} needs images of at least {spec.min_input_size} px, got {size}"
        )
    val_fraction = request.hyperparameters.val_fraction
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")


def _train_and_register(
    request: TrainingRequest,
    *,
    sessions: sessionmaker[Session],
    data: _LabelledSet,
    artifacts_dir: Path,
) -> TrainOutcome:
    """Split ``data`` by group, train, register; the part both sources of labels share. Everything that
    can be refused is refused before the run row is written."""
    split = _split(data, request.hyperparameters)
    warm = _warm_start(sessions, request)
    config = _train_config(request, data.class_names, warm)
    snapshot = _run_snapshot(data, split, request.hyperparameters)
    run_id = _start_run(sessions, request, config, snapshot)
    logger.info(
        "training run %d: %s %s on %s (%d train / %d val images)",
        run_id,
        request.model_task,
        request.architecture,
        data.where,
        len(split.train_idx),
        len(split.val_idx),
    )
    try:
        result, metrics, threshold = _fit(request, config, data, split)
        registered = _register(
            sessions=sessions,
            run_id=run_id,
            task=request.task,
            config=config,
            model=result.model,
            artifacts_dir=artifacts_dir,
            snapshot=snapshot,
            metrics=metrics,
            warm=warm,
            n_train=len(split.train_idx),
            n_val=len(split.val_idx),
        )
    except BaseException as exc:
        _fail_run(sessions, run_id, exc)
        raise
    logger.info(
        "training run %d registered %s (%s), val macro-F1 %.4f",
        run_id,
        registered.version_name,
        "champion" if registered.is_champion else "candidate",
        result.val_evaluation.macro_f1,
    )
    return TrainOutcome(
        version_name=registered.version_name,
        version_id=registered.version_id,
        task=request.task,
        is_champion=registered.is_champion,
        metrics=metrics,
        val_evaluation=result.val_evaluation,
        artifact_path=registered.artifact_path,
        artifact_sha256=registered.artifact_sha256,
        n_train=len(split.train_idx),
        n_val=len(split.val_idx),
        best_epoch=result.best_epoch,
        training_run_id=run_id,
        parent_name=None if warm is None else warm.name,
        threshold=threshold,
    )


def _train_config(
    request: TrainingRequest, class_names: tuple[str, ...], warm: _WarmStart | None
) -> TrainConfig:
    """The run's ``TrainConfig``; an invalid setting raises ``DatasetError`` (or ``ModelError``)."""
    hyper = request.hyperparameters
    try:
        return TrainConfig(
            architecture=request.architecture,
            task=request.model_task,
            class_names=class_names,
            input_spec=request.input_spec,
            epochs=hyper.epochs,
            batch_size=hyper.batch_size,
            lr=hyper.lr,
            patience=hyper.patience,
            seed=hyper.seed,
            pretrained=request.pretrained,
            weights=request.weights,
            warm_start=None if warm is None else warm.artifact_path,
            warm_start_sha256=None if warm is None else warm.artifact_sha256,
            threads=request.threads,
        )
    except ModelError:
        raise
    except ValueError as exc:
        raise DatasetError(f"invalid training settings: {exc}") from exc


def _split(data: _LabelledSet, hyper: Hyperparameters) -> _Split:
    try:
        train_idx, val_idx = group_split(
            data.kept, data.labels, val_fraction=hyper.val_fraction, seed=hyper.seed
        )
    except ValueError as exc:
        raise DatasetError(f"cannot split {data.where} into training and validation: {exc}") from exc
    return _Split(train_idx=list(train_idx), val_idx=list(val_idx))


def _run_snapshot(data: _LabelledSet, split: _Split, hyper: Hyperparameters) -> dict[str, Any]:
    """What the run and its version record about their data: the source's snapshot and the split."""
    kept = data.kept
    return {
        **data.snapshot,
        "n_images": len(kept),
        "n_train": len(split.train_idx),
        "n_val": len(split.val_idx),
        "val_groups": len({kept[i].group for i in split.val_idx}),
        "train_groups": len({kept[i].group for i in split.train_idx}),
        "val_fraction": hyper.val_fraction,
        "split_seed": hyper.seed,
        "labels": label_counts(kept),
    }


def _fit(
    request: TrainingRequest, config: TrainConfig, data: _LabelledSet, split: _Split
) -> tuple[TrainResult, dict[str, Any], ThresholdChoice | None]:
    """Train on the split; returns the result, the metrics the version records and the tuned threshold."""
    started = time.perf_counter()
    train_labels, val_labels = split.labels(data)
    spec = request.input_spec
    train_set = ImageDataset(
        [data.kept[i] for i in split.train_idx], train_labels, spec, augment=True, cache=True
    )
    val_set = ImageDataset([data.kept[i] for i in split.val_idx], val_labels, spec, augment=False, cache=True)
    result = train_model(config, train_set, val_set, progress=request.progress)
    seconds = time.perf_counter() - started
    threshold, refused = _tune_threshold(request.model_task, data.class_names, val_labels, result.val_probs)
    return result, _metrics(result, seconds, threshold, refused), threshold


def _metrics(
    result: TrainResult, seconds: float, threshold: ThresholdChoice | None, refused: str | None
) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        **result.val_evaluation.to_dict(),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "history": [dict(row) for row in result.history],
        "train_seconds": round(seconds, 3),
    }
    if threshold is not None:
        metrics[THRESHOLD_KEY] = threshold.threshold
        metrics["threshold_tuning"] = {**threshold.to_dict(), "tuned_on": "validation split"}
    elif refused is not None:  # recorded, so `versions`, `status` and reports can say why it calls at 0.5
        metrics["threshold_tuning"] = {"refused": refused, "threshold": 0.5, "tuned_on": "validation split"}
    return metrics


def _tune_threshold(
    task: Task, class_names: Sequence[str], val_labels: Sequence[int], val_probs: Any
) -> tuple[ThresholdChoice | None, str | None]:
    """A binary model's decision threshold, tuned for defect F1 on the validation split (the one that
    also picked the best epoch), or why none was (then the version calls at 0.5). A rare defect class
    often leaves p(defect) below 0.5 for most defects; the tuned cut is stored with the version and every
    call (worker, ``evaluate``) is made at it. A cut calling every image defective is never chosen."""
    if task != "binary":
        return None, None
    column = list(class_names).index(DEFECTIVE)
    positives = [int(label == column) for label in val_labels]
    try:
        choice = tune_threshold(positives, val_probs[:, column])
    except ValueError as exc:
        logger.warning("decision threshold left at 0.5: %s", exc)
        return None, str(exc)
    if choice.degenerate_refused:
        logger.warning(
            "decision threshold: calling every validation image defective would score defect F1 %.3f, "
            "above the %.3f of the best real cut; refused (the model separates nothing better than that)",
            choice.f1_all_positive,
            choice.f1,
        )
    logger.info(
        "decision threshold %.3f tuned on validation: defect F1 %.3f (%.3f at 0.5), %d defects",
        choice.threshold,
        choice.f1,
        choice.f1_at_default,
        choice.support,
    )
    return choice, None


def _task_records(
    dataset: Path,
    task: Task,
    label_space: LabelSpace,
    class_map: Mapping[str, str] | None,
) -> tuple[list[ImageRecord], list[int], tuple[str, ...]]:
    records = scan_labelled_folder(dataset, class_map=class_map, known_labels=label_space.known_labels)
    try:
        kept, labels, class_names = task_labels(records, task, label_space)
    except ValueError as exc:  # the scan has checked the labels already; kept as a guard
        raise DatasetError(f"cannot label {dataset} for the {task} task: {exc}") from exc
    if not kept:
        raise DatasetError(
            f"{dataset} has no images of a defect type ({', '.join(label_space.defect_classes)}): the "
            "multiclass task trains on defect-type folders only, and this folder holds "
            f"{label_counts(records)}"
        )
    return kept, labels, class_names


def _check_class_sizes(dataset: str, task: Task, labels: Sequence[int], class_names: Sequence[str]) -> None:
    counts = Counter(labels)
    present = {class_names[c]: n for c, n in sorted(counts.items())}
    too_few = sorted(name for name, n in present.items() if n < _MIN_IMAGES_PER_CLASS)
    if too_few:
        raise DatasetError(
            f"{dataset}: class(es) {', '.join(too_few)} have fewer than {_MIN_IMAGES_PER_CLASS} images "
            f"for the {task} task (counts: {present}); a class needs images on both sides of the "
            "training/validation split: add images or leave the folder out"
        )
    if len(present) < 2:
        needed = "ok and defective images" if task == "binary" else "images of at least two defect types"
        raise DatasetError(
            f"{dataset}: the {task} task needs {needed}, this folder has only {present}; "
            "a classifier needs two classes to tell apart"
        )
    absent = [name for name in class_names if name not in present]
    if absent:
        logger.warning("%s has no %s images: the model cannot learn those classes", dataset, absent)


def _warm_start(sessions: sessionmaker[Session], request: TrainingRequest) -> _WarmStart | None:
    name = request.warm_start_version
    if name is None:
        return None
    task, architecture, input_spec = request.task, request.architecture, request.input_spec
    with sessions() as session:
        version = repo.get_model_version_by_name(session=session, name=name)
        parent = _WarmStart(
            name=version.name,
            version_id=version.id,
            artifact_path=Path(version.artifact_path),
            artifact_sha256=version.artifact_sha256,
        )
        problems = []
        if version.task != task:
            problems.append(f"it is a {version.task} model, this run trains {task}")
        if version.architecture != architecture:
            problems.append(f"it is a {version.architecture}, this run trains {architecture}")
        stored_spec = InputSpec.from_dict(version.input_spec)
        if stored_spec != input_spec:
            problems.append(
                f"its input is {_describe_spec(stored_spec)}, this run's is {_describe_spec(input_spec)}"
            )
    if problems:
        raise IncompatibleVersionError(
            f"cannot warm-start from {name}: {'; '.join(problems)}. Warm-start from a version of the "
            "same task, architecture and input (see `defectloop versions`), or train without it"
        )
    return parent


def _describe_spec(spec: InputSpec) -> str:
    return f"{spec.image_size} px, {spec.channels} channel{'s' if spec.channels > 1 else ''}"


def _start_run(
    sessions: sessionmaker[Session],
    request: TrainingRequest,
    config: TrainConfig,
    snapshot: Mapping[str, Any],
) -> int:
    with sessions() as session:
        run = repo.create_training_run(
            session=session,
            task=request.task,
            architecture=request.architecture,
            trigger=request.trigger,
            params={"config": config.to_dict(), "snapshot": dict(snapshot), "actor": request.actor},
        )
        repo.start_training_run(session=session, run_id=run.id)
        session.commit()
        return run.id


def _fail_run(sessions: sessionmaker[Session], run_id: int, exc: BaseException) -> None:
    text = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, KeyboardInterrupt):
        text = "interrupted (KeyboardInterrupt) before the version was registered"
    try:
        with sessions() as session:
            repo.finish_training_run(
                session=session, run_id=run_id, status=TrainingRunStatus.FAILED, error=text[:_ERROR_LENGTH]
            )
            session.commit()
    except Exception:
        # The original error matters more; a run left "running" is visible as such.
        logger.exception("training run %d failed and could not be marked failed", run_id)
    else:
        logger.error("training run %d failed: %s", run_id, text)


@dataclass(frozen=True)
class _Registered:
    version_name: str
    version_id: int
    is_champion: bool
    artifact_path: Path
    artifact_sha256: str


def _register(
    *,
    sessions: sessionmaker[Session],
    run_id: int,
    task: ModelTask,
    config: TrainConfig,
    model: nn.Module,
    artifacts_dir: Path,
    snapshot: Mapping[str, Any],
    metrics: Mapping[str, Any],
    warm: _WarmStart | None,
    n_train: int,
    n_val: int,
) -> _Registered:
    """Write the checkpoint and register it under the next free version name, in one transaction.

    The checkpoint is first written (atomically) under a private name, then the version row is
    inserted, and only then is the file renamed to ``<version name>.pt``: the row's unique name is the
    lock, so a registered version's file is never overwritten by a run that lost the race for its name.
    """
    artifacts_dir = Path(artifacts_dir).expanduser().resolve()
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    # Written before the transaction opens: on SQLite a transaction holds the write lock.
    partial = artifacts_dir / f".run{run_id}-{uuid.uuid4().hex[:12]}.pt.partial"
    try:
        digest = save_checkpoint(
            partial,
            model,
            architecture=config.architecture,
            task=config.task,
            class_names=config.class_names,
            input_spec=config.input_spec,
            extra={"training_run_id": run_id, "dataset_sha256": str(snapshot["dataset_sha256"])},
        )
        last_error: IntegrityViolation | None = None
        for _attempt in range(_REGISTER_ATTEMPTS):
            with sessions() as session:
                name = repo.next_model_version_name(
                    session=session, task=task, architecture=config.architecture
                )
                final = artifacts_dir / f"{name}.pt"
                try:
                    version = repo.register_model_version(
                        session=session,
                        name=name,
                        task=task,
                        architecture=config.architecture,
                        classes=config.class_names,
                        input_spec=config.input_spec.to_dict(),
                        artifact_path=str(final),
                        artifact_sha256=digest,
                        training_snapshot=snapshot,
                        hyperparameters=config.to_dict(),
                        metrics=metrics,
                        parent_id=None if warm is None else warm.version_id,
                        training_run_id=run_id,
                    )
                except IntegrityViolation as exc:
                    session.rollback()
                    last_error = exc
                    logger.warning("version name %s was taken by another run; trying the next name", name)
                    continue
                if final.exists():
                    # No version of that name is registered (the insert above succeeded), so this file
                    # was left by a run that crashed between writing it and committing.
                    logger.warning("replacing %s, left unregistered by an interrupted run", final)
                partial.replace(final)
                fsync_dir(artifacts_dir)
                repo.finish_training_run(
                    session=session,
                    run_id=run_id,
                    status=TrainingRunStatus.SUCCEEDED,
                    n_train=n_train,
                    n_val=n_val,
                    model_version_id=version.id,
                )
                session.commit()
                return _Registered(
                    version_name=name,
                    version_id=version.id,
                    is_champion=version.status is ModelStatus.CHAMPION,
                    artifact_path=final,
                    artifact_sha256=digest,
                )
    finally:
        partial.unlink(missing_ok=True)
    raise IntegrityViolation(
        f"could not register the trained model after {_REGISTER_ATTEMPTS} attempts: {last_error}"
    )


# --- evaluation ----------------------------------------------------------------------------------


def evaluate_on_folder(
    *,
    sessions: sessionmaker[Session],
    version_name: str,
    dataset: Path,
    label_space: LabelSpace,
    class_map: Mapping[str, str] | None = None,
    batch_size: int = 64,
) -> EvaluationOutcome:
    """Score model version ``version_name`` on the ImageFolder ``dataset`` and record the metrics.

    The checkpoint is verified against the registry's sha256 before it is read (a changed file raises
    ``CheckpointIntegrityError`` and nothing is recorded); images are prepared with the version's
    stored input spec. A binary version folds every defect folder into "defective"; a multiclass one
    scores the defect-type folders only, with its own classes. Raises ``db.errors.NotFoundError`` for
    an unknown version, ``DatasetError`` for a folder it cannot score, ``ModelError`` otherwise.
    """
    dataset = Path(dataset).expanduser().resolve()
    with sessions() as session:
        version = repo.get_model_version_by_name(session=session, name=version_name)
        version_id = version.id
        task = ModelTask(version.task)
        classes = tuple(version.classes)
        stored_spec = InputSpec.from_dict(version.input_spec)
        artifact_path = Path(version.artifact_path)
        artifact_sha256 = version.artifact_sha256
        threshold = stored_threshold(version.metrics) if task is ModelTask.BINARY else None

    model_task = _TASKS[task]
    defects = label_space.defect_classes if task is ModelTask.BINARY else classes
    known = (*label_space.known_labels, *defects)
    records = scan_labelled_folder(dataset, class_map=class_map, known_labels=tuple(dict.fromkeys(known)))
    try:
        scored = LabelSpace(label_space.good_class, defects)  # multiclass: the version's own types
        kept, labels, class_names = task_labels(records, model_task, scored)
    except ValueError as exc:
        raise DatasetError(
            f"cannot score {version_name} on {dataset}: {exc}; a {task} version knows {', '.join(classes)}"
        ) from exc
    if not kept:
        raise DatasetError(
            f"{dataset} has no images of {version_name}'s classes ({', '.join(classes)}); it holds "
            f"{label_counts(records)}"
        )
    if tuple(class_names) != classes:
        raise IncompatibleVersionError(
            f"{version_name} predicts {list(classes)}, the folder is labelled for {list(class_names)}"
        )

    checkpoint = load_checkpoint(artifact_path, expected_sha256=artifact_sha256)
    if (checkpoint.task, checkpoint.class_names, checkpoint.input_spec) != (model_task, classes, stored_spec):
        raise IncompatibleVersionError(
            f"the checkpoint of {version_name} ({artifact_path}) does not match its registry row "
            f"(task {checkpoint.task} vs {task}, classes {list(checkpoint.class_names)} vs {list(classes)}, "
            f"input {checkpoint.input_spec.to_dict()} vs {stored_spec.to_dict()}); retrain it"
        )
    data = ImageDataset(kept, labels, stored_spec, augment=False, cache=False)
    probs = predict_dataset(checkpoint.model, data, batch_size=batch_size)
    calls = probs.argmax(axis=1)
    if threshold is not None:  # binary: the call the workers make, at the version's own threshold
        column = classes.index(DEFECTIVE)
        calls = np.where(probs[:, column] >= threshold, column, 1 - column)
    evaluation = classification_report(labels, calls, classes, probs=probs)
    fingerprint = dataset_fingerprint(kept, dataset)
    with sessions() as session:
        row = repo.record_evaluation(
            session=session,
            model_version_id=version_id,
            dataset=str(dataset),
            dataset_sha256=fingerprint,
            n_images=len(kept),
            metrics={
                **evaluation.to_dict(),
                **({} if threshold is None else {THRESHOLD_KEY: threshold}),
            },
        )
        session.commit()
        evaluation_id = row.id
    logger.info(
        "evaluated %s on %s: %d images, macro-F1 %.4f, accuracy %.4f (evaluation %d)",
        version_name,
        dataset,
        len(kept),
        evaluation.macro_f1,
        evaluation.accuracy,
        evaluation_id,
    )
    return EvaluationOutcome(
        version_name=version_name,
        task=task,
        evaluation=evaluation,
        evaluation_id=evaluation_id,
        dataset=dataset,
        dataset_sha256=fingerprint,
        n_images=len(kept),
        threshold=threshold,
    )
