"""Composition root: turns settings into the connected parts the commands and workers use."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.session import assert_migrated, check_connection, create_engine_for, make_session_factory
from defectloop.settings import Settings

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
