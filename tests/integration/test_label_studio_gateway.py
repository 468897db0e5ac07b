"""The Label Studio gateway against a real Label Studio 1.23.2 server (one per test session).

Each test works in its own project. Webhook and ML-backend callbacks go to small HTTP servers on
127.0.0.1 started by the test. Nothing asserts a timing; waits poll up to a deadline.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from labelling.devserver import LabelStudioServer, find_free_port
from labelling.errors import LabelStudioAuthError, LabelStudioError, LabelStudioUnavailableError
from labelling.gateway import SCORE_ORDERING, UNCERTAINTY_SAMPLING, LabelStudioGateway
from labelling.label_config import build_label_config, choices_in_config
from labelling.names import FROM_NAME, IMAGE_ID_KEY, IMAGE_NAME, SECRET_HEADER, WEBHOOK_ACTIONS
from tests.label_studio_fixtures import TEST_CLASSES

pytestmark = pytest.mark.integration


def make_task(
    image_id: int, *, score: float, label: str = "hole", model_version: str = "v1"
) -> dict[str, Any]:
    """A minimal task as the labelling service pushes it: photo, heat-map, guess, our id, one prediction."""
    return {
        "data": {
            IMAGE_NAME: f"http://images.invalid/{image_id}.png",
            "heatmap": f"http://images.invalid/{image_id}-heatmap.png",
            "guess": f"Model's guess: {label}",
            IMAGE_ID_KEY: image_id,
        },
        "predictions": [make_prediction(score=score, label=label, model_version=model_version)],
    }


def make_prediction(*, score: float, label: str = "hole", model_version: str = "v1") -> dict[str, Any]:
    return {
        "model_version": model_version,
        "score": score,
        "result": [
            {"from_name": FROM_NAME, "to_name": IMAGE_NAME, "type": "choices", "value": {"choices": [label]}}
        ],
    }


def wait_for(check: Callable[[], bool], *, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class JsonServer:
    """A tiny HTTP server on 127.0.0.1 that records requests and answers from ``routes``."""

    routes: dict[tuple[str, str], Callable[[Any], Any]]
    requests: list[Recorded] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                path = self.path.split("?")[0].rstrip("/") or "/"
                owner.requests.append(Recorded(self.command, path, dict(self.headers.items()), body))
                route = owner.routes.get((self.command, path))
                payload = json.dumps(route(body) if route else {}).encode()
                self.send_response(200 if route else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def webhook_receiver() -> Iterator[JsonServer]:
    server = JsonServer(routes={("POST", "/webhook"): lambda body: {"ok": True}})
    server.start()
    yield server
    server.stop()


# -- server and errors -------------------------------------------------------------------------------


def test_check_accepts_the_admin_token(ls_gateway: LabelStudioGateway) -> None:
    ls_gateway.check()


def test_a_dead_server_is_unavailable(label_studio: LabelStudioServer) -> None:
    with LabelStudioGateway(
        f"http://127.0.0.1:{find_free_port()}", label_studio.token, timeout_s=5
    ) as gateway:
        with pytest.raises(LabelStudioUnavailableError, match="cannot reach Label Studio"):
            gateway.check()
        with pytest.raises(LabelStudioUnavailableError):
            gateway.ensure_project(title="never made", label_config=build_label_config(TEST_CLASSES))


def test_a_wrong_token_is_an_auth_error_without_the_token(label_studio: LabelStudioServer) -> None:
    wrong = "0123456789abcdef" * 2 + "01234567"
    assert wrong != label_studio.token
    with LabelStudioGateway(label_studio.url, wrong) as gateway:
        with pytest.raises(LabelStudioAuthError, match="DEFECTLOOP_LABEL_STUDIO_API_KEY") as caught:
            gateway.check()
        with pytest.raises(LabelStudioAuthError) as caught_list:
            gateway.ensure_project(title="never made", label_config=build_label_config(TEST_CLASSES))
    for error in (caught.value, caught_list.value):
        assert wrong not in str(error)
        assert label_studio.token not in str(error)


def test_other_refusals_are_label_studio_errors(ls_gateway: LabelStudioGateway) -> None:
    with pytest.raises(LabelStudioError, match="404") as caught:
        ls_gateway.get_project(project_id=987654)
    assert not isinstance(caught.value, LabelStudioUnavailableError | LabelStudioAuthError)


# -- projects, webhooks, views ---------------------------------------------------------------------


def test_ensure_project_is_idempotent_and_updates_the_label_config(
    ls_gateway: LabelStudioGateway, ls_project_title: str
) -> None:
    config = build_label_config(TEST_CLASSES)
    first = ls_gateway.ensure_project(title=ls_project_title, label_config=config)
    try:
        second = ls_gateway.ensure_project(title=ls_project_title, label_config=config)
        assert first.created
        assert not second.created
        assert second.id == first.id
        # A longer title containing ours is another project: the title must match exactly.
        other = ls_gateway.ensure_project(title=ls_project_title + " b", label_config=config)
        assert other.created
        assert other.id != first.id
        ls_gateway.delete_project(project_id=other.id)

        more_classes = (*TEST_CLASSES, "stain")
        third = ls_gateway.ensure_project(
            title=ls_project_title, label_config=build_label_config(more_classes)
        )
        assert third == second
        project = ls_gateway.get_project(project_id=first.id)
        assert project["title"] == ls_project_title
        assert choices_in_config(project["label_config"]) == list(more_classes)
    finally:
        ls_gateway.delete_project(project_id=first.id)


def test_ensure_webhook_is_idempotent_and_keeps_the_secret_header(
    ls_gateway: LabelStudioGateway, ls_project: int
) -> None:
    url = "http://127.0.0.1:9/labelling/webhook"
    headers = {SECRET_HEADER: "first-secret"}
    assert ls_gateway.ensure_webhook(project_id=ls_project, url=url, headers=headers, actions=WEBHOOK_ACTIONS)
    assert not ls_gateway.ensure_webhook(
        project_id=ls_project, url=url, headers=headers, actions=WEBHOOK_ACTIONS
    )
    (hook,) = ls_gateway.list_webhooks(project_id=ls_project)
    assert hook["url"] == url
    assert hook["headers"] == headers
    assert set(hook["actions"]) == set(WEBHOOK_ACTIONS)
    assert hook["send_payload"]
    assert not hook["send_for_all_actions"]
    assert hook["is_active"]

    rotated = {SECRET_HEADER: "second-secret"}
    assert not ls_gateway.ensure_webhook(
        project_id=ls_project, url=url, headers=rotated, actions=WEBHOOK_ACTIONS
    )
    (hook,) = ls_gateway.list_webhooks(project_id=ls_project)
    assert hook["headers"] == rotated


def test_ensure_view_is_idempotent(ls_gateway: LabelStudioGateway, ls_project: int) -> None:
    assert ls_gateway.ensure_view(project_id=ls_project, title="most informative first")
    assert not ls_gateway.ensure_view(project_id=ls_project, title="most informative first")
    views = ls_gateway.list_views(project_id=ls_project)
    assert [v["data"]["title"] for v in views] == ["most informative first"]
    assert views[0]["data"]["ordering"] == [SCORE_ORDERING]


# -- tasks and the queue order ---------------------------------------------------------------------


def test_an_empty_project_has_an_empty_queue_and_annotated_tasks_leave_the_open_queue(
    ls_gateway: LabelStudioGateway, ls_project: int
) -> None:
    # Label Studio answers 500 when asked to order an empty project by score: no task, no order.
    assert ls_gateway.task_ids_by_score(project_id=ls_project) == []
    assert ls_gateway.open_task_ids_by_score(project_id=ls_project) == []
    task_ids = ls_gateway.import_tasks(
        project_id=ls_project, tasks=[make_task(i, score=0.1 * i) for i in range(1, 5)]
    )
    ls_gateway.set_model_version(project_id=ls_project, model_version="v1")
    assert ls_gateway.open_task_ids_by_score(project_id=ls_project) == task_ids
    ls_gateway.create_annotation(task_id=task_ids[0], choice="hole")
    ls_gateway.create_annotation(task_id=task_ids[2], choice=None, was_cancelled=True)
    assert ls_gateway.open_task_ids_by_score(project_id=ls_project) == [task_ids[1], task_ids[3]]


def test_annotations_can_be_made_for_a_user_of_their_own_created_once(
    ls_gateway: LabelStudioGateway, ls_project: int
) -> None:
    email = f"someone-{random.randrange(10**9)}@defectloop.invalid"
    user_id = ls_gateway.ensure_user(email=email, first_name="Some", last_name="One")
    assert ls_gateway.ensure_user(email=email.upper()) == user_id
    assert ls_gateway.user_email(user_id=user_id) == email
    (task_id,) = ls_gateway.import_tasks(project_id=ls_project, tasks=[make_task(1, score=0.5)])
    mine = ls_gateway.create_annotation(task_id=task_id, choice="hole")
    theirs = ls_gateway.create_annotation(task_id=task_id, choice="ok", completed_by=user_id)
    by_id = {int(a["id"]): a for a, _ in ls_gateway.list_annotations(project_id=ls_project)}
    assert by_id[theirs]["completed_by"] == user_id
    assert by_id[mine]["completed_by"] != user_id


def test_the_queue_puts_the_most_informative_task_first(
    ls_gateway: LabelStudioGateway, ls_project: int
) -> None:
    rng = random.Random(5)
    informativeness = {image_id: rng.random() for image_id in range(100, 120)}
    # Label Studio's queue takes the lowest score first: score = 1 - informativeness.
    tasks = [make_task(image_id, score=1.0 - info) for image_id, info in informativeness.items()]
    task_ids = ls_gateway.import_tasks(project_id=ls_project, tasks=tasks)
    assert len(task_ids) == 20
    task_of = dict(zip(informativeness, task_ids, strict=True))
    listed = {t["id"]: t for t in ls_gateway.list_tasks(project_id=ls_project)}
    assert {t["data"][IMAGE_ID_KEY] for t in listed.values()} == set(informativeness)
    assert all(listed[task_of[i]]["data"][IMAGE_ID_KEY] == i for i in informativeness), (
        "ids not in input order"
    )
    assert all(listed[task_of[i]]["predictions"][0]["model_version"] == "v1" for i in informativeness)

    ls_gateway.set_model_version(project_id=ls_project, model_version="v1")
    most_informative_first = sorted(informativeness, key=informativeness.__getitem__, reverse=True)
    assert ls_gateway.task_ids_by_score(project_id=ls_project) == [task_of[i] for i in most_informative_first]
    project = ls_gateway.get_project(project_id=ls_project)
    assert project["model_version"] == "v1"
    assert project["sampling"] == UNCERTAINTY_SAMPLING
    assert project["task_count"] == 20

    # After a retrain: new predictions under a new version, and the project switched to it.
    for image_id, info in informativeness.items():
        ls_gateway.add_prediction(
            task_id=task_of[image_id], prediction=make_prediction(score=info, model_version="v2")
        )
    assert ls_gateway.task_ids_by_score(project_id=ls_project) == [task_of[i] for i in most_informative_first]
    ls_gateway.set_model_version(project_id=ls_project, model_version="v2")
    assert ls_gateway.task_ids_by_score(project_id=ls_project) == [
        task_of[i] for i in reversed(most_informative_first)
    ]


def test_import_of_no_tasks_is_a_no_op(ls_gateway: LabelStudioGateway, ls_project: int) -> None:
    assert ls_gateway.import_tasks(project_id=ls_project, tasks=[]) == []
    assert ls_gateway.get_project(project_id=ls_project)["task_count"] == 0


# -- annotations -------------------------------------------------------------------------------------


def test_annotations_are_listed_after_create_update_and_delete(
    ls_gateway: LabelStudioGateway, ls_project: int
) -> None:
    first, second, third = ls_gateway.import_tasks(
        project_id=ls_project, tasks=[make_task(i, score=0.5) for i in (1, 2, 3)]
    )
    assert ls_gateway.list_annotations(project_id=ls_project) == []

    before = datetime.now(UTC)
    created = ls_gateway.create_annotation(
        task_id=first, choice="hole", from_name=FROM_NAME, to_name=IMAGE_NAME, lead_time=4.2
    )
    skipped = ls_gateway.create_annotation(task_id=second, choice=None, was_cancelled=True)
    pairs = ls_gateway.list_annotations(project_id=ls_project)
    assert [annotation["id"] for annotation, _ in pairs] == [created, skipped]
    annotation, task = pairs[0]
    assert annotation["result"][0]["value"]["choices"] == ["hole"]
    assert annotation["result"][0]["from_name"] == FROM_NAME
    assert annotation["was_cancelled"] is False
    assert annotation["lead_time"] == pytest.approx(4.2)
    assert task["id"] == first
    assert task["data"][IMAGE_ID_KEY] == 1
    assert "annotations" not in task
    skipped_annotation, skipped_task = pairs[1]
    assert skipped_annotation["was_cancelled"] is True
    assert skipped_annotation["result"] == []
    assert skipped_task["data"][IMAGE_ID_KEY] == 2
    assert [a["id"] for a, _ in ls_gateway.list_annotations(project_id=ls_project, updated_after=before)] == [
        created,
        skipped,
    ]

    watermark = datetime.fromisoformat(pairs[-1][0]["updated_at"])
    assert ls_gateway.list_annotations(project_id=ls_project, updated_after=watermark) == []
    ls_gateway.update_annotation(annotation_id=created, choice="raw_edge")
    (updated, task), *rest = ls_gateway.list_annotations(project_id=ls_project, updated_after=watermark)
    assert rest == []
    assert updated["id"] == created
    assert updated["result"][0]["value"]["choices"] == ["raw_edge"]
    assert datetime.fromisoformat(updated["updated_at"]) > watermark

    ls_gateway.delete_annotation(annotation_id=created)
    assert [a["id"] for a, _ in ls_gateway.list_annotations(project_id=ls_project)] == [skipped]
    tasks = {t["id"]: t for t in ls_gateway.list_tasks(project_id=ls_project)}
    assert tasks[second]["cancelled_annotations"] == 1
    assert tasks[third]["total_annotations"] == 0

    with pytest.raises(ValueError, match="timezone"):
        ls_gateway.list_annotations(project_id=ls_project, updated_after=datetime(2026, 1, 1))


def test_listings_walk_every_page(label_studio: LabelStudioServer, ls_project: int) -> None:
    with LabelStudioGateway(label_studio.url, label_studio.token, page_size=7) as gateway:
        task_ids = gateway.import_tasks(
            project_id=ls_project, tasks=[make_task(i, score=i / 20) for i in range(20)]
        )
        gateway.set_model_version(project_id=ls_project, model_version="v1")
        annotated = task_ids[:17]
        annotation_ids = [gateway.create_annotation(task_id=t, choice="ok") for t in annotated]
        assert gateway.task_ids_by_score(project_id=ls_project) == task_ids
        assert len(gateway.list_tasks(project_id=ls_project)) == 20
        pairs = gateway.list_annotations(project_id=ls_project)
        assert [a["id"] for a, _ in pairs] == annotation_ids
        assert [t["id"] for _, t in pairs] == annotated
        since = datetime.fromisoformat(pairs[9][0]["updated_at"])
        assert [a["id"] for a, _ in gateway.list_annotations(project_id=ls_project, updated_after=since)] == (
            annotation_ids[10:]
        )


# -- webhooks, for real ------------------------------------------------------------------------------


def test_webhooks_carry_the_secret_and_the_annotation(
    ls_gateway: LabelStudioGateway, ls_project: int, webhook_receiver: JsonServer
) -> None:
    ls_gateway.ensure_webhook(
        project_id=ls_project,
        url=f"{webhook_receiver.url}/webhook",
        headers={SECRET_HEADER: "s3cret"},
        actions=WEBHOOK_ACTIONS,
    )
    (task_id,) = ls_gateway.import_tasks(project_id=ls_project, tasks=[make_task(7, score=0.3)])
    annotation_id = ls_gateway.create_annotation(task_id=task_id, choice="hole")
    ls_gateway.update_annotation(annotation_id=annotation_id, choice="ok")
    ls_gateway.delete_annotation(annotation_id=annotation_id)

    assert wait_for(lambda: len(webhook_receiver.requests) >= 3), webhook_receiver.requests
    created, updated, deleted = webhook_receiver.requests
    assert [r.body["action"] for r in (created, updated, deleted)] == list(WEBHOOK_ACTIONS)
    assert all(r.headers.get(SECRET_HEADER) == "s3cret" for r in (created, updated, deleted))
    assert created.body["annotation"]["id"] == annotation_id
    assert created.body["annotation"]["result"][0]["value"]["choices"] == ["hole"]
    assert created.body["task"]["data"][IMAGE_ID_KEY] == 7
    assert updated.body["annotation"]["result"][0]["value"]["choices"] == ["ok"]
    # Deletion is plural and carries ids only: {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": ..}]}.
    assert deleted.body["annotations"] == [{"id": annotation_id}]
    assert deleted.body["project"]["id"] == ls_project


# -- ML backend ----------------------------------------------------------------------------------------


def test_ml_backend_predictions_on_request(ls_gateway: LabelStudioGateway, ls_project: int) -> None:
    def predict(body: Any) -> Any:
        return {
            "results": [
                {**make_prediction(score=0.25, label="uncut_thread", model_version="fake-1")}
                for _ in body["tasks"]
            ]
        }

    backend = JsonServer(
        routes={
            ("GET", "/health"): lambda body: {"status": "UP", "model_class": "Fake"},
            ("POST", "/setup"): lambda body: {"model_version": "fake-1"},
            ("POST", "/predict"): predict,
            ("POST", "/webhook"): lambda body: {},
            ("GET", "/versions"): lambda body: {"versions": ["fake-1"]},
        }
    )
    backend.start()
    try:
        task_ids = ls_gateway.import_tasks(
            project_id=ls_project, tasks=[{"data": make_task(i, score=0.5)["data"]} for i in range(3)]
        )
        backend_id = ls_gateway.connect_ml_backend(project_id=ls_project, url=backend.url, title="fake")
        assert (
            ls_gateway.connect_ml_backend(project_id=ls_project, url=backend.url + "/", title="fake")
            == backend_id
        )

        ls_gateway.request_ml_predictions(project_id=ls_project, task_ids=task_ids[:2])
        tasks = {t["id"]: t for t in ls_gateway.list_tasks(project_id=ls_project)}
        assert [p["model_version"] for p in tasks[task_ids[0]]["predictions"]] == ["fake-1"]
        assert tasks[task_ids[0]]["predictions"][0]["score"] == pytest.approx(0.25)
        assert tasks[task_ids[2]]["predictions"] == []
        predicted = [r.body for r in backend.requests if r.path == "/predict"]
        assert sorted(t["id"] for body in predicted for t in body["tasks"]) == sorted(task_ids[:2])
    finally:
        backend.stop()


def test_annotation_counts_ids_users_and_task_data(
    ls_gateway: LabelStudioGateway, ls_project: int, label_studio: LabelStudioServer
) -> None:
    first, second = ls_gateway.import_tasks(
        project_id=ls_project, tasks=[make_task(i, score=0.5) for i in (1, 2)]
    )
    kept = ls_gateway.create_annotation(task_id=first, choice="hole")
    skipped = ls_gateway.create_annotation(task_id=first, choice=None, was_cancelled=True)
    gone = ls_gateway.create_annotation(task_id=second, choice="ok")
    ls_gateway.delete_annotation(annotation_id=gone)
    # Skips count; a deleted annotation no longer does (Label Studio recounts on delete).
    assert ls_gateway.annotation_counts(project_id=ls_project) == {first: 2, second: 0}
    assert ls_gateway.annotation_ids(task_id=first) == {kept, skipped}
    assert ls_gateway.annotation_ids(task_id=second) == set()

    (me,) = {a["completed_by"] for a, _ in ls_gateway.list_annotations(project_id=ls_project)}
    user_id = me["id"] if isinstance(me, dict) else int(me)
    assert ls_gateway.user_email(user_id=user_id) == label_studio.username
    assert ls_gateway.user_email(user_id=987_654) is None

    data = dict(make_task(1, score=0.5, label="raw_edge")["data"])
    ls_gateway.update_task_data(task_id=first, data=data)
    (listed,) = [t for t in ls_gateway.list_tasks(project_id=ls_project) if t["id"] == first]
    assert listed["data"]["guess"] == "Model's guess: raw_edge"
    assert listed["total_annotations"] == 1  # its annotations are untouched
