"""The long-running processes: Celery worker and beat, the camera watcher, the HTTP server, and ``up``,
which runs them side by side."""

from __future__ import annotations

import logging
import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from defectloop.cli._common import check_database, opened_database, settings_of
from defectloop.supervise import run_processes

logger = logging.getLogger(__name__)


class PoolName(StrEnum):
    SOLO = "solo"
    PREFORK = "prefork"
    THREADS = "threads"


class InferenceBackend(StrEnum):
    AUTO = "auto"
    EAGER = "eager"
    CHANNELS_LAST = "channels_last"
    ONNXRUNTIME = "onnxruntime"


def _parse_queues(value: str) -> list[str]:
    from workers.queues import Queue

    names = [part.strip() for part in value.split(",") if part.strip()]
    valid = [q.value for q in Queue]
    bad = [name for name in names if name not in valid]
    if bad or not names:
        raise typer.BadParameter(f"unknown queue(s) {bad or value!r}; choose from {', '.join(valid)}")
    return names


def worker(
    ctx: typer.Context,
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues to consume.")
    ] = "inference,labelling,training,maintenance",
    concurrency: Annotated[int, typer.Option(min=1, help="Processes (prefork) or threads.")] = 1,
    pool: Annotated[PoolName, typer.Option(help="Execution pool; solo runs tasks in this process.")] = (
        PoolName.SOLO
    ),
    inference_backend: Annotated[
        InferenceBackend, typer.Option(help="How champions run: auto picks the fastest that loads.")
    ] = InferenceBackend.AUTO,
    visibility_timeout: Annotated[
        int, typer.Option(min=1, help="Redis: seconds before an unacknowledged message is handed out again.")
    ] = 3600,
) -> None:
    """Run a Celery worker with the defectloop app (SIGTERM: finish the batch in hand, then exit)."""
    names = _parse_queues(queues)
    settings = settings_of(ctx)
    check_database(settings)
    from defectloop.app import create_workers
    from workers.celery_app import run_worker
    from workers.queues import Queue

    workers = create_workers(
        settings, inference_backend=inference_backend.value, visibility_timeout_s=visibility_timeout
    )
    code = run_worker(
        workers.celery,
        runtime=workers.runtime,
        queues=[Queue(name) for name in names],
        concurrency=concurrency,
        pool=pool.value,
        loglevel=settings.log_level,
    )
    raise typer.Exit(code)


def beat(
    ctx: typer.Context,
    sweep_every: Annotated[
        float, typer.Option(min=0.1, help="Seconds between sweeps for images waiting or stuck.")
    ] = 60.0,
    stuck_after: Annotated[
        float, typer.Option(min=0.0, help="An image waiting this many seconds is published again.")
    ] = 300.0,
) -> None:
    """Run the Celery beat scheduler: the sweeper that re-queues waiting and stuck images."""
    settings = settings_of(ctx)
    check_database(settings)
    from defectloop.app import create_celery_app
    from workers.celery_app import run_beat

    celery_app = create_celery_app(settings, sweep_interval_s=sweep_every, stuck_after_s=stuck_after)
    code = run_beat(
        celery_app, schedule_path=settings.data_dir / "celerybeat-schedule", loglevel=settings.log_level
    )
    raise typer.Exit(code)


def watch(
    ctx: typer.Context,
    folders: Annotated[
        list[Path], typer.Argument(exists=True, file_okay=False, help="Camera folders to watch.")
    ],
) -> None:
    """Ingest photos from camera folders and send them to classification (SIGTERM/Ctrl-C: stop cleanly)."""
    settings = settings_of(ctx)
    from defectloop.app import create_celery_app, ingest_config
    from workers.celery_app import publish_classification
    from workers.ingest import IngestService

    config = ingest_config(settings, folders)
    with opened_database(settings) as database:
        celery_app = create_celery_app(settings)
        service = IngestService(
            config, database.sessions, lambda ids: publish_classification(celery_app, ids, retry=True)
        )
        previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: service.request_stop())
        try:
            service.run_forever()
        finally:
            signal.signal(signal.SIGTERM, previous)


def up(
    ctx: typer.Context,
    folders: Annotated[
        list[Path] | None,
        typer.Argument(exists=True, file_okay=False, help="Camera folders to watch (none: no watcher)."),
    ] = None,
    sweep_every: Annotated[float, typer.Option(min=0.1, help="Beat: seconds between sweeps.")] = 60.0,
    stuck_after: Annotated[
        float, typer.Option(min=0.0, help="Beat: an image waiting this many seconds is published again.")
    ] = 300.0,
    inference_backend: Annotated[
        InferenceBackend, typer.Option(help="Worker: how champions run.")
    ] = InferenceBackend.AUTO,
) -> None:
    """Start a worker, a training worker, beat, the camera watcher (given folders) and, with Label
    Studio configured, a labelling worker and the webhook receiver; keep them running (a child that
    exits is restarted); SIGTERM or Ctrl-C stops them all."""
    settings = settings_of(ctx)
    check_database(settings)  # one clear error here rather than three from the children
    # Every child finds the same data dir, whatever its working directory (the settings resolved it).
    os.environ["DEFECTLOOP_DATA_DIR"] = str(settings.data_dir)
    logger.info("data dir: %s", settings.data_dir)

    base = [sys.executable, "-m", "defectloop.cli"]
    commands = {
        "worker": [
            *base,
            "worker",
            "--queues=inference,maintenance",
            f"--inference-backend={inference_backend.value}",
        ],
        # Retraining on a worker of its own: a retrain takes minutes, new photos must not wait behind it.
        "trainer": [*base, "worker", "--queues=training"],
        "beat": [*base, "beat", f"--sweep-every={sweep_every}", f"--stuck-after={stuck_after}"],
    }
    if folders:
        commands["watch"] = [*base, "watch", *(str(folder) for folder in folders)]
    from defectloop.app import labelling_config

    if labelling_config(settings) is not None:
        # Label Studio configured: its receiver, and a worker for pushes (heat-maps take seconds) and
        # annotations, so that photos are classified while a push is drawn.
        commands["labeller"] = [
            *base,
            "worker",
            "--queues=labelling",
            f"--inference-backend={inference_backend.value}",
        ]
        commands["serve"] = [*base, "serve"]
    raise typer.Exit(run_processes(commands))


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (default: DEFECTLOOP_HTTP_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: DEFECTLOOP_HTTP_PORT).")] = None,
) -> None:
    """Run the webhook receiver, the Label Studio ML backend and the image server (SIGTERM stops it)."""
    settings = settings_of(ctx)
    from defectloop.app import create_http_app, create_workers, labelling_config
    from labelling.server import serve_http_app

    labelling_config(settings, required=True)  # names a missing variable before anything starts
    with opened_database(settings) as database:
        http_app = create_http_app(settings, database, create_workers(settings))
        serve_http_app(
            http_app,
            host=host or settings.http_host,
            port=port or settings.http_port,
            log_level=settings.log_level.lower(),
        )
