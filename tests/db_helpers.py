"""Helpers for the `db` tests: a throw-away PostgreSQL database, a drift check, row builders.

Plain functions, imported by the test modules and by tests/db_fixtures.py.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from PIL import Image as PILImage
from sqlalchemy import Engine, MetaData, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from db import repositories as repo
from db.errors import DatabaseUnavailableError
from db.migrate import upgrade
from db.schema import DemoArm, DemoRound, Image, ImageStatus, ModelTask, ModelVersion, Source, SourceKind
from db.session import check_connection, create_engine_for, make_session_factory

POSTGRES_URL_VARIABLE = "DEFECTLOOP_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BINARY_CLASSES = ("ok", "defective")
MULTICLASS_CLASSES = ("hole", "seam_puckering", "uncut_thread", "raw_edge", "broken_stitch")


def postgres_admin_url() -> str:
    """URL of a PostgreSQL database whose user may CREATE DATABASE (from the environment or default)."""
    return os.environ.get(POSTGRES_URL_VARIABLE) or DEFAULT_POSTGRES_ADMIN_URL


@contextmanager
def temporary_postgres_database(admin_url: str | None = None) -> Iterator[str]:
    """Create an empty database with a random name, yield its URL, drop it afterwards.

    Fails the test (never skips it) when the server cannot be reached.
    """
    admin_url = admin_url or postgres_admin_url()
    admin = create_engine_for(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        try:
            check_connection(admin)
        except DatabaseUnavailableError as exc:
            pytest.fail(
                f"PostgreSQL is required by this test and is not reachable ({exc}). "
                f"Start PostgreSQL, or set {POSTGRES_URL_VARIABLE} to the URL of a database whose user may "
                "CREATE DATABASE (run only the SQLite tests with -m 'not integration').",
                pytrace=False,
            )
        name = f"defectloop_test_{secrets.token_hex(6)}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                # WITH (FORCE): a connection the test leaked must not leave the database behind.
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextmanager
def migrated_sessions(url: str) -> Iterator[sessionmaker[Session]]:
    """A session factory on the database at `url`, migrated to head first; its engine is disposed after."""
    upgrade(url)
    engine = create_engine_for(url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def schema_differences(engine: Engine, metadata: MetaData) -> list[object]:
    """Alembic's autogenerate comparison of the live schema with `metadata` (empty when they agree)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


# --- row builders --------------------------------------------------------------------------------


def sha_of(text_: str) -> str:
    """A valid sha256 for a test image named `text_`."""
    return hashlib.sha256(text_.encode()).hexdigest()


def new_source(session: Session, name: str = "cam1") -> Source:
    return repo.get_or_create_source(session=session, name=name, kind=SourceKind.CAMERA, path=f"/mnt/{name}")


def new_image(session: Session, name: str = "a.png", *, source: Source | None = None) -> Image:
    source = source or new_source(session)
    image, _ = repo.add_image(
        session=session,
        sha256=sha_of(name),
        path=f"/mnt/cam1/{name}",
        source_id=source.id,
        width=64,
        height=48,
        mode="L",
        size_bytes=1234,
        original_name=name,
    )
    return image


def add_image_file(session: Session, path: Path, source_id: int) -> Image:
    """The row of the image file at ``path`` (status new) as the watcher records it: its sha256, its size
    and what Pillow reads of it."""
    data = path.read_bytes()
    with PILImage.open(path) as shown:
        width, height, mode = shown.width, shown.height, shown.mode
    image, _ = repo.add_image(
        session=session,
        sha256=hashlib.sha256(data).hexdigest(),
        path=str(path),
        source_id=source_id,
        width=width,
        height=height,
        mode=mode,
        size_bytes=len(data),
    )
    return image


def new_model_version(session: Session, task: ModelTask = ModelTask.BINARY, **overrides: Any) -> ModelVersion:
    name = overrides.pop("name", None) or repo.next_model_version_name(
        session=session, task=task, architecture="resnet18"
    )
    classes = BINARY_CLASSES if task is ModelTask.BINARY else MULTICLASS_CLASSES
    values: dict[str, Any] = {
        "architecture": "resnet18",
        "classes": list(classes),
        "input_spec": {"image_size": 128, "channels": 1, "mean": [0.5], "std": [0.25]},
        "artifact_path": f"/models/{name}.pt",
        "artifact_sha256": sha_of(name),
        "hyperparameters": {"lr": 0.001, "epochs": 3},
        "metrics": {"accuracy": 0.8},
    }
    values.update(overrides)
    return repo.register_model_version(session=session, name=name, task=task, **values)


def mark_predicted(
    session: Session,
    image_id: int,
    binary_version_id: int,
    probabilities: dict[str, float],
    *,
    label: str,
    confidence: float,
    uncertainty: dict[str, float] | None = None,
) -> None:
    """Record a binary-only prediction of the image and move it to ``predicted``."""
    repo.add_prediction(
        session=session,
        image_id=image_id,
        binary_version_id=binary_version_id,
        multiclass_version_id=None,
        probabilities=probabilities,
        predicted_label=label,
        confidence=confidence,
        uncertainty=uncertainty or {},
    )
    repo.set_image_status(session=session, image_id=image_id, status=ImageStatus.PREDICTED)


def record_round(session: Session, run_id: int, round_number: int, arm: DemoArm, **fields: Any) -> DemoRound:
    """``repo.record_demo_round`` of one arm's round; ``fields``: labels_used, defects_found, metrics..."""
    fields.setdefault("metrics", {})
    fields.update(session=session, run_id=run_id, round_number=round_number, arm=arm)
    return repo.record_demo_round(**fields)
