"""The Celery tasks of retraining, registered on the app by ``register_retraining_tasks``.

- ``check_retrain_policy`` (beat, ``maintenance`` queue): fails whole-retrain requests whose worker was
  lost, queues a request when the policy says so (``DEFECTLOOP_RETRAIN_MIN_NEW_LABELS`` new labels, or
  ``DEFECTLOOP_RETRAIN_INTERVAL_S`` elapsed with new labels) and publishes ``retrain_challengers`` for
  queued requests, Label Studio's START_TRAINING ones included. While a retrain runs it does nothing;
  a request nobody has taken is published again every ``republish_after_s``.
- ``retrain_challengers`` (``training`` queue): claims the queued requests and runs
  ``workers.retraining.run_requested_retrain``. A message that finds nothing queued does nothing, so a
  duplicate or a redelivery is harmless; a retrain that dies half-way is failed by the policy check
  after ``stale_after_s`` and requested again, never resumed.

Run the training queue on its own worker (``defectloop worker --queues training``): a retrain takes
minutes to hours, and a worker that also serves ``inference`` would hold new photos back meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from db import repositories as repo
from db.session import session_scope
from models.labels import LabelSpace
from workers import retrain_policy
from workers.queues import Queue, add_routes_and_beat, idempotent_task_options
from workers.transient import TRANSIENT_ERRORS

logger = logging.getLogger(__name__)

__all__ = ["POLICY_TASK", "RETRAIN_TASK", "RetrainingConfig", "publish_retrain", "register_retraining_tasks"]

RETRAIN_TASK = "defectloop.retrain_challengers"
POLICY_TASK = "defectloop.check_retrain_policy"
RETRAINING_TASK_QUEUES: dict[str, Queue] = {RETRAIN_TASK: Queue.TRAINING, POLICY_TASK: Queue.MAINTENANCE}
PUBLISHED_CURSOR = "retrain-published"  # sync_cursors row: when a retrain message was last sent


@dataclass(frozen=True)
class RetrainingConfig:
    """What the retraining tasks need, as plain values (built from settings by the caller)."""

    plan: retrain_policy.RetrainPlan
    min_new_labels: int
    interval_s: float
    check_interval_s: float = 60.0
    republish_after_s: float = 600.0
    stale_after_s: float = 6 * 3600.0

    def __post_init__(self) -> None:
        if self.min_new_labels < 0 or self.interval_s < 0:
            raise ValueError("min_new_labels and interval_s must be >= 0 (0 turns the rule off)")
        if min(self.check_interval_s, self.republish_after_s, self.stale_after_s) <= 0:
            raise ValueError("check_interval_s, republish_after_s and stale_after_s must be > 0")


def publish_retrain(app: Any) -> None:
    """Send one ``retrain_challengers`` message to the training queue."""
    app.send_task(RETRAIN_TASK, queue=Queue.TRAINING.value, retry=True, retry_policy={"max_retries": 3})


def check_retrain_policy(
    *,
    sessions: Any,
    config: RetrainingConfig,
    publish: Callable[[], None],
    now: datetime | None = None,
) -> dict[str, Any]:
    """One policy check (see the module docstring); what it did, as a JSON-able dict."""
    now = now or datetime.now(UTC)
    stale = retrain_policy.fail_stale_requests(sessions, older_than_s=config.stale_after_s, now=now)
    queued, running = retrain_policy.pending_requests(sessions)
    if running:
        return {"action": "running", "requests": running, "failed_stale": stale}
    created: Sequence[int] = []
    if not queued:
        due = retrain_policy.retrain_due(
            sessions=sessions, min_new_labels=config.min_new_labels, interval_s=config.interval_s, now=now
        )
        if due is None:
            return {"action": "none", "failed_stale": stale}
        created = retrain_policy.request_retrain(sessions=sessions, trigger=due.trigger, reason=due.reason)
        queued = list(created)
    with session_scope(sessions) as session:
        last = repo.get_sync_cursor(session=session, name=PUBLISHED_CURSOR)
        if not created and last is not None and now - last < timedelta(seconds=config.republish_after_s):
            return {"action": "waiting", "requests": queued, "failed_stale": stale}
        repo.advance_sync_cursor(session=session, name=PUBLISHED_CURSOR, position=now)
    publish()
    return {"action": "published", "requests": queued, "created": list(created), "failed_stale": stale}


def register_retraining_tasks(
    app: Any,
    *,
    config: RetrainingConfig,
    label_space: LabelSpace,
    artifacts_dir: Path,
    base: Any,
    publish_rescore: Callable[[list[int]], None],
) -> None:
    """Add the retraining tasks, their routes and the policy's beat entry to ``app``."""
    add_routes_and_beat(
        app,
        RETRAINING_TASK_QUEUES,
        {"check-retrain-policy": (POLICY_TASK, config.check_interval_s, Queue.MAINTENANCE)},
    )
    common = idempotent_task_options(TRANSIENT_ERRORS, max_retries=3, backoff_max_s=300)

    @app.task(name=POLICY_TASK, **common)  # type: ignore[untyped-decorator]  # celery is untyped
    def check_retrain_policy_task() -> dict[str, Any]:
        """Queue and publish a retrain when the policy (or a Label Studio request) asks for one."""
        return check_retrain_policy(
            sessions=base.sessions, config=config, publish=lambda: publish_retrain(app)
        )

    @app.task(name=RETRAIN_TASK, **common)  # type: ignore[untyped-decorator]  # celery is untyped
    def retrain_challengers_task() -> dict[str, Any]:
        """Retrain, compare and (by the policy, if allowed) promote for the queued requests."""
        from workers.retraining import run_requested_retrain  # torch: only in the process that trains

        summary = run_requested_retrain(
            sessions=base.sessions,
            plan=config.plan,
            label_space=label_space,
            artifacts_dir=artifacts_dir,
        )
        if summary["requeued_image_ids"]:
            publish_rescore(summary["requeued_image_ids"])
        return summary
