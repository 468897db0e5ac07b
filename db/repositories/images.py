"""Images: recording decoded files, their status moves (compare-and-set, so racing workers agree),
worker claims, supersession when a file's bytes change, and the queries of the sweeper."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from db.repositories._common import (
    _check_sha256,
    _get,
    _insert_or_get,
    _integrity,
    _require_text,
    _update_rows,
    _updated_ids,
)
from db.schema import CLAIMANT_LENGTH, Image, ImageStatus, utcnow

logger = logging.getLogger(__name__)


def _as_statuses(expected: ImageStatus | Iterable[ImageStatus] | None) -> list[ImageStatus] | None:
    if expected is None:
        return None
    if isinstance(expected, ImageStatus):
        return [expected]
    return list(expected)


def add_image(
    *,
    session: Session,
    sha256: str,
    path: str,
    source_id: int,
    width: int | None,
    height: int | None,
    mode: str | None,
    size_bytes: int | None,
    original_name: str | None = None,
    status: ImageStatus = ImageStatus.NEW,
) -> tuple[Image, bool]:
    """Record a decoded image; returns ``(image, created)``.

    Idempotent on `sha256`: the same bytes seen again (another path, another process at the same
    moment) return the existing row, unchanged, with ``created=False``.
    """
    _check_sha256(sha256)
    if status is ImageStatus.QUARANTINED:
        raise ValueError("add_image records readable images; use quarantine_file for a bad one")
    values = {
        "sha256": sha256,
        "path": path,
        "original_name": original_name,
        "source_id": source_id,
        "width": width,
        "height": height,
        "mode": mode,
        "size_bytes": size_bytes,
        "status": status,
    }
    with _integrity(f"image {path!r} could not be recorded (does source {source_id} exist?)"):
        return _insert_or_get(session, Image, values, ["sha256"])


def get_image(*, session: Session, image_id: int) -> Image:
    """The image with this id; raises `NotFoundError`."""
    return _get(session, Image, image_id, "image")


def get_image_by_sha256(*, session: Session, sha256: str) -> Image | None:
    """The image with these bytes, or None."""
    return session.scalars(select(Image).where(Image.sha256 == sha256)).one_or_none()


def set_image_status(
    *,
    session: Session,
    image_id: int,
    status: ImageStatus,
    reason: str | None = None,
    expected: ImageStatus | Iterable[ImageStatus] | None = None,
    claimed_by: str | None = None,
) -> bool:
    """Compare-and-set the status of an image; True if this call moved it.

    With `expected`, the row moves only if its current status is one of them, in one UPDATE: of two
    workers racing for the same image exactly one gets True (the row lock serialises them). Without
    it the move is unconditional. `reason` replaces the stored one (required for quarantined and
    superseded). `claimed_by`, when given, records the worker process taking the image (see
    `find_claimed_images`). Raises `NotFoundError` if the image does not exist.
    """
    if status in (ImageStatus.QUARANTINED, ImageStatus.SUPERSEDED):
        _require_text(reason or "", "reason")
    statuses = _as_statuses(expected)
    now = utcnow()
    values: dict[str, Any] = {"status": status, "reason": reason, "status_changed_at": now, "updated_at": now}
    if claimed_by is not None:
        values["claimed_by"] = claimed_by[:CLAIMANT_LENGTH]
    stmt = update(Image).where(Image.id == image_id).values(**values)
    if statuses is not None:
        stmt = stmt.where(Image.status.in_(statuses))
    moved = _update_rows(session, Image, stmt) == 1
    if not moved:
        get_image(session=session, image_id=image_id)  # a missing image is an error, not a lost race
    return moved


def supersede_images_at(
    *, session: Session, paths: Iterable[str], reason: str, by_image_id: int | None = None
) -> list[int]:
    """Mark superseded every row recorded from one of `paths` (the file now holds other bytes); their ids.

    `by_image_id` is the row recorded from the new bytes: it is left alone, and named on the rows
    superseded now and on those superseded earlier without knowing by what (a worker that found the file
    changed before the watcher recorded the new bytes). Idempotent: a superseded row stays as it is.
    """
    _require_text(reason, "reason")
    wanted = sorted(set(paths))
    if not wanted:
        return []
    now = utcnow()
    others: list[ColumnElement[bool]] = [Image.path.in_(wanted)]
    if by_image_id is not None:
        others.append(Image.id != by_image_id)
    ids = _updated_ids(
        session,
        Image,
        update(Image)
        .where(*others, Image.status != ImageStatus.SUPERSEDED)
        .values(
            status=ImageStatus.SUPERSEDED,
            reason=reason,
            superseded_by_id=by_image_id,
            status_changed_at=now,
            updated_at=now,
        ),
    )
    if by_image_id is not None:
        _updated_ids(
            session,
            Image,
            update(Image)
            .where(*others, Image.status == ImageStatus.SUPERSEDED, Image.superseded_by_id.is_(None))
            .values(superseded_by_id=by_image_id, updated_at=now),
        )
    if ids:
        logger.info("images superseded", extra={"image_ids": ids, "superseded_by": by_image_id})
    return ids


def revive_image(
    *,
    session: Session,
    image_id: int,
    status: ImageStatus,
    path: str,
    original_name: str | None,
    source_id: int,
    reason: str | None = None,
) -> bool:
    """Bring back a superseded row whose bytes were found again at `path` (compare-and-set from
    superseded to `status`: ``new`` to be classified again, or ``quarantined`` with `reason`); True if
    this call moved it."""
    if status is ImageStatus.SUPERSEDED:
        raise ValueError("revive_image moves a superseded row to another status")
    if status is ImageStatus.QUARANTINED:
        _require_text(reason or "", "reason")
    now = utcnow()
    stmt = (
        update(Image)
        .where(Image.id == image_id, Image.status == ImageStatus.SUPERSEDED)
        .values(
            status=status,
            reason=reason,
            path=path,
            original_name=original_name,
            source_id=source_id,
            superseded_by_id=None,
            claimed_by=None,
            status_changed_at=now,
            updated_at=now,
        )
    )
    return _update_rows(session, Image, stmt) == 1


def find_claimed_images(
    *, session: Session, status: ImageStatus = ImageStatus.QUEUED, limit: int | None = None
) -> list[tuple[int, str]]:
    """``(image id, claimant)`` of the images in `status` that a worker process claimed, oldest id first."""
    stmt = (
        select(Image.id, Image.claimed_by)
        .where(Image.status == status, Image.claimed_by.is_not(None))
        .order_by(Image.id)
        .limit(limit)
    )
    return [(int(image_id), str(claimant)) for image_id, claimant in session.execute(stmt)]


def release_claims(
    *, session: Session, image_ids: Iterable[int], claimant: str, status: ImageStatus = ImageStatus.QUEUED
) -> list[int]:
    """Clear the claim of `claimant` on those of `image_ids` still in `status` and claimed by it (compare-
    and-set: a row another worker took meanwhile is left alone); the ids released. Their waiting clock
    restarts, so the sweeper does not publish them a second time at once."""
    ids = sorted({int(i) for i in image_ids})
    if not ids:
        return []
    now = utcnow()
    stmt = (
        update(Image)
        .where(Image.id.in_(ids), Image.status == status, Image.claimed_by == claimant[:CLAIMANT_LENGTH])
        .values(claimed_by=None, status_changed_at=now, updated_at=now)
    )
    return _updated_ids(session, Image, stmt)


def requeue_predicted_images(*, session: Session) -> list[int]:
    """Move every ``predicted`` image (the unlabelled pool) back to ``queued`` and return their ids.

    Called in the transaction that changes a champion: the pool's predictions belong to the old
    model, and selection ranks the current champions' predictions only. Images in Label Studio
    (``labelling``) are re-scored by the labelling push instead. A queued image that is never
    published is found by the sweeper.
    """
    now = utcnow()
    stmt = (
        update(Image)
        .where(Image.status == ImageStatus.PREDICTED)
        .values(status=ImageStatus.QUEUED, status_changed_at=now, updated_at=now)
    )
    return _updated_ids(session, Image, stmt)


def list_images_by_ids(
    *, session: Session, image_ids: Iterable[int], statuses: Iterable[ImageStatus] | None = None
) -> list[Image]:
    """The images among `image_ids` (in one of `statuses`, if given), by id; unknown ids are left out."""
    ids = sorted({int(i) for i in image_ids})
    if not ids:
        return []
    stmt = select(Image).where(Image.id.in_(ids)).order_by(Image.id)
    wanted = _as_statuses(list(statuses) if statuses is not None else None)
    if wanted is not None:
        stmt = stmt.where(Image.status.in_(wanted))
    return list(session.scalars(stmt))


def list_images_by_status(
    *, session: Session, status: ImageStatus, limit: int | None = None, after_id: int | None = None
) -> list[Image]:
    """Images in `status`, oldest id first; page with `after_id` (the last id of the previous page)."""
    stmt = select(Image).where(Image.status == status).order_by(Image.id).limit(limit)
    if after_id is not None:
        stmt = stmt.where(Image.id > after_id)
    return list(session.scalars(stmt))


def find_stuck_images(
    *,
    session: Session,
    status: ImageStatus,
    older_than: timedelta,
    now: datetime | None = None,
    limit: int | None = None,
) -> list[Image]:
    """Images that entered `status` more than `older_than` ago (for the sweeper), longest stuck first."""
    cutoff = (now or utcnow()) - older_than
    stmt = (
        select(Image)
        .where(Image.status == status, Image.status_changed_at < cutoff)
        .order_by(Image.status_changed_at, Image.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def count_images_by_status(*, session: Session) -> dict[ImageStatus, int]:
    """Number of images in each status; every status is a key, zero included."""
    counts = dict.fromkeys(ImageStatus, 0)
    for status, count in session.execute(select(Image.status, func.count()).group_by(Image.status)):
        counts[status] = count
    return counts
