"""Composition root: turns settings into the connected parts the commands and workers use."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import assert_migrated
from db.session import check_connection, create_engine_for, make_session_factory
from defectloop.errors import DefectloopError
from defectloop.settings import Settings
from models.selection import strategy_spec
from workers.celery_app import WorkerConfig, WorkerRuntime, create_app
from workers.ingest import IngestConfig
from workers.labelling_tasks import LabellingConfig, LabellingRuntime
from workers.retraining_tasks import RetrainingConfig

if TYPE_CHECKING:
    from labelling.gateway import LabelStudioGateway

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
        "inference_batch_timeout_ms": settings.inference_batch_timeout_ms,
        # MC-dropout passes only pay for a strategy that needs them (BALD): with any other they would
        # multiply the cost of the layers after the dropout for scores nobody reads.
        "mc_passes": settings.mc_dropout_passes if strategy_spec(settings.strategy).needs_mc_passes else 0,
        "labelling": labelling_config(settings),
        "retraining": retraining_config(settings),
    }
    values.update(overrides)
    return WorkerConfig(**values)


def retraining_config(settings: Settings) -> RetrainingConfig:
    """The retrain policy and what a requested retrain trains, from the settings."""
    from models.comparison import PromotionPolicy
    from workers.retrain_policy import RetrainPlan

    plan = RetrainPlan(
        architectures=settings.retrain_architectures,
        image_size=settings.image_size,
        channels=settings.image_channels,
        epochs=settings.train_epochs,
        batch_size=settings.train_batch_size,
        patience=settings.train_patience,
        evaluation_fraction=settings.evaluation_fraction,
        auto_promote=settings.auto_promote,
        policy=PromotionPolicy(
            min_macro_f1_gain=settings.promotion_min_gain,
            significance=settings.promotion_significance,
            recall_floors=settings.recall_floors,
        ),
    )
    return RetrainingConfig(
        plan=plan, min_new_labels=settings.retrain_min_new_labels, interval_s=settings.retrain_interval_s
    )


@dataclass(frozen=True)
class Workers:
    """The Celery app of the settings and the per-process state its tasks use, built together here and
    handed to whatever else needs the same state: ``run_worker``'s champion warm-up, the HTTP app's
    on-demand scorer. Nothing in it connects or loads before first use."""

    celery: Any  # celery.Celery, which ships without usable annotations
    runtime: WorkerRuntime
    labelling: LabellingRuntime | None  # None: Label Studio is not configured


def create_workers(settings: Settings, **overrides: Any) -> Workers:
    """The Celery app of these settings with its runtime (``overrides``: command-line choices)."""
    if settings.broker_url.startswith("sqla+sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    config = worker_config(settings, **overrides)
    runtime = WorkerRuntime(config)
    labelling = None
    if config.labelling is not None:
        labelling = LabellingRuntime(config.labelling, config.label_space, runtime)
    celery = create_app(config, runtime=runtime, labelling=labelling)
    return Workers(celery=celery, runtime=runtime, labelling=labelling)


def create_celery_app(settings: Settings, **overrides: Any) -> Any:
    """The Celery app of these settings, for callers that only publish (connects to nothing until used)."""
    return create_workers(settings, **overrides).celery


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


# --- labelling -------------------------------------------------------------------------------------


def media_secret(settings: Settings) -> str:
    """The key that signs image and heat-map URLs, derived from the webhook secret (one secret to set).

    A separate derivation, so a leaked media URL signature says nothing about the webhook secret.
    """
    if settings.webhook_secret is None or not settings.webhook_secret.get_secret_value():
        raise DefectloopError("DEFECTLOOP_WEBHOOK_SECRET is not set: Label Studio integration needs it")
    key = settings.webhook_secret.get_secret_value().encode()
    return hmac.new(key, b"defectloop media urls v1", hashlib.sha256).hexdigest()


def labelling_config(settings: Settings, *, required: bool = False) -> LabellingConfig | None:
    """The labelling tasks' configuration, or None when Label Studio is not configured.

    Label Studio counts as configured when its API key and the webhook secret are set; with
    ``required`` a missing one is an error naming the variable instead.
    """
    api_key = settings.label_studio_api_key.get_secret_value() if settings.label_studio_api_key else ""
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    if not api_key or not secret:
        if required:
            missing = [
                name
                for name, value in (
                    ("DEFECTLOOP_LABEL_STUDIO_API_KEY", api_key),
                    ("DEFECTLOOP_WEBHOOK_SECRET", secret),
                )
                if not value
            ]
            raise DefectloopError(f"Label Studio is not configured: set {' and '.join(missing)}")
        return None
    return LabellingConfig(
        label_studio_url=settings.label_studio_url,
        api_key=api_key,
        project_title=settings.label_studio_project_title,
        public_url=settings.public_url,
        media_secret=media_secret(settings),
        strategy=settings.strategy,
        batch_size=settings.labelling_batch_size,
        queue_target=settings.labelling_queue_target,
        push_interval_s=settings.labelling_push_interval_s,
        reconcile_interval_s=settings.reconcile_interval_s,
        heatmaps_dir=settings.heatmaps_dir if settings.heatmaps else None,
    )


def label_studio_gateway(settings: Settings) -> LabelStudioGateway:
    """A Label Studio client for the settings (raises naming the variable when the key is missing)."""
    from labelling.gateway import LabelStudioGateway

    config = labelling_config(settings, required=True)
    assert config is not None
    return LabelStudioGateway(config.label_studio_url, config.api_key)


def create_http_app(settings: Settings, database: Database, workers: Workers) -> Any:
    """The webhook receiver + ML backend + media app of these settings (``defectloop serve``): events and
    retrain requests go through ``workers.celery``; an image with no stored prediction is scored on demand
    with ``workers.labelling``'s champions."""
    from labelling.server import create_http_app as create
    from workers.backend import LabellingHandlers
    from workers.labelling_tasks import publish_annotation_events
    from workers.retraining_tasks import publish_retrain

    config = labelling_config(settings, required=True)
    assert config is not None
    assert settings.webhook_secret is not None
    if workers.labelling is None:
        raise DefectloopError("the workers were built without Label Studio: build them from these settings")
    celery_app = workers.celery
    handlers = LabellingHandlers(
        sessions=database.sessions,
        publish_events=lambda events: publish_annotation_events(celery_app, events),
        classes=settings.classes,
        strategy=settings.strategy,
        heatmaps_dir=config.heatmaps_dir,
        score=workers.labelling.scorer(),
        publish_retrain=lambda: publish_retrain(celery_app),
    )
    return create(
        handlers=handlers,
        webhook_secret=settings.webhook_secret.get_secret_value(),
        media_secret=config.media_secret,
        classes=settings.classes,
        media_origins=settings.media_origins,
    )
