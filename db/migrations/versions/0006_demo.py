"""Demo runs and their rounds: the loop against a random control arm, for `defectloop report`.

Revision ID: 0006_demo
Revises: 0005_image_integrity
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_demo"
down_revision: str | Sequence[str] | None = "0005_image_integrity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out, not imported, so this revision never changes after release.
RUN_STATUSES = ("running", "finished", "stopped", "failed")
ARMS = ("active", "random")


def upgrade() -> None:
    op.create_table(
        "demo_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(sa.column("status").in_(RUN_STATUSES), name=op.f("ck_demo_runs_demo_run_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_demo_runs")),
        sa.UniqueConstraint("name", name=op.f("uq_demo_runs_name")),
    )
    op.create_table(
        "demo_rounds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("arm", sa.String(length=32), nullable=False),
        sa.Column("labels_used", sa.Integer(), nullable=False),
        sa.Column("defects_found", sa.Integer(), nullable=False),
        sa.Column("binary_version", sa.String(length=200), nullable=True),
        sa.Column("multiclass_version", sa.String(length=200), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["demo_runs.id"], name=op.f("fk_demo_rounds_run_id_demo_runs")),
        sa.CheckConstraint(sa.column("arm").in_(ARMS), name=op.f("ck_demo_rounds_demo_arm")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_demo_rounds")),
        sa.UniqueConstraint("run_id", "round", "arm", name=op.f("uq_demo_rounds_run_id_round_arm")),
    )
    op.create_index(op.f("ix_demo_rounds_run_id"), "demo_rounds", ["run_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_demo_rounds_run_id"), table_name="demo_rounds")
    op.drop_table("demo_rounds")
    op.drop_table("demo_runs")
