"""The Celery queues: one per kind of work, so each can get its own workers and limits."""

from __future__ import annotations

from enum import StrEnum


class Queue(StrEnum):
    """Queue names; a worker consumes the ones it is started with (``defectloop worker --queues``)."""

    INFERENCE = "inference"
    """Classification of new images in batches with the champions; short, CPU-bound, idempotent."""

    LABELLING = "labelling"
    """Label Studio traffic: pushing tasks, recording annotations; waits on a remote service."""

    TRAINING = "training"
    """Training and evaluating challengers; long, one at a time per worker."""

    MAINTENANCE = "maintenance"
    """Beat's periodic jobs: re-queueing images that wait or got stuck, reconciliation."""
