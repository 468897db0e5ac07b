"""workers.status: what ``defectloop status`` and ``defectloop versions`` read, on a migrated SQLite file."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import ImageStatus, ModelStatus, ModelTask
from db.session import session_scope
from tests.db_helpers import new_image, new_model_version
from workers.status import read_status, read_versions


def test_an_empty_database_has_no_champion_set_or_request(sessions: sessionmaker[Session]) -> None:
    summary = read_status(sessions)
    assert set(summary.images_by_status) == set(ImageStatus)
    assert not any(summary.images_by_status.values())
    assert summary.champions == {ModelTask.BINARY: None, ModelTask.MULTICLASS: None}
    assert summary.quarantined_by_reason == {}
    assert summary.evaluation_set_sizes == {}
    assert summary.retrain_requests == []


def test_status_and_versions_read_back_what_was_recorded(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as session:
        new_image(session, "a.png")
        first = new_model_version(session, ModelTask.BINARY)
        second = new_model_version(session, ModelTask.BINARY, parent_id=first.id)
        other = new_model_version(session, ModelTask.MULTICLASS)
        repo.set_champion(session=session, version_id=first.id, actor="t", reason="first")
        repo.set_champion(session=session, version_id=second.id, actor="t", reason="better")
        names = {first.id: first.name, second.id: second.name, other.id: other.name}

    summary = read_status(sessions)
    assert sum(summary.images_by_status.values()) == 1
    champion = summary.champions[ModelTask.BINARY]
    assert champion is not None
    assert champion.name == names[second.id]  # readable after the session closed

    binary = read_versions(sessions, task=ModelTask.BINARY, history=1)
    assert [v.name for v in binary.versions] == [names[first.id], names[second.id]]
    assert len(binary.names) == 3, "every version's name, for parents and history, whatever the filter"
    assert [p.to_version_id for p in binary.promotions] == [second.id]  # only the latest row
    champions = read_versions(sessions, status=ModelStatus.CHAMPION, history=0)
    assert [v.name for v in champions.versions] == [names[second.id], names[other.id]]
    assert champions.promotions == []
