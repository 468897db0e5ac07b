"""The Celery tasks of the labelling side, registered on the app by ``register_labelling_tasks``.

- ``push_labelling_batch`` (beat, ``labelling`` queue): re-rank open tasks after a champion change,
  then choose and push the next batch (``workers.labelling``);
- ``record_annotations`` (``labelling`` queue): what the webhook receiver hands over;
- ``reconcile_annotations`` (beat, ``labelling`` queue): what webhooks missed.

All three are idempotent, so they are ``acks_late`` with ``reject_on_worker_lost``, and retried with
backoff only for transient errors (Label Studio or the database unreachable). The Label Studio client,
the project id and the champion-backed helpers are built once per process, on first use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from db.session import session_scope
from labelling.errors import LabellingError, LabelStudioUnavailableError
from labelling.payloads import AnnotationEvent
from models.labels import LabelSpace
from models.selection import DEFAULT_STRATEGY, strategy_spec
from workers import labelling
from workers.queues import Queue, add_routes_and_beat, idempotent_task_options
from workers.transient import TRANSIENT_ERRORS

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from labelling.gateway import LabelStudioGateway
    from workers.classification import ChampionCache

logger = logging.getLogger(__name__)

__all__ = [
    "PUSH_TASK",
    "RECONCILE_TASK",
    "RECORD_TASK",
    "LabellingConfig",
    "LabellingRuntime",
    "publish_annotation_events",
    "register_labelling_tasks",
    "request_labelling_push",
]

PUSH_TASK = "defectloop.push_labelling_batch"
RECORD_TASK = "defectloop.record_annotations"
RECONCILE_TASK = "defectloop.reconcile_annotations"
LABELLING_TASK_QUEUES: dict[str, Queue] = {
    PUSH_TASK: Queue.LABELLING,
    RECORD_TASK: Queue.LABELLING,
    RECONCILE_TASK: Queue.LABELLING,
}


@dataclass(frozen=True)
class LabellingConfig:
    """What the labelling tasks need, as plain values (built from settings by the caller).

    ``media_url(kind, image_id)`` is how Label Studio's browser fetches an image or its heat-map from
    our HTTP app (signed URLs); ``heatmaps_dir`` None means no heat-maps.
    """

    label_studio_url: str
    api_key: str = field(repr=False)
    project_title: str
    public_url: str
    media_secret: str = field(repr=False)
    strategy: str = DEFAULT_STRATEGY
    batch_size: int = 20
    queue_target: int = 40
    push_interval_s: float = 30.0
    reconcile_interval_s: float = 60.0
    heatmaps_dir: Path | None = None
    label_studio_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("the Label Studio API key is empty: set DEFECTLOOP_LABEL_STUDIO_API_KEY")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        strategy_spec(self.strategy)  # an unknown name fails here, listing the valid ones

    def media_url(self, kind: str, image_id: int) -> str:
        from labelling.media import media_url

        return media_url(self.public_url, kind, image_id, secret=self.media_secret)


class SharedRuntime(Protocol):
    """The process's session factory and champion cache (``workers.celery_app.WorkerRuntime``)."""

    @property
    def sessions(self) -> sessionmaker[Session]: ...

    @property
    def champions(self) -> ChampionCache: ...


class LabellingRuntime:
    """Per-process Label Studio client, project id and helpers, built on first use; the sessions and
    champions are ``base``'s, the classification tasks' own."""

    def __init__(self, config: LabellingConfig, label_space: LabelSpace, base: SharedRuntime) -> None:
        self.config = config
        self.label_space = label_space
        self.classes = label_space.classes
        self._base = base
        self._lock = threading.Lock()
        self._gateway: LabelStudioGateway | None = None
        self._project_id: int | None = None
        self._emails: dict[int, str] = {}

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self._base.sessions

    @property
    def gateway(self) -> LabelStudioGateway:
        with self._lock:
            if self._gateway is None:
                from labelling.gateway import LabelStudioGateway

                self._gateway = LabelStudioGateway(
                    self.config.label_studio_url,
                    self.config.api_key,
                    timeout_s=self.config.label_studio_timeout_s,
                )
            return self._gateway

    @property
    def project_id(self) -> int:
        if self._project_id is None:
            from labelling.label_config import build_label_config

            project = self.gateway.ensure_project(
                title=self.config.project_title, label_config=build_label_config(self.classes)
            )
            self._project_id = project.id
        return self._project_id

    def with_emails(self, events: Sequence[AnnotationEvent]) -> list[AnnotationEvent]:
        """Events whose annotator is a bare Label Studio user id (webhooks send no more) get the user's
        e-mail address; when Label Studio cannot say, the id stays and the event is recorded anyway."""
        named = []
        for event in events:
            annotator = event.annotator
            if annotator is not None and annotator.isascii() and annotator.isdigit():
                user_id = int(annotator)
                if user_id not in self._emails:
                    try:
                        email = self.gateway.user_email(user_id=user_id)
                    except LabellingError as exc:
                        logger.warning("annotator %d recorded by id: %s", user_id, exc)
                        email = None
                    if email:
                        self._emails[user_id] = email
                if user_id in self._emails:
                    event = replace(event, annotator=self._emails[user_id])
            named.append(event)
        return named

    def sink(self) -> labelling.LabelStudioSink:
        from workers.explain import GradcamHeatmaps

        heatmaps = None
        if self.config.heatmaps_dir is not None:
            heatmaps = GradcamHeatmaps(self.config.heatmaps_dir, self.sessions)
        return labelling.LabelStudioSink(
            gateway=self.gateway,
            project_id=self.project_id,
            media_url=self.config.media_url,
            heatmap=heatmaps,
            good_class=self.label_space.good_class,
        )

    def embedder(self) -> labelling.Embedder:
        from workers.explain import ChampionEmbedder

        return ChampionEmbedder(self.sessions, self._base.champions)

    def scorer(self) -> labelling.Scorer:
        from workers.explain import score_images

        def score(items: Sequence[tuple[int, str]]) -> None:
            score_images(
                items,
                sessions=self.sessions,
                champions=self._base.champions,
                label_space=self.label_space,
            )

        return score


def register_labelling_tasks(app: Any, *, runtime: LabellingRuntime) -> None:
    """Add the labelling tasks, their routes and beat entries to ``app`` (see the module docstring); the
    tasks use ``runtime``."""
    config = runtime.config
    retry_on: tuple[type[Exception], ...] = (LabelStudioUnavailableError, *TRANSIENT_ERRORS)
    add_routes_and_beat(
        app,
        LABELLING_TASK_QUEUES,
        {
            "push-labelling-batch": (PUSH_TASK, config.push_interval_s, Queue.LABELLING),
            "reconcile-annotations": (RECONCILE_TASK, config.reconcile_interval_s, Queue.LABELLING),
        },
    )
    common = idempotent_task_options(retry_on, max_retries=12, backoff_max_s=300)

    @app.task(name=PUSH_TASK, **common)  # type: ignore[untyped-decorator]  # celery is untyped
    def push_labelling_batch(k: int | None = None) -> dict[str, Any]:
        """Re-rank open tasks under the current champions, then push the next ``k`` most informative
        (beat gives no ``k``: up to the batch size, topping the open tasks up to the queue target)."""
        sink = runtime.sink()
        project_id = runtime.project_id
        labelling.retire_superseded_tasks(sessions=runtime.sessions, sink=sink, ls_project_id=project_id)
        refreshed = labelling.refresh_labelling_predictions(
            sessions=runtime.sessions,
            sink=sink,
            ls_project_id=project_id,
            strategy=config.strategy,
            classes=runtime.classes,
            score=runtime.scorer(),
        )
        embed = runtime.embedder() if strategy_spec(config.strategy).needs_embeddings else None
        report = labelling.push_labelling_batch(
            sessions=runtime.sessions,
            sink=sink,
            ls_project_id=project_id,
            strategy=config.strategy,
            k=config.batch_size if k is None else int(k),
            classes=runtime.classes,
            embed=embed,
            keep_open=config.queue_target if k is None else None,
        )
        return {**report.as_dict(), "refreshed": refreshed}

    @app.task(name=RECORD_TASK, **common)  # type: ignore[untyped-decorator]  # celery is untyped
    def record_annotations(events: list[dict[str, Any]]) -> dict[str, Any]:
        """Record annotation events from the webhook receiver (idempotent by annotation id)."""
        parsed = [AnnotationEvent.from_json(event) for event in events]  # bad input raises: not retried
        parsed = runtime.with_emails(parsed)
        with session_scope(runtime.sessions) as session:
            report = labelling.record_annotation_events(session=session, events=parsed)
        return report.as_dict()

    @app.task(name=RECONCILE_TASK, **common)  # type: ignore[untyped-decorator]  # celery is untyped
    def reconcile_annotations(full: bool = False) -> dict[str, Any]:
        """Record what webhooks missed: annotations changed since the last sync (all with ``full``)."""
        report = labelling.reconcile_annotations(
            sessions=runtime.sessions,
            source=runtime.gateway,
            ls_project_id=runtime.project_id,
            classes=runtime.classes,
            full=bool(full),
        )
        return report.as_dict()


def request_labelling_push(app: Any) -> None:
    """Ask for a top-up push now (beat's push without ``k``); a broker that is down is beat's to cover."""
    try:
        app.send_task(PUSH_TASK, queue=Queue.LABELLING.value, retry=False)
    except Exception as exc:  # the scheduled push runs anyway
        logger.warning("could not ask for a labelling push now (%s); beat's schedule will push", exc)


def publish_annotation_events(app: Any, events: Sequence[AnnotationEvent], *, retry: bool = False) -> None:
    """Hand annotation events to the ``labelling`` queue (one message; the receiver answers at once).

    No publish retries by default: the webhook must answer Label Studio within a second, and an event
    lost here is found by reconciliation.
    """
    app.send_task(
        RECORD_TASK,
        args=[[event.to_json() for event in events]],
        queue=Queue.LABELLING.value,
        retry=retry,
    )
