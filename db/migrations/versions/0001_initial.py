"""Initial schema: sources, images, models, predictions, labelling, training, evaluation, promotions.

Revision ID: 0001_initial
Revises:
Create Date: 2025-11-25

Written by hand to match db/schema.py exactly; tests/unit/test_db_migrations.py fails on any drift.
Status columns are VARCHAR(32) with a CHECK listing the values, as `sqlalchemy.Enum(native_enum=False)`
creates them. Values are spelled out here, not imported, so this revision never changes after release.
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TASKS = ("binary", "multiclass")


def _one_of(table: str, column: str, enum_name: str, values: Sequence[str]) -> sa.CheckConstraint:
    # An expression, not text: the column name gets quoted where it must be ("trigger"), as Enum does.
    return sa.CheckConstraint(sa.column(column).in_(values), name=op.f(f"ck_{table}_{enum_name}"))


def _status(name: str = "status") -> sa.Column[str]:
    return sa.Column(name, sa.String(length=32), nullable=False)


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _id(table: str) -> tuple[sa.Column[int], sa.PrimaryKeyConstraint]:
    return sa.Column("id", sa.Integer(), nullable=False), sa.PrimaryKeyConstraint(
        "id", name=op.f(f"pk_{table}")
    )


def _fk(table: str, column: str, target: str, *, ondelete: str | None = None) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"), ondelete=ondelete
    )


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"

    op.create_table(
        "sources",
        *_id("sources"),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=True),
        _timestamp("created_at"),
        sa.UniqueConstraint("name", name=op.f("uq_sources_name")),
        _one_of("sources", "kind", "source_kind", ("camera", "import", "upload", "synthetic")),
    )

    op.create_table(
        "evaluation_sets",
        *_id("evaluation_sets"),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("task", sa.String(length=32), nullable=False),
        _timestamp("created_at"),
        sa.UniqueConstraint("name", name=op.f("uq_evaluation_sets_name")),
        _one_of("evaluation_sets", "task", "model_task", TASKS),
    )

    # training_runs and model_versions point at each other. SQLite accepts a reference to a table that
    # does not exist yet (and cannot add one later without copying the table); PostgreSQL needs the
    # target first, so there the foreign key is added once model_versions exists.
    training_run_fk = (
        [_fk("training_runs", "model_version_id", "model_versions", ondelete="SET NULL")] if sqlite else []
    )
    op.create_table(
        "training_runs",
        *_id("training_runs"),
        sa.Column("task", sa.String(length=32), nullable=False),
        sa.Column("architecture", sa.String(length=64), nullable=False),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        _status(),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("n_train", sa.Integer(), nullable=True),
        sa.Column("n_val", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        _timestamp("started_at", nullable=True),
        _timestamp("finished_at", nullable=True),
        _timestamp("created_at"),
        *training_run_fk,
        sa.CheckConstraint(
            "status <> 'failed' OR error IS NOT NULL", name=op.f("ck_training_runs_failure_has_error")
        ),
        _one_of("training_runs", "task", "model_task", TASKS),
        _one_of(
            "training_runs",
            "trigger",
            "training_trigger",
            ("manual", "label_count", "schedule", "ls_webhook"),
        ),
        _one_of(
            "training_runs", "status", "training_run_status", ("queued", "running", "succeeded", "failed")
        ),
    )

    op.create_table(
        "model_versions",
        *_id("model_versions"),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("task", sa.String(length=32), nullable=False),
        sa.Column("architecture", sa.String(length=64), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("input_spec", sa.JSON(), nullable=False),
        sa.Column("artifact_path", sa.String(length=1024), nullable=False),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=False),
        sa.Column("training_snapshot", sa.JSON(), nullable=True),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        _status(),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("training_run_id", sa.Integer(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.UniqueConstraint("name", name=op.f("uq_model_versions_name")),
        _fk("model_versions", "parent_id", "model_versions", ondelete="SET NULL"),
        _fk("model_versions", "training_run_id", "training_runs", ondelete="SET NULL"),
        _one_of("model_versions", "task", "model_task", TASKS),
        _one_of("model_versions", "status", "model_status", ("candidate", "champion", "retired", "rejected")),
    )
    op.create_index(
        "uq_model_versions_task_champion",
        "model_versions",
        ["task"],
        unique=True,
        postgresql_where=sa.text("status = 'champion'"),
        sqlite_where=sa.text("status = 'champion'"),
    )
    if not sqlite:
        op.create_foreign_key(
            op.f("fk_training_runs_model_version_id_model_versions"),
            "training_runs",
            "model_versions",
            ["model_version_id"],
            ["id"],
            ondelete="SET NULL",
        )

    op.create_table(
        "images",
        *_id("images"),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("file_key", sa.String(length=64), nullable=True),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("original_name", sa.String(length=1024), nullable=True),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("mode", sa.String(length=16), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        _status(),
        sa.Column("reason", sa.Text(), nullable=True),
        _timestamp("status_changed_at"),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.UniqueConstraint("sha256", name=op.f("uq_images_sha256")),
        sa.UniqueConstraint("file_key", name=op.f("uq_images_file_key")),
        _fk("images", "source_id", "sources"),
        sa.CheckConstraint(
            "status <> 'quarantined' OR reason IS NOT NULL", name=op.f("ck_images_quarantine_has_reason")
        ),
        sa.CheckConstraint(
            "sha256 IS NOT NULL OR status = 'quarantined'", name=op.f("ck_images_hash_unless_quarantined")
        ),
        sa.CheckConstraint("sha256 IS NOT NULL OR file_key IS NOT NULL", name=op.f("ck_images_has_identity")),
        _one_of(
            "images",
            "status",
            "image_status",
            ("new", "queued", "predicted", "labelling", "labelled", "quarantined"),
        ),
    )
    op.create_index(op.f("ix_images_source_id"), "images", ["source_id"])
    op.create_index(op.f("ix_images_status_status_changed_at"), "images", ["status", "status_changed_at"])

    op.create_table(
        "annotations",
        *_id("annotations"),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=True),
        sa.Column("annotator", sa.String(length=200), nullable=True),
        sa.Column("ls_annotation_id", sa.Integer(), nullable=True),
        sa.Column("ls_task_id", sa.Integer(), nullable=True),
        sa.Column("origin", sa.String(length=32), nullable=False),
        sa.Column("was_cancelled", sa.Boolean(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        _timestamp("annotated_at"),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.UniqueConstraint("ls_annotation_id", name=op.f("uq_annotations_ls_annotation_id")),
        _fk("annotations", "image_id", "images"),
        sa.CheckConstraint(
            "label IS NOT NULL OR was_cancelled", name=op.f("ck_annotations_label_unless_cancelled")
        ),
        _one_of("annotations", "origin", "annotation_origin", ("label_studio", "import", "simulated")),
    )
    op.create_index(op.f("ix_annotations_image_id"), "annotations", ["image_id"])

    op.create_table(
        "label_tasks",
        *_id("label_tasks"),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("ls_project_id", sa.Integer(), nullable=False),
        sa.Column("ls_task_id", sa.Integer(), nullable=True),
        sa.Column("informativeness", sa.Float(), nullable=False),
        sa.Column("strategy", sa.String(length=64), nullable=False),
        sa.Column("model_key", sa.String(length=64), nullable=True),
        _status(),
        sa.Column("reason", sa.Text(), nullable=True),
        _timestamp("pushed_at", nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.UniqueConstraint("image_id", "ls_project_id", name=op.f("uq_label_tasks_image_id_ls_project_id")),
        sa.UniqueConstraint(
            "ls_project_id", "ls_task_id", name=op.f("uq_label_tasks_ls_project_id_ls_task_id")
        ),
        _fk("label_tasks", "image_id", "images"),
        sa.CheckConstraint(
            "status IN ('pending', 'failed') OR ls_task_id IS NOT NULL",
            name=op.f("ck_label_tasks_pushed_has_ls_task_id"),
        ),
        _one_of("label_tasks", "status", "label_task_status", ("pending", "pushed", "completed", "failed")),
    )

    op.create_table(
        "predictions",
        *_id("predictions"),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("binary_version_id", sa.Integer(), nullable=False),
        sa.Column("multiclass_version_id", sa.Integer(), nullable=True),
        sa.Column("model_key", sa.String(length=64), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("predicted_label", sa.String(length=64), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("uncertainty", sa.JSON(), nullable=False),
        _timestamp("created_at"),
        sa.UniqueConstraint("image_id", "model_key", name=op.f("uq_predictions_image_id_model_key")),
        _fk("predictions", "image_id", "images"),
        _fk("predictions", "binary_version_id", "model_versions"),
        _fk("predictions", "multiclass_version_id", "model_versions"),
        sa.CheckConstraint(
            "confidence >= 0 AND confidence <= 1", name=op.f("ck_predictions_confidence_in_unit_interval")
        ),
    )

    op.create_table(
        "evaluation_set_members",
        sa.Column("evaluation_set_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        _timestamp("added_at"),
        sa.Column("added_reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("evaluation_set_id", "image_id", name=op.f("pk_evaluation_set_members")),
        _fk("evaluation_set_members", "evaluation_set_id", "evaluation_sets"),
        _fk("evaluation_set_members", "image_id", "images"),
        sa.CheckConstraint(
            "added_reason <> ''", name=op.f("ck_evaluation_set_members_added_reason_not_empty")
        ),
    )

    op.create_table(
        "comparisons",
        *_id("comparisons"),
        sa.Column("evaluation_set_id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=32), nullable=False),
        sa.Column("champion_version_id", sa.Integer(), nullable=True),
        sa.Column("challenger_version_id", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("numbers", sa.JSON(), nullable=False),
        _timestamp("created_at"),
        _fk("comparisons", "evaluation_set_id", "evaluation_sets"),
        _fk("comparisons", "champion_version_id", "model_versions"),
        _fk("comparisons", "challenger_version_id", "model_versions"),
        _one_of("comparisons", "task", "model_task", TASKS),
        _one_of("comparisons", "decision", "comparison_decision", ("promote", "keep")),
    )

    op.create_table(
        "promotions",
        *_id("promotions"),
        sa.Column("task", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("from_version_id", sa.Integer(), nullable=True),
        sa.Column("to_version_id", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("numbers", sa.JSON(), nullable=False),
        sa.Column("comparison_id", sa.Integer(), nullable=True),
        _timestamp("created_at"),
        _fk("promotions", "from_version_id", "model_versions"),
        _fk("promotions", "to_version_id", "model_versions"),
        _fk("promotions", "comparison_id", "comparisons"),
        sa.CheckConstraint("reason <> ''", name=op.f("ck_promotions_reason_not_empty")),
        _one_of("promotions", "task", "model_task", TASKS),
        _one_of("promotions", "action", "promotion_action", ("promote", "reject", "rollback")),
    )


def downgrade() -> None:
    for table in (
        "promotions",
        "comparisons",
        "evaluation_set_members",
        "predictions",
        "label_tasks",
        "annotations",
        "images",
    ):
        op.drop_table(table)
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(
            op.f("fk_training_runs_model_version_id_model_versions"), "training_runs", type_="foreignkey"
        )
    op.drop_index("uq_model_versions_task_champion", table_name="model_versions")
    for table in ("model_versions", "training_runs", "evaluation_sets", "sources"):
        op.drop_table(table)
