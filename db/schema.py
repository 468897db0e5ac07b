"""Tables of the defect loop (SQLAlchemy 2.x typed ORM), identical on SQLite and PostgreSQL.

Statuses are Python `StrEnum`s stored as short strings with a named CHECK constraint (no native
PostgreSQL enum types), so both backends accept and refuse the same values and migrations stay plain.
Every timestamp is timezone-aware UTC on the way in and on the way out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Deterministic constraint names: Alembic can then drop or alter them by name on every backend.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ENUM_LENGTH = 32  # room for new values without widening the column
NAME_LENGTH = 200
PATH_LENGTH = 1024
LABEL_LENGTH = 64
CLAIMANT_LENGTH = 300


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class SourceKind(StrEnum):
    """Where images come from."""

    CAMERA = "camera"
    IMPORT = "import"
    UPLOAD = "upload"
    SYNTHETIC = "synthetic"


class ImageStatus(StrEnum):
    """Lifecycle of an image: new -> queued -> predicted -> labelling -> labelled, or quarantined.

    ``superseded``: the file the row points at no longer holds the row's bytes (overwritten in place,
    replaced by a rename, or a quarantined half-written file that became a valid image): the row is kept,
    with the reason and the row that replaced it (``superseded_by_id``, when known), and is never
    classified, pushed or counted as a waiting or bad file again.
    """

    NEW = "new"
    QUEUED = "queued"
    PREDICTED = "predicted"
    LABELLING = "labelling"
    LABELLED = "labelled"
    QUARANTINED = "quarantined"
    SUPERSEDED = "superseded"


class ModelTask(StrEnum):
    """The two tasks, each with its own champion."""

    BINARY = "binary"
    MULTICLASS = "multiclass"


class ModelStatus(StrEnum):
    """Registry status of a model version; at most one champion per task."""

    CANDIDATE = "candidate"
    CHAMPION = "champion"
    RETIRED = "retired"
    REJECTED = "rejected"


class LabelTaskStatus(StrEnum):
    """State of an image sent (or about to be sent) to Label Studio."""

    PENDING = "pending"
    PUSHED = "pushed"
    COMPLETED = "completed"
    FAILED = "failed"


class AnnotationOrigin(StrEnum):
    """Who produced a label."""

    LABEL_STUDIO = "label_studio"
    IMPORT = "import"
    SIMULATED = "simulated"


class TrainingTrigger(StrEnum):
    """Why a training run was started."""

    MANUAL = "manual"
    LABEL_COUNT = "label_count"
    SCHEDULE = "schedule"
    LS_WEBHOOK = "ls_webhook"


class TrainingRunStatus(StrEnum):
    """Lifecycle of a training run."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ComparisonDecision(StrEnum):
    """Outcome of a champion/challenger comparison."""

    PROMOTE = "promote"
    KEEP = "keep"


class PromotionAction(StrEnum):
    """What a row of the promotion audit log did."""

    PROMOTE = "promote"
    REJECT = "reject"
    ROLLBACK = "rollback"


def _enum(enum_cls: type[StrEnum], name: str) -> Enum:
    # values_callable stores "new", not the member name "NEW"; the CHECK is named ck_<table>_<name>.
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=ENUM_LENGTH,
        validate_strings=True,
        values_callable=lambda cls: [member.value for member in cls],
    )


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp, stored as UTC, returned as UTC on every backend.

    SQLite has no time zone type: values are stored as naive UTC and given their zone back on load.
    Naive datetimes are refused on the way in, since their zone would be a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(
                f"naive datetime {value!r}: pass a timezone-aware datetime, e.g. datetime.now(UTC)"
            )
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base; its metadata carries the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _created_at() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), default=utcnow, nullable=False)


def _updated_at() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False)


class Source(Base):
    """A place images come from: a camera folder, an import, uploads, the synthetic generator."""

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True, nullable=False)
    kind: Mapped[SourceKind] = mapped_column(_enum(SourceKind, "source_kind"), nullable=False)
    path: Mapped[str | None] = mapped_column(String(PATH_LENGTH), nullable=True)
    created_at: Mapped[datetime] = _created_at()


class Image(Base):
    """One distinct file content (by sha256), or one quarantined file that could not be read."""

    __tablename__ = "images"
    __table_args__ = (
        Index("ix_images_status_status_changed_at", "status", "status_changed_at"),
        # The rows recorded from one path (a file changed in place supersedes them). A hash index on
        # PostgreSQL: a b-tree entry cannot hold the longest paths (1,024 characters of UTF-8).
        Index("ix_images_path", "path", postgresql_using="hash"),
        CheckConstraint("status <> 'quarantined' OR reason IS NOT NULL", name="quarantine_has_reason"),
        CheckConstraint("status <> 'superseded' OR reason IS NOT NULL", name="superseded_has_reason"),
        # A quarantined file that could not be read has no hash; superseded, it keeps having none.
        CheckConstraint(
            "sha256 IS NOT NULL OR status IN ('quarantined', 'superseded')", name="hash_unless_quarantined"
        ),
        CheckConstraint("sha256 IS NOT NULL OR file_key IS NOT NULL", name="has_identity"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Nullable: an unreadable file has no hash; it is then identified by file_key.
    sha256: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    # sha256 of (path, size, mtime) for a quarantined file without a content hash: seen twice, one row.
    file_key: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    path: Mapped[str] = mapped_column(String(PATH_LENGTH), nullable=False)
    original_name: Mapped[str | None] = mapped_column(String(PATH_LENGTH), nullable=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"), index=True, nullable=False)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    mode: Mapped[str | None] = mapped_column(String(16), nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[ImageStatus] = mapped_column(
        _enum(ImageStatus, "image_status"), default=ImageStatus.NEW, nullable=False
    )
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    status_changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    # The worker process that last took the image to classify it (see workers.claims): with it, a worker
    # that starts re-publishes what a dead one held, and leaves live workers' images alone.
    claimed_by: Mapped[str | None] = mapped_column(String(CLAIMANT_LENGTH), nullable=True)
    # The row holding the bytes now found at this row's path (status superseded), when known.
    superseded_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("images.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class TrainingRun(Base):
    """One training job for one task and architecture."""

    __tablename__ = "training_runs"
    __table_args__ = (CheckConstraint("status <> 'failed' OR error IS NOT NULL", name="failure_has_error"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[ModelTask] = mapped_column(_enum(ModelTask, "model_task"), nullable=False)
    architecture: Mapped[str] = mapped_column(String(LABEL_LENGTH), nullable=False)
    trigger: Mapped[TrainingTrigger] = mapped_column(
        _enum(TrainingTrigger, "training_trigger"), nullable=False
    )
    status: Mapped[TrainingRunStatus] = mapped_column(
        _enum(TrainingRunStatus, "training_run_status"), default=TrainingRunStatus.QUEUED, nullable=False
    )
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    n_train: Mapped[int | None] = mapped_column(Integer, nullable=True)
    n_val: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # model_versions also points here: use_alter breaks the cycle when tables are created.
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", use_alter=True, ondelete="SET NULL"), nullable=True
    )
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = _created_at()


class ModelVersion(Base):
    """A trained model artifact and everything needed to reproduce and trust it."""

    __tablename__ = "model_versions"
    __table_args__ = (
        # The database itself refuses a second champion for a task.
        Index(
            "uq_model_versions_task_champion",
            "task",
            unique=True,
            postgresql_where=text("status = 'champion'"),
            sqlite_where=text("status = 'champion'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True, nullable=False)
    task: Mapped[ModelTask] = mapped_column(_enum(ModelTask, "model_task"), nullable=False)
    architecture: Mapped[str] = mapped_column(String(LABEL_LENGTH), nullable=False)
    classes: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    input_spec: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    artifact_path: Mapped[str] = mapped_column(String(PATH_LENGTH), nullable=False)
    artifact_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    training_snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    status: Mapped[ModelStatus] = mapped_column(
        _enum(ModelStatus, "model_status"), default=ModelStatus.CANDIDATE, nullable=False
    )
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True
    )
    training_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("training_runs.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class Prediction(Base):
    """The combined class distribution of one image under one pair of model versions."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("image_id", "model_key"),
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence_in_unit_interval"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), nullable=False)
    binary_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), nullable=False)
    multiclass_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    # "b12-m7" / "b12-m-": a non-null key, so (image_id, model_key) is unique even without a multiclass model.
    model_key: Mapped[str] = mapped_column(String(LABEL_LENGTH), nullable=False)
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON, nullable=False)
    predicted_label: Mapped[str] = mapped_column(String(LABEL_LENGTH), nullable=False)
    confidence: Mapped[float] = mapped_column(Float, nullable=False)
    uncertainty: Mapped[dict[str, float]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = _created_at()


class LabelTask(Base):
    """An image selected for labelling in one Label Studio project."""

    __tablename__ = "label_tasks"
    __table_args__ = (
        UniqueConstraint("image_id", "ls_project_id"),
        UniqueConstraint("ls_project_id", "ls_task_id"),
        CheckConstraint(
            "status IN ('pending', 'failed') OR ls_task_id IS NOT NULL", name="pushed_has_ls_task_id"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), nullable=False)
    ls_project_id: Mapped[int] = mapped_column(Integer, nullable=False)
    ls_task_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    informativeness: Mapped[float] = mapped_column(Float, nullable=False)
    strategy: Mapped[str] = mapped_column(String(LABEL_LENGTH), nullable=False)
    model_key: Mapped[str | None] = mapped_column(String(LABEL_LENGTH), nullable=True)
    status: Mapped[LabelTaskStatus] = mapped_column(
        _enum(LabelTaskStatus, "label_task_status"), default=LabelTaskStatus.PENDING, nullable=False
    )
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    pushed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class Annotation(Base):
    """A human (or imported, or simulated) label of an image."""

    __tablename__ = "annotations"
    __table_args__ = (CheckConstraint("label IS NOT NULL OR was_cancelled", name="label_unless_cancelled"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True, nullable=False)
    label: Mapped[str | None] = mapped_column(String(LABEL_LENGTH), nullable=True)
    annotator: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)
    ls_annotation_id: Mapped[int | None] = mapped_column(Integer, unique=True, nullable=True)
    ls_task_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    origin: Mapped[AnnotationOrigin] = mapped_column(
        _enum(AnnotationOrigin, "annotation_origin"), default=AnnotationOrigin.LABEL_STUDIO, nullable=False
    )
    was_cancelled: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    annotated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class EvaluationSet(Base):
    """A frozen evaluation set: champion and challengers are scored on the same images."""

    __tablename__ = "evaluation_sets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True, nullable=False)
    task: Mapped[ModelTask] = mapped_column(_enum(ModelTask, "model_task"), nullable=False)
    # How labelled images are assigned to the set (e.g. {"kind": "group_hash", "fraction": 0.2, "salt": ...}),
    # fixed when the set is created, so an image's side never changes; None: explicit additions only.
    rule: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = _created_at()


class EvaluationSetMember(Base):
    """An image of an evaluation set with its label; members are only ever added, with a reason."""

    __tablename__ = "evaluation_set_members"
    __table_args__ = (CheckConstraint("added_reason <> ''", name="added_reason_not_empty"),)

    evaluation_set_id: Mapped[int] = mapped_column(ForeignKey("evaluation_sets.id"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), primary_key=True)
    label: Mapped[str] = mapped_column(String(LABEL_LENGTH), nullable=False)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    added_reason: Mapped[str] = mapped_column(Text, nullable=False)


class Comparison(Base):
    """Champion and a challenger scored on one evaluation set, and the decision taken."""

    __tablename__ = "comparisons"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluation_set_id: Mapped[int] = mapped_column(ForeignKey("evaluation_sets.id"), nullable=False)
    task: Mapped[ModelTask] = mapped_column(_enum(ModelTask, "model_task"), nullable=False)
    champion_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    challenger_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), nullable=False)
    decision: Mapped[ComparisonDecision] = mapped_column(
        _enum(ComparisonDecision, "comparison_decision"), nullable=False
    )
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    numbers: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = _created_at()


class Promotion(Base):
    """Audit log of champion changes: who, when, why and the numbers."""

    __tablename__ = "promotions"
    __table_args__ = (CheckConstraint("reason <> ''", name="reason_not_empty"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[ModelTask] = mapped_column(_enum(ModelTask, "model_task"), nullable=False)
    action: Mapped[PromotionAction] = mapped_column(
        _enum(PromotionAction, "promotion_action"), nullable=False
    )
    from_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    to_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), nullable=False)
    actor: Mapped[str] = mapped_column(String(NAME_LENGTH), nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    numbers: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    comparison_id: Mapped[int | None] = mapped_column(ForeignKey("comparisons.id"), nullable=True)
    created_at: Mapped[datetime] = _created_at()


class ModelEvaluation(Base):
    """A model version scored on a labelled data set outside the loop (``defectloop evaluate``)."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True, nullable=False)
    # Where the data came from, and a fingerprint of its (file, label) list: one name can hold other data.
    dataset: Mapped[str] = mapped_column(String(PATH_LENGTH), nullable=False)
    dataset_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    n_images: Mapped[int] = mapped_column(Integer, nullable=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = _created_at()


class SyncCursor(Base):
    """How far a periodic sync has got (e.g. reconciliation: annotations updated up to this time)."""

    __tablename__ = "sync_cursors"

    name: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    position: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = _updated_at()


class DemoRunStatus(StrEnum):
    """Lifecycle of a `defectloop demo` run."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"  # Ctrl-C: a rerun resumes it
    FAILED = "failed"


class DemoArm(StrEnum):
    """Which way a demo round chose its labels."""

    ACTIVE = "active"  # the loop: the most informative images, labelled through the recording service
    RANDOM = "random"  # the control arm: the same budget drawn at random, trained and scored alike


class DemoRun(Base):
    """One `defectloop demo`: its settings, when it ran and how it ended."""

    __tablename__ = "demo_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True, nullable=False)
    status: Mapped[DemoRunStatus] = mapped_column(
        _enum(DemoRunStatus, "demo_run_status"), default=DemoRunStatus.RUNNING, nullable=False
    )
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = _created_at()


class DemoRound(Base):
    """One arm's state after one round of a demo: labels used so far and its models' frozen-set scores.

    ``metrics`` holds what the report plots (``macro_f1``, ``defect_recall``, ``multiclass_macro_f1``,
    confusion matrices, calibration bins, ...); ``timings`` the seconds each stage of the round took.
    """

    __tablename__ = "demo_rounds"
    __table_args__ = (UniqueConstraint("run_id", "round", "arm"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("demo_runs.id"), index=True, nullable=False)
    round: Mapped[int] = mapped_column(Integer, nullable=False)
    arm: Mapped[DemoArm] = mapped_column(_enum(DemoArm, "demo_arm"), nullable=False)
    labels_used: Mapped[int] = mapped_column(Integer, nullable=False)
    defects_found: Mapped[int] = mapped_column(Integer, nullable=False)
    binary_version: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)
    multiclass_version: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict, nullable=False)
    created_at: Mapped[datetime] = _created_at()
