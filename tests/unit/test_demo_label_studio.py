"""The demo's Label Studio annotator against a SQLite registry and a fake Label Studio (no service).

The loop's own pushing and recording run for real (``workers.labelling``); the fake stands in for the
server: it keeps the pushed tasks, orders the open ones as Label Studio's queue does (most informative
first) and, like the webhook and the labelling worker, records each annotation it is given (or not,
to show what the annotator says when the loop records nothing). The real server is in
tests/integration/test_demo_label_studio.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import Annotation, AnnotationOrigin, ModelTask
from defectloop.demo.label_studio import AnnotatorTimeoutError, LabelStudioAnnotator
from defectloop.errors import DefectloopError
from defectloop.settings import Settings
from labelling.gateway import ProjectInfo
from labelling.names import SIMULATED_ANNOTATOR
from labelling.payloads import AnnotationAction, AnnotationEvent
from tests.db_helpers import mark_predicted, new_image, new_model_version
from workers import labelling
from workers.labelling import PushItem

CLASSES = ("ok", "hole", "raw_edge")
PROJECT = 7
USER = 42


@dataclass
class FakeLabelStudio:
    """Sink (for the loop's push) and gateway (for the annotator) of one fake project."""

    sessions: sessionmaker[Session]
    deliver: bool = True  # the webhook reaches the loop
    tasks: dict[int, tuple[int, float]] = field(
        default_factory=dict
    )  # task id -> (image id, informativeness)
    annotated: dict[int, tuple[int, str | None, int | None]] = field(default_factory=dict)  # id -> task, ...
    next_id: int = 100

    # -- LabellingSink
    def push(self, items: Sequence[PushItem], *, adopt_existing: bool) -> dict[int, int]:
        pushed = {}
        for item in items:
            self.next_id += 1
            self.tasks[self.next_id] = (item.image_id, item.informativeness)
            pushed[item.image_id] = self.next_id
        return pushed

    def refresh(self, items: Sequence[PushItem], *, model_version: str) -> None:
        for item in items:
            assert item.ls_task_id is not None
            self.tasks[item.ls_task_id] = (item.image_id, item.informativeness)

    def remove(self, ls_task_ids: Sequence[int]) -> None:
        for task_id in ls_task_ids:
            self.tasks.pop(task_id, None)

    # -- the gateway calls the annotator makes
    def ensure_project(self, *, title: str, label_config: str) -> ProjectInfo:
        return ProjectInfo(id=PROJECT, created=False)

    def ensure_webhook(self, **_: Any) -> bool:
        return False

    def ensure_user(self, *, email: str, first_name: str = "", last_name: str = "") -> int:
        assert email == SIMULATED_ANNOTATOR
        return USER

    def task_ids_by_score(self, *, project_id: int) -> list[int]:
        return sorted(self.tasks, key=lambda t: (-self.tasks[t][1], t))

    def open_task_ids_by_score(self, *, project_id: int) -> list[int]:
        annotated = {task for task, _, _ in self.annotated.values()}
        open_tasks = [t for t in self.tasks if t not in annotated]
        return sorted(open_tasks, key=lambda t: (-self.tasks[t][1], t))

    def create_annotation(self, *, task_id: int, choice: str | None, completed_by: int | None = None) -> int:
        self.next_id += 1
        self.annotated[self.next_id] = (task_id, choice, completed_by)
        if self.deliver:
            event = AnnotationEvent(
                action=AnnotationAction.CREATED,
                ls_annotation_id=self.next_id,
                ls_task_id=task_id,
                ls_project_id=PROJECT,
                image_id=self.tasks[task_id][0],
                label=choice,
                annotator=SIMULATED_ANNOTATOR if completed_by == USER else "someone@factory.example",
                annotated_at=datetime.now(UTC),
                was_cancelled=False,
            )
            with self.sessions.begin() as session:
                labelling.record_annotation_events(session=session, events=[event])
        return self.next_id

    def close(self) -> None:
        pass


def _pool(sessions: sessionmaker[Session], n: int) -> list[int]:
    """n predicted images, the later ones less certain (more informative)."""
    with sessions.begin() as session:
        binary = new_model_version(session, ModelTask.BINARY)
        ids = []
        for i in range(n):
            image = new_image(session, f"img{i}.png")
            certain = 0.95 - i * 0.05
            probs = {"ok": certain, "hole": (1 - certain) / 2, "raw_edge": (1 - certain) / 2}
            mark_predicted(
                session,
                image.id,
                binary.id,
                probs,
                label="ok",
                confidence=certain,
                uncertainty={"entropy": 0.0},
            )
            ids.append(image.id)
        return ids


def truth(image_id: int) -> str:
    return CLASSES[image_id % len(CLASSES)]


@dataclass
class Pusher:
    """The loop's push, as the workers run it when the annotator asks for one."""

    fake: FakeLabelStudio
    asked: list[int] = field(default_factory=list)

    def __call__(self, k: int) -> None:
        self.asked.append(k)
        labelling.push_labelling_batch(
            sessions=self.fake.sessions,
            sink=self.fake,
            ls_project_id=PROJECT,
            strategy="entropy",
            k=k,
            classes=CLASSES,
        )


def _pushed(
    sessions: sessionmaker[Session], n: int, pushed: int, **fake_kw: Any
) -> tuple[list[int], FakeLabelStudio, Pusher]:
    """A pool of ``n`` predicted images of which the loop pushed ``pushed`` to a fake Label Studio."""
    ids = _pool(sessions, n)
    fake = FakeLabelStudio(sessions, **fake_kw)
    pusher = Pusher(fake)
    pusher(pushed)
    return ids, fake, pusher


def _annotator(
    sessions: sessionmaker[Session], fake: FakeLabelStudio, pusher: Pusher, **kw: Any
) -> LabelStudioAnnotator:
    settings = Settings(classes=CLASSES, label_studio_api_key="k", webhook_secret="s")
    return LabelStudioAnnotator(
        settings=settings,
        sessions=sessions,
        truth=truth,
        gateway=fake,  # type: ignore[arg-type]
        request_push=pusher,
        poll_s=0.01,
        **kw,
    )


def test_it_labels_the_head_of_the_queue_as_the_simulated_user_and_returns_once_recorded(
    sessions: sessionmaker[Session],
) -> None:
    ids, fake, pusher = _pushed(sessions, 8, 5)
    annotator = _annotator(sessions, fake, pusher)

    assert annotator.label_batch(3) == [ids[7], ids[6], ids[5]]  # most informative first
    assert pusher.asked == [5]  # enough were open: no push asked for
    assert {user for _, _, user in fake.annotated.values()} == {USER}
    with sessions() as session:
        rows = session.scalars(select(Annotation).order_by(Annotation.image_id)).all()
    assert [(r.image_id, r.label, r.origin) for r in rows] == [
        (i, truth(i), AnnotationOrigin.SIMULATED) for i in sorted([ids[7], ids[6], ids[5]])
    ]
    assert set(annotator.timings) == {"rank", "label", "record"}


def test_with_too_few_open_tasks_it_asks_the_loop_for_more_and_stops_when_the_pool_is_empty(
    sessions: sessionmaker[Session],
) -> None:
    ids, fake, pusher = _pushed(sessions, 6, 2)
    annotator = _annotator(sessions, fake, pusher)

    assert annotator.label_batch(4) == [ids[5], ids[4], ids[3], ids[2]]
    assert pusher.asked == [2, 2]  # the loop's push, for what was missing
    # Two images are left; asked for five, it labels those two and says so by returning fewer.
    assert sorted(annotator.label_batch(5)) == sorted(ids[:2])
    assert annotator.label_batch(1) == []


def test_open_tasks_ranked_by_an_earlier_champion_wait_for_the_loop_to_re_rank_them(
    sessions: sessionmaker[Session],
) -> None:
    _, fake, pusher = _pushed(sessions, 4, 4)
    with sessions.begin() as session:
        newer = new_model_version(session, ModelTask.BINARY, name="binary-baseline_cnn-0002")
        repo.set_champion(session=session, version_id=newer.id, actor="test", reason="newer")
    annotator = _annotator(sessions, fake, pusher, timeout_s=0.3)
    # The loop would re-score the open tasks with the new champion on its next push; here nobody does.
    with pytest.raises(AnnotatorTimeoutError, match="ranked by an earlier champion"):
        annotator.label_batch(2)


def test_what_the_loop_did_not_record_in_time_is_named(sessions: sessionmaker[Session]) -> None:
    ids, fake, pusher = _pushed(sessions, 3, 3, deliver=False)
    annotator = _annotator(sessions, fake, pusher, timeout_s=0.2)
    task_id = fake.open_task_ids_by_score(project_id=PROJECT)[0]
    with pytest.raises(AnnotatorTimeoutError, match=rf"task {task_id}, image {ids[2]}\).*webhook"):
        annotator.label_batch(1)


def test_a_ground_truth_outside_the_classes_is_refused(sessions: sessionmaker[Session]) -> None:
    _, fake, pusher = _pushed(sessions, 2, 2)
    annotator = _annotator(sessions, fake, pusher)
    annotator._truth = lambda image_id: "stain"
    with pytest.raises(ValueError, match="'stain', not one of the classes ok, hole, raw_edge"):
        annotator.label_batch(1)
    assert fake.annotated == {}


def test_a_project_holding_tasks_this_database_did_not_push_is_refused(
    sessions: sessionmaker[Session],
) -> None:
    _, fake, pusher = _pushed(sessions, 2, 2)
    fake.tasks[5] = (1, 0.99)  # left by an earlier run on another database
    annotator = _annotator(sessions, fake, pusher)
    annotator._poll_s = 0.01
    with pytest.raises(DefectloopError, match=r"holds 1 task.*did not push.*project of its own"):
        annotator.check_project_is_ours(settle_s=0.05)
    del fake.tasks[5]
    assert len(annotator.label_batch(2)) == 2
