"""The HTTP app with a recording fake of its handlers: authentication, validation, ML backend, media."""

from __future__ import annotations

import base64
import json
import logging
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from labelling.media import media_url
from labelling.names import IMAGE_ID_KEY, SECRET_HEADER
from labelling.payloads import AnnotationAction, AnnotationEvent
from labelling.server import WEBHOOK_PATH, create_http_app
from tests.unit.test_labelling_payloads import CLASSES, TOKEN, deleted_webhook, webhook

WEBHOOK_SECRET = "webhook-secret-0123456789abcdef"
MEDIA_SECRET = "media-secret-fedcba9876543210"
LABEL_STUDIO_ORIGIN = "http://127.0.0.1:8080"
AUTH = {SECRET_HEADER: WEBHOOK_SECRET}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


class FakeHandlers:
    """Records every call; behaviour switched by attributes."""

    def __init__(self, media_dir: Path) -> None:
        self.submitted: list[list[AnnotationEvent]] = []
        self.known_checks: list[tuple[int | None, int, int | None]] = []
        self.unknown_tasks: set[int] = set()
        self.submit_error: Exception | None = None
        self.health_error: Exception | None = None
        self.predicted: list[list[Mapping[str, Any]]] = []
        self.drop_one_result = False
        self.training: list[str] = []
        self.media_calls: list[tuple[str, int]] = []
        self.media_dir = media_dir

    def submit_events(self, events: Sequence[AnnotationEvent]) -> None:
        if self.submit_error is not None:
            raise self.submit_error
        self.submitted.append(list(events))

    def is_known_task(self, *, ls_project_id: int | None, ls_task_id: int, image_id: int | None) -> bool:
        self.known_checks.append((ls_project_id, ls_task_id, image_id))
        return ls_task_id not in self.unknown_tasks

    def predict(self, tasks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        self.predicted.append(list(tasks))
        results = [{"result": [], "score": 0.5, "model_version": f"for-task-{t['id']}"} for t in tasks]
        return results[:-1] if self.drop_one_result else results

    def model_version(self) -> str:
        return "binary-3+multiclass-2"

    def versions(self) -> list[str]:
        return ["binary-2+multiclass-1", "binary-3+multiclass-2"]

    def request_training(self, *, reason: str) -> None:
        self.training.append(reason)

    def media_path(self, kind: str, image_id: int) -> Path | None:
        self.media_calls.append((kind, image_id))
        suffix = ".png" if kind == "heatmap" else ".jpg"
        return self.media_dir / f"{kind}-{image_id}{suffix}" if image_id != 404 else None

    def health(self) -> dict[str, Any]:
        if self.health_error is not None:
            raise self.health_error
        return {"status": "DOWN", "champions": {"binary": "binary-3", "multiclass": "multiclass-2"}}


@pytest.fixture
def fake(tmp_path: Path) -> FakeHandlers:
    (tmp_path / "image-5.jpg").write_bytes(b"\xff\xd8\xff\xe0jpeg-bytes")
    (tmp_path / "heatmap-5.png").write_bytes(PNG)
    return FakeHandlers(tmp_path)


@pytest.fixture
def client(fake: FakeHandlers) -> Iterator[TestClient]:
    app = create_http_app(
        handlers=fake,
        webhook_secret=WEBHOOK_SECRET,
        media_secret=MEDIA_SECRET,
        classes=CLASSES,
        media_origins=[LABEL_STUDIO_ORIGIN],
    )
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(autouse=True)
def _capture_all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    # Whatever a test sent, the project's invite token and the secrets never reach a log line.
    for secret in (TOKEN, WEBHOOK_SECRET, MEDIA_SECRET):
        assert secret not in caplog.text


# Any: TestClient's responses come from Starlette's own HTTP client package, not from httpx.
def post_webhook(client: TestClient, body: object, headers: Mapping[str, str] | None = AUTH) -> Any:
    return client.post(WEBHOOK_PATH, content=json.dumps(body), headers=dict(headers or {}))


# ------------------------------------------------------------------------------------------- webhook
@pytest.mark.parametrize(
    "headers",
    [
        None,
        {SECRET_HEADER: "wrong"},
        {SECRET_HEADER: ""},
        {SECRET_HEADER: WEBHOOK_SECRET + "x"},
        {"X-Other": WEBHOOK_SECRET},
    ],
)
def test_webhook_without_the_right_secret_is_refused(
    client: TestClient, fake: FakeHandlers, headers: dict[str, str] | None
) -> None:
    response = post_webhook(client, webhook(), headers=headers)
    assert response.status_code == 401
    assert response.json() == {"detail": f"missing or wrong {SECRET_HEADER} header"}
    assert WEBHOOK_SECRET not in response.text
    assert fake.submitted == []
    assert fake.known_checks == []


def test_webhook_secret_is_checked_before_the_body(client: TestClient, fake: FakeHandlers) -> None:
    response = client.post(WEBHOOK_PATH, content=b"not json", headers={SECRET_HEADER: "wrong"})
    assert response.status_code == 401


def test_webhook_secret_with_non_ascii_bytes_is_refused(client: TestClient, fake: FakeHandlers) -> None:
    response = client.post(
        WEBHOOK_PATH, content=json.dumps(webhook()), headers=[(SECRET_HEADER.encode(), b"\xff\xfe")]
    )
    assert response.status_code == 401
    assert fake.submitted == []


def test_created_webhook_is_submitted(client: TestClient, fake: FakeHandlers) -> None:
    response = post_webhook(client, webhook("ANNOTATION_CREATED"))
    assert response.status_code == 200
    assert response.json() == {"accepted": 1}
    ((event,),) = fake.submitted
    assert (event.action, event.ls_annotation_id, event.ls_task_id, event.image_id, event.label) == (
        AnnotationAction.CREATED,
        17,
        19,
        5,
        "hole",
    )
    assert fake.known_checks == [(2, 19, 5)]


def test_updated_and_skipped_webhooks_are_submitted(client: TestClient, fake: FakeHandlers) -> None:
    assert post_webhook(client, webhook("ANNOTATION_UPDATED", label="ok")).json() == {"accepted": 1}
    assert (
        post_webhook(client, webhook("ANNOTATION_UPDATED", label=None, was_cancelled=True)).status_code == 200
    )
    assert [(e.action, e.label, e.was_cancelled) for (e,) in fake.submitted] == [
        (AnnotationAction.UPDATED, "ok", False),
        (AnnotationAction.UPDATED, None, True),
    ]


def test_deleted_webhook_submits_one_event_per_id_without_task_check(
    client: TestClient, fake: FakeHandlers
) -> None:
    response = post_webhook(client, deleted_webhook([17, 18]))
    assert response.json() == {"accepted": 2}
    assert [(e.action, e.ls_annotation_id) for e in fake.submitted[0]] == [
        (AnnotationAction.DELETED, 17),
        (AnnotationAction.DELETED, 18),
    ]
    assert fake.known_checks == []


def test_other_actions_are_answered_and_ignored(client: TestClient, fake: FakeHandlers) -> None:
    response = post_webhook(client, {"action": "PROJECT_UPDATED", "project": {"id": 2, "token": TOKEN}})
    assert response.status_code == 200
    assert response.json() == {"accepted": 0}
    assert fake.submitted == []


@pytest.mark.parametrize("content", [b"not json", b"{", b"\xff\xfe\x00", b"[" * 100_000])
def test_garbage_body_is_400(client: TestClient, fake: FakeHandlers, content: bytes) -> None:
    response = client.post(WEBHOOK_PATH, content=content, headers=AUTH)
    assert response.status_code == 400
    assert response.json() == {"detail": "body is not valid JSON"}
    assert fake.submitted == []


def test_unknown_class_is_422_with_the_reason(client: TestClient, fake: FakeHandlers) -> None:
    response = post_webhook(client, webhook(label="stain"))
    assert response.status_code == 422
    assert "unknown class 'stain'; the project's classes are ok, hole" in response.json()["detail"]
    assert TOKEN not in response.text
    assert fake.submitted == []


@pytest.mark.parametrize(
    "body", [[1, 2], "text", {"action": 3}, {"action": "ANNOTATION_CREATED", "annotation": 1}]
)
def test_malformed_json_is_422(client: TestClient, fake: FakeHandlers, body: object) -> None:
    response = post_webhook(client, body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], str)
    assert fake.submitted == []


def test_unknown_task_is_422_and_nothing_submitted(client: TestClient, fake: FakeHandlers) -> None:
    fake.unknown_tasks.add(19)
    response = post_webhook(client, webhook())
    assert response.status_code == 422
    assert response.json() == {"detail": "unknown task 19: not pushed by defectloop"}
    assert fake.submitted == []


def test_one_unknown_task_refuses_the_whole_batch(client: TestClient, fake: FakeHandlers) -> None:
    from tests.unit.test_labelling_payloads import annotation_object, project_object, task_object

    fake.unknown_tasks.add(21)
    body = {
        "action": "ANNOTATIONS_CREATED",
        "annotation": [annotation_object(1, 20), annotation_object(2, 21)],
        "task": [task_object(20), task_object(21)],
        "project": project_object(),
    }
    assert post_webhook(client, body).status_code == 422
    assert fake.submitted == []


def test_broker_down_is_503_and_logged(
    client: TestClient, fake: FakeHandlers, caplog: pytest.LogCaptureFixture
) -> None:
    fake.submit_error = ConnectionError("Error 111 connecting to 127.0.0.1:6379")
    response = post_webhook(client, webhook())
    assert response.status_code == 503
    assert "reconciliation" in response.json()["detail"]
    assert "Traceback" not in response.text
    assert any(r.levelno == logging.ERROR and "17" in r.getMessage() for r in caplog.records)


def test_logs_name_the_action_and_ids_only(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    post_webhook(client, webhook())
    post_webhook(client, webhook(label="stain"))
    post_webhook(client, {"action": "PROJECT_UPDATED", "project": {"id": 2, "token": TOKEN}})
    accepted = [r.getMessage() for r in caplog.records if "accepted" in r.getMessage()]
    assert accepted == ["webhook 'ANNOTATION_CREATED': accepted annotations [('created', 17, 19)]"]
    assert "label_config" not in caplog.text


# ---------------------------------------------------------------------------------------- ML backend
def test_health_keeps_the_protocol_keys(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "UP",
        "model_class": "defectloop",
        "champions": {"binary": "binary-3", "multiclass": "multiclass-2"},
    }


def test_setup_answers_the_model_version(client: TestClient) -> None:
    body = {"project": "2.1629208174", "schema": "<View/>", "hostname": "http://ls", "access_token": "tok"}
    response = client.post("/setup", json=body)
    assert response.json() == {"model_version": "binary-3+multiclass-2"}


def test_versions(client: TestClient) -> None:
    assert client.get("/versions").json() == {"versions": ["binary-2+multiclass-1", "binary-3+multiclass-2"]}


def test_predict_answers_one_result_per_task_in_order(client: TestClient, fake: FakeHandlers) -> None:
    tasks = [{"id": i, "data": {IMAGE_ID_KEY: i * 10}} for i in (3, 1, 2)]
    body = {
        "tasks": tasks,
        "project": "2.1629208174",
        "label_config": "<View/>",
        "params": {"password": "pw"},
    }
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    assert [r["model_version"] for r in response.json()["results"]] == [
        "for-task-3",
        "for-task-1",
        "for-task-2",
    ]
    assert fake.predicted == [tasks]


def test_predict_with_no_tasks_does_not_call_the_model(client: TestClient, fake: FakeHandlers) -> None:
    assert client.post("/predict", json={"tasks": []}).json() == {"results": []}
    assert fake.predicted == []


@pytest.mark.parametrize("body", [{}, {"tasks": {"id": 1}}, {"tasks": [1, 2]}, [{"id": 1}], {"tasks": None}])
def test_predict_refuses_bad_tasks(client: TestClient, fake: FakeHandlers, body: object) -> None:
    response = client.post("/predict", json=body)
    assert response.status_code == 422
    assert "tasks" in response.json()["detail"]
    assert fake.predicted == []


def test_predict_garbage_is_400(client: TestClient) -> None:
    assert client.post("/predict", content=b"{tasks").status_code == 400


def test_predict_count_mismatch_is_500_and_logged(
    client: TestClient, fake: FakeHandlers, caplog: pytest.LogCaptureFixture
) -> None:
    fake.drop_one_result = True
    response = client.post("/predict", json={"tasks": [{"id": 1}, {"id": 2}]})
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    assert "returned 1 results for 2 tasks" in caplog.text


def test_start_training_requests_training(client: TestClient, fake: FakeHandlers) -> None:
    response = client.post(
        "/webhook", json={"action": "START_TRAINING", "project": {"id": 2, "token": TOKEN}}
    )
    assert response.status_code == 201
    assert response.json() == {"status": "ok"}
    assert fake.training == ["Label Studio START_TRAINING"]


def test_legacy_train_requests_training(client: TestClient, fake: FakeHandlers) -> None:
    assert client.post("/train", json={"annotations": [], "params": {"password": "pw"}}).status_code == 201
    assert fake.training == ["Label Studio train request"]


def test_other_ml_webhook_actions_are_ignored(client: TestClient, fake: FakeHandlers) -> None:
    # Label Studio sends every action to an ML backend's /webhook; annotations come via WEBHOOK_PATH.
    response = client.post("/webhook", json=webhook())
    assert response.status_code == 200
    assert response.json() == {"status": "ignored"}
    assert fake.training == []
    assert fake.submitted == []
    assert client.post("/webhook", content=b"oops").status_code == 400
    assert client.post("/webhook", json=[1]).status_code == 422


def test_unexpected_error_is_500_without_traceback(
    client: TestClient, fake: FakeHandlers, caplog: pytest.LogCaptureFixture
) -> None:
    fake.health_error = RuntimeError("database is locked")
    response = client.get("/health")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    assert "database is locked" not in response.text
    (record,) = [r for r in caplog.records if "internal error serving GET /health" in r.getMessage()]
    assert record.exc_info is not None


def test_ml_basic_auth_when_configured(fake: FakeHandlers) -> None:
    app = create_http_app(
        handlers=fake,
        webhook_secret=WEBHOOK_SECRET,
        media_secret=MEDIA_SECRET,
        classes=CLASSES,
        ml_basic_auth=("ls", "ml-password"),
    )
    client = TestClient(app, raise_server_exceptions=False)
    good = "Basic " + base64.b64encode(b"ls:ml-password").decode()
    bad = "Basic " + base64.b64encode(b"ls:nope").decode()
    assert client.get("/health").status_code == 401
    assert client.get("/health").headers["www-authenticate"].startswith("Basic")
    assert client.get("/health", headers={"Authorization": bad}).status_code == 401
    assert client.post("/webhook", json={"action": "START_TRAINING"}).status_code == 401
    assert fake.training == []
    assert client.get("/health", headers={"Authorization": good}).status_code == 200
    assert client.post("/predict", json={"tasks": []}, headers={"Authorization": good}).status_code == 200
    # The annotation webhook keeps its own secret header.
    assert post_webhook(client, webhook()).status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"webhook_secret": ""}, "webhook_secret is empty"),
        ({"media_secret": ""}, "media_secret is empty"),
        ({"classes": []}, "classes"),
        ({"classes": "hole"}, "classes"),
    ],
)
def test_create_refuses_empty_settings(fake: FakeHandlers, kwargs: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {
        "webhook_secret": WEBHOOK_SECRET,
        "media_secret": MEDIA_SECRET,
        "classes": CLASSES,
    }
    with pytest.raises(ValueError, match=message):
        create_http_app(handlers=fake, **(settings | kwargs))


# --------------------------------------------------------------------------------------------- media
def signed(kind: str, image_id: int, secret: str = MEDIA_SECRET) -> str:
    return media_url("http://testserver", kind, image_id, secret=secret).removeprefix("http://testserver")


def test_signed_image_and_heatmap_are_served(client: TestClient, fake: FakeHandlers) -> None:
    image = client.get(signed("image", 5))
    assert image.status_code == 200
    assert image.content == b"\xff\xd8\xff\xe0jpeg-bytes"
    assert image.headers["content-type"] == "image/jpeg"
    assert image.headers["x-content-type-options"] == "nosniff"
    heatmap = client.get(signed("heatmap", 5))
    assert heatmap.status_code == 200
    assert heatmap.content == PNG
    assert heatmap.headers["content-type"] == "image/png"
    assert heatmap.headers["cache-control"] == "private, no-cache"
    assert fake.media_calls == [("image", 5), ("heatmap", 5)]


def test_label_studio_may_load_media_cross_origin_and_no_one_else(client: TestClient) -> None:
    ours = {"Origin": LABEL_STUDIO_ORIGIN}
    for kind in ("image", "heatmap"):
        for method in ("GET", "HEAD"):
            response = client.request(method, signed(kind, 5), headers=ours)
            assert response.status_code == 200, (kind, method)
            assert response.headers["access-control-allow-origin"] == LABEL_STUDIO_ORIGIN
            assert "Origin" in response.headers["vary"]
        head = client.head(signed(kind, 5), headers=ours)
        assert head.content == b""
        assert int(head.headers["content-length"]) > 0
    # The preflight Label Studio's fetch may send first: answered for its origin, refused for others.
    preflight = client.options(
        signed("image", 5),
        headers=ours | {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == LABEL_STUDIO_ORIGIN
    assert set(preflight.headers["access-control-allow-methods"].split(", ")) == {"GET", "HEAD"}
    assert preflight.headers["access-control-allow-headers"] == "range"
    for origin in ("http://evil.example", "http://127.0.0.1:8081", "null"):
        stranger = client.get(signed("image", 5), headers={"Origin": origin})
        assert "access-control-allow-origin" not in stranger.headers
        refused = client.options(
            signed("image", 5), headers={"Origin": origin, "Access-Control-Request-Method": "GET"}
        )
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers
    post = client.options(signed("image", 5), headers=ours | {"Access-Control-Request-Method": "POST"})
    assert post.status_code == 403
    # The signature still guards the file, origin or not; the refusal is readable by Label Studio's page.
    forged = client.get("/media/image/5?sig=AAAAAAAAAAAAAAAAAAAAAA", headers=ours)
    assert forged.status_code == 403
    assert forged.headers["access-control-allow-origin"] == LABEL_STUDIO_ORIGIN


def test_a_redrawn_heatmap_is_never_served_from_the_browser_cache(
    client: TestClient, fake: FakeHandlers
) -> None:
    first = client.get(signed("heatmap", 5))
    etag = first.headers["etag"]
    assert client.get(signed("heatmap", 5), headers={"If-None-Match": etag}).status_code == 304
    # A new champion redraws the heat-map: written beside and renamed over, as the workers do.
    redrawn = fake.media_dir / "heatmap-5.png.tmp"
    redrawn.write_bytes(PNG + b"redrawn")
    redrawn.replace(fake.media_dir / "heatmap-5.png")
    again = client.get(signed("heatmap", 5), headers={"If-None-Match": etag})
    assert again.status_code == 200
    assert again.content == PNG + b"redrawn"
    assert again.headers["etag"] != etag
    assert "max-age" not in again.headers["cache-control"]
    # A photo never changes under its id: the browser keeps it.
    assert "max-age=86400" in client.get(signed("image", 5)).headers["cache-control"]


@pytest.mark.parametrize(
    "path",
    [
        "/media/image/5",
        "/media/image/5?sig=",
        "/media/image/5?sig=AAAAAAAAAAAAAAAAAAAAAA",
        signed("image", 6).replace("/6?", "/5?"),
        signed("heatmap", 5).replace("heatmap", "image"),
        signed("image", 5, secret="another-secret"),
    ],
)
def test_wrong_or_missing_signature_is_403(client: TestClient, fake: FakeHandlers, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 403
    assert response.json() == {"detail": "missing or wrong media signature"}
    assert fake.media_calls == []


@pytest.mark.parametrize("path", ["/media/video/5?sig=x", "/media/image/abc?sig=x", "/media/image/-5?sig=x"])
def test_unknown_kind_or_id_is_404(client: TestClient, fake: FakeHandlers, path: str) -> None:
    assert client.get(path).status_code == 404
    assert fake.media_calls == []


def test_missing_media_is_404(client: TestClient, fake: FakeHandlers) -> None:
    assert client.get(signed("image", 404)).status_code == 404  # the handler knows no file
    response = client.get(signed("image", 6))  # the handler names a file that is not there
    assert response.status_code == 404
    assert response.json() == {"detail": "no image for image 6"}


# ----------------------------------------------------------------------------------------- uvicorn
SERVER_SCRIPT = textwrap.dedent(
    """
    import sys
    from labelling.server import create_http_app, serve_http_app

    class Handlers:
        def health(self):
            return {}

    app = create_http_app(handlers=Handlers(), webhook_secret="w", media_secret="m", classes=["ok"])
    serve_http_app(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="info")
    print("serve_http_app returned", flush=True)  # the caller's clean-up gets to run
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_serve_http_app_stops_cleanly_on_a_signal_and_returns(stop: signal.Signals) -> None:
    port = _free_port()
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT, str(port)],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()[0].decode()
                assert time.monotonic() < deadline, "the server did not answer within 30 s"
                time.sleep(0.1)
        assert response.json() == {"status": "UP", "model_class": "defectloop"}
        process.send_signal(stop)
        output = process.communicate(timeout=15)[0].decode()
        assert process.returncode == 0, output
        assert "Application shutdown complete" in output
        assert "serve_http_app returned" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_access_log_never_shows_a_media_signature() -> None:
    import logging

    from labelling.server import _WithoutQueryString

    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/media/image/7?sig=abcdefSECRET", "1.1", 200),
        None,
    )
    assert _WithoutQueryString().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "GET /media/image/7 HTTP/1.1" 200'
