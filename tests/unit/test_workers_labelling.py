"""The labelling glue of the workers against a real SQLite registry and recording fakes of Label Studio.

The fakes stand in for the labelling side only (``LabellingSink``, ``AnnotationSource``); selection,
planning, recording and reconciliation run for real.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import (
    Annotation,
    AnnotationOrigin,
    ImageStatus,
    LabelTask,
    LabelTaskStatus,
    ModelTask,
    TrainingRun,
    TrainingRunStatus,
    TrainingTrigger,
)
from labelling.errors import LabelStudioUnavailableError
from labelling.names import FROM_NAME, IMAGE_ID_KEY, IMAGE_NAME, SIMULATED_ANNOTATOR
from labelling.payloads import AnnotationAction, AnnotationEvent
from models.selection import STRATEGIES
from tests.db_helpers import mark_predicted, new_image, new_model_version
from workers import labelling
from workers.backend import LabellingHandlers
from workers.labelling import PushItem
from workers.labelling_tasks import LabellingConfig

CLASSES = ("ok", "hole", "raw_edge")


@dataclass
class RecordingSink:
    """A LabellingSink that records every call and hands out task ids like Label Studio would."""

    fail_with: Exception | None = None
    next_id: int = 1000
    existing: dict[int, int] = field(default_factory=dict)  # image id -> task id already "in Label Studio"
    pushes: list[tuple[list[PushItem], bool]] = field(default_factory=list)
    refreshes: list[tuple[list[PushItem], str]] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)

    def push(self, items: Sequence[PushItem], *, adopt_existing: bool) -> dict[int, int]:
        self.pushes.append((list(items), adopt_existing))
        if self.fail_with is not None:
            # Label Studio took the tasks, then the answer was lost: the retry must adopt them.
            for item in items:
                self.next_id += 1
                self.existing[item.image_id] = self.next_id
            raise self.fail_with
        result = {}
        for item in items:
            if adopt_existing and item.image_id in self.existing:
                result[item.image_id] = self.existing[item.image_id]
                continue
            self.next_id += 1
            self.existing[item.image_id] = self.next_id
            result[item.image_id] = self.next_id
        return result

    def refresh(self, items: Sequence[PushItem], *, model_version: str) -> None:
        self.refreshes.append((list(items), model_version))

    def remove(self, ls_task_ids: Sequence[int]) -> None:
        self.removed.extend(ls_task_ids)

    def created_tasks(self) -> int:
        return len(self.existing)


def _predict(
    session: Session, image_id: int, binary_id: int, probs: dict[str, float], bald: float = 0.0
) -> None:
    label = max(probs, key=lambda c: probs[c])
    mark_predicted(
        session,
        image_id,
        binary_id,
        probs,
        label=label,
        confidence=probs[label],
        uncertainty={"entropy": 0.0, "bald": bald},
    )


def _pool(sessions: sessionmaker[Session], n: int = 6) -> tuple[list[int], int]:
    """n predicted images; image i's prediction gets more uncertain with i (the last is the most)."""
    with sessions() as session:
        binary = new_model_version(session, ModelTask.BINARY)  # the first registered is the champion
        ids = []
        for i in range(n):
            image = new_image(session, f"img{i}.png")
            certain = 0.98 - i * 0.12
            rest = (1 - certain) / 2
            _predict(session, image.id, binary.id, {"ok": certain, "hole": rest, "raw_edge": rest})
            ids.append(image.id)
        session.commit()
        return ids, binary.id


def _push(sessions: sessionmaker[Session], sink: RecordingSink, k: int = 3, strategy: str = "entropy") -> Any:
    return labelling.push_labelling_batch(
        sessions=sessions, sink=sink, ls_project_id=7, strategy=strategy, k=k, classes=CLASSES
    )


def _statuses(sessions: sessionmaker[Session], ids: Sequence[int]) -> list[ImageStatus]:
    with sessions() as session:
        return [repo.get_image(session=session, image_id=i).status for i in ids]


def test_beat_push_hands_the_most_informative_images_to_the_labelling_side_once(
    sessions: sessionmaker[Session],
) -> None:
    ids, binary_id = _pool(sessions)
    sink = RecordingSink()
    report = _push(sessions, sink, k=3)

    items, adopt = sink.pushes[0]
    assert adopt is False
    assert [item.image_id for item in items] == [ids[5], ids[4], ids[3]]  # most uncertain first
    infos = [item.informativeness for item in items]
    assert infos == sorted(infos, reverse=True)
    assert all(0.0 <= x <= 1.0 for x in infos)
    with sessions() as session:  # Label Studio shows the registry's name of the model
        name = repo.get_model_version(session=session, version_id=binary_id).name
    assert {item.model_version for item in items} == {name}
    assert sorted(report.pushed) == sorted([ids[5], ids[4], ids[3]])
    assert _statuses(sessions, ids) == [ImageStatus.PREDICTED] * 3 + [ImageStatus.LABELLING] * 3

    again = _push(sessions, sink, k=3)
    assert [item.image_id for item in sink.pushes[1][0]] == [ids[2], ids[1], ids[0]]
    assert not set(again.pushed) & set(report.pushed), "an image was pushed twice"
    assert _push(sessions, sink, k=3).pushed == {}  # nothing left to choose
    assert sink.created_tasks() == 6
    with sessions() as session:
        rows = session.scalars(select(LabelTask)).all()
        assert {row.status for row in rows} == {LabelTaskStatus.PUSHED}
        assert sorted(row.ls_task_id or 0 for row in rows) == sorted(sink.existing.values())


def test_a_failed_push_is_recorded_and_its_retry_adopts_instead_of_duplicating(
    sessions: sessionmaker[Session],
) -> None:
    ids, _ = _pool(sessions, n=4)
    sink = RecordingSink(fail_with=LabelStudioUnavailableError("Label Studio at http://ls is unreachable"))
    with pytest.raises(LabelStudioUnavailableError):
        _push(sessions, sink, k=2)
    with sessions() as session:
        tasks = session.scalars(select(LabelTask)).all()
        assert {t.status for t in tasks} == {LabelTaskStatus.FAILED}
        assert all("unreachable" in (t.reason or "") for t in tasks)
    assert _statuses(sessions, ids) == [ImageStatus.PREDICTED] * 4

    sink.fail_with = None
    report = _push(sessions, sink, k=2)
    _, adopt = sink.pushes[-1]
    assert adopt is True
    assert report.retried == 2
    assert sink.created_tasks() == 4  # the two adopted + two new: none twice
    assert len(report.pushed) == 4
    with sessions() as session:
        assert {t.status for t in session.scalars(select(LabelTask))} == {LabelTaskStatus.PUSHED}


def test_bald_needs_stored_bald_scores_and_ranks_by_them(sessions: sessionmaker[Session]) -> None:
    _, binary_id = _pool(sessions, n=3)
    with sessions() as session:
        preds = repo.list_labelling_candidates(
            session=session, model_key=repo.make_model_key(binary_id, None), ls_project_id=7
        )
        for p in preds:
            p.uncertainty = {"entropy": 0.1}
        with pytest.raises(labelling.LabellingConfigError, match="MC_DROPOUT_PASSES"):
            labelling.choose_candidates(preds, strategy="bald", k=2, classes=CLASSES)
    with sessions() as session:
        preds = repo.list_labelling_candidates(
            session=session, model_key=repo.make_model_key(binary_id, None), ls_project_id=7
        )
        for p, bald in zip(preds, (0.01, 0.5, 0.2), strict=True):
            p.uncertainty = {"bald": bald}
        chosen = labelling.choose_candidates(preds, strategy="bald", k=2, classes=CLASSES)
    assert [p.uncertainty["bald"] for p, _ in chosen] == [0.5, 0.2]


def _event(
    action: AnnotationAction, annotation_id: int, task_id: int | None, label: str | None, **kw: Any
) -> AnnotationEvent:
    values: dict[str, Any] = {
        "action": action,
        "ls_annotation_id": annotation_id,
        "ls_task_id": task_id,
        "ls_project_id": 7,
        "image_id": None,
        "label": label,
        "annotator": "ann@factory.example",
        "annotated_at": datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
        "was_cancelled": False,
    }
    values.update(kw)
    return AnnotationEvent(**values)


def test_annotation_events_label_the_image_idempotently_and_deletion_reopens_it(
    sessions: sessionmaker[Session],
) -> None:
    _pool(sessions, n=2)
    sink = RecordingSink()
    pushed = _push(sessions, sink, k=2).pushed
    image_id, task_id = next(iter(pushed.items()))
    created = _event(AnnotationAction.CREATED, 501, task_id, "hole")
    with sessions.begin() as session:
        first = labelling.record_annotation_events(session=session, events=[created])
    with sessions.begin() as session:
        twice = labelling.record_annotation_events(session=session, events=[created])
    assert (first.created, twice.created, twice.unchanged) == (1, 0, 1)
    assert _statuses(sessions, [image_id]) == [ImageStatus.LABELLED]
    with sessions() as session:
        stored = session.scalars(select(Annotation)).one()
        assert (stored.label, stored.annotator, stored.image_id) == ("hole", "ann@factory.example", image_id)
        assert repo.get_label_task_by_ls_id(session=session, ls_project_id=7, ls_task_id=task_id).status == (  # type: ignore[union-attr]
            LabelTaskStatus.COMPLETED
        )

    later = datetime(2026, 11, 25, 12, 5, tzinfo=UTC)
    with sessions.begin() as session:
        updated = labelling.record_annotation_events(
            session=session,
            events=[_event(AnnotationAction.UPDATED, 501, task_id, "raw_edge", annotated_at=later)],
        )
    assert updated.updated == 1
    with sessions() as session:
        assert repo.current_label(session=session, image_id=image_id) == "raw_edge"

    with sessions.begin() as session:
        deleted = labelling.record_annotation_events(
            session=session, events=[_event(AnnotationAction.DELETED, 501, None, None, ls_project_id=None)]
        )
    assert deleted.deleted == 1
    assert _statuses(sessions, [image_id]) == [ImageStatus.LABELLING]  # waits for a label again
    with sessions() as session:
        assert repo.current_label(session=session, image_id=image_id) is None
        # ... and its task is open again, so the next champion re-scores it with the others.
        task = repo.get_label_task_by_ls_id(session=session, ls_project_id=7, ls_task_id=task_id)
        assert task is not None
        assert task.status is LabelTaskStatus.PUSHED


def test_skips_are_kept_as_cancelled_and_unknown_tasks_are_ignored(sessions: sessionmaker[Session]) -> None:
    _pool(sessions, n=1)
    pushed = _push(sessions, RecordingSink(), k=1).pushed
    image_id, task_id = next(iter(pushed.items()))
    with sessions.begin() as session:
        report = labelling.record_annotation_events(
            session=session,
            events=[
                _event(AnnotationAction.CREATED, 601, task_id, None, was_cancelled=True),
                _event(AnnotationAction.CREATED, 602, 999_999, "hole"),
            ],
        )
    assert (report.created, len(report.unknown)) == (1, 1)
    assert _statuses(sessions, [image_id]) == [ImageStatus.LABELLING]
    with sessions() as session:
        rows = session.scalars(select(Annotation)).all()
        assert [(a.ls_annotation_id, a.was_cancelled, a.label) for a in rows] == [(601, True, None)]


def test_the_simulated_annotators_labels_are_simulated_and_everyone_elses_come_from_label_studio(
    sessions: sessionmaker[Session],
) -> None:
    _pool(sessions, n=3)
    pushed = sorted(_push(sessions, RecordingSink(), k=3).pushed.values())
    when = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    events = [
        _event(AnnotationAction.CREATED, 701, pushed[0], "hole", annotator=SIMULATED_ANNOTATOR),
        _event(AnnotationAction.CREATED, 702, pushed[1], "hole"),  # a person, by e-mail
        # A webhook whose annotator Label Studio could not name: its user id, until reconciliation says.
        _event(AnnotationAction.CREATED, 703, pushed[2], "ok", annotator="2"),
    ]
    with sessions.begin() as session:
        assert labelling.record_annotation_events(session=session, events=events).created == 3
    later = _event(
        AnnotationAction.UPDATED, 703, pushed[2], "ok", annotator=SIMULATED_ANNOTATOR, annotated_at=when
    )
    with sessions.begin() as session:
        assert labelling.record_annotation_events(session=session, events=[later, events[0]]).as_dict() == {
            "created": 0,
            "updated": 1,
            "unchanged": 1,
            "deleted": 0,
            "unknown": 0,
        }
    with sessions() as session:
        rows = session.scalars(select(Annotation).order_by(Annotation.ls_annotation_id)).all()
        assert [(a.ls_annotation_id, a.origin, a.annotator) for a in rows] == [
            (701, AnnotationOrigin.SIMULATED, SIMULATED_ANNOTATOR),
            (702, AnnotationOrigin.LABEL_STUDIO, "ann@factory.example"),
            (703, AnnotationOrigin.SIMULATED, SIMULATED_ANNOTATOR),
        ]
    assert labelling.annotation_origin(SIMULATED_ANNOTATOR.upper()) is AnnotationOrigin.SIMULATED
    assert labelling.annotation_origin(None) is AnnotationOrigin.LABEL_STUDIO


@dataclass
class FakeSource:
    """An AnnotationSource over a dict of annotations, filtering by updated_at as the API does."""

    annotations: dict[int, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)
    calls: list[datetime | None] = field(default_factory=list)
    inspected: list[int] = field(default_factory=list)  # tasks whose annotation ids were asked for
    tasks: set[int] = field(default_factory=set)

    def add(self, annotation_id: int, task_id: int, image_id: int, label: str, when: datetime) -> None:
        annotation = {
            "id": annotation_id,
            "task": task_id,
            "project": 7,
            "result": [
                {
                    "from_name": FROM_NAME,
                    "to_name": IMAGE_NAME,
                    "type": "choices",
                    "value": {"choices": [label]},
                }
            ],
            "completed_by": {"id": 3, "email": "ann@factory.example"},
            "was_cancelled": False,
            "created_at": when.isoformat(),
            "updated_at": when.isoformat(),
        }
        task = {"id": task_id, "project": 7, "data": {IMAGE_ID_KEY: image_id}}
        self.annotations[annotation_id] = (annotation, task)
        self.tasks.add(task_id)

    def annotation_counts(self, *, project_id: int) -> dict[int, int]:
        counts = dict.fromkeys(self.tasks, 0)  # as Label Studio: every task, annotated or not
        for annotation, _ in self.annotations.values():
            counts[annotation["task"]] = counts.get(annotation["task"], 0) + 1
        return counts

    def annotation_ids(self, *, task_id: int) -> set[int]:
        self.inspected.append(task_id)
        return {a["id"] for a, _ in self.annotations.values() if a["task"] == task_id}

    def list_annotations(
        self, *, project_id: int, updated_after: datetime | None = None
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        self.calls.append(updated_after)
        return [
            pair
            for pair in self.annotations.values()
            if updated_after is None or datetime.fromisoformat(pair[0]["updated_at"]) > updated_after
        ]


def test_reconciliation_records_what_webhooks_missed_once_and_moves_its_cursor(
    sessions: sessionmaker[Session],
) -> None:
    _pool(sessions, n=5)
    pushed = _push(sessions, RecordingSink(), k=5).pushed
    source = FakeSource()
    t0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    for n, (image_id, task_id) in enumerate(pushed.items()):
        source.add(700 + n, task_id, image_id, "hole", t0 + timedelta(seconds=n))

    def reconcile(full: bool = False) -> labelling.ReconcileReport:
        return labelling.reconcile_annotations(
            sessions=sessions, source=source, ls_project_id=7, classes=CLASSES, full=full
        )

    first = reconcile()
    assert (first.seen, first.recorded.created) == (5, 5)
    assert first.cursor == t0 + timedelta(seconds=4)
    second = reconcile()
    assert source.calls[-1] == t0 + timedelta(seconds=4) - labelling.RECONCILE_OVERLAP
    assert (second.recorded.created, second.recorded.unchanged) == (0, 5)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Annotation)) == 5
        assert set(repo.count_images_by_status(session=session).items()) >= {(ImageStatus.LABELLED, 5)}

    # A deletion leaves nothing to list by time: the per-task counts show it, and only that task's
    # annotations are read.
    deleted_task = source.annotations[700][0]["task"]
    del source.annotations[700]
    found = reconcile()
    assert found.recorded.deleted == 1
    assert source.inspected == [deleted_task]
    assert reconcile().recorded.deleted == 0  # once
    # The disaster resync reads everything and finds the same: nothing more to delete.
    del source.annotations[701]
    full = reconcile(full=True)
    assert source.calls[-1] is None
    assert full.recorded.deleted == 1
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Annotation).where(Annotation.deleted)) == 2
        assert repo.count_images_by_status(session=session)[ImageStatus.LABELLING] == 2


def test_reconciliation_reports_invalid_annotations_without_recording_them(
    sessions: sessionmaker[Session],
) -> None:
    _pool(sessions, n=1)
    pushed = _push(sessions, RecordingSink(), k=1).pushed
    image_id, task_id = next(iter(pushed.items()))
    source = FakeSource()
    source.add(801, task_id, image_id, "not_a_class", datetime(2026, 11, 25, tzinfo=UTC))
    report = labelling.reconcile_annotations(
        sessions=sessions, source=source, ls_project_id=7, classes=CLASSES
    )
    assert report.recorded.created == 0
    assert len(report.invalid) == 1
    assert "not_a_class" in report.invalid[0]


def test_a_champion_change_re_predicts_open_tasks_under_the_new_version(
    sessions: sessionmaker[Session],
) -> None:
    ids, _ = _pool(sessions, n=3)
    sink = RecordingSink()
    pushed = _push(sessions, sink, k=2).pushed
    with sessions() as session:
        challenger = new_model_version(session, ModelTask.BINARY)
        repo.set_champion(session=session, version_id=challenger.id, actor="test", reason="better")
        session.commit()
        new_key = repo.make_model_key(challenger.id, None)
    scored: list[list[tuple[int, str]]] = []

    def score(items: Sequence[tuple[int, str]]) -> None:
        scored.append(list(items))
        with sessions.begin() as session:
            for image_id, _ in items:
                repo.add_prediction(
                    session=session,
                    image_id=image_id,
                    binary_version_id=challenger.id,
                    multiclass_version_id=None,
                    probabilities={"ok": 0.5, "hole": 0.3, "raw_edge": 0.2},
                    predicted_label="ok",
                    confidence=0.5,
                    uncertainty={"entropy": 1.0},
                )

    moved = labelling.refresh_labelling_predictions(
        sessions=sessions, sink=sink, ls_project_id=7, strategy="entropy", classes=CLASSES, score=score
    )
    assert moved == 2
    assert sorted(i for i, _ in scored[0]) == sorted(pushed)
    items, version = sink.refreshes[0]
    assert version == challenger.name
    assert {item.model_version for item in items} == {challenger.name}
    assert sorted(item.ls_task_id for item in items) == sorted(pushed.values())  # type: ignore[type-var]
    with sessions() as session:
        assert {t.model_key for t in session.scalars(select(LabelTask))} == {new_key}
    assert (
        labelling.refresh_labelling_predictions(
            sessions=sessions, sink=sink, ls_project_id=7, strategy="entropy", classes=CLASSES, score=score
        )
        == 0
    )  # nothing stale any more
    assert len(ids) == 3


def test_backend_handlers_answer_predict_in_task_order_and_know_only_pushed_tasks(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    ids, binary_id = _pool(sessions, n=3)
    pushed = _push(sessions, RecordingSink(), k=1).pushed
    image_id, task_id = next(iter(pushed.items()))
    published: list[Sequence[AnnotationEvent]] = []
    heatmaps = tmp_path / "heatmaps"
    heatmaps.mkdir()
    (heatmaps / f"{ids[0]}.png").write_bytes(b"png")
    retrains: list[str] = []
    handlers = LabellingHandlers(
        sessions=sessions,
        publish_events=published.append,
        classes=CLASSES,
        strategy="entropy",
        heatmaps_dir=heatmaps,
        publish_retrain=lambda: retrains.append("sent"),
    )
    with sessions() as session:
        key = repo.get_model_version(session=session, version_id=binary_id).name
    assert handlers.model_version() == key  # the registry's name, as `versions` lists it
    assert handlers.versions() == [key]
    assert handlers.is_known_task(ls_project_id=7, ls_task_id=task_id, image_id=image_id)
    assert not handlers.is_known_task(ls_project_id=7, ls_task_id=task_id + 1, image_id=None)
    assert not handlers.is_known_task(ls_project_id=7, ls_task_id=task_id, image_id=image_id + 1)

    tasks = [
        {"id": 1, "data": {IMAGE_ID_KEY: ids[2]}},
        {"id": 2, "data": {"image": "x"}},
        {"id": 3, "data": {IMAGE_ID_KEY: ids[0]}},
    ]
    results = handlers.predict(tasks)
    assert len(results) == 3
    assert results[1]["result"] == []
    assert results[0]["result"][0]["value"]["choices"] == ["ok"]
    assert results[0]["score"] < results[2]["score"]  # ids[2] is the more uncertain: lower score
    assert {r["model_version"] for r in results} == {key}

    assert handlers.media_path("heatmap", ids[0]) == heatmaps / f"{ids[0]}.png"
    assert handlers.media_path("heatmap", ids[1]) is None
    assert handlers.media_path("image", ids[1]) == Path("/mnt/cam1/img1.png")
    assert handlers.media_path("image", 424242) is None

    handlers.request_training(reason="Label Studio START_TRAINING")
    assert retrains == ["sent"]  # the training worker hears at once, not at beat's next policy check
    handlers.request_training(reason="pressed twice")  # joins the pending request
    with sessions() as session:
        runs = session.scalars(select(TrainingRun)).all()
        assert {run.task for run in runs} == {ModelTask.BINARY, ModelTask.MULTICLASS}
        assert len(runs) == 2
        assert {run.params["reason"] for run in runs} == {"Label Studio START_TRAINING"}
        assert {(run.architecture, run.trigger, run.status) for run in runs} == {
            ("all", TrainingTrigger.LS_WEBHOOK, TrainingRunStatus.QUEUED)
        }
    event = _event(AnnotationAction.CREATED, 1, task_id, "hole")
    handlers.submit_events([event])
    assert published == [[event]]


def test_the_app_schedules_pushing_and_reconciliation_only_when_label_studio_is_configured(
    tmp_path: Path,
) -> None:
    from workers.celery_app import WorkerConfig, create_app
    from workers.labelling_tasks import PUSH_TASK, RECONCILE_TASK, RECORD_TASK

    base: dict[str, Any] = {
        "broker_url": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "database_url": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "artifacts_dir": tmp_path,
        "classes": CLASSES,
    }
    plain = create_app(WorkerConfig(**base))
    assert PUSH_TASK not in plain.tasks
    assert {"push-labelling-batch", "reconcile-annotations"}.isdisjoint(plain.conf.beat_schedule)

    config = LabellingConfig(
        label_studio_url="http://127.0.0.1:9",
        api_key="token-0123",
        project_title="p",
        public_url="http://127.0.0.1:8000",
        media_secret="m" * 32,
        push_interval_s=30.0,
        reconcile_interval_s=45.0,
    )
    from workers.celery_app import WorkerRuntime

    worker_config = WorkerConfig(**base, labelling=config)
    runtime = WorkerRuntime(worker_config)
    app = create_app(worker_config, runtime=runtime)
    assert {PUSH_TASK, RECORD_TASK, RECONCILE_TASK} <= set(app.tasks)
    schedule = app.conf.beat_schedule
    assert (schedule["push-labelling-batch"]["task"], schedule["push-labelling-batch"]["schedule"]) == (
        PUSH_TASK,
        30.0,
    )
    assert schedule["reconcile-annotations"]["schedule"] == 45.0
    assert "requeue-waiting-images" in schedule  # the sweeper stays
    for name in (PUSH_TASK, RECORD_TASK, RECONCILE_TASK):
        assert app.conf.task_routes[name] == {"queue": "labelling"}
        assert app.tasks[name].acks_late
    # Beat sends every entry once when it starts: the first push does not wait a whole interval.
    from workers.celery_app import send_beat_entries_now

    sent = send_beat_entries_now(app)
    assert {"push-labelling-batch", "reconcile-annotations", "requeue-waiting-images"} <= set(sent)
    with sqlite3.connect(tmp_path / "broker.db") as db:
        queued = dict(
            db.execute(
                "SELECT q.name, count(*) FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
                "GROUP BY q.name"
            ).fetchall()
        )
    assert queued["labelling"] == 2  # the push and the reconciliation
    assert queued["maintenance"] == len(sent) - 2

    # A worker that predicted new images asks for a top-up push, at most once per interval.
    from workers.labelling_tasks import request_labelling_push

    assert runtime.push_request_due(60.0)
    assert not runtime.push_request_due(60.0)
    request_labelling_push(app)
    with sqlite3.connect(tmp_path / "broker.db") as db:
        bodies = [
            row[0]
            for row in db.execute(
                "SELECT m.payload FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
                "WHERE q.name = 'labelling'"
            )
        ]
    assert len(bodies) == 3
    assert sum(PUSH_TASK in body for body in bodies) == 2
    app.close()
    assert "token-0123" not in repr(config)
    assert config.media_url("image", 5).startswith("http://127.0.0.1:8000/media/image/5?sig=")
    with pytest.raises(ValueError, match="DEFECTLOOP_LABEL_STUDIO_API_KEY"):
        _labelling_config(api_key="")


def _labelling_config(**overrides: Any) -> LabellingConfig:
    values = {
        "label_studio_url": "http://x",
        "api_key": "k",
        "project_title": "p",
        "public_url": "http://y",
        "media_secret": "m",
    }
    return LabellingConfig(**{**values, **overrides})


def test_beat_tops_the_open_tasks_up_to_the_queue_target_and_an_explicit_k_pushes_k(
    sessions: sessionmaker[Session],
) -> None:
    _pool(sessions, n=8)
    sink = RecordingSink()

    def beat_push() -> Any:
        return labelling.push_labelling_batch(
            sessions=sessions,
            sink=sink,
            ls_project_id=7,
            strategy="entropy",
            k=3,
            classes=CLASSES,
            keep_open=5,
        )

    assert len(beat_push().pushed) == 3  # at most a batch per push
    assert len(beat_push().pushed) == 2  # up to the target of 5 open tasks
    assert len(beat_push().pushed) == 0  # the annotators have enough
    # An annotator labels two: the next push brings the queue back to five.
    with sessions.begin() as session:
        done = [t for t in session.scalars(select(LabelTask)) if t.ls_task_id is not None][:2]
        for n, task in enumerate(done):
            labelling.record_annotation_events(
                session=session, events=[_event(AnnotationAction.CREATED, 900 + n, task.ls_task_id, "hole")]
            )
    assert len(beat_push().pushed) == 2
    assert len(_push(sessions, sink, k=1).pushed) == 1  # an engineer's `labelling push --k 1`


def test_a_task_whose_photo_changed_is_taken_back_and_its_photo_never_served(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    ids, _ = _pool(sessions, n=3)
    sink = RecordingSink()
    pushed = _push(sessions, sink, k=2).pushed
    changed = sorted(pushed)[0]
    with sessions.begin() as session:  # the watcher found new bytes in its file
        newer = new_image(session, "img-new.png")
        image = repo.get_image(session=session, image_id=changed)
        repo.supersede_images_at(
            session=session, paths=[image.path], reason="file changed", by_image_id=newer.id
        )
    assert labelling.retire_superseded_tasks(sessions=sessions, sink=sink, ls_project_id=7) == 1
    assert sink.removed == [pushed[changed]]
    assert labelling.retire_superseded_tasks(sessions=sessions, sink=sink, ls_project_id=7) == 0  # once
    with sessions() as session:
        assert repo.list_label_tasks(session=session, ls_project_id=7, image_ids=[changed]) == []
        assert repo.get_image(session=session, image_id=changed).status is ImageStatus.SUPERSEDED
    report = _push(sessions, sink, k=3)  # a superseded image is never a candidate again
    assert changed not in report.pushed
    handlers = LabellingHandlers(
        sessions=sessions,
        publish_events=lambda events: None,
        classes=CLASSES,
        strategy="entropy",
        heatmaps_dir=None,
    )
    assert handlers.media_path("image", changed) is None
    assert handlers.media_path("image", ids[2]) is not None


def test_only_one_push_per_project_runs_at_a_time(sessions: sessionmaker[Session]) -> None:
    _pool(sessions, n=3)
    sink = RecordingSink()
    with labelling.exclusive_push(sessions, 7) as held:
        assert held
        # Beat's push while an engineer's is still running: it must not send the same pending tasks.
        report = _push(sessions, sink, k=3)
        assert report.skipped
        assert sink.pushes == []
        assert (
            labelling.refresh_labelling_predictions(
                sessions=sessions, sink=sink, ls_project_id=7, strategy="entropy", classes=CLASSES
            )
            == 0
        )
    assert len(_push(sessions, sink, k=3).pushed) == 3  # the lease was released
    assert not _push(sessions, RecordingSink(), k=3, strategy="entropy").skipped


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_workers_ask_the_registry_what_each_strategy_needs(
    sessions: sessionmaker[Session], strategy: str
) -> None:
    handlers = LabellingHandlers(
        sessions=sessions,
        publish_events=lambda events: None,
        classes=CLASSES,
        strategy=strategy,
        heatmaps_dir=None,
    )
    # /predict ranks stored predictions: strategies needing embeddings, and random, show entropy instead.
    shown = strategy if strategy in {"least_confidence", "margin", "entropy", "bald"} else "entropy"
    assert handlers._strategy == shown
    assert _labelling_config(strategy=strategy).strategy == strategy


def test_an_unknown_strategy_is_refused_with_the_valid_names(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(ValueError, match="valid strategies: random, least_confidence"):
        _labelling_config(strategy="uncertainty")
    with pytest.raises(ValueError, match="valid strategies"):
        labelling.choose_candidates([object()], strategy="uncertainty", k=1, classes=CLASSES)  # type: ignore[list-item]
