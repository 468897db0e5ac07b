"""Automatic retraining through real ``defectloop worker`` processes on Redis: the policy task (on the
maintenance queue) sees enough new labels and queues one request, the training worker claims it,
trains every configured architecture for both tasks on the labels outside the frozen evaluation sets,
compares the challengers with the champions and closes the request with what it did.

Tiny on purpose: 32 px synthetic photos, one epoch, the baseline CNN only. Every check polls the
database up to a deadline; nothing asserts a timing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from db import repositories as repo
from db.schema import Comparison, ModelTask, TrainingRunStatus
from defectloop.settings import DEFAULT_CLASSES
from defectloop.synth import generate_dataset
from tests.worker_harness import Loop, loop_on, require_redis
from workers.importing import import_folder
from workers.queues import Queue
from workers.retrain_policy import REQUEST_ARCHITECTURE
from workers.retraining_tasks import POLICY_TASK

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/12"  # this suite's own database number; only it is flushed
KNOWN = (DEFAULT_CLASSES[0], "defective", *DEFAULT_CLASSES[1:])


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    require_redis(REDIS_URL)
    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {
        "DEFECTLOOP_IMAGE_SIZE": "32",
        "DEFECTLOOP_IMAGE_CHANNELS": "1",
        "DEFECTLOOP_TRAIN_EPOCHS": "1",
        "DEFECTLOOP_RETRAIN_ARCHITECTURES": "baseline_cnn",
        "DEFECTLOOP_RETRAIN_MIN_NEW_LABELS": "20",
        "DEFECTLOOP_RETRAIN_INTERVAL_S": "0",
    }
    try:
        with loop_on(REDIS_URL, tmp_path, **env) as state:
            yield state
    finally:
        redis.Redis.from_url(REDIS_URL).flushdb()


def _requests(loop: Loop) -> dict[int, TrainingRunStatus]:
    with loop.sessions() as session:
        runs = repo.list_training_runs(session=session, architecture=REQUEST_ARCHITECTURE)
        return {run.id: run.status for run in runs}


def _import(loop: Loop, seed: int) -> None:
    folder = loop.root / f"labelled{seed}"
    generate_dataset(folder, n=48, seed=seed, size=32)
    import_folder(sessions=loop.sessions, root=folder, known_labels=KNOWN)


def _check_policy(loop: Loop) -> None:
    loop.app.send_task(POLICY_TASK, queue=Queue.MAINTENANCE.value)


def test_new_labels_retrain_on_the_training_worker_and_a_second_round_is_compared(loop: Loop) -> None:
    loop.start("worker", "--queues", "maintenance")
    trainer = loop.start("worker", "--queues", "training")
    _import(loop, seed=11)
    _check_policy(loop)

    def closed(n: int) -> bool:
        statuses = _requests(loop)
        return (
            len(statuses) == n
            and all(s is not TrainingRunStatus.QUEUED for s in statuses.values())
            and (TrainingRunStatus.RUNNING not in statuses.values())
        )

    loop.wait_for("the first requested retrain to finish", lambda: closed(2))
    assert set(_requests(loop).values()) == {TrainingRunStatus.SUCCEEDED}, loop.logs()
    with loop.sessions() as session:
        champions = {task: repo.get_champion(session=session, task=task) for task in ModelTask}
        assert {task: c.name for task, c in champions.items() if c is not None} == {
            ModelTask.BINARY: "binary-baseline_cnn-0001",
            ModelTask.MULTICLASS: "multiclass-baseline_cnn-0001",
        }
        assert repo.get_evaluation_set(session=session, name="frozen-binary") is not None

    _import(loop, seed=12)  # 48 new labels: the next check asks again
    _check_policy(loop)
    loop.wait_for("the second requested retrain to finish", lambda: closed(4))
    assert set(_requests(loop).values()) == {TrainingRunStatus.SUCCEEDED}, loop.logs()
    with loop.sessions() as session:
        comparisons = list(session.scalars(select(Comparison).order_by(Comparison.id)))
        results = [
            run.params["result"]
            for run in repo.list_training_runs(session=session, architecture=REQUEST_ARCHITECTURE)
        ]
    assert [(c.task, c.challenger_version_id != c.champion_version_id) for c in comparisons] == [
        (ModelTask.BINARY, True),
        (ModelTask.MULTICLASS, True),
    ]
    assert results[-1]["trained"] == ["binary-baseline_cnn-0002", "multiclass-baseline_cnn-0002"]
    assert [c["task"] for c in results[-1]["comparisons"]] == ["binary", "multiclass"]
    assert trainer.poll() is None, "the training worker keeps running"
    assert "Traceback" not in loop.log(1), loop.log(1)[-3000:]
