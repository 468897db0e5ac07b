"""A data folder holding a migrated SQLite database with a fabricated demo run, for the report's tests."""

from __future__ import annotations

from pathlib import Path

from db.migrate import upgrade
from db.session import create_engine_for, make_session_factory, session_scope
from defectloop.report.sample import Sample, fabricate_report_data
from defectloop.settings import Settings, load_settings


def report_settings(data_dir: Path) -> Settings:
    """Embedded-deployment settings of ``data_dir`` (its database migrated), from no environment."""
    settings = load_settings({"DEFECTLOOP_DATA_DIR": str(data_dir)})
    data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    return settings


def fabricate(settings: Settings, *, checkpoint: bool, rounds: int = 4, n_images: int = 36) -> Sample:
    """Commit a fabricated demo run (photos, checkpoint under the data folder) to the settings' database."""
    engine = create_engine_for(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            return fabricate_report_data(
                session,
                root=settings.data_dir / "sample",
                rounds=rounds,
                n_images=n_images,
                checkpoint=checkpoint,
            )
    finally:
        engine.dispose()
