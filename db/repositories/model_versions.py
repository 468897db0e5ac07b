"""The model registry: versions, champions, and the promotion log that records every change of
champion and every rejection, with who and why."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.errors import IntegrityViolation, InvalidTransitionError, NotFoundError
from db.repositories._common import _add_row, _check_sha256, _get, _integrity, _require_text
from db.repositories.predictions import make_model_key
from db.schema import ModelStatus, ModelTask, ModelVersion, Promotion, PromotionAction

logger = logging.getLogger(__name__)


SYSTEM_ACTOR = "system"


def next_model_version_name(*, session: Session, task: ModelTask, architecture: str) -> str:
    """The next free name like ``binary-resnet18-0003`` (1 + the number of versions of that task)."""
    count = (
        session.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.task == task)) or 0
    )
    return f"{task}-{architecture}-{count + 1:04d}"


def register_model_version(
    *,
    session: Session,
    name: str,
    task: ModelTask,
    architecture: str,
    classes: Sequence[str],
    input_spec: Mapping[str, Any],
    artifact_path: str,
    artifact_sha256: str,
    training_snapshot: Mapping[str, Any] | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    parent_id: int | None = None,
    training_run_id: int | None = None,
) -> ModelVersion:
    """Register a trained model as a candidate; when its task has no champion yet it becomes champion.

    That automatic first promotion is recorded in ``promotions`` (actor ``system``). Idempotent on
    `name` with the same artifact hash (a retried training task gets the existing version back);
    the same name with another artifact raises `IntegrityViolation`.
    """
    _check_sha256(artifact_sha256, "artifact_sha256")
    existing = session.scalars(select(ModelVersion).where(ModelVersion.name == name)).one_or_none()
    if existing is not None:
        if existing.artifact_sha256 == artifact_sha256 and existing.task == task:
            return existing
        raise IntegrityViolation(
            f"model version {name!r} already exists with another artifact or task; choose a new name "
            "(see next_model_version_name)"
        )
    version = ModelVersion(
        name=name,
        task=task,
        architecture=architecture,
        classes=list(classes),
        input_spec=dict(input_spec),
        artifact_path=artifact_path,
        artifact_sha256=artifact_sha256,
        training_snapshot=None if training_snapshot is None else dict(training_snapshot),
        hyperparameters=dict(hyperparameters or {}),
        metrics=dict(metrics or {}),
        status=ModelStatus.CANDIDATE,
        parent_id=parent_id,
        training_run_id=training_run_id,
    )
    _add_row(session, version, f"model version {name!r} could not be registered")
    if get_champion(session=session, task=task) is None:
        set_champion(
            session=session,
            version_id=version.id,
            actor=SYSTEM_ACTOR,
            reason=f"first model version of task {task}: there was no champion to compare with",
        )
    return version


def get_model_version(*, session: Session, version_id: int) -> ModelVersion:
    """The model version with this id; raises `NotFoundError`."""
    return _get(session, ModelVersion, version_id, "model version")


def get_model_version_by_name(*, session: Session, name: str) -> ModelVersion:
    """The model version called `name` (e.g. ``binary-resnet18-0003``); raises `NotFoundError`."""
    version = session.scalars(select(ModelVersion).where(ModelVersion.name == name)).one_or_none()
    if version is None:
        raise NotFoundError(f"no model version named {name!r}; `defectloop versions` lists them")
    return version


def get_champion(*, session: Session, task: ModelTask) -> ModelVersion | None:
    """The current champion of `task`, or None before the first model."""
    stmt = select(ModelVersion).where(ModelVersion.task == task, ModelVersion.status == ModelStatus.CHAMPION)
    return session.scalars(stmt).one_or_none()


def current_model_key(*, session: Session, hold: bool = False) -> str | None:
    """The model key of the current champions (``make_model_key``), or None before a binary champion.

    With ``hold``, the champion rows are read FOR SHARE (PostgreSQL; SQLite serialises writers anyway):
    a promotion waits until this transaction ends, so what it commits was made under these champions
    and the promotion's re-queue of the predicted pool sees it.
    """
    stmt = select(ModelVersion.task, ModelVersion.id).where(ModelVersion.status == ModelStatus.CHAMPION)
    if hold:
        stmt = stmt.with_for_update(read=True)
    champions: dict[ModelTask, int] = {task: version_id for task, version_id in session.execute(stmt)}  # noqa: C416
    binary = champions.get(ModelTask.BINARY)
    return None if binary is None else make_model_key(binary, champions.get(ModelTask.MULTICLASS))


def list_model_versions(
    *, session: Session, task: ModelTask | None = None, status: ModelStatus | None = None
) -> list[ModelVersion]:
    """Model versions, oldest first, optionally of one task and one status."""
    stmt = select(ModelVersion).order_by(ModelVersion.id)
    if task is not None:
        stmt = stmt.where(ModelVersion.task == task)
    if status is not None:
        stmt = stmt.where(ModelVersion.status == status)
    return list(session.scalars(stmt))


def set_champion(
    *,
    session: Session,
    version_id: int,
    actor: str,
    reason: str,
    numbers: Mapping[str, Any] | None = None,
    comparison_id: int | None = None,
) -> Promotion | None:
    """Make a version the champion of its task, in the caller's transaction, with an audit row.

    The old champion becomes ``retired`` and a ``promotions`` row records who, why and the numbers.
    The action is ``rollback`` when the version was a champion before (it is ``retired``), else
    ``promote``. Returns that row, or None when the version already is the champion (nothing is
    written). A rejected version cannot be made champion (`InvalidTransitionError`). If another
    transaction promotes at the same moment, the one-champion index makes one of them fail with
    `IntegrityViolation`.
    """
    _require_text(reason, "reason")
    version = get_model_version(session=session, version_id=version_id)
    if version.status is ModelStatus.CHAMPION:
        return None
    if version.status is ModelStatus.REJECTED:
        raise InvalidTransitionError(
            f"model version {version.name} was rejected and cannot become champion; train a new version"
        )
    action = PromotionAction.ROLLBACK if version.status is ModelStatus.RETIRED else PromotionAction.PROMOTE
    current = session.scalars(
        select(ModelVersion)
        .where(ModelVersion.task == version.task, ModelVersion.status == ModelStatus.CHAMPION)
        .with_for_update()
    ).one_or_none()
    with _integrity(f"model version {version.name} could not become champion of {version.task}"):
        if current is not None:
            current.status = ModelStatus.RETIRED
            session.flush()  # the one-champion index must see the old one leave before the new one comes
        version.status = ModelStatus.CHAMPION
        promotion = _add_promotion(
            session,
            version,
            action,
            from_version_id=None if current is None else current.id,
            actor=actor,
            reason=reason,
            numbers=numbers,
            comparison_id=comparison_id,
        )
    logger.info(
        "champion changed",
        extra={"task": str(version.task), "version": version.name, "action": str(action), "actor": actor},
    )
    return promotion


def reject_model_version(
    *,
    session: Session,
    version_id: int,
    actor: str,
    reason: str,
    numbers: Mapping[str, Any] | None = None,
    comparison_id: int | None = None,
) -> Promotion:
    """Mark a candidate (or retired) version rejected and record why; the champion cannot be rejected."""
    _require_text(reason, "reason")
    version = get_model_version(session=session, version_id=version_id)
    if version.status is ModelStatus.CHAMPION:
        raise InvalidTransitionError(
            f"model version {version.name} is the champion of {version.task}; promote another version "
            "(or roll back to an earlier one) before rejecting it"
        )
    version.status = ModelStatus.REJECTED
    return _add_promotion(
        session,
        version,
        PromotionAction.REJECT,
        from_version_id=None,
        actor=actor,
        reason=reason,
        numbers=numbers,
        comparison_id=comparison_id,
    )


def _add_promotion(
    session: Session,
    version: ModelVersion,
    action: PromotionAction,
    *,
    from_version_id: int | None,
    actor: str,
    reason: str,
    numbers: Mapping[str, Any] | None,
    comparison_id: int | None,
) -> Promotion:
    """Add and flush the audit row of `action` on `version` (who, why, the numbers behind it)."""
    promotion = Promotion(
        task=version.task,
        action=action,
        from_version_id=from_version_id,
        to_version_id=version.id,
        actor=actor,
        reason=reason,
        numbers=dict(numbers or {}),
        comparison_id=comparison_id,
    )
    session.add(promotion)
    session.flush()
    return promotion


def list_promotions(*, session: Session, task: ModelTask | None = None) -> list[Promotion]:
    """The promotion audit log in the order it happened, optionally for one task."""
    stmt = select(Promotion).order_by(Promotion.created_at, Promotion.id)
    if task is not None:
        stmt = stmt.where(Promotion.task == task)
    return list(session.scalars(stmt))
