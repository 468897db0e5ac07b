"""The demo's simulated annotator against the test session's Label Studio and our real processes.

One deployment (tests/labelling_deployment.py): 24 classified camera images, ``defectloop serve``
(the webhook receiver) and a ``defectloop worker`` on the ``labelling`` queue. The annotator labels
through Label Studio's API only; what reaches the database goes through the webhook and the worker
(or reconciliation), as a person's labels do. Every wait polls up to a deadline.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from db.schema import Annotation, AnnotationOrigin
from defectloop.demo.label_studio import AnnotatorTimeoutError, LabelStudioAnnotator
from defectloop.demo.run import DemoRunner
from defectloop.errors import DefectloopError
from defectloop.settings import DEFAULT_CLASSES, Settings
from labelling.devserver import LabelStudioServer
from labelling.names import SIMULATED_ANNOTATOR
from tests.label_studio_fixtures import unique_project_title
from tests.labelling_deployment import Deployment, deploy

pytestmark = pytest.mark.integration


def truth(image_id: int) -> str:
    return DEFAULT_CLASSES[image_id % len(DEFAULT_CLASSES)]


@pytest.fixture(scope="module")
def deployment(
    label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    with deploy(label_studio, tmp_path_factory.mktemp("demo-ls"), unique_project_title(request)) as state:
        yield state


def settings_of(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the deployment's processes run with (read from their environment, as the CLI does)."""
    for name, value in deployment.env.items():
        if name.startswith("DEFECTLOOP_"):
            monkeypatch.setenv(name, value)
    return Settings()


@pytest.fixture
def annotator(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Iterator[LabelStudioAnnotator]:
    with LabelStudioAnnotator(
        settings=settings_of(deployment, monkeypatch),
        sessions=deployment.sessions,
        truth=truth,
        timeout_s=120,
    ) as made:
        yield made


def recorded(deployment: Deployment, image_ids: list[int]) -> list[Annotation]:
    with deployment.sessions() as session:
        return list(
            session.scalars(
                select(Annotation).where(Annotation.image_id.in_(image_ids)).order_by(Annotation.image_id)
            )
        )


def test_it_labels_the_most_informative_open_tasks_through_label_studio_recorded_once_as_simulated(
    deployment: Deployment, annotator: LabelStudioAnnotator
) -> None:
    deployment.cli("labelling", "push", "--k", "6")
    project_id = deployment.project_id
    queue = deployment.gateway.task_ids_by_score(project_id=project_id)
    image_of = {t.ls_task_id: t.image_id for t in deployment.label_tasks()}

    labelled = annotator.label_batch(4)

    assert labelled == [image_of[task_id] for task_id in queue[:4]]  # the annotators' order
    rows = recorded(deployment, labelled)
    assert len(rows) == 4
    assert {r.image_id for r in rows} == set(labelled)
    assert {(r.origin, r.annotator) for r in rows} == {(AnnotationOrigin.SIMULATED, SIMULATED_ANNOTATOR)}
    assert all(r.label == truth(r.image_id) for r in rows)
    # Made in Label Studio, by the simulated annotator's user, not the API key's owner.
    in_label_studio = deployment.gateway.list_annotations(project_id=project_id)
    assert {int(a["id"]) for a, _ in in_label_studio} == {r.ls_annotation_id for r in rows}
    assert {a["completed_by"] for a, _ in in_label_studio} == {annotator.user_id}
    assert deployment.gateway.open_task_ids_by_score(project_id=project_id) == queue[4:]

    # Reconciliation reads them again (as it does on beat's schedule): still one each, unchanged.
    deployment.cli("labelling", "resync")
    again = recorded(deployment, labelled)
    assert [(r.id, r.origin, r.label) for r in again] == [(r.id, r.origin, r.label) for r in rows]


def test_a_person_labelling_in_label_studio_is_recorded_with_origin_label_studio(
    deployment: Deployment, annotator: LabelStudioAnnotator
) -> None:
    open_tasks = annotator.open_tasks(1)
    assert open_tasks, "the previous test leaves open tasks"
    # The API key's owner, as the labelling UI would submit it.
    deployment.gateway.create_annotation(task_id=open_tasks[0].ls_task_id, choice="hole")
    deployment.wait_for("the person's label", lambda: bool(recorded(deployment, [open_tasks[0].image_id])))
    (row,) = recorded(deployment, [open_tasks[0].image_id])
    assert (row.origin, row.annotator, row.label) == (
        AnnotationOrigin.LABEL_STUDIO,
        deployment.server.username,
        "hole",
    )


def test_with_too_few_open_tasks_it_has_the_loop_push_more_and_labels_them(
    deployment: Deployment, annotator: LabelStudioAnnotator
) -> None:
    before = {t.image_id for t in deployment.label_tasks()}
    image_of = {t.ls_task_id: t.image_id for t in deployment.label_tasks()}
    open_before = [
        image_of[task_id]
        for task_id in deployment.gateway.open_task_ids_by_score(project_id=deployment.project_id)
    ]
    assert 0 < len(open_before) < 5

    labelled = annotator.label_batch(5)

    assert len(labelled) == len(set(labelled)) == 5
    assert open_before == labelled[: len(open_before)]
    pushed_now = {t.image_id for t in deployment.label_tasks()} - before
    assert pushed_now
    assert set(labelled) - set(open_before) <= pushed_now
    rows = recorded(deployment, labelled)
    assert len(rows) == 5
    assert {r.origin for r in rows} == {AnnotationOrigin.SIMULATED}


def test_what_the_loop_does_not_record_in_time_is_named(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment.cli("labelling", "push", "--k", "2")
    deployment.stop("worker")  # nothing records: the webhook's events wait in the queue
    try:
        with LabelStudioAnnotator(
            settings=settings_of(deployment, monkeypatch),
            sessions=deployment.sessions,
            truth=truth,
            timeout_s=3,
            request_push=lambda k: None,
        ) as annotator:
            task = annotator.open_tasks(1)[0]
            with pytest.raises(
                AnnotatorTimeoutError, match=rf"task {task.ls_task_id}, image {task.image_id}"
            ):
                annotator.label_batch(1)
    finally:
        deployment.start("worker", "worker", "--queues", "labelling", "--inference-backend", "eager")
    deployment.wait_for(
        "the queued event to be recorded once the worker is back",
        lambda: bool(recorded(deployment, [task.image_id])),
    )
    assert len(recorded(deployment, [task.image_id])) == 1


def test_fresh_refuses_while_the_previous_runs_label_studio_project_is_kept(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    settings = settings_of(deployment, monkeypatch)
    assert deployment.project_id  # the deployment's project exists, with its tasks

    with pytest.raises(DefectloopError, match=rf"project {settings.label_studio_project_title!r} \(id "):
        DemoRunner._refuse_a_kept_label_studio_project(settings)

    monkeypatch.setenv("DEFECTLOOP_LABEL_STUDIO_PROJECT_TITLE", unique_project_title(request) + " new")
    DemoRunner._refuse_a_kept_label_studio_project(Settings())  # no such project: a fresh run may start
