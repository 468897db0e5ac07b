"""Composition root: turns settings into the connected parts the commands and workers use."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.session import assert_migrated, check_connection, create_engine_for, make_session_factory
from defectloop.settings import Settings
from workers.celery_app import WorkerConfig, create_app
from workers.ingest import IngestConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Database:
    """An engine and its session factory; the caller owns transactions."""

    engine: Engine
    sessions: sessionmaker[Session]

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(settings: Settings, *, require_migrated: bool = True) -> Database:
    """Connect to the configured database.

    Raises ``db.errors.DatabaseUnavailableError`` when it cannot be reached and, unless
    ``require_migrated`` is false, ``db.errors.DatabaseNotMigratedError`` (saying to run
    ``defectloop db upgrade``) when its schema is not at the code's revision: the application refuses
    to work on a database it does not understand.
    """
    if settings.database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine_for(settings.database_url)
    try:
        check_connection(engine)
        if require_migrated:
            assert_migrated(engine)
    except Exception:
        engine.dispose()
        raise
    return Database(engine=engine, sessions=make_session_factory(engine))


def worker_config(settings: Settings, **overrides: Any) -> WorkerConfig:
    """The Celery app's configuration from the settings (``overrides``: command-line choices)."""
    values: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "database_url": settings.database_url,
        "artifacts_dir": settings.artifacts_dir,
        "classes": settings.classes,
        "inference_batch_size": settings.inference_batch_size,
        "mc_passes": settings.mc_dropout_passes,
    }
    values.update(overrides)
    return WorkerConfig(**values)


def create_celery_app(settings: Settings, **overrides: Any) -> Any:
    """The Celery app of these settings (connects to nothing until used)."""
    if settings.broker_url.startswith("sqla+sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return create_app(worker_config(settings, **overrides))


def ingest_config(settings: Settings, roots: Sequence[Path], **overrides: Any) -> IngestConfig:
    """The camera watcher's configuration from the settings."""
    values: dict[str, Any] = {
        "roots": tuple(roots),
        "extensions": settings.ingest_extensions,
        "stable_seconds": settings.ingest_stable_seconds,
        "incomplete_grace_seconds": max(10.0, settings.ingest_stable_seconds),
        "rescan_seconds": settings.ingest_rescan_seconds,
        "poll": settings.ingest_polling,
        "max_pixels": settings.ingest_max_pixels,
    }
    values.update(overrides)
    return IngestConfig(**values)
