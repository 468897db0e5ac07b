"""`defectloop demo` end to end on real services: PostgreSQL, Redis, the test Label Studio, and the real
watcher, workers, beat and webhook receiver that the demo starts through ``defectloop up``.

A short run (2 rounds, a few dozen tiny synthetic photos, 1 epoch of the baseline CNN): the demo feeds
the camera folder, seeds the first champions, and each round its simulated annotator labels the tasks
the loop pushed to Label Studio, through Label Studio's API; the webhook and the labelling worker record
them; the demo requests a retrain; the training worker trains, compares on the frozen set and promotes
by the rule or records a keep; the pool is re-scored and Label Studio's queue re-ranked.

The annotator is the demo's own (``LabelStudioAnnotator``), wrapped so that each time the demo asks it
for labels the test looks at the loop as the annotator sees it: every photo predicted by the current
champions, Label Studio's queue in the loop's ranking, the open tasks carrying predictions of the
current champions, and afterwards each label recorded once, with origin ``simulated``. Waits poll up to
deadlines; no timing is asserted.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
import redis
from rich.console import Console
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.migrate import upgrade
from db.schema import (
    Annotation,
    AnnotationOrigin,
    Comparison,
    ComparisonDecision,
    DemoArm,
    DemoRound,
    Image,
    ImageStatus,
    ModelTask,
    Promotion,
    TrainingRun,
    TrainingRunStatus,
)
from db.session import create_engine_for, make_session_factory
from defectloop.demo import label_studio as demo_label_studio
from defectloop.demo.label_studio import LabelStudioAnnotator, OpenTask
from defectloop.demo.plan import DemoOptions
from defectloop.demo.run import run_demo
from defectloop.settings import Settings
from labelling.devserver import LabelStudioServer, find_free_port
from labelling.gateway import LabelStudioGateway
from labelling.names import SIMULATED_ANNOTATOR
from tests.db_helpers import temporary_postgres_database
from tests.label_studio_fixtures import unique_project_title
from tests.labelling_deployment import DEFECTLOOP, SECRET
from tests.worker_harness import require_redis
from workers.labelling import label_studio_version
from workers.retrain_policy import REQUEST_ARCHITECTURE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REDIS_URL = "redis://127.0.0.1:6379/14"  # this file's own database number; only it is flushed
OPTIONS = DemoOptions(
    rounds=2,
    batch=8,
    seed_labels=12,
    n_images=60,
    image_size=32,
    channels=1,
    epochs=4,
    architectures=("baseline_cnn",),
    feed_seconds=2.0,
    test_fraction=0.2,
    compare_fraction=0.3,
)
_TIE = 1e-6  # informativeness values this close are a tie, which Label Studio may order either way


@dataclass
class Seen:
    """What the test saw each time the demo asked its annotator for labels."""

    labels_before: int  # labels recorded through Label Studio so far
    model_key: str
    shown_version: str
    asked: int
    labelled: list[int] = field(default_factory=list)


SEEN: list[Seen] = []


class CheckingAnnotator(LabelStudioAnnotator):
    """The demo's Label Studio annotator, checking the loop's state when it is about to label."""

    listed: ClassVar[list[OpenTask]] = []

    def _listed_open_tasks(self) -> list[OpenTask]:
        CheckingAnnotator.listed = super()._listed_open_tasks()
        return CheckingAnnotator.listed

    def open_tasks(self, size: int) -> list[OpenTask]:
        tasks = super().open_tasks(size)
        SEEN.append(check_ready(self, tasks, size))
        return tasks

    def label_batch(self, size: int) -> list[int]:
        labelled = super().label_batch(size)
        SEEN[-1].labelled = labelled
        check_recorded(self, labelled)
        return labelled


def check_ready(annotator: CheckingAnnotator, tasks: list[OpenTask], size: int) -> Seen:
    """When the annotator starts: every photo predicted by the current champions; Label Studio's open
    tasks in the loop's ranking (most informative first), all ranked by the current champions, whose
    predictions they carry; the annotator takes the head of that queue."""
    gateway, project_id, listed = annotator.gateway, annotator.project_id, annotator.listed
    assert listed, "the loop pushed nothing to Label Studio"
    with annotator._sessions() as session:
        model_key = repo.current_model_key(session=session)
        assert model_key is not None
        shown = label_studio_version(session, model_key)
        unlabelled = session.scalars(
            select(Image).where(Image.status.in_([ImageStatus.PREDICTED, ImageStatus.LABELLING]))
        ).all()
        unpredicted = [
            i.id
            for i in unlabelled
            if repo.latest_prediction(session=session, image_id=i.id, model_key=model_key) is None
        ]
        assert not unpredicted, f"images without a prediction of the champions {model_key}: {unpredicted}"
        ranked = {t.ls_task_id: t for t in repo.list_label_tasks(session=session, ls_project_id=project_id)}
        labels_before = session.scalar(
            select(func.count(Annotation.id)).where(Annotation.ls_annotation_id.is_not(None))
        )
    # Label Studio's order (prediction score ascending, score = 1 - informativeness) is the ranking.
    infos = [ranked[t.ls_task_id].informativeness for t in listed]
    assert all(a >= b - _TIE for a, b in itertools.pairwise(infos)), infos
    assert {ranked[t.ls_task_id].model_key for t in listed} == {model_key}, "ranked by an old model"
    assert tasks == listed[: len(tasks)]
    assert len(tasks) == min(size, len(listed))
    # The project's queue uses the current champions' predictions, and every open task carries one.
    assert gateway.get_project(project_id=project_id)["model_version"] == shown
    by_id = {t["id"]: t for t in gateway.list_tasks(project_id=project_id)}
    for task in listed:
        versions = {p["model_version"] for p in by_id[task.ls_task_id]["predictions"]}
        assert shown in versions, (task, shown, versions)
    return Seen(labels_before=int(labels_before or 0), model_key=model_key, shown_version=shown, asked=size)


def check_recorded(annotator: LabelStudioAnnotator, labelled: list[int]) -> None:
    """After the annotator: each image labelled once, through Label Studio, recorded as simulated."""
    assert len(labelled) == len(set(labelled))
    with annotator._sessions() as session:
        rows = session.scalars(select(Annotation).where(Annotation.image_id.in_(labelled))).all()
    assert sorted(r.image_id for r in rows) == sorted(labelled), "an image recorded twice or not at all"
    for row in rows:
        assert row.origin is AnnotationOrigin.SIMULATED
        assert row.annotator == SIMULATED_ANNOTATOR
        assert row.ls_annotation_id is not None, "recorded without going through Label Studio"
        assert row.label == annotator._truth(row.image_id)
        assert not row.deleted
        assert not row.was_cancelled


@dataclass
class Stack:
    env: dict[str, str]
    sessions: sessionmaker[Session]
    gateway: LabelStudioGateway
    title: str
    data_dir: Path


@pytest.fixture
def stack(
    label_studio: LabelStudioServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Stack]:
    require_redis(REDIS_URL)
    redis.Redis.from_url(REDIS_URL).flushdb()
    port = find_free_port()
    title = unique_project_title(request)
    with temporary_postgres_database() as database_url:
        upgrade(database_url)
        env = {
            "DEFECTLOOP_DATA_DIR": str(tmp_path / "data"),
            "DEFECTLOOP_DATABASE_URL": database_url,
            "DEFECTLOOP_BROKER_URL": REDIS_URL,
            "DEFECTLOOP_LABEL_STUDIO_URL": label_studio.url,
            "DEFECTLOOP_LABEL_STUDIO_API_KEY": label_studio.token,
            "DEFECTLOOP_LABEL_STUDIO_PROJECT_TITLE": title,
            "DEFECTLOOP_WEBHOOK_SECRET": SECRET,
            "DEFECTLOOP_HTTP_PORT": str(port),
            "DEFECTLOOP_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "DEFECTLOOP_IMAGE_CHANNELS": "1",
            "DEFECTLOOP_STRATEGY": "entropy",
            "DEFECTLOOP_LABELLING_PUSH_INTERVAL_S": "5",
            "DEFECTLOOP_RECONCILE_INTERVAL_S": "20",
            "DEFECTLOOP_INFERENCE_BATCH_SIZE": "8",
            "DEFECTLOOP_LOG_LEVEL": "INFO",
            # The rule as the demo applies it, made easy to pass at this size (a few dozen photos, a
            # few epochs): a challenger that is better at all is promoted, so that the rounds show
            # the new champions' predictions reaching Label Studio.
            "DEFECTLOOP_PROMOTION_MIN_GAIN": "0.0",
            "DEFECTLOOP_PROMOTION_SIGNIFICANCE": "0.5",
        }
        for name in list(os.environ):
            if name.startswith("DEFECTLOOP_"):
                monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        # The demo builds its Label Studio annotator by this name: the checking one stands in for it.
        monkeypatch.setattr(demo_label_studio, "LabelStudioAnnotator", CheckingAnnotator)
        SEEN.clear()
        engine = create_engine_for(database_url)
        try:
            with LabelStudioGateway(label_studio.url, label_studio.token) as gateway:
                yield Stack(
                    env=env,
                    sessions=make_session_factory(engine),
                    gateway=gateway,
                    title=title,
                    data_dir=tmp_path / "data",
                )
        finally:
            engine.dispose()
            redis.Redis.from_url(REDIS_URL).flushdb()


def _cli(stack: Stack, *args: str) -> str:
    result = subprocess.run(
        [DEFECTLOOP, *args],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"defectloop {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def up_log_whole(stack: Stack) -> str:
    logs = sorted(stack.data_dir.glob("demo/*/up.log"))
    return logs[-1].read_text(errors="replace") if logs else ""


def _up_log(stack: Stack) -> str:
    logs = sorted(stack.data_dir.glob("demo/*/up.log"))
    return logs[-1].read_text(errors="replace")[-6000:] if logs else "(no up.log)"


def test_a_short_demo_runs_the_loop_through_label_studio_on_real_services(stack: Stack) -> None:
    result = run_demo(
        settings=Settings(), options=OPTIONS, console=Console(width=160), out=stack.data_dir / "report.html"
    )
    assert result.status == "finished", _up_log(stack)
    up_log = _up_log(stack)
    (project_id,) = stack.gateway.project_ids(title=stack.title)
    # The labels reached the loop through the webhook to `serve` and the labelling worker (beat's
    # reconciliation is the fallback for lost webhooks).
    (webhook,) = stack.gateway.list_webhooks(project_id=project_id)
    assert webhook["url"] == f"{stack.env['DEFECTLOOP_PUBLIC_URL']}/webhooks/label-studio"
    whole_log = up_log_whole(stack)
    assert whole_log.count('"POST /webhooks/label-studio HTTP/1.1" 200') >= OPTIONS.rounds * OPTIONS.batch
    assert "defectloop.record_annotations[" in whole_log

    # Rounds 1 and 2 asked the Label Studio annotator for labels (the seed round labels at random).
    asked = [seen for seen in SEEN if seen.labelled]
    assert len(asked) >= 2, SEEN
    assert sum(len(seen.labelled) for seen in asked) == OPTIONS.rounds * OPTIONS.batch

    with stack.sessions() as session:
        run = repo.latest_demo_run(session=session)
        assert run is not None
        rounds = session.scalars(
            select(DemoRound).where(DemoRound.run_id == run.id).order_by(DemoRound.round, DemoRound.arm)
        ).all()
        assert {(r.round, r.arm) for r in rounds} == {
            (n, arm) for n in range(OPTIONS.rounds + 1) for arm in (DemoArm.ACTIVE, DemoArm.RANDOM)
        }
        active = {r.round: r for r in rounds if r.arm is DemoArm.ACTIVE}
        assert [active[n].labels_used for n in range(OPTIONS.rounds + 1)] == [
            OPTIONS.seed_labels + n * OPTIONS.batch for n in range(OPTIONS.rounds + 1)
        ]

        # All photos predicted: none left waiting, none lost.
        statuses = repo.count_images_by_status(session=session)
        assert not statuses.get(ImageStatus.NEW), statuses
        assert not statuses.get(ImageStatus.QUEUED), statuses

        # Each label recorded once: the seed's directly, the rounds' through Label Studio as simulated.
        annotations = session.scalars(select(Annotation).where(Annotation.deleted.is_(False))).all()
        by_image = func.count(Annotation.id)
        duplicated = session.execute(
            select(Annotation.image_id, by_image)
            .where(Annotation.deleted.is_(False), Annotation.origin == AnnotationOrigin.SIMULATED)
            .group_by(Annotation.image_id)
            .having(by_image > 1)
        ).all()
        assert not duplicated, duplicated
        through_label_studio = [a for a in annotations if a.ls_annotation_id is not None]
        assert len(through_label_studio) == OPTIONS.rounds * OPTIONS.batch
        assert {a.origin for a in through_label_studio} == {AnnotationOrigin.SIMULATED}

        # A retrain requested per round (the seed round's makes the first champions), each finished.
        requests = session.scalars(
            select(TrainingRun)
            .where(TrainingRun.architecture == REQUEST_ARCHITECTURE)
            .order_by(TrainingRun.id)
        ).all()
        binary_requests = [r for r in requests if r.task is ModelTask.BINARY]
        assert len(binary_requests) == OPTIONS.rounds + 1, [(r.id, r.task, r.status) for r in requests]
        assert {r.status for r in requests} == {TrainingRunStatus.SUCCEEDED}, up_log

        # Compared on the frozen set every labelling round; promoted by the rule or a keep recorded.
        comparisons = session.scalars(select(Comparison).order_by(Comparison.id)).all()
        assert len(comparisons) >= OPTIONS.rounds, [(c.task, c.decision) for c in comparisons]
        assert all(c.reason for c in comparisons)
        promotions = session.scalars(select(Promotion).order_by(Promotion.id)).all()
        promoted_by_rule = {p.comparison_id for p in promotions if p.comparison_id is not None}
        for comparison in comparisons:
            if comparison.decision is ComparisonDecision.PROMOTE:
                assert comparison.id in promoted_by_rule, comparison.reason
        for round_number in range(1, OPTIONS.rounds + 1):
            loop = active[round_number].metrics["loop"]
            assert loop["comparisons"], (round_number, loop)

    # Label Studio showed the champions of the round before: each round's open tasks carried predictions
    # of the champions the previous round's retrain left (a new one after a promotion), and the project
    # ordered by them (checked in check_ready).
    shown_in_round = {seen.labels_before // OPTIONS.batch + 1: seen.shown_version for seen in asked}
    assert sorted(shown_in_round) == list(range(1, OPTIONS.rounds + 1)), shown_in_round
    for n in range(1, OPTIONS.rounds + 1):
        before = active[n - 1]
        champions = [name for name in (before.binary_version, before.multiclass_version) if name]
        assert shown_in_round[n] == "+".join(champions), (n, shown_in_round, champions)

    # Reconciliation finds each of them again and records nothing twice.
    before = len(annotations)
    resync = _cli(stack, "labelling", "resync")
    assert " 0 new" in resync, resync
    with stack.sessions() as session:
        assert (
            session.scalar(select(func.count(Annotation.id)).where(Annotation.deleted.is_(False))) == before
        )
    assert (stack.data_dir / "report.html").exists() or result.report is None
