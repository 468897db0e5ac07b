"""Demo runs and their rounds: each arm's labels used, defects found, scores and timings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.errors import IntegrityViolation
from db.repositories._common import _add_row, _float_dict, _get, _require_text
from db.schema import DemoArm, DemoRound, DemoRun, DemoRunStatus, utcnow


def create_demo_run(*, session: Session, name: str, settings: Mapping[str, Any]) -> DemoRun:
    """A running demo with its settings; a name already taken raises `IntegrityViolation`."""
    _require_text(name, "demo run name")
    run = DemoRun(name=name, settings=dict(settings), status=DemoRunStatus.RUNNING)
    return _add_row(session, run, f"a demo run named {name!r} exists already")


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
    return _add_row(
        session,
        row,
        f"round {round_number} of the {arm.value} arm is recorded already (or the run does not exist)",
    )


def list_demo_rounds(*, session: Session, run_id: int, arm: DemoArm | None = None) -> list[DemoRound]:
    """A demo run's rounds in order (active before random within a round)."""
    stmt = select(DemoRound).where(DemoRound.run_id == run_id).order_by(DemoRound.round, DemoRound.arm)
    if arm is not None:
        stmt = stmt.where(DemoRound.arm == arm)
    return list(session.scalars(stmt))
