"""Evaluation sets remember the rule that assigns labelled images to them.

Revision ID: 0004_evaluation_rule
Revises: 0003_sync_cursors
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_evaluation_rule"
down_revision: str | Sequence[str] | None = "0003_sync_cursors"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: a set created before this revision has no rule and only grows by explicit additions.
    with op.batch_alter_table("evaluation_sets") as batch:
        batch.add_column(sa.Column("rule", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evaluation_sets") as batch:
        batch.drop_column("rule")
