"""Repository functions: the only way the application reads and writes the database.

Every function takes a keyword-only ``session`` and leaves the transaction to the caller: it flushes
(so ids exist and the database checks its rules) but never commits or rolls back. Writes that a retry
or a second process may repeat are idempotent, and say so in their docstring. Idempotent inserts use
the backend's ``INSERT ... ON CONFLICT DO NOTHING``, so two processes inserting the same key at the
same moment end with one row, and both get it back.

The functions live in one module per group of tables and are all re-exported here, so callers write
``from db import repositories as repo; repo.add_image(...)``:

- `sources`: sources, and the files quarantined from them
- `images`: images, their status moves and worker claims
- `predictions`: predictions and the model keys they were made with
- `annotations`: annotations and the current label of an image
- `label_tasks`: images planned for and pushed to Label Studio
- `sync`: named sync cursors and leases
- `model_versions`: the model registry, champions and the promotion log
- `evaluation`: evaluation sets, champion/challenger comparisons and model evaluations
- `training_runs`: training runs (a whole retrain is one with architecture ``all``)
- `demo_runs`: demo runs and their rounds
"""

from __future__ import annotations

from db.repositories.annotations import (
    RecordOutcome,
    count_labels_since,
    current_label,
    get_annotation_by_ls_id,
    list_labelled_images,
    mark_annotation_deleted,
    record_annotation,
)
from db.repositories.demo_runs import (
    create_demo_run,
    get_demo_run,
    get_demo_run_by_name,
    latest_demo_run,
    list_demo_rounds,
    list_demo_runs,
    record_demo_round,
    set_demo_run_status,
)
from db.repositories.evaluation import (
    add_evaluation_members,
    count_comparisons,
    create_evaluation_set,
    get_comparison,
    get_evaluation_set,
    latest_comparison,
    list_comparisons,
    list_evaluation_members,
    list_evaluations,
    record_comparison,
    record_evaluation,
)
from db.repositories.images import (
    add_image,
    count_images_by_status,
    find_claimed_images,
    find_stuck_images,
    get_image,
    get_image_by_sha256,
    list_images_by_ids,
    list_images_by_status,
    release_claims,
    requeue_predicted_images,
    revive_image,
    set_image_status,
    supersede_images_at,
)
from db.repositories.label_tasks import (
    add_label_task,
    delete_open_label_task,
    get_label_task,
    get_label_task_by_ls_id,
    list_label_task_image_ids,
    list_label_tasks,
    list_labelling_candidates,
    list_ls_annotation_ids,
    mark_label_task_completed,
    mark_label_task_failed,
    mark_label_task_pushed,
    reopen_label_task,
    set_label_task_model_key,
)
from db.repositories.model_versions import (
    SYSTEM_ACTOR,
    current_model_key,
    get_champion,
    get_model_version,
    get_model_version_by_name,
    list_model_versions,
    list_promotions,
    next_model_version_name,
    register_model_version,
    reject_model_version,
    set_champion,
)
from db.repositories.predictions import (
    add_prediction,
    latest_prediction,
    list_prediction_model_keys,
    list_predictions_by_confidence,
    make_model_key,
)
from db.repositories.sources import (
    count_quarantined_by_reason,
    file_key_for,
    get_or_create_source,
    quarantine_file,
)
from db.repositories.sync import (
    advance_sync_cursor,
    get_sync_cursor,
    release_lease,
    reset_sync_cursor,
    try_acquire_lease,
)
from db.repositories.training_runs import (
    create_training_run,
    finish_training_run,
    get_training_run,
    latest_training_start,
    list_training_runs,
    start_training_run,
)

__all__ = [
    "SYSTEM_ACTOR",
    "RecordOutcome",
    "add_evaluation_members",
    "add_image",
    "add_label_task",
    "add_prediction",
    "advance_sync_cursor",
    "count_comparisons",
    "count_images_by_status",
    "count_labels_since",
    "count_quarantined_by_reason",
    "create_demo_run",
    "create_evaluation_set",
    "create_training_run",
    "current_label",
    "current_model_key",
    "delete_open_label_task",
    "file_key_for",
    "find_claimed_images",
    "find_stuck_images",
    "finish_training_run",
    "get_annotation_by_ls_id",
    "get_champion",
    "get_comparison",
    "get_demo_run",
    "get_demo_run_by_name",
    "get_evaluation_set",
    "get_image",
    "get_image_by_sha256",
    "get_label_task",
    "get_label_task_by_ls_id",
    "get_model_version",
    "get_model_version_by_name",
    "get_or_create_source",
    "get_sync_cursor",
    "get_training_run",
    "latest_comparison",
    "latest_demo_run",
    "latest_prediction",
    "latest_training_start",
    "list_comparisons",
    "list_demo_rounds",
    "list_demo_runs",
    "list_evaluation_members",
    "list_evaluations",
    "list_images_by_ids",
    "list_images_by_status",
    "list_label_task_image_ids",
    "list_label_tasks",
    "list_labelled_images",
    "list_labelling_candidates",
    "list_ls_annotation_ids",
    "list_model_versions",
    "list_prediction_model_keys",
    "list_predictions_by_confidence",
    "list_promotions",
    "list_training_runs",
    "make_model_key",
    "mark_annotation_deleted",
    "mark_label_task_completed",
    "mark_label_task_failed",
    "mark_label_task_pushed",
    "next_model_version_name",
    "quarantine_file",
    "record_annotation",
    "record_comparison",
    "record_demo_round",
    "record_evaluation",
    "register_model_version",
    "reject_model_version",
    "release_claims",
    "release_lease",
    "reopen_label_task",
    "requeue_predicted_images",
    "reset_sync_cursor",
    "revive_image",
    "set_champion",
    "set_demo_run_status",
    "set_image_status",
    "set_label_task_model_key",
    "start_training_run",
    "supersede_images_at",
    "try_acquire_lease",
]
