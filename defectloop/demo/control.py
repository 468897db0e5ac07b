"""The demo's model side, in-process: the random control arm's training, and scoring either arm's
models on the frozen test set (``metrics.build_metrics``).

The random arm is trained the way the loop trains the active arm's champion: the champion's recorded
hyper-parameters (``TrainConfig``: architecture, epochs, batch size, learning rate, seed, input spec),
the same group split of 20 % for validation (early stopping), and for binary the same decision
threshold tuning on that split. It writes nothing to the database: its models live in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from torch import nn

from defectloop.demo.metrics import DEFECTIVE, build_metrics
from models.comparison import (
    DEFAULT_THRESHOLD,
    Decision,
    PromotionPolicy,
    decide_promotion,
    stored_threshold,
    threshold_flag,
    tune_threshold,
)
from models.data import ImageDataset, ImageRecord, InputSpec, file_group, group_split, task_labels
from models.labels import LabelSpace
from models.train import TrainConfig, load_checkpoint, predict_dataset, train_model

logger = logging.getLogger(__name__)

__all__ = [
    "ArmModels",
    "ScoringModel",
    "decide_random_promotion",
    "load_version",
    "score_arm",
    "train_random_arm",
]

VAL_FRACTION = 0.2  # the loop's (train_from_database's default)
_MIN_PER_CLASS = 2


@dataclass(frozen=True, eq=False)
class ScoringModel:
    """A trained model with what scoring needs: its classes, input spec and (binary) threshold."""

    model: nn.Module
    classes: tuple[str, ...]
    input_spec: InputSpec
    threshold: float = DEFAULT_THRESHOLD
    threshold_flag: str | None = None
    hyperparameters: Mapping[str, Any] | None = None


@dataclass(frozen=True, eq=False)
class ArmModels:
    binary: ScoringModel
    multiclass: ScoringModel | None


def load_version(row: Any) -> ScoringModel:
    """A registered model version (``db.schema.ModelVersion``), its checkpoint verified by sha256."""
    checkpoint = load_checkpoint(Path(row.artifact_path), expected_sha256=row.artifact_sha256)
    binary = str(row.task) == "binary"
    return ScoringModel(
        model=checkpoint.model,
        classes=tuple(row.classes),
        input_spec=InputSpec.from_dict(row.input_spec),
        threshold=stored_threshold(row.metrics) if binary else DEFAULT_THRESHOLD,
        threshold_flag=threshold_flag(row.metrics) if binary else None,
        hyperparameters=dict(row.hyperparameters or {}),
    )


def _predict(model: ScoringModel, paths: Sequence[Path]) -> npt.NDArray[np.float32]:
    records = [ImageRecord(path=p, label=None, group=str(p)) for p in paths]
    data = ImageDataset(records, None, model.input_spec, augment=False, cache=False)
    return predict_dataset(model.model, data, batch_size=64)


def score_arm(
    models: ArmModels, photos: Sequence[tuple[Path, str]], *, classes: Sequence[str]
) -> dict[str, Any]:
    """``build_metrics`` of an arm's models on the frozen test photos (path, ground truth)."""
    paths = [path for path, _ in photos]
    truth = [label for _, label in photos]
    binary_probs = _predict(models.binary, paths)
    p_defect = binary_probs[:, list(models.binary.classes).index(DEFECTIVE)]
    type_probs = type_classes = None
    if models.multiclass is not None:
        type_probs = _predict(models.multiclass, paths)
        type_classes = models.multiclass.classes
    return build_metrics(
        truth=truth,
        p_defect=p_defect,
        threshold=models.binary.threshold,
        classes=classes,
        type_probs=type_probs,
        type_classes=type_classes,
        threshold_flag=models.binary.threshold_flag,
    )


def _config(hyper: Mapping[str, Any], class_names: tuple[str, ...], threads: int | None) -> TrainConfig:
    return TrainConfig(
        architecture=str(hyper["architecture"]),
        task=hyper["task"],
        class_names=class_names,
        input_spec=InputSpec.from_dict(hyper["input_spec"]),
        epochs=int(hyper.get("epochs", 15)),
        batch_size=int(hyper.get("batch_size", 32)),
        lr=float(hyper.get("lr", 1e-3)),
        weight_decay=float(hyper.get("weight_decay", 1e-4)),
        patience=int(hyper.get("patience", 4)),
        seed=int(hyper.get("seed", 0)),
        balance=hyper.get("balance", "loss"),
        threads=threads,
    )


def _train_task(
    photos: Sequence[tuple[Path, str]],
    hyper: Mapping[str, Any],
    *,
    label_space: LabelSpace,
    threads: int | None,
) -> ScoringModel | None:
    task = hyper["task"]
    records = [ImageRecord(path=p, label=label, group=file_group(p.stem)) for p, label in photos]
    kept, labels, class_names = task_labels(records, task, label_space)
    counts = {c: labels.count(c) for c in set(labels)}
    rare = {c for c, n in counts.items() if n < _MIN_PER_CLASS}
    if task == "multiclass" and rare and len(counts) - len(rare) >= 2:
        # As the loop's retrain: a defect type labelled once is left out until a second one comes.
        pairs = [(r, y) for r, y in zip(kept, labels, strict=True) if y not in rare]
        kept, labels = [r for r, _ in pairs], [y for _, y in pairs]
        counts = {c: n for c, n in counts.items() if c not in rare}
    if len(counts) < 2 or min(counts.values()) < _MIN_PER_CLASS:
        # The loop refuses such a set too (a class needs an image on each side of the split).
        logger.info("random arm: %s not trained, labels per class %s", task, counts)
        return None
    config = _config(hyper, class_names, threads)
    train_idx, val_idx = group_split(kept, labels, val_fraction=VAL_FRACTION, seed=config.seed)
    spec = config.input_spec
    train_set = ImageDataset([kept[i] for i in train_idx], [labels[i] for i in train_idx], spec, augment=True)
    val_labels = [labels[i] for i in val_idx]
    val_set = ImageDataset([kept[i] for i in val_idx], val_labels, spec, augment=False)
    result = train_model(config, train_set, val_set, progress=False)
    threshold, flag = DEFAULT_THRESHOLD, None
    if task == "binary":
        column = list(class_names).index(DEFECTIVE)
        try:
            choice = tune_threshold([int(v == column) for v in val_labels], result.val_probs[:, column])
        except ValueError as exc:
            flag = threshold_flag({"threshold_tuning": {"refused": str(exc)}})
        else:
            threshold = choice.threshold
            flag = threshold_flag({"threshold_tuning": choice.to_dict()})
    return ScoringModel(
        model=result.model,
        classes=class_names,
        input_spec=spec,
        threshold=threshold,
        threshold_flag=flag,
        hyperparameters=config.to_dict(),
    )


def train_random_arm(
    photos: Sequence[tuple[Path, str]],
    *,
    binary_hyperparameters: Mapping[str, Any],
    multiclass_hyperparameters: Mapping[str, Any] | None,
    label_space: LabelSpace,
    threads: int | None = None,
) -> tuple[ScoringModel | None, ScoringModel | None]:
    """Train the random arm's binary and multiclass models on its labelled photos (path, label) with the
    active champions' hyper-parameters; a task whose labels cannot be split (a class labelled once, a
    single class) gives None, as the loop's retrain refuses it."""
    binary = _train_task(photos, binary_hyperparameters, label_space=label_space, threads=threads)
    multiclass = None
    if multiclass_hyperparameters is not None:
        multiclass = _train_task(photos, multiclass_hyperparameters, label_space=label_space, threads=threads)
    return binary, multiclass


def _calls(
    model: ScoringModel, paths: Sequence[Path]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    probs = _predict(model, paths)
    if DEFECTIVE in model.classes:
        column = list(model.classes).index(DEFECTIVE)
        calls = np.where(probs[:, column] >= model.threshold, column, 1 - column).astype(np.int64)
    else:
        calls = probs.argmax(axis=1).astype(np.int64)
    return calls, probs


def decide_random_promotion(
    challenger: ScoringModel,
    champion: ScoringModel | None,
    photos: Sequence[tuple[Path, str]],
    *,
    good_class: str,
    policy: PromotionPolicy,
) -> Decision:
    """The loop's promotion rule for the random arm: its new model against its champion on the loop's
    frozen evaluation set (the photos the active arm's challengers are compared on), binary at each
    model's own threshold, multiclass on the typed defects; the first model of a task is promoted."""
    binary = DEFECTIVE in challenger.classes
    if binary:
        rows = [(p, 0 if label == good_class else 1) for p, label in photos]
    else:
        rows = [(p, challenger.classes.index(label)) for p, label in photos if label in challenger.classes]
    if not rows:
        return Decision(
            promote=champion is None, reason="no image of the evaluation set to compare on", numbers={}
        )
    paths = [p for p, _ in rows]
    y = [label for _, label in rows]
    calls, probs = _calls(challenger, paths)
    champion_calls = champion_probs = None
    if champion is not None:
        champion_calls, champion_probs = _calls(champion, paths)
    return decide_promotion(
        y_true=y,
        challenger_pred=calls,
        champion_pred=champion_calls,
        class_names=challenger.classes,
        policy=policy,
        challenger_probs=probs,
        champion_probs=champion_probs,
    )
