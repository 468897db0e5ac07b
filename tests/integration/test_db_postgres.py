"""Migrations on a fresh, real PostgreSQL database, and how the tests fail when it is missing.

The repository, constraint and concurrency tests also run on PostgreSQL: they are parametrized over
both backends by the ``db_url`` fixture (tests/unit/test_db_*.py, ids ending in ``[postgresql]``).
"""

from __future__ import annotations

import socket

import pytest
from sqlalchemy import CheckConstraint, inspect
from sqlalchemy.engine import make_url

from db.errors import DatabaseNotMigratedError
from db.migrate import assert_migrated, current_revision, downgrade, head_revision, upgrade
from db.schema import Base
from db.session import create_engine_for
from tests.db_helpers import POSTGRES_URL_VARIABLE, schema_differences, temporary_postgres_database

pytestmark = pytest.mark.integration

SECRET = "pg-secret-4411"


def _metadata_check_names() -> set[tuple[str, str]]:
    return {
        (table.name, str(constraint.name))
        for table in Base.metadata.tables.values()
        for constraint in table.constraints
        if isinstance(constraint, CheckConstraint)
    }


def test_upgrade_downgrade_and_no_drift_on_a_fresh_database(fresh_postgres_url: str) -> None:
    engine = create_engine_for(fresh_postgres_url)
    try:
        assert current_revision(engine) is None
        upgrade(fresh_postgres_url)
        assert current_revision(engine) == head_revision()
        inspector = inspect(engine)
        assert set(inspector.get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}

        assert schema_differences(engine, Base.metadata) == []
        # Alembic ignores CHECK constraints and index predicates: compare those here.
        checks = {
            (table, str(check["name"]))
            for table in inspector.get_table_names()
            for check in inspector.get_check_constraints(table)
        }
        assert checks == _metadata_check_names()
        champion_index = next(
            index
            for index in inspector.get_indexes("model_versions")
            if index["name"] == "uq_model_versions_task_champion"
        )
        assert champion_index["unique"]
        assert "champion" in str(champion_index.get("dialect_options", {}).get("postgresql_where"))

        downgrade(fresh_postgres_url, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(fresh_postgres_url)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_not_migrated_message_hides_the_password(fresh_postgres_url: str) -> None:
    # Trust authentication ignores the password, so the URL still connects.
    url = make_url(fresh_postgres_url).set(password=SECRET).render_as_string(hide_password=False)
    engine = create_engine_for(url)
    try:
        with pytest.raises(DatabaseNotMigratedError) as info:
            assert_migrated(engine)
        assert SECRET not in str(info.value)
        assert ":***@" in str(info.value)
        assert "run `defectloop db upgrade`" in str(info.value)
        upgrade(url)
        assert_migrated(engine)
    finally:
        engine.dispose()


def test_missing_postgres_fails_the_test_naming_the_service_and_the_variable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    admin_url = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:{port}/postgres"
    with pytest.raises(pytest.fail.Exception) as info, temporary_postgres_database(admin_url):
        pass
    message = str(info.value)
    assert "PostgreSQL" in message
    assert POSTGRES_URL_VARIABLE in message
    assert SECRET not in message
