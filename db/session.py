"""Engines, sessions and the reachability check for SQLite and PostgreSQL.

The schema check (`assert_migrated`) lives in `db.migrate`, which builds on this module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from db.errors import DatabaseUnavailableError

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
POSTGRES_CONNECT_TIMEOUT_S = 10


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL; plain ``postgresql://`` (and ``postgres://``) get the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def render_url(url: str | URL) -> str:
    """The URL as text for messages and logs, with any password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError:
        # An unparseable URL may still hold a secret: say nothing of its contents.
        return "<unparseable database URL>"


def _sqlite_file(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or url.query.get("uri") == "true":
        return None
    return Path(database)


def create_engine_for(url: str | URL, **kw: Any) -> Engine:
    """Create an engine configured for the backend; extra keywords go to `sqlalchemy.create_engine`.

    SQLite: the file's folder is created; each connection gets foreign keys on, WAL journal and a 30 s
    busy timeout; every transaction starts with ``BEGIN IMMEDIATE``. The immediate lock is taken on
    purpose: several processes (watcher, workers, beat) write to the same file, and a deferred
    transaction that reads and then writes fails at once with "database is locked" when another
    process wrote in between, whereas an immediate one waits its turn under the busy timeout. It also
    makes SAVEPOINT and DDL transactional, which the sqlite3 module's legacy mode does not.

    PostgreSQL: ``pool_pre_ping`` (connections survive a server restart) and a connect timeout.
    """
    parsed = normalize_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = _sqlite_file(parsed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, **kw)
        _configure_sqlite(engine)
        return engine
    if backend == "postgresql":
        kw.setdefault("pool_pre_ping", True)
        connect_args = dict(kw.pop("connect_args", {}))
        connect_args.setdefault("connect_timeout", POSTGRES_CONNECT_TIMEOUT_S)
        return create_engine(parsed, connect_args=connect_args, **kw)
    return create_engine(parsed, **kw)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the sqlite3 module (see create_engine_for).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit (ids are passed on after it)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in one transaction: committed when the block ends, rolled back if it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _driver_reason(exc: DBAPIError, url: URL) -> str:
    """First line of the driver's message, with the URL's password masked should it appear."""
    lines = str(exc.orig).strip().splitlines()
    reason = lines[0] if lines else "no message"
    if url.password:
        reason = reason.replace(str(url.password), "***")
    return f"{type(exc.orig).__name__}: {reason}"


def check_connection(engine: Engine) -> None:
    """Run ``SELECT 1``; raise `DatabaseUnavailableError` naming the URL (password hidden) if it fails."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except DBAPIError as exc:
        # `from None`: the driver's exception may echo connection parameters; its reason is kept here.
        raise DatabaseUnavailableError(
            f"cannot connect to database {render_url(engine.url)} ({_driver_reason(exc, engine.url)}); "
            "check that the server is running and that the database URL is right "
            "(the application reads it from DEFECTLOOP_DATABASE_URL)"
        ) from None
