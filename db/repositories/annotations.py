"""Annotations (from Label Studio, imports or simulation) and the current label of an image."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.errors import IntegrityViolation
from db.repositories._common import _add_row, _insert_or_get, _integrity, _update_rows
from db.schema import Annotation, AnnotationOrigin, Image, ImageStatus, utcnow


class RecordOutcome(StrEnum):
    """What an idempotent write did."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


def record_annotation(
    *,
    session: Session,
    image_id: int,
    label: str | None,
    annotator: str | None,
    ls_annotation_id: int | None = None,
    ls_task_id: int | None = None,
    origin: AnnotationOrigin = AnnotationOrigin.LABEL_STUDIO,
    was_cancelled: bool = False,
    deleted: bool = False,
    annotated_at: datetime | None = None,
) -> tuple[Annotation, RecordOutcome]:
    """Create or update an annotation; returns it and whether it was created, updated or unchanged.

    Idempotent by `ls_annotation_id`: a webhook delivered twice, or found again by reconciliation,
    changes nothing the second time. A delivery older than what is stored (by `annotated_at`) is
    ignored, and a deleted annotation stays deleted. Without `ls_annotation_id` (imported or
    simulated labels) the same image, origin, annotator and label are one annotation. Raises
    `IntegrityViolation` if the Label Studio id is already recorded for another image.
    """
    if label is None and not was_cancelled:
        raise ValueError("an annotation needs a label unless it was cancelled")
    when = annotated_at or utcnow()
    fields: dict[str, Any] = {
        "label": label,
        "annotator": annotator,
        "ls_task_id": ls_task_id,
        "was_cancelled": was_cancelled,
        "deleted": deleted,
    }
    if ls_annotation_id is None:
        existing = session.scalars(
            select(Annotation)
            .where(
                Annotation.image_id == image_id,
                Annotation.ls_annotation_id.is_(None),
                Annotation.origin == origin,
                Annotation.annotator.is_not_distinct_from(annotator),
                Annotation.label.is_not_distinct_from(label),
                Annotation.deleted.is_(False),
            )
            .limit(1)
        ).first()
        if existing is not None:
            return existing, RecordOutcome.UNCHANGED
        annotation = Annotation(image_id=image_id, origin=origin, annotated_at=when, **fields)
        _add_row(
            session,
            annotation,
            f"annotation of image {image_id} could not be recorded (does the image exist?)",
        )
        return annotation, RecordOutcome.CREATED

    values = {
        "image_id": image_id,
        "ls_annotation_id": ls_annotation_id,
        "origin": origin,
        "annotated_at": when,
    }
    with _integrity(f"annotation {ls_annotation_id} of image {image_id} could not be recorded"):
        annotation, created = _insert_or_get(session, Annotation, {**values, **fields}, ["ls_annotation_id"])
    if created:
        return annotation, RecordOutcome.CREATED
    if annotation.image_id != image_id:
        raise IntegrityViolation(
            f"Label Studio annotation {ls_annotation_id} is recorded for image {annotation.image_id}, "
            f"not image {image_id}; check the task's image mapping"
        )
    # Label Studio never reuses an id, so a deletion is final; a stale delivery must not undo a newer edit.
    if annotation.deleted or annotation.annotated_at > when:
        return annotation, RecordOutcome.UNCHANGED
    changed = {key: value for key, value in fields.items() if getattr(annotation, key) != value}
    if not changed:
        return annotation, RecordOutcome.UNCHANGED
    for key, value in changed.items():
        setattr(annotation, key, value)
    annotation.annotated_at = when
    with _integrity(f"annotation {ls_annotation_id} could not be updated"):
        session.flush()
    return annotation, RecordOutcome.UPDATED


def mark_annotation_deleted(*, session: Session, ls_annotation_id: int) -> bool:
    """Mark a Label Studio annotation deleted; True if this call changed it.

    Idempotent; an unknown id returns False (a delete may arrive for an annotation never recorded).
    """
    now = utcnow()
    stmt = (
        update(Annotation)
        .where(Annotation.ls_annotation_id == ls_annotation_id, Annotation.deleted.is_(False))
        .values(deleted=True, updated_at=now)
    )
    return _update_rows(session, Annotation, stmt) == 1


def get_annotation_by_ls_id(*, session: Session, ls_annotation_id: int) -> Annotation | None:
    """The annotation recorded for this Label Studio annotation id, or None."""
    stmt = select(Annotation).where(Annotation.ls_annotation_id == ls_annotation_id)
    return session.scalars(stmt).one_or_none()


def current_label(*, session: Session, image_id: int) -> str | None:
    """The label of the latest annotation of the image that is neither deleted nor cancelled, or None."""
    stmt = (
        select(Annotation.label)
        .where(
            Annotation.image_id == image_id,
            Annotation.deleted.is_(False),
            Annotation.was_cancelled.is_(False),
        )
        .order_by(Annotation.annotated_at.desc(), Annotation.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def list_labelled_images(*, session: Session) -> list[tuple[Image, str]]:
    """Every image with a current label and that label, oldest image first: the training set the
    annotators and imports have built. The current label is ``current_label``'s (the latest annotation
    neither deleted nor cancelled); quarantined and superseded images (whose bytes are gone) are left out."""
    ranked = (
        select(
            Annotation.image_id,
            Annotation.label,
            func.row_number()
            .over(
                partition_by=Annotation.image_id,
                order_by=(Annotation.annotated_at.desc(), Annotation.id.desc()),
            )
            .label("rank"),
        )
        .where(Annotation.deleted.is_(False), Annotation.was_cancelled.is_(False))
        .subquery()
    )
    stmt = (
        select(Image, ranked.c.label)
        .join(ranked, ranked.c.image_id == Image.id)
        .where(ranked.c.rank == 1, Image.status.not_in([ImageStatus.QUARANTINED, ImageStatus.SUPERSEDED]))
        .order_by(Image.id)
    )
    return [(image, str(label)) for image, label in session.execute(stmt)]


def count_labels_since(*, session: Session, since: datetime | None) -> int:
    """Labels (annotations neither deleted nor cancelled) recorded after ``since`` (all when None)."""
    stmt = (
        select(func.count())
        .select_from(Annotation)
        .where(Annotation.deleted.is_(False), Annotation.was_cancelled.is_(False))
    )
    if since is not None:
        stmt = stmt.where(Annotation.created_at > since)
    return int(session.scalar(stmt) or 0)
