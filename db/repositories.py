"""Repository functions: the only way the application reads and writes the database.

Every function takes a keyword-only ``session`` and leaves the transaction to the caller: it flushes
(so ids exist and the database checks its rules) but never commits or rolls back. Writes that a retry
or a second process may repeat are idempotent, and say so in their docstring. Idempotent inserts use
the backend's ``INSERT ... ON CONFLICT DO NOTHING``, so two processes inserting the same key at the
same moment end with one row, and both get it back.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, Table, Update, delete, func, insert, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.errors import IntegrityViolation, InvalidTransitionError, NotFoundError
from db.schema import (
    CLAIMANT_LENGTH,
    Annotation,
    AnnotationOrigin,
    Base,
    Comparison,
    ComparisonDecision,
    DemoArm,
    DemoRound,
    DemoRun,
    DemoRunStatus,
    EvaluationSet,
    EvaluationSetMember,
    Image,
    ImageStatus,
    LabelTask,
    LabelTaskStatus,
    ModelEvaluation,
    ModelStatus,
    ModelTask,
    ModelVersion,
    Prediction,
    Promotion,
    PromotionAction,
    Source,
    SourceKind,
    SyncCursor,
    TrainingRun,
    TrainingRunStatus,
    TrainingTrigger,
    utcnow,
)

logger = logging.getLogger(__name__)

_Row = TypeVar("_Row", bound=Base)

SYSTEM_ACTOR = "system"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class RecordOutcome(StrEnum):
    """What an idempotent write did."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


# --- helpers -------------------------------------------------------------------------------------


def _insert_ignore(
    session: Session, model: type[Base], values: Mapping[str, Any], conflict_columns: Sequence[str]
) -> bool:
    """Insert a row unless one with the same `conflict_columns` exists; True if it was inserted."""
    session.flush()  # pending ORM rows must reach the database before a statement that bypasses the ORM
    table = cast(Table, model.__table__)
    row = dict(values)
    # RETURNING, not rowcount: the DBAPIs do not agree on rowcount after ON CONFLICT DO NOTHING.
    key = table.primary_key.columns[0]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        pg_stmt = postgresql.insert(table).values(row).on_conflict_do_nothing(index_elements=conflict_columns)
        return session.execute(pg_stmt.returning(key)).first() is not None
    if dialect == "sqlite":
        lite_stmt = sqlite.insert(table).values(row).on_conflict_do_nothing(index_elements=conflict_columns)
        return session.execute(lite_stmt.returning(key)).first() is not None
    # Other backends: a savepoint keeps the caller's transaction usable after the conflict.
    try:
        with session.begin_nested():
            session.execute(insert(table).values(row))
    except IntegrityError:
        return False
    return True


@contextmanager
def _integrity(message: str) -> Iterator[None]:
    """Turn a database rule violation at flush into `IntegrityViolation` with a message saying why."""
    try:
        yield
    except IntegrityError as exc:
        raise IntegrityViolation(
            f"{message}; the transaction must be rolled back (database said: {type(exc.orig).__name__})"
        ) from exc


def _get(session: Session, model: type[_Row], row_id: int, what: str) -> _Row:
    row = session.get(model, row_id)
    if row is None:
        raise NotFoundError(f"{what} {row_id} does not exist; check the id (was its transaction committed?)")
    return row


def _update_rows(session: Session, model: type[Base], stmt: Update) -> int:
    """Run a conditional UPDATE of `model` rows; how many rows it changed (see `_updated_ids`)."""
    return len(_updated_ids(session, model, stmt))


def _updated_ids(session: Session, model: type[Base], stmt: Update) -> list[int]:
    """Run a conditional UPDATE of `model` rows; the ids of the rows it changed, in order.

    The objects of those rows that this session holds are expired, so they reload on next access:
    the ORM's own synchronisation skips attributes an object never loaded (a column left None at
    insert), which would leave stale values behind.
    """
    id_column = sa_inspect(model).primary_key[0]
    ids = sorted(session.scalars(stmt.returning(id_column).execution_options(synchronize_session=False)))
    for row_id in ids:
        held = session.identity_map.get(session.identity_key(model, row_id))
        if held is not None:
            session.expire(held)
    return ids


def _as_statuses(expected: ImageStatus | Iterable[ImageStatus] | None) -> list[ImageStatus] | None:
    if expected is None:
        return None
    if isinstance(expected, ImageStatus):
        return [expected]
    return list(expected)


def _float_dict(values: Mapping[str, Any], what: str) -> dict[str, float]:
    # float(): numpy scalars are not JSON serialisable.
    try:
        return {str(key): float(value) for key, value in values.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must map names to numbers: {exc}") from exc


def _check_sha256(value: str, what: str = "sha256") -> None:
    if not _SHA256.match(value):
        raise ValueError(f"{what} must be 64 lowercase hex characters, got {value!r}")


def _require_text(value: str, what: str) -> None:
    if not value or not value.strip():
        raise ValueError(f"{what} must not be empty: it is the audit trail of why")


# --- sources and images --------------------------------------------------------------------------


def get_or_create_source(*, session: Session, name: str, kind: SourceKind, path: str | None = None) -> Source:
    """The source called `name`, created if missing (idempotent, safe against concurrent creators).

    Raises `IntegrityViolation` if the name exists with another kind.
    """
    _insert_ignore(session, Source, {"name": name, "kind": kind, "path": path}, ["name"])
    source = session.scalars(select(Source).where(Source.name == name)).one()
    if source.kind != kind:
        raise IntegrityViolation(
            f"source {name!r} already exists with kind {source.kind}, not {kind}; use another source name"
        )
    return source


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
        created = _insert_ignore(session, Image, values, ["sha256"])
    image = session.scalars(select(Image).where(Image.sha256 == sha256)).one()
    return image, created


def file_key_for(path: str, size_bytes: int, mtime_ns: int) -> str:
    """Identity of a file that has no content hash: the same path, size and mtime are the same file."""
    return hashlib.sha256(f"{path}\0{size_bytes}\0{mtime_ns}".encode()).hexdigest()


def quarantine_file(
    *,
    session: Session,
    path: str,
    reason: str,
    source_id: int,
    sha256: str | None = None,
    size_bytes: int | None = None,
    mtime_ns: int | None = None,
    original_name: str | None = None,
) -> tuple[Image, bool]:
    """Record a file that cannot be used, with the reason; returns ``(image, created)``.

    Idempotent: with a `sha256` the same bytes are one row; without one (the file could not be read)
    the same path, size and mtime are one row, so a watcher that sees a corrupt file twice records it
    once. An existing row is returned unchanged, whatever its status.
    """
    _require_text(reason, "reason")
    values: dict[str, Any] = {
        "path": path,
        "original_name": original_name,
        "source_id": source_id,
        "size_bytes": size_bytes,
        "status": ImageStatus.QUARANTINED,
        "reason": reason,
    }
    if sha256 is not None:
        _check_sha256(sha256)
        values["sha256"] = sha256
        key_column, key = "sha256", sha256
    else:
        if size_bytes is None or mtime_ns is None:
            raise ValueError("a file without sha256 needs size_bytes and mtime_ns to be recognised again")
        key_column, key = "file_key", file_key_for(path, size_bytes, mtime_ns)
        values["file_key"] = key
    with _integrity(f"quarantined file {path!r} could not be recorded (does source {source_id} exist?)"):
        created = _insert_ignore(session, Image, values, [key_column])
    image = session.scalars(select(Image).where(getattr(Image, key_column) == key)).one()
    if created:
        logger.info("file quarantined", extra={"image_id": image.id, "reason": reason})
    return image, created


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
        .returning(Image.id)
        .execution_options(synchronize_session=False)
    )
    ids = sorted(session.scalars(stmt))
    for image_id in ids:
        held = session.identity_map.get(session.identity_key(Image, image_id))
        if held is not None:
            session.expire(held)
    return ids


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


def count_quarantined_by_reason(*, session: Session) -> dict[str, int]:
    """Number of quarantined files per kind of reason.

    Reasons are stored as ``"<kind>: <detail about this file>"`` (e.g. ``"truncated image: PNG data
    ends early"``); files are counted by the kind, the part before the first ``": "``.
    """
    stmt = (
        select(Image.reason, func.count())
        .where(Image.status == ImageStatus.QUARANTINED)
        .group_by(Image.reason)
    )
    counts: Counter[str] = Counter()
    for reason, count in session.execute(stmt):
        counts[(reason or "").split(": ", 1)[0]] += count
    return dict(counts)


# --- predictions ---------------------------------------------------------------------------------


def make_model_key(binary_version_id: int, multiclass_version_id: int | None) -> str:
    """``"b12-m7"``, or ``"b12-m-"`` without a multiclass model: never NULL, so uniqueness holds."""
    multiclass = "-" if multiclass_version_id is None else str(multiclass_version_id)
    return f"b{binary_version_id}-m{multiclass}"


def add_prediction(
    *,
    session: Session,
    image_id: int,
    binary_version_id: int,
    multiclass_version_id: int | None,
    probabilities: Mapping[str, Any],
    predicted_label: str,
    confidence: float,
    uncertainty: Mapping[str, Any],
) -> tuple[Prediction, bool]:
    """Record a prediction; returns ``(prediction, created)``.

    Idempotent on (image, model versions): classifying an image again with the same models returns
    the first prediction unchanged, with ``created=False``.
    """
    probs = _float_dict(probabilities, "probabilities")
    if predicted_label not in probs:
        raise ValueError(f"predicted_label {predicted_label!r} is not one of the classes {sorted(probs)}")
    model_key = make_model_key(binary_version_id, multiclass_version_id)
    values = {
        "image_id": image_id,
        "binary_version_id": binary_version_id,
        "multiclass_version_id": multiclass_version_id,
        "model_key": model_key,
        "probabilities": probs,
        "predicted_label": predicted_label,
        "confidence": float(confidence),
        "uncertainty": _float_dict(uncertainty, "uncertainty"),
    }
    with _integrity(f"prediction for image {image_id} by {model_key} could not be recorded"):
        created = _insert_ignore(session, Prediction, values, ["image_id", "model_key"])
    prediction = session.scalars(
        select(Prediction).where(Prediction.image_id == image_id, Prediction.model_key == model_key)
    ).one()
    return prediction, created


def latest_prediction(*, session: Session, image_id: int, model_key: str | None = None) -> Prediction | None:
    """The most recent prediction of an image (by those models, if `model_key` is given), or None."""
    stmt = select(Prediction).where(Prediction.image_id == image_id)
    if model_key is not None:
        stmt = stmt.where(Prediction.model_key == model_key)
    return session.scalars(stmt.order_by(Prediction.created_at.desc(), Prediction.id.desc()).limit(1)).first()


# --- model registry ------------------------------------------------------------------------------


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
    session.add(version)
    with _integrity(f"model version {name!r} could not be registered"):
        session.flush()
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
        promotion = Promotion(
            task=version.task,
            action=action,
            from_version_id=None if current is None else current.id,
            to_version_id=version.id,
            actor=actor,
            reason=reason,
            numbers=dict(numbers or {}),
            comparison_id=comparison_id,
        )
        session.add(promotion)
        session.flush()
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
    promotion = Promotion(
        task=version.task,
        action=PromotionAction.REJECT,
        from_version_id=None,
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


# --- annotations ---------------------------------------------------------------------------------


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
        session.add(annotation)
        with _integrity(f"annotation of image {image_id} could not be recorded (does the image exist?)"):
            session.flush()
        return annotation, RecordOutcome.CREATED

    values = {
        "image_id": image_id,
        "ls_annotation_id": ls_annotation_id,
        "origin": origin,
        "annotated_at": when,
    }
    with _integrity(f"annotation {ls_annotation_id} of image {image_id} could not be recorded"):
        created = _insert_ignore(session, Annotation, {**values, **fields}, ["ls_annotation_id"])
    annotation = session.scalars(
        select(Annotation).where(Annotation.ls_annotation_id == ls_annotation_id)
    ).one()
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


def list_prediction_model_keys(*, session: Session, limit: int = 50) -> list[str]:
    """The model keys predictions were made with, newest first (the versions Label Studio may see)."""
    newest = func.max(Prediction.id)
    stmt = select(Prediction.model_key).group_by(Prediction.model_key).order_by(newest.desc()).limit(limit)
    return [str(key) for key in session.scalars(stmt)]


def list_predictions_by_confidence(
    *,
    session: Session,
    model_key: str,
    limit: int,
    most_certain: bool = True,
    exclude_image_ids: Iterable[int] = (),
) -> list[tuple[Prediction, Image]]:
    """The predictions of ``model_key`` with their images, the most confident first (or, with
    ``most_certain=False``, the least confident first); images whose bytes are gone (quarantined,
    superseded) are left out, and so are ``exclude_image_ids``."""
    order = Prediction.confidence.desc() if most_certain else Prediction.confidence.asc()
    stmt = (
        select(Prediction, Image)
        .join(Image, Image.id == Prediction.image_id)
        .where(
            Prediction.model_key == model_key,
            Image.status.not_in([ImageStatus.QUARANTINED, ImageStatus.SUPERSEDED]),
        )
        .order_by(order, Prediction.image_id)
        .limit(limit)
    )
    excluded = sorted({int(i) for i in exclude_image_ids})
    if excluded:
        stmt = stmt.where(Prediction.image_id.not_in(excluded))
    return [(row[0], row[1]) for row in session.execute(stmt)]


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


# --- label tasks ---------------------------------------------------------------------------------


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
        created = _insert_ignore(session, LabelTask, values, ["image_id", "ls_project_id"])
    task = session.scalars(
        select(LabelTask).where(LabelTask.image_id == image_id, LabelTask.ls_project_id == ls_project_id)
    ).one()
    return task, created


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


def get_sync_cursor(*, session: Session, name: str) -> datetime | None:
    """Where the named sync got to, or None before its first run."""
    return session.scalars(select(SyncCursor.position).where(SyncCursor.name == name)).one_or_none()


def advance_sync_cursor(*, session: Session, name: str, position: datetime) -> datetime:
    """Move the named cursor forward to ``position`` (never back); returns the stored position.

    Idempotent, and safe when two runs race: each only ever moves the cursor forward.
    """
    _require_text(name, "name")
    _insert_ignore(session, SyncCursor, {"name": name, "position": position}, ["name"])
    stmt = (
        update(SyncCursor)
        .where(SyncCursor.name == name, SyncCursor.position < position)
        .values(position=position, updated_at=utcnow())
    )
    _update_rows(session, SyncCursor, stmt)
    stored = get_sync_cursor(session=session, name=name)
    assert stored is not None
    return stored


def try_acquire_lease(*, session: Session, name: str, until: datetime, now: datetime | None = None) -> bool:
    """Take the named lease until ``until`` unless another holder's lease is still running; True if taken.

    One conditional UPDATE, so of two processes racing exactly one wins (on SQLite and PostgreSQL alike).
    A holder that dies simply lets its lease run out. Leases share the ``sync_cursors`` table: the
    position is the lease's expiry.
    """
    _require_text(name, "name")
    moment = now or utcnow()
    _insert_ignore(session, SyncCursor, {"name": name, "position": moment - timedelta(seconds=1)}, ["name"])
    stmt = (
        update(SyncCursor)
        .where(SyncCursor.name == name, SyncCursor.position <= moment)
        .values(position=until, updated_at=utcnow())
    )
    return _update_rows(session, SyncCursor, stmt) == 1


def release_lease(*, session: Session, name: str, now: datetime | None = None) -> None:
    """End the named lease now (its holder is done)."""
    stmt = (
        update(SyncCursor)
        .where(SyncCursor.name == name)
        .values(position=now or utcnow(), updated_at=utcnow())
    )
    _update_rows(session, SyncCursor, stmt)


def reset_sync_cursor(*, session: Session, name: str) -> bool:
    """Forget the named cursor (a full resync starts from the beginning); True if one existed."""
    row = session.get(SyncCursor, name)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


# --- training runs -------------------------------------------------------------------------------


def create_training_run(
    *,
    session: Session,
    task: ModelTask,
    architecture: str,
    trigger: TrainingTrigger,
    params: Mapping[str, Any] | None = None,
) -> TrainingRun:
    """A queued training run."""
    run = TrainingRun(task=task, architecture=architecture, trigger=trigger, params=dict(params or {}))
    session.add(run)
    session.flush()
    return run


def get_training_run(*, session: Session, run_id: int) -> TrainingRun:
    """The training run with this id; raises `NotFoundError`."""
    return _get(session, TrainingRun, run_id, "training run")


def start_training_run(*, session: Session, run_id: int) -> bool:
    """Move a queued run to running; True if this call did (of two workers, exactly one gets True)."""
    now = utcnow()
    stmt = (
        update(TrainingRun)
        .where(TrainingRun.id == run_id, TrainingRun.status == TrainingRunStatus.QUEUED)
        .values(status=TrainingRunStatus.RUNNING, started_at=now)
    )
    started = _update_rows(session, TrainingRun, stmt) == 1
    if not started:
        get_training_run(session=session, run_id=run_id)
    return started


def finish_training_run(
    *,
    session: Session,
    run_id: int,
    status: TrainingRunStatus,
    n_train: int | None = None,
    n_val: int | None = None,
    error: str | None = None,
    model_version_id: int | None = None,
    details: Mapping[str, Any] | None = None,
) -> TrainingRun:
    """Close a queued or running run as succeeded or failed (failed needs `error`); ``details`` are
    added to its ``params`` under ``result`` (e.g. what a whole retrain trained and decided).

    Raises `InvalidTransitionError` if the run is already finished or `status` is not a final one.
    """
    if status not in (TrainingRunStatus.SUCCEEDED, TrainingRunStatus.FAILED):
        raise InvalidTransitionError(f"a run finishes as succeeded or failed, not {status}")
    if status is TrainingRunStatus.FAILED:
        _require_text(error or "", "error")
    run = get_training_run(session=session, run_id=run_id)
    if run.status not in (TrainingRunStatus.QUEUED, TrainingRunStatus.RUNNING):
        raise InvalidTransitionError(f"training run {run_id} already finished as {run.status}")
    run.status = status
    run.n_train = n_train
    run.n_val = n_val
    run.error = error
    run.model_version_id = model_version_id
    run.finished_at = utcnow()
    if details is not None:
        run.params = {**run.params, "result": dict(details)}  # a new dict: JSON columns track assignment
    with _integrity(
        f"training run {run_id} could not be finished (does model version {model_version_id} exist?)"
    ):
        session.flush()
    return run


def list_training_runs(
    *,
    session: Session,
    architecture: str | None = None,
    statuses: Iterable[TrainingRunStatus] | None = None,
) -> list[TrainingRun]:
    """Training runs, oldest first, optionally of one architecture (``all``: whole-retrain requests) and
    in some statuses."""
    stmt = select(TrainingRun).order_by(TrainingRun.id)
    if architecture is not None:
        stmt = stmt.where(TrainingRun.architecture == architecture)
    if statuses is not None:
        stmt = stmt.where(TrainingRun.status.in_(list(statuses)))
    return list(session.scalars(stmt))


def latest_training_start(*, session: Session) -> datetime | None:
    """When the newest training run started (any architecture, any outcome), or None."""
    return session.scalar(select(func.max(TrainingRun.started_at)))


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


# --- evaluation ----------------------------------------------------------------------------------


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
    session.add(evaluation_set)
    with _integrity(f"evaluation set {name!r} could not be created"):
        session.flush()
    return evaluation_set


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
    session.add(comparison)
    with _integrity("comparison could not be recorded (do the evaluation set and model versions exist?)"):
        session.flush()
    return comparison


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
    session.add(evaluation)
    with _integrity("evaluation could not be recorded (does the model version exist?)"):
        session.flush()
    return evaluation


def list_evaluations(*, session: Session, model_version_id: int) -> list[ModelEvaluation]:
    """Evaluations of one model version, oldest first."""
    stmt = (
        select(ModelEvaluation)
        .where(ModelEvaluation.model_version_id == model_version_id)
        .order_by(ModelEvaluation.id)
    )
    return list(session.scalars(stmt))


# --- demo runs -----------------------------------------------------------------------------------


def create_demo_run(*, session: Session, name: str, settings: Mapping[str, Any]) -> DemoRun:
    """A running demo with its settings; a name already taken raises `IntegrityViolation`."""
    _require_text(name, "demo run name")
    run = DemoRun(name=name, settings=dict(settings), status=DemoRunStatus.RUNNING)
    session.add(run)
    with _integrity(f"a demo run named {name!r} exists already"):
        session.flush()
    return run


def get_demo_run(*, session: Session, run_id: int) -> DemoRun:
    """The demo run with this id; raises `NotFoundError`."""
    return _get(session, DemoRun, run_id, "demo run")


def get_demo_run_by_name(*, session: Session, name: str) -> DemoRun | None:
    """The demo run of this name, if any."""
    return session.scalars(select(DemoRun).where(DemoRun.name == name)).one_or_none()


def latest_demo_run(*, session: Session) -> DemoRun | None:
    """The demo run started last, if any."""
    return session.scalars(
        select(DemoRun).order_by(DemoRun.started_at.desc(), DemoRun.id.desc()).limit(1)
    ).first()


def list_demo_runs(*, session: Session) -> list[DemoRun]:
    """Every demo run, the one started last first."""
    return list(session.scalars(select(DemoRun).order_by(DemoRun.started_at.desc(), DemoRun.id.desc())))


def set_demo_run_status(
    *, session: Session, run_id: int, status: DemoRunStatus, reason: str | None = None
) -> DemoRun:
    """Mark a demo run running again (resumed), finished, stopped or failed (with why)."""
    run = get_demo_run(session=session, run_id=run_id)
    run.status = status
    run.reason = reason
    run.finished_at = None if status is DemoRunStatus.RUNNING else utcnow()
    session.flush()
    return run


def record_demo_round(
    *,
    session: Session,
    run_id: int,
    round_number: int,
    arm: DemoArm,
    labels_used: int,
    defects_found: int,
    metrics: Mapping[str, Any],
    timings: Mapping[str, float] | None = None,
    binary_version: str | None = None,
    multiclass_version: str | None = None,
) -> DemoRound:
    """One arm's result of one round; the same (run, round, arm) twice raises `IntegrityViolation`."""
    if round_number < 0 or labels_used < 0 or defects_found < 0 or defects_found > labels_used:
        raise IntegrityViolation(
            f"demo round needs round >= 0 and 0 <= defects_found <= labels_used, got round {round_number}, "
            f"{defects_found} defects in {labels_used} labels"
        )
    row = DemoRound(
        run_id=run_id,
        round=round_number,
        arm=arm,
        labels_used=labels_used,
        defects_found=defects_found,
        metrics=dict(metrics),
        timings=_float_dict(timings or {}, "timings"),
        binary_version=binary_version,
        multiclass_version=multiclass_version,
    )
    session.add(row)
    with _integrity(
        f"round {round_number} of the {arm.value} arm is recorded already (or the run does not exist)"
    ):
        session.flush()
    return row


def list_demo_rounds(*, session: Session, run_id: int, arm: DemoArm | None = None) -> list[DemoRound]:
    """A demo run's rounds in order (active before random within a round)."""
    stmt = select(DemoRound).where(DemoRound.run_id == run_id).order_by(DemoRound.round, DemoRound.arm)
    if arm is not None:
        stmt = stmt.where(DemoRound.arm == arm)
    return list(session.scalars(stmt))
