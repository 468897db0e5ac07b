"""What ``defectloop status`` and ``defectloop versions`` show, each read in one session (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import ImageStatus, ModelStatus, ModelTask, ModelVersion, Promotion, TrainingRunStatus
from workers.retrain_policy import REQUEST_ARCHITECTURE


@dataclass(frozen=True)
class StatusSummary:
    images_by_status: dict[ImageStatus, int]
    quarantined_by_reason: dict[str, int]
    champions: dict[ModelTask, ModelVersion | None]
    evaluation_set_sizes: dict[ModelTask, int]  # only the tasks whose frozen set exists
    retrain_requests: list[str]  # "task status (trigger)" of each queued or running request


def read_status(sessions: sessionmaker[Session]) -> StatusSummary:
    """Images by status, quarantined files by reason, the champions, the frozen evaluation sets and the
    pending retrain requests."""
    with sessions() as session:
        evaluation_set_sizes = {}
        for task in ModelTask:
            evaluation_set = repo.get_evaluation_set(session=session, name=f"frozen-{task}")
            if evaluation_set is not None:
                members = repo.list_evaluation_members(session=session, evaluation_set_id=evaluation_set.id)
                evaluation_set_sizes[task] = len(members)
        return StatusSummary(
            images_by_status=repo.count_images_by_status(session=session),
            quarantined_by_reason=repo.count_quarantined_by_reason(session=session),
            champions={task: repo.get_champion(session=session, task=task) for task in ModelTask},
            evaluation_set_sizes=evaluation_set_sizes,
            retrain_requests=[
                f"{run.task} {run.status} ({run.trigger})"
                for run in repo.list_training_runs(
                    session=session,
                    architecture=REQUEST_ARCHITECTURE,
                    statuses=(TrainingRunStatus.QUEUED, TrainingRunStatus.RUNNING),
                )
            ],
        )


@dataclass(frozen=True)
class VersionsListing:
    versions: list[ModelVersion]
    names: dict[int, str]  # every version's name by id, whatever the filter (parents, promotions)
    promotions: list[Promotion]  # the latest ``history`` rows, oldest first


def read_versions(
    sessions: sessionmaker[Session],
    *,
    task: ModelTask | None = None,
    status: ModelStatus | None = None,
    history: int = 10,
) -> VersionsListing:
    """The model versions (of a task, in a status) and the latest ``history`` rows of promotion history."""
    with sessions() as session:
        return VersionsListing(
            versions=repo.list_model_versions(session=session, task=task, status=status),
            names={v.id: v.name for v in repo.list_model_versions(session=session)},
            promotions=repo.list_promotions(session=session, task=task)[-history:] if history else [],
        )
