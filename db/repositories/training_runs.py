"""Training runs, from queued to succeeded or failed (a whole retrain is one run with architecture
``all``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.errors import InvalidTransitionError
from db.repositories._common import _get, _integrity, _require_text, _update_rows
from db.schema import ModelTask, TrainingRun, TrainingRunStatus, TrainingTrigger, utcnow


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
