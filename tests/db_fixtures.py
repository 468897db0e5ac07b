"""Database fixtures for the `db` tests (row builders and helpers are in tests/db_helpers.py).

Loaded by tests/conftest.py through ``pytest_plugins``.

- ``db_url`` is parametrized over ``sqlite`` and ``postgresql`` (the latter marked ``integration``):
  a database migrated to head, one per test session. PostgreSQL gets its own database with a random
  name, created through ``DEFECTLOOP_TEST_POSTGRES_URL`` and dropped at the end; nothing else is touched.
- ``sessions`` is a session factory on a SQLite file of the test's own, migrated to head, for code that
  opens (and commits) its own sessions.
- ``db_session`` wraps each test in a transaction that is rolled back at the end (commits inside the
  test release a savepoint), so tests never see each other's rows.
- When PostgreSQL is unreachable, the tests that need it fail with a message naming the service and
  the variable; they are never skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import upgrade
from db.session import create_engine_for
from tests.db_helpers import migrated_sessions, temporary_postgres_database


@pytest.fixture(scope="session")
def sqlite_db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file migrated to head, shared by the test session."""
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'defectloop.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def postgresql_db_url() -> Iterator[str]:
    """A fresh PostgreSQL database migrated to head, shared by the test session, dropped at its end."""
    with temporary_postgres_database() as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated database, once on SQLite and once on PostgreSQL."""
    return str(request.getfixturevalue(f"{request.param}_db_url"))


@pytest.fixture(scope="session")
def db_engine(db_url: str) -> Iterator[Engine]:
    """An engine on the migrated database; tests that commit through it delete what they made."""
    engine = create_engine_for(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_session(db_engine: Engine) -> Iterator[Session]:
    """A session inside a transaction that is rolled back when the test ends."""
    connection = db_engine.connect()
    transaction = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()
        transaction.rollback()
        connection.close()


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A session factory on a SQLite file of this test's own, migrated to head."""
    with migrated_sessions(f"sqlite:///{tmp_path / 'db' / 'defectloop.db'}") as factory:
        yield factory


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a SQLite file that does not exist yet (in a folder that does not exist either)."""
    return f"sqlite:///{tmp_path / 'data' / 'defectloop.db'}"


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    """An engine on ``sqlite_url``, not migrated (the test upgrades it when it needs to); disposed after."""
    engine = create_engine_for(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """An empty, unmigrated PostgreSQL database for this test only."""
    with temporary_postgres_database() as url:
        yield url
