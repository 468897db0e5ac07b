"""Rules the database itself enforces, whatever the code above it does (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from db.schema import Image, ImageStatus, ModelStatus, ModelTask, ModelVersion, Source, SourceKind
from tests.db_helpers import new_image, new_model_version, new_source, sha_of


def _raw_version(name: str, status: ModelStatus, task: ModelTask = ModelTask.BINARY) -> ModelVersion:
    # Built by hand, not through the repository: the point is what the database accepts.
    return ModelVersion(
        name=name,
        task=task,
        architecture="resnet18",
        classes=["ok", "defective"],
        input_spec={"image_size": 128},
        artifact_path=f"/m/{name}.pt",
        artifact_sha256=sha_of(name),
        status=status,
    )


def _assert_refused(session: Session, row: object) -> None:
    """Flushing `row` raises IntegrityError; a savepoint keeps the test's transaction usable."""
    savepoint = session.begin_nested()
    session.add(row)
    with pytest.raises(IntegrityError):
        session.flush()
    savepoint.rollback()


def test_the_database_refuses_a_second_champion_for_a_task(db_session: Session) -> None:
    db_session.add(_raw_version("champion-1", ModelStatus.CHAMPION))
    db_session.add(_raw_version("champion-other-task", ModelStatus.CHAMPION, ModelTask.MULTICLASS))
    db_session.add_all([_raw_version(f"retired-{n}", ModelStatus.RETIRED) for n in range(2)])
    db_session.flush()  # one champion per task and any number of retired versions are fine
    _assert_refused(db_session, _raw_version("champion-2", ModelStatus.CHAMPION))


@pytest.mark.parametrize(
    ("column", "value"),
    [("status", "exploded"), ("status", "quarantined")],
    ids=["unknown status", "quarantined without a reason"],
)
def test_the_database_refuses_bad_image_rows(db_session: Session, column: str, value: str) -> None:
    image = new_image(db_session)
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.execute(
            text(f"UPDATE images SET {column} = :value WHERE id = :id"), {"value": value, "id": image.id}
        )


def test_the_database_refuses_an_image_without_hash_unless_quarantined(db_session: Session) -> None:
    source = new_source(db_session)
    _assert_refused(
        db_session,
        Image(sha256=None, file_key="k" * 64, path="/x", source_id=source.id, status=ImageStatus.NEW),
    )


def test_the_database_refuses_a_dangling_foreign_key(db_session: Session) -> None:
    _assert_refused(db_session, Image(sha256=sha_of("orphan"), path="/x", source_id=424242))


def test_the_enum_type_refuses_an_unknown_value_before_sql(db_session: Session) -> None:
    with pytest.raises(StatementError, match="not among the defined enum values"):
        db_session.execute(select(Source).where(Source.kind == "satellite"))


def test_timestamps_come_back_timezone_aware_in_utc(db_session: Session) -> None:
    image = new_image(db_session)
    plus_two = timezone(timedelta(hours=2))
    image.status_changed_at = datetime(2030, 6, 1, 14, 30, tzinfo=plus_two)
    db_session.flush()
    db_session.expire_all()
    reloaded = db_session.get(Image, image.id)
    assert reloaded is not None
    assert reloaded.status_changed_at == datetime(2030, 6, 1, 12, 30, tzinfo=UTC)
    assert reloaded.status_changed_at.utcoffset() == timedelta(0)
    assert reloaded.created_at.tzinfo is not None


def test_naive_datetimes_are_refused(db_session: Session) -> None:
    db_session.add(Source(name="naive", kind=SourceKind.UPLOAD, created_at=datetime(2030, 1, 1)))
    with pytest.raises(StatementError, match="naive datetime"):
        db_session.flush()


def test_json_columns_round_trip(db_session: Session) -> None:
    version = new_model_version(db_session, training_snapshot={"image_ids": [3, 1, 2], "sha256": sha_of("x")})
    db_session.flush()
    db_session.expire_all()
    reloaded = db_session.get(ModelVersion, version.id)
    assert reloaded is not None
    assert reloaded.classes == ["ok", "defective"]
    assert reloaded.input_spec["mean"] == [0.5]
    assert reloaded.training_snapshot == {"image_ids": [3, 1, 2], "sha256": sha_of("x")}
