"""Images bound to their bytes: the superseded status, the row that replaced one, the claiming worker.

Revision ID: 0005_image_integrity
Revises: 0004_evaluation_rule
Create Date: 2026-11-27

``superseded``: the file a row points at no longer holds its bytes (overwritten in place, replaced by a
rename, a quarantined half-written file that became a valid image); ``superseded_by_id`` names the row
now recorded from that file, when known (a superseded row keeps its reason; one without a hash, an
unreadable quarantined file, may be superseded too). ``claimed_by``: the worker process that took an image to
classify it, so that a worker starting up re-publishes what a dead one held. An index on ``path`` finds
the rows of a file that changed (hash on PostgreSQL, whose b-tree entries cannot hold the longest paths).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_image_integrity"
down_revision: str | Sequence[str] | None = "0004_evaluation_rule"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = ("new", "queued", "predicted", "labelling", "labelled", "quarantined")
NEW_STATUSES = (*OLD_STATUSES, "superseded")


def _statuses(values: Sequence[str]) -> sa.ColumnElement[bool]:
    return sa.column("status").in_(values)


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("superseded_by_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_images_superseded_by_id_images"),
            "images",
            ["superseded_by_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.drop_constraint(op.f("ck_images_image_status"), type_="check")
        batch.create_check_constraint(op.f("ck_images_image_status"), _statuses(NEW_STATUSES))
        batch.create_check_constraint(
            op.f("ck_images_superseded_has_reason"), "status <> 'superseded' OR reason IS NOT NULL"
        )
        # A quarantined file that could not be read has no hash; superseded, it keeps having none.
        batch.drop_constraint(op.f("ck_images_hash_unless_quarantined"), type_="check")
        batch.create_check_constraint(
            op.f("ck_images_hash_unless_quarantined"),
            "sha256 IS NOT NULL OR status IN ('quarantined', 'superseded')",
        )
    op.create_index(op.f("ix_images_path"), "images", ["path"], postgresql_using="hash")


def downgrade() -> None:
    # The older schema has no superseded status: such rows become quarantined, with their reason.
    op.execute("UPDATE images SET status = 'quarantined' WHERE status = 'superseded'")
    op.drop_index(op.f("ix_images_path"), table_name="images")
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint(op.f("ck_images_hash_unless_quarantined"), type_="check")
        batch.create_check_constraint(
            op.f("ck_images_hash_unless_quarantined"), "sha256 IS NOT NULL OR status = 'quarantined'"
        )
        batch.drop_constraint(op.f("ck_images_superseded_has_reason"), type_="check")
        batch.drop_constraint(op.f("ck_images_image_status"), type_="check")
        batch.create_check_constraint(op.f("ck_images_image_status"), _statuses(OLD_STATUSES))
        batch.drop_constraint(op.f("fk_images_superseded_by_id_images"), type_="foreignkey")
        batch.drop_column("superseded_by_id")
        batch.drop_column("claimed_by")
