"""Label tasks: images planned for a Label Studio project, pushed, completed or reopened, and the
queries that choose and reconcile them."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from db.errors import InvalidTransitionError
from db.repositories._common import _get, _insert_or_get, _integrity, _require_text, _update_rows
from db.schema import Annotation, Image, ImageStatus, LabelTask, LabelTaskStatus, Prediction, utcnow


def add_label_task(
    *,
    session: Session,
    image_id: int,
    ls_project_id: int,
    informativeness: float,
    strategy: str,
    model_key: str | None = None,
) -> tuple[LabelTask, bool]:
    """Plan an image for a Label Studio project; returns ``(task, created)``.

    Idempotent on (image, project): an image is never planned, hence never pushed, twice to a project.
    """
    values = {
        "image_id": image_id,
        "ls_project_id": ls_project_id,
        "informativeness": float(informativeness),
        "strategy": strategy,
        "model_key": model_key,
        "status": LabelTaskStatus.PENDING,
    }
    with _integrity(f"label task for image {image_id} could not be recorded (does the image exist?)"):
        return _insert_or_get(session, LabelTask, values, ["image_id", "ls_project_id"])


def get_label_task(*, session: Session, label_task_id: int) -> LabelTask:
    """The label task with this id; raises `NotFoundError`."""
    return _get(session, LabelTask, label_task_id, "label task")


def mark_label_task_pushed(
    *, session: Session, label_task_id: int, ls_task_id: int, pushed_at: datetime | None = None
) -> LabelTask:
    """Record the Label Studio task id of a planned task (pending or failed -> pushed).

    Idempotent: pushing again with the same Label Studio id changes nothing. A different id for an
    already pushed task raises `InvalidTransitionError`.
    """
    task = get_label_task(session=session, label_task_id=label_task_id)
    if task.status in (LabelTaskStatus.PUSHED, LabelTaskStatus.COMPLETED):
        if task.ls_task_id == ls_task_id:
            return task
        raise InvalidTransitionError(
            f"label task {label_task_id} was already pushed as Label Studio task {task.ls_task_id}, "
            f"not {ls_task_id}; an image is pushed to a project once"
        )
    task.ls_task_id = ls_task_id
    task.status = LabelTaskStatus.PUSHED
    task.pushed_at = pushed_at or utcnow()
    task.reason = None
    with _integrity(f"Label Studio task {ls_task_id} is already linked to another image of the project"):
        session.flush()
    return task


def mark_label_task_failed(*, session: Session, label_task_id: int, reason: str) -> LabelTask:
    """Record that pushing a planned task failed, and why (a later push may still succeed)."""
    _require_text(reason, "reason")
    task = get_label_task(session=session, label_task_id=label_task_id)
    if task.status not in (LabelTaskStatus.PENDING, LabelTaskStatus.FAILED):
        raise InvalidTransitionError(
            f"label task {label_task_id} is {task.status}; only a pending push can fail"
        )
    task.status = LabelTaskStatus.FAILED
    task.reason = reason
    session.flush()
    return task


def delete_open_label_task(*, session: Session, label_task_id: int) -> bool:
    """Forget a task that waits for a label (pending, pushed or failed; its Label Studio task was taken
    back); True if deleted. A completed task holds an annotation and is never deleted here."""
    stmt = delete(LabelTask).where(
        LabelTask.id == label_task_id, LabelTask.status != LabelTaskStatus.COMPLETED
    )
    return len(session.scalars(stmt.returning(LabelTask.id)).all()) == 1


def mark_label_task_completed(*, session: Session, ls_project_id: int, ls_task_id: int) -> bool:
    """Mark the task with this Label Studio id completed; True if this call changed it (idempotent)."""
    stmt = (
        update(LabelTask)
        .where(
            LabelTask.ls_project_id == ls_project_id,
            LabelTask.ls_task_id == ls_task_id,
            LabelTask.status == LabelTaskStatus.PUSHED,
        )
        .values(status=LabelTaskStatus.COMPLETED, updated_at=utcnow())
    )
    return _update_rows(session, LabelTask, stmt) == 1


def reopen_label_task(*, session: Session, ls_task_id: int, ls_project_id: int | None = None) -> bool:
    """A completed task whose label was deleted waits for a label again (``pushed``); True if changed.

    Label Studio task ids are unique on a server, so the project may be left out (a deletion webhook
    names only annotation ids).
    """
    stmt = update(LabelTask).where(
        LabelTask.ls_task_id == ls_task_id, LabelTask.status == LabelTaskStatus.COMPLETED
    )
    if ls_project_id is not None:
        stmt = stmt.where(LabelTask.ls_project_id == ls_project_id)
    reopened = stmt.values(status=LabelTaskStatus.PUSHED, updated_at=utcnow())
    return _update_rows(session, LabelTask, reopened) >= 1


def list_label_task_image_ids(*, session: Session, ls_project_id: int) -> set[int]:
    """Ids of the images already planned for (or pushed to) a project: selection must skip them."""
    stmt = select(LabelTask.image_id).where(LabelTask.ls_project_id == ls_project_id)
    return set(session.scalars(stmt))


def get_label_task_by_ls_id(*, session: Session, ls_project_id: int, ls_task_id: int) -> LabelTask | None:
    """The label task pushed as this Label Studio task of this project, or None."""
    stmt = select(LabelTask).where(
        LabelTask.ls_project_id == ls_project_id, LabelTask.ls_task_id == ls_task_id
    )
    return session.scalars(stmt).one_or_none()


def list_label_tasks(
    *,
    session: Session,
    ls_project_id: int,
    statuses: Iterable[LabelTaskStatus] | None = None,
    image_ids: Iterable[int] | None = None,
) -> list[LabelTask]:
    """The project's label tasks (in one of ``statuses`` / for ``image_ids``, if given), by id."""
    stmt = select(LabelTask).where(LabelTask.ls_project_id == ls_project_id).order_by(LabelTask.id)
    if statuses is not None:
        stmt = stmt.where(LabelTask.status.in_(list(statuses)))
    if image_ids is not None:
        stmt = stmt.where(LabelTask.image_id.in_(sorted({int(i) for i in image_ids})))
    return list(session.scalars(stmt))


def set_label_task_model_key(
    *, session: Session, label_task_id: int, model_key: str, informativeness: float
) -> None:
    """Record that the task now carries a prediction of ``model_key`` (after a champion change)."""
    task = get_label_task(session=session, label_task_id=label_task_id)
    task.model_key = model_key
    task.informativeness = float(informativeness)
    session.flush()


def list_labelling_candidates(
    *, session: Session, model_key: str, ls_project_id: int, limit: int | None = None
) -> list[Prediction]:
    """Predictions of ``model_key`` for images that wait for a label and are not yet planned for the project.

    Candidates are ``predicted`` images (never ``labelling``/``labelled``/``quarantined`` ones), without a
    label task in the project and without a standing annotation (an imported label counts), newest first.
    """
    planned = select(LabelTask.image_id).where(LabelTask.ls_project_id == ls_project_id)
    annotated = select(Annotation.image_id).where(
        Annotation.deleted.is_(False), Annotation.was_cancelled.is_(False)
    )
    stmt = (
        select(Prediction)
        .join(Image, Image.id == Prediction.image_id)
        .where(
            Prediction.model_key == model_key,
            Image.status == ImageStatus.PREDICTED,
            Image.id.not_in(planned),
            Image.id.not_in(annotated),
        )
        .order_by(Prediction.image_id.desc())
        .limit(limit)
    )
    return list(session.scalars(stmt))


def list_ls_annotation_ids(*, session: Session, ls_project_id: int) -> list[tuple[int, int]]:
    """(annotation id, task id) of the standing Label Studio annotations on the project's tasks."""
    stmt = (
        select(Annotation.ls_annotation_id, Annotation.ls_task_id)
        .join(
            LabelTask,
            (LabelTask.ls_task_id == Annotation.ls_task_id) & (LabelTask.ls_project_id == ls_project_id),
        )
        .where(Annotation.ls_annotation_id.is_not(None), Annotation.deleted.is_(False))
        .order_by(Annotation.ls_annotation_id)
    )
    return [(int(a), int(t)) for a, t in session.execute(stmt).all() if a is not None and t is not None]
