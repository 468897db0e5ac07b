"""The labelling loop against a real Label Studio server, with our real processes.

One deployment per module: a migrated SQLite registry with champions (untrained 32 px CNNs: the
bookkeeping matters here, not the accuracy), 24 classified camera images, the embedded broker, a
``defectloop serve`` process (webhook receiver + ML backend + media) and a ``defectloop worker`` on
the ``labelling`` queue, all pointed at the session's Label Studio (tests/label_studio_fixtures.py).
Every wait polls up to a deadline; nothing asserts a timing.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from db import repositories as repo
from db.schema import Annotation, ImageStatus, ModelTask, SourceKind
from defectloop.settings import DEFAULT_CLASSES
from labelling.devserver import LabelStudioServer, find_free_port
from labelling.names import IMAGE_ID_KEY, SECRET_HEADER
from models.labels import LabelSpace
from tests.label_studio_fixtures import unique_project_title
from tests.labelling_deployment import DEFECTLOOP, N_IMAGES, SECRET, Deployment, deploy, register_champion
from workers import classification
from workers.labelling import current_model_key, label_studio_version

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployment(
    label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    with deploy(
        label_studio, tmp_path_factory.mktemp("labelling-loop"), unique_project_title(request)
    ) as state:
        yield state


def test_init_twice_makes_one_project_one_webhook_and_one_view(deployment: Deployment) -> None:
    second = deployment.cli("labelling", "init")
    assert "already there" in second.stdout
    project_id = deployment.project_id  # exactly one project with the title
    webhooks = deployment.gateway.list_webhooks(project_id=project_id)
    assert len(webhooks) == 1
    assert webhooks[0]["url"] == f"{deployment.public_url}/webhooks/label-studio"
    assert webhooks[0]["headers"] == {SECRET_HEADER: SECRET}
    assert len(deployment.gateway.list_views(project_id=project_id)) == 1
    assert SECRET not in second.stdout + second.stderr
    assert deployment.server.token not in second.stdout + second.stderr
    assert "HTTP Request" not in second.stdout + second.stderr  # the SDK's request log stays out


def test_push_orders_the_queue_by_informativeness_and_never_pushes_an_image_twice(
    deployment: Deployment,
) -> None:
    deployment.cli("labelling", "push", "--k", "20")
    tasks = deployment.label_tasks()
    assert len(tasks) == 20
    ours = [t.ls_task_id for t in sorted(tasks, key=lambda t: (-t.informativeness, t.id))]
    assert deployment.gateway.task_ids_by_score(project_id=deployment.project_id) == ours
    project = deployment.gateway.get_project(project_id=deployment.project_id)
    with deployment.sessions() as session:
        # Label Studio shows the registry's names of the champions, as `defectloop versions` lists them.
        shown = label_studio_version(session, tasks[0].model_key or "")
        assert shown == "binary-baseline_cnn-0001+multiclass-baseline_cnn-0002"
        assert project["model_version"] == shown
        statuses = repo.count_images_by_status(session=session)
    assert statuses[ImageStatus.LABELLING] == 20

    deployment.cli("labelling", "push", "--k", "20")  # only 4 images are left to choose
    listed = deployment.gateway.list_tasks(project_id=deployment.project_id)
    image_ids = [task["data"][IMAGE_ID_KEY] for task in listed]
    assert len(image_ids) == len(set(image_ids)) == N_IMAGES
    assert len(deployment.label_tasks()) == N_IMAGES

    # The photo and the heat-map are served to Label Studio's browser by signed URL, and only so.
    data = listed[0]["data"]
    for key in ("image", "heatmap"):
        answer = httpx.get(data[key], timeout=10)
        assert answer.status_code == 200, (key, answer.text)
        assert answer.headers["content-type"] == "image/png"
        assert httpx.get(data[key].replace("sig=", "sig=x"), timeout=10).status_code == 403


def _tasks_by_image(deployment: Deployment) -> dict[int, int]:
    if len(deployment.label_tasks()) < N_IMAGES:
        deployment.cli("labelling", "push", "--k", str(N_IMAGES))
    return {t.image_id: t.ls_task_id for t in deployment.label_tasks() if t.ls_task_id is not None}


def test_a_submitted_annotation_reaches_the_database_and_updates_and_deletes_follow(
    deployment: Deployment,
) -> None:
    tasks = _tasks_by_image(deployment)
    image_id, task_id = sorted(tasks.items())[0]
    before = len(deployment.annotations())
    annotation_id = deployment.gateway.create_annotation(task_id=task_id, choice="hole")

    def recorded() -> Annotation | None:
        return next((a for a in deployment.annotations() if a.ls_annotation_id == annotation_id), None)

    deployment.wait_for("the webhook's annotation", lambda: recorded() is not None)
    row = recorded()
    assert row is not None
    assert (row.image_id, row.label, row.deleted) == (image_id, "hole", False)
    assert row.annotator == deployment.server.username  # who labelled it, by e-mail
    assert row.annotated_at is not None
    assert len(deployment.annotations()) == before + 1
    with deployment.sessions() as session:
        assert repo.get_image(session=session, image_id=image_id).status is ImageStatus.LABELLED

    deployment.gateway.update_annotation(annotation_id=annotation_id, choice="raw_edge")
    deployment.wait_for("the update", lambda: (r := recorded()) is not None and r.label == "raw_edge")
    deployment.gateway.delete_annotation(annotation_id=annotation_id)
    deployment.wait_for("the deletion", lambda: (r := recorded()) is not None and r.deleted)
    with deployment.sessions() as session:
        assert repo.get_image(session=session, image_id=image_id).status is ImageStatus.LABELLING
    assert len(deployment.annotations()) == before + 1
    assert deployment.server.token not in deployment.log("serve") + deployment.log("worker")


def test_annotations_made_while_the_receiver_is_down_are_recovered_once_by_reconciliation(
    deployment: Deployment,
) -> None:
    tasks = _tasks_by_image(deployment)
    chosen = sorted(tasks.items())[5:10]
    deployment.stop("serve")
    made = [
        deployment.gateway.create_annotation(task_id=task_id, choice="uncut_thread") for _, task_id in chosen
    ]
    deployment.start_receiver()
    time.sleep(1.0)  # nothing can arrive: Label Studio never retries a webhook
    assert not {a.ls_annotation_id for a in deployment.annotations()} & set(made)

    deployment.cli("labelling", "reconcile")
    deployment.cli("labelling", "reconcile")
    deployment.cli("labelling", "resync")
    rows = [a for a in deployment.annotations() if a.ls_annotation_id in set(made)]
    assert sorted(a.ls_annotation_id or 0 for a in rows) == sorted(made)  # all five, each once
    assert {a.label for a in rows} == {"uncut_thread"}
    assert {a.image_id for a in rows} == {image_id for image_id, _ in chosen}


def test_bad_webhooks_get_the_intended_4xx_and_record_nothing(deployment: Deployment) -> None:
    tasks = _tasks_by_image(deployment)
    task_id = sorted(tasks.values())[-1]
    url = f"{deployment.public_url}/webhooks/label-studio"
    project_token = "projecttoken-do-not-log-0042"
    body: dict[str, Any] = {
        "action": "ANNOTATION_CREATED",
        "annotation": {
            "id": 990001,
            "task": task_id,
            "project": deployment.project_id,
            "result": [
                {"from_name": "defect", "to_name": "image", "type": "choices", "value": {"choices": ["hole"]}}
            ],
            "completed_by": 1,
            "was_cancelled": False,
            "created_at": "2026-11-25T12:00:00Z",
            "updated_at": "2026-11-25T12:00:00Z",
        },
        "task": {"id": task_id, "data": {}},
        "project": {"id": deployment.project_id, "token": project_token},
    }
    before = len(deployment.annotations())
    assert httpx.post(url, json=body, headers={SECRET_HEADER: "wrong"}, timeout=5).status_code == 401
    assert httpx.post(url, json=body, timeout=5).status_code == 401
    assert (
        httpx.post(url, content=b"{not json", headers={SECRET_HEADER: SECRET}, timeout=5).status_code == 400
    )
    unknown_class = json.loads(json.dumps(body))
    unknown_class["annotation"]["result"][0]["value"]["choices"] = ["stain"]
    answer = httpx.post(url, json=unknown_class, headers={SECRET_HEADER: SECRET}, timeout=5)
    assert answer.status_code == 422
    assert "stain" in answer.text
    unknown_task = json.loads(json.dumps(body))
    unknown_task["annotation"]["task"] = unknown_task["task"]["id"] = 987654
    assert httpx.post(url, json=unknown_task, headers={SECRET_HEADER: SECRET}, timeout=5).status_code in (
        404,
        422,
    )
    time.sleep(1.0)
    assert len(deployment.annotations()) == before
    logs = deployment.log("serve") + deployment.log("worker")
    assert project_token not in logs
    assert SECRET not in logs


def test_label_studio_gets_predictions_from_our_ml_backend(deployment: Deployment) -> None:
    tasks = _tasks_by_image(deployment)
    gateway, project_id = deployment.gateway, deployment.project_id
    backend_id = gateway.connect_ml_backend(
        project_id=project_id, url=deployment.public_url, title="defectloop"
    )
    again = gateway.connect_ml_backend(project_id=project_id, url=deployment.public_url, title="defectloop")
    assert again == backend_id
    # Label Studio asks a backend only for tasks without a prediction of the backend's version, so: three
    # tasks an engineer imported by hand for our images, and one that is not ours (it must get an empty
    # answer, not fail the batch).
    ours = sorted(tasks)[:3]
    imported = gateway.import_tasks(
        project_id=project_id,
        tasks=[
            # The label config names image, heatmap and guess: Label Studio refuses a task without one.
            *(
                {"data": {"image": "http://127.0.0.1:9/x.png", "heatmap": "", "guess": "", IMAGE_ID_KEY: i}}
                for i in ours
            ),
            {"data": {"image": "http://example.invalid/x.png", "heatmap": "", "guess": ""}},
        ],
    )
    gateway.request_ml_predictions(project_id=project_id, task_ids=imported)

    def predicted() -> bool:
        listed = {t["id"]: t for t in gateway.list_tasks(project_id=project_id)}
        return all(listed[t]["predictions"] for t in imported[:3])

    deployment.wait_for("predictions from our backend", predicted)
    with deployment.sessions() as session:
        key = label_studio_version(session, current_model_key(session) or "")
    listed = {t["id"]: t for t in gateway.list_tasks(project_id=project_id)}
    scores = []
    for task_id in imported[:3]:
        (prediction,) = listed[task_id]["predictions"]
        assert prediction["model_version"] == key
        assert 0.0 <= prediction["score"] <= 1.0
        scores.append(prediction["score"])
    log = deployment.log("serve")
    assert "predict: " in log
    assert "POST /setup" in log
    assert "sig=" not in log  # media signatures are credentials: the access log drops query strings


def test_a_push_cut_off_after_label_studio_took_the_task_adopts_it_instead_of_duplicating(
    deployment: Deployment,
) -> None:
    from labelling.payloads import TaskSpec, build_task

    _tasks_by_image(deployment)  # everything else is pushed: the next push is only about this image
    with deployment.sessions.begin() as session:
        source = repo.get_or_create_source(session=session, name="cam1", kind=SourceKind.CAMERA)
        path = deployment.root / "camera" / "late.png"
        PILImage.fromarray(np.full((64, 64), 200, dtype=np.uint8), mode="L").save(path)
        image, _ = repo.add_image(
            session=session,
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),  # the worker checks it
            path=str(path),
            source_id=source.id,
            width=64,
            height=64,
            mode="L",
            size_bytes=path.stat().st_size,
        )
        image_id = image.id
    champions = classification.ChampionCache(lambda ref: classification.load_predictor(ref, backend="eager"))
    classification.classify_images(
        [image_id],
        sessions=deployment.sessions,
        champions=champions,
        label_space=LabelSpace.from_classes(DEFAULT_CLASSES),
        batch_size=8,
    )
    project_id = deployment.project_id
    with deployment.sessions.begin() as session:
        prediction = repo.latest_prediction(session=session, image_id=image_id)
        assert prediction is not None
        repo.add_label_task(
            session=session,
            image_id=image_id,
            ls_project_id=project_id,
            informativeness=0.5,
            strategy="entropy",
            model_key=prediction.model_key,
        )
        spec = TaskSpec(
            image_id=image_id,
            image_url="http://127.0.0.1:9/x.png",
            heatmap_url=None,
            predicted_label=prediction.predicted_label,
            informativeness=0.5,
            model_version=prediction.model_key,
            probabilities=prediction.probabilities,
        )
    # Label Studio took the task, then the pushing worker died before recording its id.
    (orphan,) = deployment.gateway.import_tasks(project_id=project_id, tasks=[build_task(spec)])

    # Label Studio unreachable: the push fails with a clear message and the plan waits.
    down = dict(deployment.env, DEFECTLOOP_LABEL_STUDIO_URL=f"http://127.0.0.1:{find_free_port()}")
    failed = subprocess.run(
        [DEFECTLOOP, "labelling", "push"], env=down, capture_output=True, text=True, timeout=300, check=False
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr
    assert "Label Studio" in failed.stderr
    assert deployment.server.token not in failed.stderr

    deployment.cli("labelling", "push")
    with deployment.sessions() as session:
        (task,) = repo.list_label_tasks(session=session, ls_project_id=project_id, image_ids=[image_id])
        assert task.ls_task_id == orphan
    listed = [
        t
        for t in deployment.gateway.list_tasks(project_id=project_id)
        if t["data"].get(IMAGE_ID_KEY) == image_id
    ]
    assert [t["id"] for t in listed] == [orphan]


def test_a_new_champion_re_predicts_the_open_tasks_and_label_studio_re_ranks_them(
    deployment: Deployment,
) -> None:
    _tasks_by_image(deployment)
    heatmaps = deployment.root / "heatmaps"
    drawn_before = {path.name: path.stat().st_mtime_ns for path in heatmaps.glob("*.png")}
    assert drawn_before, "the pushes drew no heat-map"
    register_champion(deployment.sessions, deployment.root, ModelTask.BINARY, seed=3)
    with deployment.sessions.begin() as session:
        newest = max(repo.list_model_versions(session=session, task=ModelTask.BINARY), key=lambda v: v.id)
        repo.set_champion(session=session, version_id=newest.id, actor="test", reason="re-rank check")
    with deployment.sessions() as session:
        key = current_model_key(session)
    assert key is not None

    with deployment.sessions() as session:
        shown = label_studio_version(session, key)
    assert shown.startswith("binary-baseline_cnn-0003+")

    deployment.cli("labelling", "push")
    project_id = deployment.project_id
    assert deployment.gateway.get_project(project_id=project_id)["model_version"] == shown
    open_tasks = [t for t in deployment.label_tasks() if t.status.value == "pushed"]
    assert open_tasks, "every task was annotated: nothing left to re-rank"
    assert {t.model_key for t in open_tasks} == {key}
    ours = [t.ls_task_id for t in sorted(open_tasks, key=lambda t: (-t.informativeness, t.id))]
    queue = deployment.gateway.task_ids_by_score(project_id=project_id)
    assert [task_id for task_id in queue if task_id in set(ours)] == ours
    listed = {t["id"]: t for t in deployment.gateway.list_tasks(project_id=project_id)}
    for task_id in ours:
        assert shown in {p["model_version"] for p in listed[task_id]["predictions"]}
        # The task says which models made its guess and its heat-map, and the heat-map is the new one's.
        assert listed[task_id]["data"]["model"] == shown
    for task in open_tasks:
        redrawn = heatmaps / f"{task.image_id}.png"
        # (an adopted task had none: drawn now)
        assert redrawn.stat().st_mtime_ns > drawn_before.get(redrawn.name, 0), "heat-map not redrawn"


def test_beat_alone_finds_a_deletion_made_while_the_receiver_was_down(deployment: Deployment) -> None:
    tasks = _tasks_by_image(deployment)
    image_id, task_id = sorted(tasks.items())[12]
    annotation_id = deployment.gateway.create_annotation(task_id=task_id, choice="raw_edge")

    def row() -> Annotation | None:
        return next((a for a in deployment.annotations() if a.ls_annotation_id == annotation_id), None)

    deployment.wait_for("the webhook's annotation", lambda: row() is not None)
    deployment.stop("serve")
    deployment.gateway.delete_annotation(annotation_id=annotation_id)  # no webhook can arrive
    deployment.start_receiver()
    time.sleep(1.0)
    assert not row().deleted  # type: ignore[union-attr]

    # Nobody runs `labelling reconcile`: beat's own schedule (every 2 s here) finds it.
    deployment.start("beat", "beat", env={"DEFECTLOOP_RECONCILE_INTERVAL_S": "2"})
    deployment.wait_for("beat's reconciliation to record the deletion", lambda: row().deleted)  # type: ignore[union-attr]
    deployment.stop("beat")
    with deployment.sessions() as session:
        assert repo.get_image(session=session, image_id=image_id).status is ImageStatus.LABELLING
        task = repo.get_label_task_by_ls_id(
            session=session, ls_project_id=deployment.project_id, ls_task_id=task_id
        )
        assert task is not None
        assert task.status.value == "pushed"  # open again: the next champion re-scores it
