"""Evaluation: frozen evaluation sets and their members, champion/challenger comparisons, and model
versions' scores on labelled data sets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.errors import IntegrityViolation
from db.repositories._common import _SHA256, _add_row, _get, _insert_ignore, _integrity, _require_text
from db.schema import (
    Comparison,
    ComparisonDecision,
    EvaluationSet,
    EvaluationSetMember,
    ModelEvaluation,
    ModelTask,
    utcnow,
)


def create_evaluation_set(
    *, session: Session, name: str, task: ModelTask, rule: Mapping[str, Any] | None = None
) -> EvaluationSet:
    """A new, empty evaluation set (with the ``rule`` that assigns images to it, if any); raises
    `IntegrityViolation` if the name is taken."""
    if get_evaluation_set(session=session, name=name) is not None:
        raise IntegrityViolation(
            f"evaluation set {name!r} already exists; evaluation sets are frozen, add members to it instead"
        )
    evaluation_set = EvaluationSet(name=name, task=task, rule=None if rule is None else dict(rule))
    return _add_row(session, evaluation_set, f"evaluation set {name!r} could not be created")


def get_evaluation_set(*, session: Session, name: str) -> EvaluationSet | None:
    """The evaluation set with this name, or None."""
    return session.scalars(select(EvaluationSet).where(EvaluationSet.name == name)).one_or_none()


def add_evaluation_members(
    *, session: Session, evaluation_set_id: int, members: Mapping[int, str], reason: str
) -> int:
    """Add images (id -> label) to an evaluation set with the reason; returns how many were new.

    Members are never removed or relabelled: an image already in the set keeps its first label.
    """
    _require_text(reason, "reason")
    _get(session, EvaluationSet, evaluation_set_id, "evaluation set")
    added = 0
    with _integrity(
        f"members of evaluation set {evaluation_set_id} could not be added (do the images exist?)"
    ):
        for image_id, label in members.items():
            values = {
                "evaluation_set_id": evaluation_set_id,
                "image_id": image_id,
                "label": label,
                "added_reason": reason,
                "added_at": utcnow(),
            }
            added += _insert_ignore(session, EvaluationSetMember, values, ["evaluation_set_id", "image_id"])
    return added


def list_evaluation_members(*, session: Session, evaluation_set_id: int) -> dict[int, str]:
    """The members of an evaluation set: image id -> label."""
    stmt = select(EvaluationSetMember.image_id, EvaluationSetMember.label).where(
        EvaluationSetMember.evaluation_set_id == evaluation_set_id
    )
    return dict(session.execute(stmt).all())


def record_comparison(
    *,
    session: Session,
    evaluation_set_id: int,
    task: ModelTask,
    champion_version_id: int | None,
    challenger_version_id: int,
    decision: ComparisonDecision,
    reason: str,
    numbers: Mapping[str, Any],
) -> Comparison:
    """Record a champion/challenger comparison and its decision (it promotes nothing by itself)."""
    _require_text(reason, "reason")
    comparison = Comparison(
        evaluation_set_id=evaluation_set_id,
        task=task,
        champion_version_id=champion_version_id,
        challenger_version_id=challenger_version_id,
        decision=decision,
        reason=reason,
        numbers=dict(numbers),
    )
    return _add_row(
        session,
        comparison,
        "comparison could not be recorded (do the evaluation set and model versions exist?)",
    )


def get_comparison(*, session: Session, comparison_id: int) -> Comparison:
    """The comparison with this id; raises `NotFoundError`."""
    return _get(session, Comparison, comparison_id, "comparison")


def latest_comparison(*, session: Session, challenger_version_id: int) -> Comparison | None:
    """The newest comparison in which this version was the challenger, or None."""
    stmt = (
        select(Comparison)
        .where(Comparison.challenger_version_id == challenger_version_id)
        .order_by(Comparison.created_at.desc(), Comparison.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def list_comparisons(*, session: Session, task: ModelTask | None = None, limit: int = 50) -> list[Comparison]:
    """The newest comparisons first, optionally of one task."""
    stmt = select(Comparison).order_by(Comparison.created_at.desc(), Comparison.id.desc()).limit(limit)
    if task is not None:
        stmt = stmt.where(Comparison.task == task)
    return list(session.scalars(stmt))


def count_comparisons(*, session: Session) -> int:
    """How many comparisons have been recorded."""
    return int(session.scalar(select(func.count()).select_from(Comparison)) or 0)


def record_evaluation(
    *,
    session: Session,
    model_version_id: int,
    dataset: str,
    dataset_sha256: str,
    n_images: int,
    metrics: Mapping[str, Any],
) -> ModelEvaluation:
    """Store a model version's scores on a labelled data set (each run is a row; nothing is overwritten)."""
    _require_text(dataset, "dataset")
    if not _SHA256.match(dataset_sha256):
        raise IntegrityViolation(f"dataset_sha256 must be 64 lower-case hex digits, got {dataset_sha256!r}")
    evaluation = ModelEvaluation(
        model_version_id=model_version_id,
        dataset=dataset,
        dataset_sha256=dataset_sha256,
        n_images=n_images,
        metrics=dict(metrics),
    )
    return _add_row(session, evaluation, "evaluation could not be recorded (does the model version exist?)")


def list_evaluations(*, session: Session, model_version_id: int) -> list[ModelEvaluation]:
    """Evaluations of one model version, oldest first."""
    stmt = (
        select(ModelEvaluation)
        .where(ModelEvaluation.model_version_id == model_version_id)
        .order_by(ModelEvaluation.id)
    )
    return list(session.scalars(stmt))
