"""Alembic, driven from code: the configuration is built here, no alembic.ini is needed."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from db.errors import DatabaseNotMigratedError
from db.session import check_connection, create_engine_for, normalize_url, render_url

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def make_alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic `Config` pointing at this package's migrations, with ``sqlalchemy.url`` if given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        rendered = normalize_url(url).render_as_string(hide_password=False)
        # ConfigParser interpolates "%": URL-escaped passwords ("p%40ss") must be doubled.
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def _run(target: str | Engine, revision: str, *, upgrade: bool) -> None:
    engine = create_engine_for(target) if isinstance(target, str) else target
    try:
        config = make_alembic_config()
        # One transaction for the whole run: on PostgreSQL (and SQLite, see db.session) a failed
        # migration leaves the schema as it was.
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            if upgrade:
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
    finally:
        if isinstance(target, str):
            engine.dispose()
    logger.info(
        "database migrated",
        extra={"database": render_url(engine.url), "revision": revision, "upgrade": upgrade},
    )


def upgrade(url: str | Engine, revision: str = "head") -> None:
    """Migrate the database at `url` (or behind an engine) up to `revision`; the SQLite file is created."""
    _run(url, revision, upgrade=True)


def downgrade(url: str | Engine, revision: str) -> None:
    """Migrate the database back to `revision` (``"base"`` drops every table and its data)."""
    _run(url, revision, upgrade=False)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(make_alembic_config())


def head_revision() -> str:
    """The revision this code needs (the single head of the migration history)."""
    head = _script_directory().get_current_head()
    if head is None:
        raise RuntimeError(f"no migration found in {MIGRATIONS_DIR}; the package is incomplete, reinstall it")
    return head


def known_revisions() -> set[str]:
    """Every revision in this code's migration history."""
    return {script.revision for script in _script_directory().walk_revisions()}


def assert_migrated(engine: Engine) -> None:
    """Refuse to go on unless the database schema is at the revision this code needs.

    Raises `DatabaseUnavailableError` when it cannot connect and `DatabaseNotMigratedError` (saying
    which command to run) when the schema is behind, or at a revision this code does not know.
    """
    check_connection(engine)
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    where = render_url(engine.url)
    if current is not None and current not in known_revisions():
        raise DatabaseNotMigratedError(
            f"database {where} is at revision {current}, which this code does not know (it needs {head}); "
            "run a newer version of defectloop, or downgrade the database with the version that migrated it"
        )
    raise DatabaseNotMigratedError(
        f"database {where} is not migrated (at revision {current or '<none>'}, the code needs {head}); "
        "run `defectloop db upgrade`"
    )
