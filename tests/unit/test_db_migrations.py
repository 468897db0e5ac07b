"""Alembic migrations on SQLite: up, down, no drift from db/schema.py, and the start-up refusal."""

from __future__ import annotations

import logging
import re

import pytest
from sqlalchemy import CheckConstraint, Column, Engine, Integer, MetaData, Table, inspect, text
from sqlalchemy.dialects import sqlite

from db.errors import DatabaseNotMigratedError
from db.migrate import (
    MIGRATIONS_DIR,
    assert_migrated,
    current_revision,
    downgrade,
    head_revision,
    known_revisions,
    make_alembic_config,
    upgrade,
)
from db.schema import Base
from tests.db_helpers import schema_differences


def _normalise_check(sql: str, table: str) -> str:
    return re.sub(r"\s+", " ", sql.replace(f"{table}.", "")).strip()


def check_constraints_in_metadata(metadata: MetaData) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for table in metadata.tables.values():
        for constraint in table.constraints:
            if isinstance(constraint, CheckConstraint):
                sql = str(
                    constraint.sqltext.compile(
                        dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}
                    )
                )
                found[(table.name, str(constraint.name))] = _normalise_check(sql, table.name)
    return found


def check_constraints_in_database(engine: Engine) -> dict[tuple[str, str], str]:
    inspector = inspect(engine)
    return {
        (table, str(check["name"])): _normalise_check(check["sqltext"], table)
        for table in inspector.get_table_names()
        if table != "alembic_version"
        for check in inspector.get_check_constraints(table)
    }


def test_upgrade_creates_the_schema_and_downgrade_removes_it(sqlite_url: str, sqlite_engine: Engine) -> None:
    assert current_revision(sqlite_engine) is None
    upgrade(sqlite_url)
    assert current_revision(sqlite_engine) == head_revision() == "0006_demo"
    assert set(inspect(sqlite_engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}

    downgrade(sqlite_url, "base")
    assert set(inspect(sqlite_engine).get_table_names()) <= {"alembic_version"}
    assert current_revision(sqlite_engine) is None

    upgrade(sqlite_url)  # and back up: the downgrade left nothing behind that blocks it
    assert current_revision(sqlite_engine) == head_revision()


def test_migrated_schema_has_no_drift_from_schema_py(sqlite_url: str, sqlite_engine: Engine) -> None:
    upgrade(sqlite_url)
    assert schema_differences(sqlite_engine, Base.metadata) == []
    # Alembic does not compare CHECK constraints; SQLite keeps their text as written, so compare it.
    assert check_constraints_in_database(sqlite_engine) == check_constraints_in_metadata(Base.metadata)
    champion_index = next(
        index
        for index in inspect(sqlite_engine).get_indexes("model_versions")
        if index["name"] == "uq_model_versions_task_champion"
    )
    assert champion_index["unique"]
    assert champion_index["column_names"] == ["task"]


def test_drift_check_notices_a_difference(sqlite_url: str, sqlite_engine: Engine) -> None:
    # The no-drift test is only worth something if a difference makes it fail.
    upgrade(sqlite_url)
    altered = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(altered)
    Table("extra_table", altered, Column("id", Integer, primary_key=True))
    differences = schema_differences(sqlite_engine, altered)
    assert any(diff[0] == "add_table" for diff in differences if isinstance(diff, tuple))


def test_assert_migrated_refuses_an_empty_database_and_says_what_to_run(
    sqlite_url: str, sqlite_engine: Engine
) -> None:
    with pytest.raises(DatabaseNotMigratedError) as info:
        assert_migrated(sqlite_engine)
    path = sqlite_url.removeprefix("sqlite:///")
    assert str(info.value) == (
        f"database sqlite:///{path} is not migrated (at revision <none>, "
        "the code needs 0006_demo); run `defectloop db upgrade`"
    )
    assert isinstance(info.value, RuntimeError)

    upgrade(sqlite_url)
    assert_migrated(sqlite_engine)  # does not raise


def test_assert_migrated_refuses_a_revision_the_code_does_not_know(
    sqlite_url: str, sqlite_engine: Engine
) -> None:
    upgrade(sqlite_url)
    with sqlite_engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    with pytest.raises(DatabaseNotMigratedError, match="0099_from_the_future, which this code does not know"):
        assert_migrated(sqlite_engine)


def test_downgrade_from_0005_keeps_superseded_rows_as_quarantined(
    sqlite_url: str, sqlite_engine: Engine
) -> None:
    upgrade(sqlite_url)
    with sqlite_engine.begin() as connection:
        connection.execute(
            text("INSERT INTO sources (name, kind, created_at) VALUES ('c', 'camera', '2026-01-01')")
        )
        connection.execute(
            text(
                "INSERT INTO images (sha256, path, source_id, status, reason, claimed_by, "
                "status_changed_at, created_at, updated_at) VALUES (:sha, '/c/a.png', 1, 'superseded', "
                "'file changed: x', 'h:b:1:1:', '2026-01-01', '2026-01-01', '2026-01-01')"
            ),
            {"sha": "a" * 64},
        )
    downgrade(sqlite_url, "0004_evaluation_rule")
    with sqlite_engine.connect() as connection:
        rows = connection.execute(text("SELECT status, reason FROM images")).all()
    assert rows == [("quarantined", "file changed: x")]
    assert "claimed_by" not in {c["name"] for c in inspect(sqlite_engine).get_columns("images")}
    upgrade(sqlite_url)
    assert schema_differences(sqlite_engine, Base.metadata) == []


def test_migration_history_is_one_line_from_0001() -> None:
    assert known_revisions() == {
        "0001_initial",
        "0002_evaluations",
        "0003_sync_cursors",
        "0004_evaluation_rule",
        "0005_image_integrity",
        "0006_demo",
    }
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()


def test_upgrade_leaves_the_application_logging_alone(sqlite_url: str) -> None:
    # fileConfig() in env.py would disable every existing logger and replace the handlers.
    app_logger = logging.getLogger("defectloop.test_migrations_probe")
    root_handlers = list(logging.getLogger().handlers)
    upgrade(sqlite_url)
    assert not app_logger.disabled
    assert logging.getLogger().handlers == root_handlers


def test_alembic_config_keeps_an_escaped_password_intact() -> None:
    url = "postgresql+psycopg://user:p%40ss%25word@db.example:5432/defectloop"
    config = make_alembic_config(url)
    assert config.get_main_option("sqlalchemy.url") == url
    assert config.get_main_option("script_location") == str(MIGRATIONS_DIR)
