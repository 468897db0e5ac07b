"""The HTTP app Label Studio talks to: the annotation webhook, the ML-backend protocol and signed media.

Every effect (enqueueing, database look-ups, predicting, files) comes in through ``BackendHandlers``, so
the app holds no database, Celery or model code and is tested with a fake. Handlers are plain functions
that may block; the app runs them in a thread pool.

Authentication:
- ``POST /webhooks/label-studio`` needs the shared secret header Label Studio was told to send.
- The ML-backend endpoints (``/health``, ``/setup``, ``/predict``, ``/webhook``, ``/train``,
  ``/versions``) are called by Label Studio without that header; they only expose predictions, version
  names and a train request (training is queued, deduplicated and gated by the champion/challenger rule),
  so they are open unless ``ml_basic_auth`` is given (Label Studio 1.23 can send Basic auth to an ML
  backend: ``auth_method="BASIC_AUTH"``; it has no bearer-token option). Keep the port off public networks.
- ``/media/...`` needs the HMAC signature in the URL (``labelling.media``); it answers CORS (GET, HEAD and
  the preflight) for the configured Label Studio origins only.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import mimetypes
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labelling.errors import PayloadError
from labelling.media import MEDIA_KINDS, verify_media
from labelling.names import SECRET_HEADER, WEBHOOK_PATH
from labelling.payloads import AnnotationEvent, parse_webhook

__all__ = [
    "MODEL_CLASS",
    "WEBHOOK_PATH",
    "BackendHandlers",
    "create_http_app",
    "serve_http_app",
]

logger = logging.getLogger(__name__)

MODEL_CLASS = "defectloop"
TRAINING_REASON = "Label Studio START_TRAINING"
_LOGGED_ACTION_LIMIT = 64
# A photo never changes under its id: the browser keeps it for a day. A heat-map is redrawn under the same
# URL by every new champion: the browser may keep it but must ask first (ETag, 304 when unchanged).
_CACHE_CONTROL = {"image": "private, max-age=86400", "heatmap": "private, no-cache"}
_MEDIA_METHODS = ("GET", "HEAD")


class BackendHandlers(Protocol):
    """The effects the HTTP app needs, injected by the composition root (all may block)."""

    def submit_events(self, events: Sequence[AnnotationEvent]) -> None:
        """Enqueue the events for recording; must be fast (Label Studio waits at most 1 s)."""

    def is_known_task(self, *, ls_project_id: int | None, ls_task_id: int, image_id: int | None) -> bool:
        """Whether defectloop pushed this Label Studio task."""

    def predict(self, tasks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One ML-backend result per task, in order (see ``payloads.ml_predict_results``)."""

    def model_version(self) -> str:
        """The version name predictions are made with now."""

    def versions(self) -> list[str]:
        """All model version names Label Studio may choose from."""

    def request_training(self, *, reason: str) -> None:
        """Queue a retraining round."""

    def media_path(self, kind: str, image_id: int) -> Path | None:
        """The file of an image's photo (``kind="image"``) or heat-map, or None if there is none."""

    def health(self) -> dict[str, Any]:
        """Extra fields for ``GET /health`` (e.g. champion versions); must be fast (1 s timeout)."""


class _InternalErrorMiddleware:
    """An unexpected exception becomes 500 ``{"detail": "internal error"}`` and one log line.

    Starlette's own handler for ``Exception`` re-raises after answering; this one answers and stops,
    so a traceback reaches the log once and never a response body.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception:
            # The path only: the query string of a media URL holds its signature.
            logger.exception("internal error serving %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await _detail(500, "internal error")(scope, receive, send)


def _detail(status_code: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


def _shown_action(body: object) -> str:
    """The body's action, safe to log (never the body: its project object holds the invite token)."""
    action = body.get("action") if isinstance(body, Mapping) else None
    return repr(action)[:_LOGGED_ACTION_LIMIT] if isinstance(action, str) else "<none>"


async def _json_body(request: Request) -> tuple[object, JSONResponse | None]:
    raw = await request.body()
    try:
        return json.loads(raw), None
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, _detail(400, "body is not valid JSON")


def _check_secret(name: str, value: str) -> bytes:
    if not value:
        raise ValueError(f"{name} is empty; configure a long random secret")
    return value.encode("utf-8")


def create_http_app(
    *,
    handlers: BackendHandlers,
    webhook_secret: str,
    media_secret: str,
    classes: Sequence[str],
    secret_header: str = SECRET_HEADER,
    ml_basic_auth: tuple[str, str] | None = None,
    media_origins: Sequence[str] = (),
) -> FastAPI:
    """The FastAPI app: webhook receiver, Label Studio ML-backend endpoints and signed media.

    ``classes`` are the project's class names (a label outside them is refused with 422).
    ``ml_basic_auth`` (user, password), if given, is required on the ML-backend endpoints.
    ``media_origins`` are the browser origins (``scheme://host[:port]``) allowed to fetch media
    cross-origin: Label Studio's, where annotators work.
    """
    webhook_key = _check_secret("webhook_secret", webhook_secret)
    _check_secret("media_secret", media_secret)
    if isinstance(classes, str) or not classes:
        raise ValueError(f"classes must be a non-empty sequence of class names, got {classes!r}")
    expected_basic = None
    if ml_basic_auth is not None:
        user, password = ml_basic_auth
        _check_secret("ml_basic_auth password", password)
        expected_basic = base64.b64encode(f"{user}:{password}".encode())
    routes = _Routes(
        handlers=handlers,
        webhook_key=webhook_key,
        media_secret=media_secret,
        classes=tuple(classes),
        secret_header=secret_header,
        expected_basic=expected_basic,
        media_origins=frozenset(media_origins),
    )

    app = FastAPI(title="defectloop", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_InternalErrorMiddleware)
    app.post(WEBHOOK_PATH)(routes.receive_webhook)
    app.get("/health")(routes.health)
    app.post("/setup")(routes.setup)
    app.post("/predict")(routes.predict)
    app.post("/webhook")(routes.ml_webhook)
    app.post("/train")(routes.legacy_train)
    app.get("/versions")(routes.versions)
    app.options("/media/{kind}/{image_id}")(routes.media_preflight)
    app.api_route("/media/{kind}/{image_id}", methods=list(_MEDIA_METHODS))(routes.media)
    return app


@dataclass(frozen=True)
class _Routes:
    """The app's route handlers over the injected ``handlers`` and the checked secrets."""

    handlers: BackendHandlers
    webhook_key: bytes
    media_secret: str
    classes: tuple[str, ...]
    secret_header: str
    expected_basic: bytes | None  # base64 of "user:password"; None: the ML-backend endpoints are open
    media_origins: frozenset[str]

    # ------------------------------------------------------------------------------------ webhook
    async def receive_webhook(self, request: Request) -> JSONResponse:
        # Authenticate before reading the body: an unauthenticated caller gets nothing parsed or queued.
        given = request.headers.get(self.secret_header)
        # Starlette decodes header bytes as latin-1; encoding back compares the bytes that were sent.
        if given is None or not hmac.compare_digest(
            given.encode("latin-1", errors="replace"), self.webhook_key
        ):
            logger.warning("webhook refused: missing or wrong %s header", self.secret_header)
            return _detail(401, f"missing or wrong {self.secret_header} header")

        body, refusal = await _json_body(request)
        if refusal is not None:
            logger.warning("webhook refused: body is not valid JSON")
            return refusal
        action = _shown_action(body)
        try:
            events = parse_webhook(body, classes=self.classes)
        except PayloadError as exc:
            logger.warning("webhook %s refused: %s", action, exc)
            return _detail(422, str(exc))
        if not events:
            logger.debug("webhook %s ignored: not an annotation action", action)
            return JSONResponse({"accepted": 0})
        if (unknown := await self._unknown_task(events)) is not None:
            logger.warning(
                "webhook %s refused: task %d (project %s, image %s) was not pushed by defectloop",
                action,
                unknown.ls_task_id,
                unknown.ls_project_id,
                unknown.image_id,
            )
            return _detail(422, f"unknown task {unknown.ls_task_id}: not pushed by defectloop")

        try:
            await run_in_threadpool(self.handlers.submit_events, events)
        except Exception as exc:
            # Label Studio never retries: the reconciliation job finds these annotations later.
            logger.error(
                "webhook %s: could not enqueue annotations %s (%s); reconciliation will pick them up",
                action,
                [e.ls_annotation_id for e in events],
                type(exc).__name__,
                exc_info=exc,
            )
            return _detail(503, "could not queue the annotation events; reconciliation will pick them up")
        logger.info(
            "webhook %s: accepted annotations %s",
            action,
            [(e.action.value, e.ls_annotation_id, e.ls_task_id) for e in events],
        )
        return JSONResponse({"accepted": len(events)})

    async def _unknown_task(self, events: Sequence[AnnotationEvent]) -> AnnotationEvent | None:
        """The first event whose task defectloop did not push (each task asked once), or None."""
        checked: set[tuple[int | None, int, int | None]] = set()
        for event in events:
            # Deletions carry annotation ids only; deleting an annotation we never recorded is a no-op.
            if event.ls_task_id is None:
                continue
            key = (event.ls_project_id, event.ls_task_id, event.image_id)
            if key in checked:
                continue
            known = await run_in_threadpool(
                self.handlers.is_known_task,
                ls_project_id=event.ls_project_id,
                ls_task_id=event.ls_task_id,
                image_id=event.image_id,
            )
            if not known:
                return event
            checked.add(key)
        return None

    # -------------------------------------------------------------------------------- ML backend
    def _ml_auth_refusal(self, request: Request) -> JSONResponse | None:
        if self.expected_basic is None:
            return None
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        given = credentials.strip().encode("latin-1", errors="replace")
        if scheme.lower() == "basic" and hmac.compare_digest(given, self.expected_basic):
            return None
        return _detail(
            401, "missing or wrong Basic credentials", {"WWW-Authenticate": 'Basic realm="defectloop"'}
        )

    async def _ml_json_body(self, request: Request) -> tuple[object, JSONResponse | None]:
        """The JSON body of an authenticated ML-backend call, or the refusal to answer with instead."""
        if (refusal := self._ml_auth_refusal(request)) is not None:
            return None, refusal
        return await _json_body(request)

    async def health(self, request: Request) -> JSONResponse:
        if (refusal := self._ml_auth_refusal(request)) is not None:
            return refusal
        extra = await run_in_threadpool(self.handlers.health)
        # The protocol's own keys win over whatever the handler reports.
        return JSONResponse(
            {"status": "UP", "model_class": MODEL_CLASS}
            | {k: v for k, v in extra.items() if k not in {"status", "model_class"}}
        )

    async def setup(self, request: Request) -> JSONResponse:
        # The body (project, label config, an API access token) is neither needed nor logged.
        if (refusal := self._ml_auth_refusal(request)) is not None:
            return refusal
        return JSONResponse({"model_version": await run_in_threadpool(self.handlers.model_version)})

    async def predict(self, request: Request) -> JSONResponse:
        body, refusal = await self._ml_json_body(request)
        if refusal is not None:
            return refusal
        tasks = body.get("tasks") if isinstance(body, Mapping) else None
        if not isinstance(tasks, list) or not all(isinstance(t, Mapping) for t in tasks):
            return _detail(422, "predict body must be an object whose 'tasks' is an array of task objects")
        results = await run_in_threadpool(self.handlers.predict, tasks) if tasks else []
        if not isinstance(results, list) or len(results) != len(tasks):
            count = len(results) if isinstance(results, list) else type(results).__name__
            logger.error(
                "predict handler returned %s results for %d tasks; refusing the answer", count, len(tasks)
            )
            return _detail(500, "internal error")
        logger.info("predict: %d tasks", len(tasks))
        return JSONResponse({"results": results})

    async def _train(self, reason: str) -> JSONResponse:
        await run_in_threadpool(self.handlers.request_training, reason=reason)
        logger.info("training requested: %s", reason)
        return JSONResponse({"status": "ok"}, status_code=201)

    async def ml_webhook(self, request: Request) -> JSONResponse:
        # Label Studio registers this URL for all actions when the backend is added; annotation events
        # arrive (authenticated) on WEBHOOK_PATH, so only START_TRAINING is acted on here.
        body, refusal = await self._ml_json_body(request)
        if refusal is not None:
            return refusal
        if not isinstance(body, Mapping):
            return _detail(422, "webhook body must be a JSON object")
        if body.get("action") == "START_TRAINING":
            return await self._train(TRAINING_REASON)
        logger.debug("ML-backend webhook %s ignored", _shown_action(body))
        return JSONResponse({"status": "ignored"})

    async def legacy_train(self, request: Request) -> JSONResponse:
        # Label Studio posts here instead of /webhook when its START_TRAINING feature flag is off; the body
        # (every annotation, the task-data password) is not needed: training reads our database.
        if (refusal := self._ml_auth_refusal(request)) is not None:
            return refusal
        return await self._train("Label Studio train request")

    async def versions(self, request: Request) -> JSONResponse:
        if (refusal := self._ml_auth_refusal(request)) is not None:
            return refusal
        return JSONResponse({"versions": await run_in_threadpool(self.handlers.versions)})

    # ------------------------------------------------------------------------------------- media
    # Label Studio's labelling screen fetches ``$image`` cross-origin from the annotator's browser: without
    # these headers (and an answer to the preflight) it shows "There was an issue loading URL" instead of
    # the photo. Only the configured Label Studio origins get them; the signature still guards each file.
    def _cors_headers(self, request: Request) -> dict[str, str]:
        origin = request.headers.get("origin")
        headers = {"Vary": "Origin"}
        if origin is not None and origin in self.media_origins:
            headers["Access-Control-Allow-Origin"] = origin
        return headers

    async def media_preflight(self, kind: str, image_id: str, request: Request) -> Response:
        headers = self._cors_headers(request)
        wanted = request.headers.get("access-control-request-method", "GET").upper()
        if "Access-Control-Allow-Origin" not in headers or wanted not in _MEDIA_METHODS:
            logger.warning(
                "media preflight refused: origin %r (allowed: %s), method %r",
                request.headers.get("origin", "")[:_LOGGED_ACTION_LIMIT],
                ", ".join(sorted(self.media_origins)) or "none",
                wanted[:_LOGGED_ACTION_LIMIT],
            )
            return Response(status_code=403, headers=headers)
        headers |= {
            "Access-Control-Allow-Methods": ", ".join(_MEDIA_METHODS),
            # Browsers may ask for headers of their own (e.g. Range for big photos); nothing here reads them.
            "Access-Control-Allow-Headers": request.headers.get("access-control-request-headers", ""),
            "Access-Control-Max-Age": "600",
        }
        return Response(status_code=204, headers=headers)

    async def media(self, kind: str, image_id: str, request: Request) -> Response:
        cors = self._cors_headers(request)
        if kind not in MEDIA_KINDS or not (image_id.isascii() and image_id.isdigit()):
            return _detail(404, "not found", cors)
        number = int(image_id)
        if not verify_media(kind, number, request.query_params.get("sig"), secret=self.media_secret):
            logger.warning("media %s %d refused: missing or wrong signature", kind, number)
            return _detail(403, "missing or wrong media signature", cors)
        path = await run_in_threadpool(self.handlers.media_path, kind, number)
        stat = None if path is None else await run_in_threadpool(_regular_file_stat, Path(path))
        if path is None or stat is None:
            logger.warning("media %s %d: no file", kind, number)
            return _detail(404, f"no {kind} for image {number}", cors)
        headers = cors | {
            "Cache-Control": _CACHE_CONTROL[kind],
            "X-Content-Type-Options": "nosniff",
            "ETag": _etag(stat),
        }
        if request.headers.get("if-none-match") == headers["ETag"]:
            return Response(status_code=304, headers=headers)
        media_type = mimetypes.guess_type(Path(path).name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type, headers=headers, stat_result=stat)


def _regular_file_stat(path: Path) -> os.stat_result | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat if S_ISREG(stat.st_mode) else None


def _etag(stat: os.stat_result) -> str:
    """A validator that changes whenever the file is rewritten (a heat-map redrawn by a new champion)."""
    return f'"{stat.st_mtime_ns:x}-{stat.st_size:x}-{stat.st_ino:x}"'


def _ignore_signal(signum: int, frame: object) -> None:
    """Stands in for SIGTERM/SIGINT while uvicorn runs; see ``serve_http_app``."""


class _WithoutQueryString(logging.Filter):
    """Drops the query string from uvicorn's access-log lines: a media URL's signature is a credential."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


def serve_http_app(
    app: FastAPI, *, host: str, port: int, log_level: str = "info", graceful_shutdown_s: float = 10.0
) -> None:
    """Serve the app with uvicorn until SIGTERM or SIGINT, then return normally.

    uvicorn stops accepting, finishes open requests (at most ``graceful_shutdown_s``), runs the lifespan
    shutdown and then re-raises the signal it caught. With SIGTERM's default action that re-raise would
    kill the process before the caller's clean-up (``finally`` blocks) runs, so a no-op handler stands in
    while uvicorn runs and this function simply returns.

    uvicorn's access log would print request lines with their query string; a filter strips it, so media
    signatures never reach the log (the webhook secret travels in a header and never appears either).
    """
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _WithoutQueryString) for f in access.filters):
        access.addFilter(_WithoutQueryString())
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        # A stuck client must not hold a shutdown forever (compose sends SIGKILL after its own grace period).
        timeout_graceful_shutdown=max(1, int(graceful_shutdown_s)),
    )
    server = uvicorn.Server(config)
    if threading.current_thread() is not threading.main_thread():
        # Signals can only be handled in the main thread; uvicorn then installs no handlers either.
        server.run()
        return
    previous = {sig: signal.signal(sig, _ignore_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
