"""When to retrain, and the whole-retrain requests in ``training_runs`` (no torch: beat imports this).

A request is a ``training_runs`` row per task with architecture ``all``: Label Studio's START_TRAINING
(``workers.backend``), the policy (``retrain_due``: enough new labels, or the interval elapsed with new
labels) or an engineer. At most one request is pending at a time; a worker claims the queued ones
(compare-and-set, so two workers never run the same request) and closes them with what it did.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import ModelTask, TrainingRunStatus, TrainingTrigger
from db.session import session_scope
from models.comparison import PromotionPolicy

logger = logging.getLogger(__name__)

__all__ = [
    "REQUEST_ARCHITECTURE",
    "RetrainDue",
    "RetrainPlan",
    "claim_requests",
    "fail_stale_requests",
    "finish_requests",
    "pending_requests",
    "request_retrain",
    "retrain_due",
]

REQUEST_ARCHITECTURE = "all"
"""The ``architecture`` of a ``training_runs`` row that asks for a whole retrain (every architecture,
both tasks): Label Studio's START_TRAINING, the policy below, or an engineer through the queue."""


@dataclass(frozen=True)
class RetrainDue:
    trigger: TrainingTrigger
    reason: str


def retrain_due(
    *,
    sessions: sessionmaker[Session],
    min_new_labels: int,
    interval_s: float,
    now: datetime | None = None,
) -> RetrainDue | None:
    """Whether the policy asks for a retrain now: ``min_new_labels`` labels arrived since the newest
    training run started, or ``interval_s`` passed since then and at least one label arrived (0 turns
    either rule off)."""
    now = now or datetime.now(UTC)
    with session_scope(sessions) as session:
        last = repo.latest_training_start(session=session)
        new_labels = repo.count_labels_since(session=session, since=last)
    since = "ever" if last is None else f"since {last:%Y-%m-%d %H:%M} UTC"
    if min_new_labels > 0 and new_labels >= min_new_labels:
        return RetrainDue(
            TrainingTrigger.LABEL_COUNT, f"{new_labels} new label(s) {since} (>= {min_new_labels})"
        )
    if interval_s > 0 and new_labels > 0 and (last is None or (now - last).total_seconds() >= interval_s):
        return RetrainDue(
            TrainingTrigger.SCHEDULE, f"{new_labels} new label(s) {since}, every {interval_s:g} s"
        )
    return None


def pending_requests(sessions: sessionmaker[Session]) -> tuple[list[int], list[int]]:
    """The ids of (queued, running) whole-retrain requests."""
    with session_scope(sessions) as session:
        runs = repo.list_training_runs(
            session=session,
            architecture=REQUEST_ARCHITECTURE,
            statuses=(TrainingRunStatus.QUEUED, TrainingRunStatus.RUNNING),
        )
        queued = [r.id for r in runs if r.status is TrainingRunStatus.QUEUED]
        running = [r.id for r in runs if r.status is TrainingRunStatus.RUNNING]
    return queued, running


def request_retrain(*, sessions: sessionmaker[Session], trigger: TrainingTrigger, reason: str) -> list[int]:
    """Queue a whole-retrain request (one row per task), unless one is already queued or running; the
    new rows' ids (empty when one was pending)."""
    with session_scope(sessions) as session:
        pending = repo.list_training_runs(
            session=session,
            architecture=REQUEST_ARCHITECTURE,
            statuses=(TrainingRunStatus.QUEUED, TrainingRunStatus.RUNNING),
        )
        if pending:
            return []
        ids = [
            repo.create_training_run(
                session=session,
                task=task,
                architecture=REQUEST_ARCHITECTURE,
                trigger=trigger,
                params={"reason": reason},
            ).id
            for task in ModelTask
        ]
    logger.info("retrain requested (%s): %s", trigger, reason)
    return ids


def claim_requests(sessions: sessionmaker[Session]) -> list[int]:
    """Move every queued whole-retrain request to running; the ids this call moved (of two workers
    claiming at once, each request goes to one)."""
    queued, _ = pending_requests(sessions)
    claimed = []
    for run_id in queued:
        with session_scope(sessions) as session:
            if repo.start_training_run(session=session, run_id=run_id):
                claimed.append(run_id)
    return claimed


def finish_requests(
    sessions: sessionmaker[Session], run_ids: Sequence[int], *, details: Mapping[str, Any], error: str | None
) -> None:
    """Close claimed requests as succeeded (with what was done) or failed (with the error)."""
    status = TrainingRunStatus.FAILED if error else TrainingRunStatus.SUCCEEDED
    with session_scope(sessions) as session:
        for run_id in run_ids:
            repo.finish_training_run(
                session=session, run_id=run_id, status=status, error=error, details=details
            )


def fail_stale_requests(
    sessions: sessionmaker[Session], *, older_than_s: float, now: datetime | None = None
) -> list[int]:
    """Fail whole-retrain requests running for longer than ``older_than_s`` (their worker was lost: a
    retrain is never redelivered half-done); the policy may then ask again."""
    now = now or datetime.now(UTC)
    with session_scope(sessions) as session:
        stale = [
            run.id
            for run in repo.list_training_runs(
                session=session, architecture=REQUEST_ARCHITECTURE, statuses=(TrainingRunStatus.RUNNING,)
            )
            if run.started_at is not None and (now - run.started_at).total_seconds() > older_than_s
        ]
        for run_id in stale:
            repo.finish_training_run(
                session=session,
                run_id=run_id,
                status=TrainingRunStatus.FAILED,
                error=f"no result {older_than_s:g} s after it started: its worker was lost",
            )
    if stale:
        logger.warning("retrain request(s) %s failed: running for more than %g s", stale, older_than_s)
    return stale


@dataclass(frozen=True)
class RetrainPlan:
    """What a requested retrain does (plain values, built from settings by the caller)."""

    architectures: tuple[str, ...]
    image_size: int
    channels: int
    epochs: int
    evaluation_fraction: float
    auto_promote: bool
    policy: PromotionPolicy
    batch_size: int = 32
    patience: int = 4
    threads: int | None = None
