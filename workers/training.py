"""Train a model version from a labelled folder, and score a version on one (the engineers' commands).

``train_from_folder`` scans the folder, splits it by group, trains, writes the checkpoint atomically
under the artifacts folder and registers the version (the first of a task becomes its champion), with a
``training_runs`` row that says whether it succeeded and, if not, why. ``evaluate_on_folder`` verifies
a version's checkpoint against the registry's sha256, predicts a labelled folder and records the
metrics. Both take plain values (paths, a session factory, class names), never the settings object.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from models.registry import get_spec
from models.train import (
    TrainConfig,
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
    "TrainOutcome",
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
class _WarmStart:
    name: str
    version_id: int
    artifact_path: Path
    artifact_sha256: str


# --- training ------------------------------------------------------------------------------------


def train_from_folder(
    *,
    sessions: sessionmaker[Session],
    dataset: Path,
    task: ModelTask,
    architecture: str,
    good_class: str,
    defect_classes: Sequence[str],
    input_spec: InputSpec,
    artifacts_dir: Path,
    class_map: Mapping[str, str] | None = None,
    epochs: int = 15,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    val_fraction: float = 0.2,
    patience: int = 4,
    pretrained: bool = False,
    weights: Path | None = None,
    warm_start_version: str | None = None,
    threads: int | None = None,
    progress: bool = False,
    actor: str = "cli",
) -> TrainOutcome:
    """Train ``architecture`` for ``task`` on the ImageFolder ``dataset`` and register the result.

    Everything that can be checked before training is checked first (architecture, hyper-parameters,
    labels, class sizes, the split, the warm-start version), so a mistake costs no run. Then a
    ``training_runs`` row (trigger manual) is committed as running; if training or registering fails
    the row is marked failed with the error, no version is registered and the error is raised again.

    Raises ``DatasetError`` (folder, labels, sizes), ``IncompatibleVersionError`` (warm start),
    ``ModelError`` (architecture, weights, unreadable image or checkpoint) and ``db.errors.NotFoundError``
    (no such warm-start version).
    """
    model_task = _TASKS[ModelTask(task)]
    dataset = Path(dataset).expanduser().resolve()
    _check_request(architecture, input_spec, val_fraction)
    kept, labels, class_names = _task_records(dataset, model_task, good_class, defect_classes, class_map)
    _check_class_sizes(str(dataset), model_task, labels, class_names)
    snapshot: dict[str, Any] = {
        "dataset": str(dataset),
        "dataset_sha256": dataset_fingerprint(kept, dataset),
        "class_map": dict(class_map or {}),
    }
    return _train_and_register(
        sessions=sessions,
        where=str(dataset),
        kept=kept,
        labels=labels,
        class_names=class_names,
        snapshot=snapshot,
        task=task,
        architecture=architecture,
        input_spec=input_spec,
        artifacts_dir=artifacts_dir,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        val_fraction=val_fraction,
        patience=patience,
        pretrained=pretrained,
        weights=weights,
        warm_start_version=warm_start_version,
        threads=threads,
        progress=progress,
        actor=actor,
    )


DATABASE = "database"  # the snapshot's ``dataset`` of a version trained on the database's labels


def train_from_database(
    *,
    sessions: sessionmaker[Session],
    task: ModelTask,
    architecture: str,
    good_class: str,
    defect_classes: Sequence[str],
    input_spec: InputSpec,
    artifacts_dir: Path,
    epochs: int = 15,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    val_fraction: float = 0.2,
    patience: int = 4,
    pretrained: bool = False,
    weights: Path | None = None,
    warm_start_version: str | None = None,
    threads: int | None = None,
    progress: bool = False,
    actor: str = "cli",
    exclude_image_ids: Collection[int] = frozenset(),
    trigger: TrainingTrigger = TrainingTrigger.MANUAL,
) -> TrainOutcome:
    """Train ``architecture`` for ``task`` on every image the database holds a current label for
    (Label Studio annotations and imports: ``repo.list_labelled_images``) and register the result.
    ``exclude_image_ids`` (the frozen evaluation sets, see ``workers.retraining``) are never trained on.

    Groups for the split: the image's source and its file name without a tile index, so tiles of one
    photo stay on one side. An image whose file is gone, or whose label is not one of the configured
    classes (the classes changed since it was labelled), is left out and counted in the snapshot with
    a warning. The snapshot's fingerprint is over the (image sha256, label) pairs: the same labels, the
    same fingerprint. Otherwise as ``train_from_folder`` (same checks, run row, errors).
    """
    model_task = _TASKS[ModelTask(task)]
    _check_request(architecture, input_spec, val_fraction)
    with sessions() as session:
        rows = [
            (image.id, image.path, image.sha256, image.source_id, label)
            for image, label in repo.list_labelled_images(session=session)
        ]
    known = {good_class, DEFECTIVE, *defect_classes}
    records: list[ImageRecord] = []
    digests: list[tuple[str, str]] = []
    missing: list[int] = []
    unknown: Counter[str] = Counter()
    held_out = 0
    for image_id, path, sha256, source_id, label in rows:
        if image_id in exclude_image_ids:
            held_out += 1
        elif label not in known:
            unknown[label] += 1
        elif not Path(path).is_file():
            missing.append(image_id)
        else:
            group = image_group(source_id, path)
            records.append(ImageRecord(path=Path(path), label=label, group=group, image_id=image_id))
            digests.append((sha256 or f"path:{path}", label))
    if unknown:
        logger.warning(
            "left out %d labelled image(s) whose label is not a configured class: %s",
            sum(unknown.values()),
            dict(sorted(unknown.items())),
        )
    if missing:
        logger.warning(
            "left out %d labelled image(s) whose file is gone (first ids: %s)", len(missing), missing[:10]
        )
    where = "the database's labelled images"
    if not records:
        raise DatasetError(
            f"{where}: none to train on ({len(rows)} labelled, {len(missing)} with their file gone, "
            f"{sum(unknown.values())} with an unknown label); import a labelled folder (`defectloop import "
            "DIR`) or label images in Label Studio first"
        )
    try:
        kept, labels, class_names = task_labels(
            records, model_task, good_class=good_class, defect_classes=tuple(defect_classes)
        )
    except ValueError as exc:
        raise DatasetError(f"cannot label {where} for the {model_task} task: {exc}") from exc
    if not kept:
        raise DatasetError(
            f"{where} include no defect-type label ({', '.join(defect_classes)}): the multiclass task "
            f"trains on typed defects only, and the labels are {label_counts(records)}"
        )
    rare: dict[str, int] = {}
    if model_task == "multiclass":
        # A defect type labelled once cannot be on both sides of the split; in a loop that labels as it
        # goes, it must not hold the other types' model back until a second one turns up.
        counts = Counter(labels)
        rare = {class_names[c]: n for c, n in sorted(counts.items()) if n < _MIN_IMAGES_PER_CLASS}
        if rare and len(counts) - len(rare) >= 2:
            logger.warning("multiclass: left out defect type(s) labelled only once so far: %s", sorted(rare))
            pairs = [(r, y) for r, y in zip(kept, labels, strict=True) if class_names[y] not in rare]
            kept, labels = [r for r, _ in pairs], [y for _, y in pairs]
        else:
            rare = {}
    _check_class_sizes(where, model_task, labels, class_names)
    kept_ids = {r.image_id for r in kept}
    fingerprint = hashlib.sha256()
    for sha256, label in sorted(d for d, r in zip(digests, records, strict=True) if r.image_id in kept_ids):
        fingerprint.update(f"{sha256}\t{label}\n".encode())
    snapshot: dict[str, Any] = {
        "dataset": DATABASE,
        "dataset_sha256": fingerprint.hexdigest(),
        "labelled_images": len(rows),
        "left_out_missing_file": len(missing),
        "left_out_unknown_label": dict(sorted(unknown.items())),
        "left_out_evaluation": held_out,
        "left_out_rare_class": rare,
    }
    return _train_and_register(
        sessions=sessions,
        where=where,
        kept=kept,
        labels=labels,
        class_names=class_names,
        snapshot=snapshot,
        task=task,
        architecture=architecture,
        input_spec=input_spec,
        artifacts_dir=artifacts_dir,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        val_fraction=val_fraction,
        patience=patience,
        pretrained=pretrained,
        weights=weights,
        warm_start_version=warm_start_version,
        threads=threads,
        progress=progress,
        actor=actor,
        trigger=trigger,
    )


def image_group(source_id: int, path: str | Path) -> str:
    """The split group of a database image: its source and its file name without a tile index, so
    tiles of one photo stay together (in a split, and on one side of the evaluation rule)."""
    return f"source-{source_id}/{file_group(Path(path).stem)}"


def _check_request(architecture: str, input_spec: InputSpec, val_fraction: float) -> None:
    spec = get_spec(architecture)  # UnknownArchitectureError naming the valid ones
    if input_spec.image_size < spec.min_input_size:
        raise DatasetError(
            f"{architecture} needs images of at least {spec.min_input_size} px, got {input_spec.image_size}"
        )
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")


def _train_and_register(
    *,
    sessions: sessionmaker[Session],
    where: str,
    kept: Sequence[ImageRecord],
    labels: Sequence[int],
    class_names: tuple[str, ...],
    snapshot: dict[str, Any],
    task: ModelTask,
    architecture: str,
    input_spec: InputSpec,
    artifacts_dir: Path,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    val_fraction: float,
    patience: int,
    pretrained: bool,
    weights: Path | None,
    warm_start_version: str | None,
    threads: int | None,
    progress: bool,
    actor: str,
    trigger: TrainingTrigger = TrainingTrigger.MANUAL,
) -> TrainOutcome:
    """Split ``kept`` by group, train, register; the part both sources of labels share."""
    model_task = _TASKS[ModelTask(task)]
    try:
        train_idx, val_idx = group_split(kept, labels, val_fraction=val_fraction, seed=seed)
    except ValueError as exc:
        raise DatasetError(f"cannot split {where} into training and validation: {exc}") from exc
    train_labels = [labels[i] for i in train_idx]
    val_labels = [labels[i] for i in val_idx]

    warm = _warm_start(sessions, warm_start_version, ModelTask(task), architecture, input_spec)
    try:
        config = TrainConfig(
            architecture=architecture,
            task=model_task,
            class_names=class_names,
            input_spec=input_spec,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            patience=patience,
            seed=seed,
            pretrained=pretrained,
            weights=weights,
            warm_start=None if warm is None else warm.artifact_path,
            warm_start_sha256=None if warm is None else warm.artifact_sha256,
            threads=threads,
        )
    except ModelError:
        raise
    except ValueError as exc:
        raise DatasetError(f"invalid training settings: {exc}") from exc

    snapshot = {
        **snapshot,
        "n_images": len(kept),
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "val_groups": len({kept[i].group for i in val_idx}),
        "train_groups": len({kept[i].group for i in train_idx}),
        "val_fraction": val_fraction,
        "split_seed": seed,
        "labels": label_counts(kept),
    }
    run_id = _start_run(sessions, ModelTask(task), architecture, config, snapshot, actor, trigger)
    logger.info(
        "training run %d: %s %s on %s (%d train / %d val images)",
        run_id,
        model_task,
        architecture,
        where,
        len(train_idx),
        len(val_idx),
    )
    started = time.perf_counter()
    try:
        train_set = ImageDataset(
            [kept[i] for i in train_idx], train_labels, input_spec, augment=True, cache=True
        )
        val_set = ImageDataset([kept[i] for i in val_idx], val_labels, input_spec, augment=False, cache=True)
        result = train_model(config, train_set, val_set, progress=progress)
        metrics: dict[str, Any] = {
            **result.val_evaluation.to_dict(),
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "history": [dict(row) for row in result.history],
            "train_seconds": round(time.perf_counter() - started, 3),
        }
        threshold, refused = _tune_threshold(model_task, class_names, val_labels, result.val_probs)
        if threshold is not None:
            metrics[THRESHOLD_KEY] = threshold.threshold
            metrics["threshold_tuning"] = {**threshold.to_dict(), "tuned_on": "validation split"}
        elif refused is not None:  # recorded, so `versions`, `status` and reports can say why it calls at 0.5
            metrics["threshold_tuning"] = {
                "refused": refused,
                "threshold": 0.5,
                "tuned_on": "validation split",
            }
        outcome = _register(
            sessions=sessions,
            run_id=run_id,
            task=ModelTask(task),
            config=config,
            model=result.model,
            artifacts_dir=artifacts_dir,
            snapshot=snapshot,
            metrics=metrics,
            warm=warm,
            n_train=len(train_idx),
            n_val=len(val_idx),
        )
    except BaseException as exc:
        _fail_run(sessions, run_id, exc)
        raise
    logger.info(
        "training run %d registered %s (%s), val macro-F1 %.4f",
        run_id,
        outcome.version_name,
        "champion" if outcome.is_champion else "candidate",
        result.val_evaluation.macro_f1,
    )
    return TrainOutcome(
        version_name=outcome.version_name,
        version_id=outcome.version_id,
        task=ModelTask(task),
        is_champion=outcome.is_champion,
        metrics=metrics,
        val_evaluation=result.val_evaluation,
        artifact_path=outcome.artifact_path,
        artifact_sha256=outcome.artifact_sha256,
        n_train=len(train_idx),
        n_val=len(val_idx),
        best_epoch=result.best_epoch,
        training_run_id=run_id,
        parent_name=None if warm is None else warm.name,
        threshold=threshold,
    )


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
    good_class: str,
    defect_classes: Sequence[str],
    class_map: Mapping[str, str] | None,
) -> tuple[list[ImageRecord], list[int], tuple[str, ...]]:
    known = (good_class, DEFECTIVE, *defect_classes)
    records = scan_labelled_folder(dataset, class_map=class_map, known_labels=known)
    try:
        kept, labels, class_names = task_labels(
            records, task, good_class=good_class, defect_classes=defect_classes
        )
    except ValueError as exc:  # the labels were checked above; this is a wrong class list
        raise DatasetError(f"cannot label {dataset} for the {task} task: {exc}") from exc
    if not kept:
        raise DatasetError(
            f"{dataset} has no images of a defect type ({', '.join(defect_classes)}): the multiclass task "
            f"trains on defect-type folders only, and this folder holds {label_counts(records)}"
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


def _warm_start(
    sessions: sessionmaker[Session],
    name: str | None,
    task: ModelTask,
    architecture: str,
    input_spec: InputSpec,
) -> _WarmStart | None:
    if name is None:
        return None
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
    task: ModelTask,
    architecture: str,
    config: TrainConfig,
    snapshot: Mapping[str, Any],
    actor: str,
    trigger: TrainingTrigger,
) -> int:
    with sessions() as session:
        run = repo.create_training_run(
            session=session,
            task=task,
            architecture=architecture,
            trigger=trigger,
            params={"config": config.to_dict(), "snapshot": dict(snapshot), "actor": actor},
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
    good_class: str,
    defect_classes: Sequence[str],
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
    defects = tuple(defect_classes) if task is ModelTask.BINARY else classes
    known = (good_class, DEFECTIVE, *defect_classes, *defects)
    records = scan_labelled_folder(dataset, class_map=class_map, known_labels=tuple(dict.fromkeys(known)))
    try:
        kept, labels, class_names = task_labels(
            records, model_task, good_class=good_class, defect_classes=defects
        )
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
