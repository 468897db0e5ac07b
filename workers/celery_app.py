"""The Celery app factory and its tasks, configured from a plain ``WorkerConfig`` (no settings import).

Tasks are thin: they parse ids, call ``workers.classification`` and leave retries to Celery, only for
transient errors (database unreachable or locked). The idempotent tasks are ``acks_late`` with
``reject_on_worker_lost``: a worker killed mid-task leaves its message to be delivered again, and a
second run is harmless. Per process, a ``WorkerRuntime`` holds the session factory and the champion cache,
built lazily on first use (so a prefork parent never opens a connection its children would share). The
composition root (``defectloop.app``) builds it and hands it to ``create_app`` and ``run_worker``.

Brokers: Redis in production; for the embedded default kombu's SQLAlchemy transport over SQLite
(``sqla+sqlite:///DATA_DIR/broker.db``), which needs no server, subclassed (``EmbeddedTransport``) to
poll every 0.1 s instead of every second. That transport redelivers nothing
after a worker is killed (it marks a message invisible when it hands it out), Redis only after the
visibility timeout. Each image a worker takes carries its claim (``workers.claims``): a worker that
becomes ready re-publishes at once the images claimed by worker processes of this machine that no
longer exist (``republish_orphaned_claims``), and so does every sweep; the sweeper (``requeue_waiting_images``
on beat) still publishes again whatever waits ``new``/``queued`` longer than ``stuck_after``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.transport import sqlalchemy as kombu_sqlalchemy
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import assert_migrated
from db.session import check_connection, create_engine_for, make_session_factory
from models.labels import LabelSpace
from workers import classification
from workers.claims import Claimant, republish_orphaned_claims
from workers.labelling_tasks import (
    LabellingConfig,
    LabellingRuntime,
    register_labelling_tasks,
    request_labelling_push,
)
from workers.queues import (
    PURGE_INTERVAL_S,
    Queue,
    add_routes_and_beat,
    idempotent_task_options,
    is_embedded_broker,
    purge_delivered_messages,
)
from workers.retraining_tasks import RetrainingConfig, register_retraining_tasks
from workers.transient import TRANSIENT_ERRORS

logger = logging.getLogger(__name__)

__all__ = [
    "CLASSIFY_TASK",
    "PURGE_TASK",
    "SWEEP_TASK",
    "TRANSIENT_ERRORS",
    "WorkerConfig",
    "WorkerRuntime",
    "create_app",
    "publish_classification",
    "publish_in_batches",
    "run_beat",
    "run_worker",
]

CLASSIFY_TASK = "defectloop.classify_images"
SWEEP_TASK = "defectloop.requeue_waiting_images"
PURGE_TASK = "defectloop.purge_broker_messages"
TASK_QUEUES: dict[str, Queue] = {
    CLASSIFY_TASK: Queue.INFERENCE,
    SWEEP_TASK: Queue.MAINTENANCE,
    PURGE_TASK: Queue.MAINTENANCE,
}
POOLS = ("solo", "prefork", "threads")


PUSH_REQUEST_EVERY_S = 5.0
"""A worker that predicted new images asks for a labelling push at most this often."""

EMBEDDED_PREFIX = "sqla+"
EMBEDDED_POLLING_INTERVAL_S = 0.1
REDIS_SOCKET_TIMEOUT_S = 10.0


def _sqlite_broker_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers (polling workers) never block the writer (a publisher), and a commit appends to the
    # log instead of rewriting pages. synchronous=NORMAL skips the fsync per commit: a power cut may lose
    # the last messages, never corrupt the file, and the sweeper re-publishes whatever they announced
    # (the images' rows live in the registry, not here). busy_timeout: wait for the lock, do not fail.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
    finally:
        cursor.close()


class EmbeddedChannel(kombu_sqlalchemy.Channel):  # type: ignore[misc]  # kombu is untyped
    """kombu's SQLAlchemy channel on a SQLite file tuned for several processes publishing at once."""

    def _engine_from_config(self) -> Any:
        engine = super()._engine_from_config()
        sqlalchemy_event.listen(engine, "connect", _sqlite_broker_pragmas)
        return engine


class EmbeddedTransport(kombu_sqlalchemy.Transport):  # type: ignore[misc]  # kombu is untyped
    """kombu's SQLAlchemy transport, polling an idle queue every 0.1 s instead of every second, on a
    SQLite file in WAL mode (``EmbeddedChannel``)."""

    Channel = EmbeddedChannel
    polling_interval = EMBEDDED_POLLING_INTERVAL_S


@dataclass(frozen=True)
class WorkerConfig:
    """Everything the Celery app and its tasks need, as plain values (built from settings by the caller).

    ``inference_backend`` is ``models.infer.Predictor``'s backend; ``visibility_timeout_s`` (Redis) is
    how long an unacknowledged message waits before Redis hands it out again; ``sweep_interval_s`` and
    ``stuck_after_s`` drive the beat sweeper, which sends ``publish_batch_size`` ids per message.
    """

    broker_url: str
    database_url: str
    artifacts_dir: Path
    classes: tuple[str, ...]
    inference_batch_size: int = 16
    inference_batch_timeout_ms: int = 200
    publish_batch_size: int = 64
    mc_passes: int = 0
    inference_backend: str = "auto"
    visibility_timeout_s: int = 3600
    sweep_interval_s: float = 60.0
    stuck_after_s: float = 300.0
    labelling: LabellingConfig | None = None
    retraining: RetrainingConfig | None = None
    extra_conf: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "://" not in self.broker_url:
            raise ValueError(f"broker_url must be a URL such as redis://host:6379/0, got {self.broker_url!r}")
        if len(self.classes) < 2:
            raise ValueError("classes needs the good class and at least one defect class")
        for name in ("inference_batch_size", "publish_batch_size", "visibility_timeout_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mc_passes < 0:
            raise ValueError(f"mc_passes must be >= 0, got {self.mc_passes}")
        if (timeout_ms := self.inference_batch_timeout_ms) < 0:
            raise ValueError(f"inference_batch_timeout_ms must be >= 0, got {timeout_ms}")
        if self.sweep_interval_s <= 0:
            raise ValueError(f"sweep_interval_s must be > 0, got {self.sweep_interval_s}")
        if self.stuck_after_s < 0:
            raise ValueError(f"stuck_after_s must be >= 0, got {self.stuck_after_s}")

    @property
    def label_space(self) -> LabelSpace:
        return LabelSpace.from_classes(self.classes)

    @property
    def uses_redis(self) -> bool:
        return self.broker_url.startswith(("redis://", "rediss://"))


class WorkerRuntime:
    """Per-process state of the tasks: built lazily on first use, then kept for the process's life."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._sessions: sessionmaker[Session] | None = None
        self._champions: classification.ChampionCache | None = None
        self._lock = threading.Lock()  # the threads pool may ask from several threads at once
        self._last_push_request = float("-inf")

    def push_request_due(self, every_s: float) -> bool:
        """True at most once per ``every_s`` in this process: newly predicted images ask for a push."""
        with self._lock:
            now = time.monotonic()
            if now - self._last_push_request < every_s:
                return False
            self._last_push_request = now
            return True

    @property
    def sessions(self) -> sessionmaker[Session]:
        with self._lock:
            if self._sessions is None:
                engine = create_engine_for(self.config.database_url)
                try:
                    check_connection(engine)
                    assert_migrated(engine)
                except Exception:
                    engine.dispose()
                    raise
                self._sessions = make_session_factory(engine)
            return self._sessions

    @property
    def champions(self) -> classification.ChampionCache:
        with self._lock:
            return self._champion_cache()

    def _champion_cache(self) -> classification.ChampionCache:
        if self._champions is None:
            config = self.config
            self._champions = classification.ChampionCache(
                lambda ref: classification.load_predictor(
                    ref, mc_passes=config.mc_passes, backend=config.inference_backend
                )
            )
        return self._champions


def _parse_ids(image_ids: object) -> list[int]:
    # Bad input is a programming error: it raises, and is not retried.
    if not isinstance(image_ids, list | tuple) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in image_ids
    ):
        raise TypeError(f"image_ids must be a list of ints, got {image_ids!r}")
    return [int(i) for i in image_ids]


def create_app(
    config: WorkerConfig,
    *,
    runtime: WorkerRuntime | None = None,
    labelling: LabellingRuntime | None = None,
) -> Any:
    """A Celery app for ``config``: queues, routes, JSON only, late acks, prefetch 1, the tasks, beat.

    The tasks use ``runtime`` and, when ``config.labelling`` is set, ``labelling`` (each built from
    ``config`` when not given): the caller that gives them keeps them for whatever else needs the same
    per-process state (the worker's warm-up, the HTTP app's scorer). Creating it connects to nothing.
    (Returns ``celery.Celery``; typed ``Any`` because celery ships without usable annotations.)
    """
    if labelling is not None and config.labelling is None:
        raise ValueError("a labelling runtime was given but config.labelling is None: Label Studio is off")
    broker_url, transport = config.broker_url, None
    if broker_url.startswith(EMBEDDED_PREFIX):
        # kombu's SQLAlchemy transport hands every transport option to create_engine (polling_interval
        # too, which SQLAlchemy refuses), so the interval comes from a subclass named as the transport;
        # with an explicit transport, the URL must lose its "sqla+" prefix (the prefix would win).
        broker_url, transport = broker_url.removeprefix(EMBEDDED_PREFIX), f"{__name__}:EmbeddedTransport"
    app = Celery("defectloop", broker=broker_url, set_as_current=False)
    transport_options: dict[str, Any] = {}
    if config.uses_redis:
        transport_options = {
            "visibility_timeout": config.visibility_timeout_s,
            # Without these a publish to a Redis that hangs without closing the connection (a network
            # partition) waits for ever; with them it fails, and is retried or left to the sweeper.
            "socket_timeout": REDIS_SOCKET_TIMEOUT_S,
            "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_S,
        }
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=Queue.MAINTENANCE.value,
        task_create_missing_queues=True,
        task_routes={name: {"queue": queue.value} for name, queue in TASK_QUEUES.items()},
        # One message at a time per process: a batch may take seconds; others should not wait behind it.
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport=transport,
        broker_transport_options=transport_options,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,  # the CLI logs to stderr itself; a proxy there would swallow it
        worker_send_task_events=False,
        enable_utc=True,
        timezone="UTC",
        beat_schedule={
            "requeue-waiting-images": {
                "task": SWEEP_TASK,
                "schedule": config.sweep_interval_s,
                "kwargs": {"stuck_after_s": config.stuck_after_s},
                "options": {"queue": Queue.MAINTENANCE.value},
            }
        },
    )
    if runtime is None:
        runtime = WorkerRuntime(config)
    if config.labelling is not None:
        if labelling is None:
            labelling = LabellingRuntime(config.labelling, config.label_space, runtime)
        register_labelling_tasks(app, runtime=labelling)
    if config.retraining is not None:

        def publish_rescore(image_ids: list[int]) -> None:
            """A new champion's re-queued pool, in batches (unsent ones are the sweeper's)."""
            publish_in_batches(app, image_ids, batch_size=config.publish_batch_size)

        register_retraining_tasks(
            app,
            config=config.retraining,
            label_space=config.label_space,
            artifacts_dir=config.artifacts_dir,
            base=runtime,
            publish_rescore=publish_rescore,
        )
    app.conf.update(config.extra_conf)

    @app.task(  # type: ignore[untyped-decorator]  # celery is untyped
        name=CLASSIFY_TASK, **idempotent_task_options(TRANSIENT_ERRORS, max_retries=10)
    )
    def classify_images(image_ids: list[int]) -> dict[str, Any]:
        """Classify these images with the current champions (idempotent; see workers.classification)."""
        ids = _parse_ids(image_ids)
        logger.info("classifying images %s", ids)
        report = classification.classify_images(
            ids,
            sessions=runtime.sessions,
            champions=runtime.champions,
            label_space=config.label_space,
            batch_size=config.inference_batch_size,
            collect_timeout_s=config.inference_batch_timeout_ms / 1000,
            claimant=str(Claimant.current(node=str(classify_images.request.hostname or ""))),
        )
        if (
            config.labelling is not None
            and report.predicted
            and runtime.push_request_due(PUSH_REQUEST_EVERY_S)
        ):
            # New candidates: top Label Studio's queue up now rather than at beat's next tick (the push
            # adds nothing when the annotators have enough; one runs at a time per project).
            request_labelling_push(app)
        return report.as_dict()

    @app.task(  # type: ignore[untyped-decorator]  # celery is untyped
        name=SWEEP_TASK, **idempotent_task_options(TRANSIENT_ERRORS, max_retries=3)
    )
    def requeue_waiting_images(stuck_after_s: float | None = None) -> int:
        """Re-publish images waiting in new/queued longer than ``stuck_after_s`` (default: the config's)."""
        age = config.stuck_after_s if stuck_after_s is None else float(stuck_after_s)
        orphaned = republish_orphaned_claims(
            sessions=runtime.sessions,
            publish=lambda batch: publish_classification(app, batch),
            batch_size=config.publish_batch_size,
        )
        ids = classification.requeue_waiting_images(
            sessions=runtime.sessions,
            publish=lambda batch: publish_classification(app, batch),
            older_than=timedelta(seconds=age),
            batch_size=config.publish_batch_size,
        )
        return len(orphaned) + len(ids)

    @app.task(  # type: ignore[untyped-decorator]  # celery is untyped
        name=PURGE_TASK, shared=False, autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=3
    )
    def purge_broker_messages() -> int:
        """Delete the embedded broker's rows of delivered messages (see workers.queues); 0 on Redis."""
        return purge_delivered_messages(config.broker_url)

    def republish_when_ready(sender: Any = None, **_: Any) -> None:
        """A worker of this app is ready: publish again what dead worker processes held (once)."""
        if getattr(sender, "app", None) is not app:
            return
        _republish_orphans(app, config)

    worker_ready.connect(republish_when_ready, weak=False)

    if is_embedded_broker(config.broker_url):
        add_routes_and_beat(
            app, {}, {"purge-broker-messages": (PURGE_TASK, PURGE_INTERVAL_S, Queue.MAINTENANCE)}
        )
    return app


def _republish_orphans(app: Any, config: WorkerConfig) -> None:
    # An engine of its own, disposed at once: a prefork parent must hold no connection a child could inherit.
    engine = create_engine_for(config.database_url)
    try:
        republish_orphaned_claims(
            sessions=make_session_factory(engine),
            publish=lambda batch: publish_classification(app, batch),
            batch_size=config.publish_batch_size,
        )
    except Exception:  # upkeep: the worker runs anyway, and the sweeper covers what this missed
        logger.warning("could not re-publish the images of dead workers; the sweeper will", exc_info=True)
    finally:
        engine.dispose()


def send_beat_entries_now(app: Any) -> list[str]:
    """Send every beat entry's task once, now; the names sent. A broker that is down is logged, not fatal:
    the schedule sends them again."""
    sent = []
    for name, entry in sorted(app.conf.beat_schedule.items()):
        try:
            app.send_task(
                entry["task"],
                args=entry.get("args", ()),
                kwargs=entry.get("kwargs", {}),
                **entry.get("options", {}),
                retry=False,
            )
        except (*TRANSIENT_ERRORS, KombuOperationalError, OSError) as exc:
            logger.warning("beat start: could not send %s now (%s); the schedule will", name, exc)
            continue
        sent.append(name)
    logger.info("beat start: sent %s", ", ".join(sent) or "nothing")
    return sent


def publish_classification(app: Any, image_ids: Iterable[int], *, retry: bool = True) -> None:
    """Send one ``classify_images`` message for these ids to the inference queue (a short retry policy)."""
    ids = [int(i) for i in image_ids]
    app.send_task(
        CLASSIFY_TASK,
        args=[ids],
        queue=Queue.INFERENCE.value,
        retry=retry,
        retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 2},
    )


def publish_in_batches(app: Any, image_ids: Sequence[int], *, batch_size: int, retry: bool = True) -> None:
    """Send ``image_ids`` to the inference queue, ``batch_size`` ids per message (e.g. the pool a new
    champion re-queued); a broker error stops at the batch it hits and propagates."""
    for start in range(0, len(image_ids), batch_size):
        publish_classification(app, image_ids[start : start + batch_size], retry=retry)


def warm_champions_on_start(runtime: WorkerRuntime) -> None:
    """Load the champions in the background as soon as the process that will run the tasks exists
    (``worker_process_init``: the solo worker itself, or each prefork child after its fork), so a worker
    started after a crash has them, or nearly, by its first batch rather than loading them then. The
    first batch waits on the same cache lock, so nothing loads twice; a failure is only logged (that
    batch loads them, and says why it cannot)."""

    def warm() -> None:
        started = time.monotonic()
        try:
            champions = runtime.champions.refresh(runtime.sessions)
        except Exception:
            logger.warning("could not load the champions at start; the first batch will", exc_info=True)
            return
        names = [c.version.name for c in (champions.binary, champions.multiclass) if c is not None]
        logger.info(
            "champions warmed at start in %.1f s: %s",
            time.monotonic() - started,
            ", ".join(names) or "none yet",
        )

    def start_warming(**_: Any) -> None:
        threading.Thread(target=warm, name="warm-champions", daemon=True).start()

    worker_process_init.connect(start_warming, weak=False)


def run_worker(
    app: Any,
    *,
    runtime: WorkerRuntime,
    queues: Sequence[Queue],
    concurrency: int = 1,
    pool: str = "solo",
    loglevel: str = "INFO",
    node_name: str | None = None,
) -> int:
    """Run a Celery worker in this process until it is stopped; its exit code.

    ``runtime`` is the one ``app``'s tasks use: with the ``inference`` queue its champions are loaded
    as the worker process starts. SIGTERM is Celery's warm shutdown: the task in hand finishes (its batch
    is committed), unstarted messages go back to the broker, and the process exits 0.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if not queues:
        raise ValueError("give at least one queue")
    name = node_name or f"defectloop-{os.getpid()}@{socket.gethostname()}"
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--queues={','.join(q.value for q in queues)}",
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        f"--hostname={name}",
        # No worker-to-worker chatter: it costs broker round trips and the embedded broker has no fanout.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    logger.info("starting worker %s on queues %s (pool %s x%d)", name, ",".join(queues), pool, concurrency)
    try:
        purge_delivered_messages(runtime.config.broker_url)
    except Exception:  # upkeep only: the worker starts even when it fails
        logger.warning("could not purge the embedded broker's delivered messages", exc_info=True)
    if Queue.INFERENCE in queues:
        warm_champions_on_start(runtime)
    code = app.worker_main(argv=argv)
    return int(code or 0)


def run_beat(app: Any, *, schedule_path: Path, loglevel: str = "INFO", run_at_start: bool = True) -> int:
    """Run the beat scheduler in this process until it is stopped.

    Celery runs an interval entry first one interval after start; with ``run_at_start`` every entry is
    also sent once now, so the first labelling push, reconciliation and sweep happen when beat starts
    (all beat's tasks are idempotent, so a restart that sends them again does no harm).
    """
    schedule_path.parent.mkdir(parents=True, exist_ok=True)
    if run_at_start:
        send_beat_entries_now(app)
    code = app.start(argv=["beat", f"--loglevel={loglevel}", f"--schedule={schedule_path}"])
    return int(code or 0)
