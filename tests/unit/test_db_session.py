"""Engines, sessions and connection checks; no database server is needed."""

from __future__ import annotations

import socket
import traceback
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError

from db.errors import DatabaseUnavailableError
from db.migrate import assert_migrated, upgrade
from db.schema import Source, SourceKind
from db.session import (
    check_connection,
    create_engine_for,
    normalize_url,
    render_url,
    session_scope,
)
from tests.db_helpers import migrated_sessions

SECRET = "s3cret-pw-7781"


def _closed_port() -> int:
    # A port that was free a moment ago: connecting to it is refused at once.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_sqlite_engine_creates_the_folder_and_configures_each_connection(sqlite_url: str) -> None:
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    assert not path.parent.exists()
    engine = create_engine_for(sqlite_url)
    try:
        assert path.parent.is_dir()
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
            assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert connection.execute(text("PRAGMA busy_timeout")).scalar_one() == 30_000
    finally:
        engine.dispose()


def test_sqlite_enforces_foreign_keys(sqlite_url: str, sqlite_engine: Engine) -> None:
    upgrade(sqlite_url)
    with pytest.raises(IntegrityError, match="FOREIGN KEY"), sqlite_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO images (sha256, path, source_id, status, status_changed_at, created_at, "
                "updated_at) VALUES (:sha, '/x.png', 999, 'new', :at, :at, :at)"
            ),
            {"sha": "a" * 64, "at": "2025-01-01 00:00:00"},
        )


def test_sqlite_savepoint_rolls_back_inside_a_transaction(sqlite_url: str) -> None:
    # The sqlite3 module's legacy mode gets SAVEPOINT wrong; create_engine_for must not.
    with migrated_sessions(sqlite_url) as factory:
        with session_scope(factory) as session:
            session.add(Source(name="kept", kind=SourceKind.CAMERA))
            with session.begin_nested() as savepoint:
                session.add(Source(name="undone", kind=SourceKind.CAMERA))
                session.flush()
                savepoint.rollback()
        with session_scope(factory) as session:
            assert set(session.scalars(select(Source.name))) == {"kept"}


def test_session_scope_commits_on_success_and_rolls_back_on_error(sqlite_url: str) -> None:
    with migrated_sessions(sqlite_url) as factory:
        with session_scope(factory) as session:
            session.add(Source(name="committed", kind=SourceKind.IMPORT))

        def add_then_fail() -> None:
            with session_scope(factory) as session:
                session.add(Source(name="rolled-back", kind=SourceKind.IMPORT))
                session.flush()
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            add_then_fail()
        with session_scope(factory) as session:
            names = set(session.scalars(select(Source.name)))
            source = session.scalars(select(Source)).one()
        assert names == {"committed"}
        assert source.name == "committed"  # expire_on_commit=False: readable after the session closed


def test_normalize_url_gives_plain_postgresql_urls_the_psycopg_driver() -> None:
    assert normalize_url("postgresql://u@h/d").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/d").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"


def test_render_url_masks_the_password() -> None:
    rendered = render_url(f"postgresql+psycopg://app:{SECRET}@db.example:5432/defectloop")
    assert SECRET not in rendered
    assert rendered == "postgresql+psycopg://app:***@db.example:5432/defectloop"
    assert SECRET not in render_url(f"not a url {SECRET}")


def test_unreachable_database_error_names_the_url_but_never_the_password() -> None:
    url = f"postgresql+psycopg://app:{SECRET}@127.0.0.1:{_closed_port()}/defectloop"
    engine = create_engine_for(url)
    try:
        with pytest.raises(DatabaseUnavailableError) as info:
            check_connection(engine)
        with pytest.raises(DatabaseUnavailableError) as info_migrated:
            assert_migrated(engine)
    finally:
        engine.dispose()
    for error in (info.value, info_migrated.value):
        everything = "".join(traceback.format_exception(error)) + repr(error)
        assert SECRET not in everything
        assert "app:***@127.0.0.1" in str(error)
        assert "DEFECTLOOP_DATABASE_URL" in str(error)
        assert isinstance(error, ConnectionError)
