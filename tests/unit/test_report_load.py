"""The report's loader on SQLite and PostgreSQL: a fabricated demo run, comparisons, promotions and
predictions read back into the report's dataclasses; and the repositories it added."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from db import repositories as repo
from db.schema import DemoArm, ImageStatus
from defectloop.report.load import DemoRunNotFoundError, load_report_data
from defectloop.report.sample import Sample, fabricate_report_data
from tests.db_helpers import new_image, new_model_version, record_round


@pytest.fixture
def sample(db_session: Session, tmp_path: Path) -> Sample:
    return fabricate_report_data(db_session, root=tmp_path, rounds=3, n_images=24, checkpoint=False)


def test_a_demo_run_is_read_round_by_round_with_its_metrics(db_session: Session, sample: Sample) -> None:
    data = load_report_data(db_session, gallery_size=4, database="db://x")
    assert data.run is not None
    assert data.run.name == sample.run_name
    assert data.run.status == "finished"
    assert [(p.round, p.arm) for p in data.rounds] == [(r, a) for r in range(4) for a in ("active", "random")]
    last = data.rounds[-2]
    assert last.arm == "active"
    assert last.labels_used == 80
    assert last.macro_f1 is not None
    assert last.calibration is not None
    assert len(last.calibration.confidence) == 10
    assert last.confusion_binary is not None
    assert last.confusion_binary.classes == ("ok", "defective")
    assert last.confusion_multiclass is not None
    assert dict(last.timings)["train"] > 0
    assert ("webhook_secret", "********") in data.run.settings
    assert data.settings_source == f"demo run {sample.run_name}"
    assert data.database == "db://x"


def test_champions_and_their_history_carry_reasons_and_numbers(db_session: Session, sample: Sample) -> None:
    data = load_report_data(db_session)
    champions = {c.task: c for c in data.champions}
    assert champions["binary"].name == sample.binary_champion
    assert champions["multiclass"].name == sample.multiclass_champion
    binary = [e for e in data.history if e.task == "binary" and e.n_eval is not None]
    assert len(binary) == 4  # one comparison per active round
    compared = [e for e in binary if e.champion_macro_f1 is not None]
    assert compared
    for entry in compared:
        assert entry.challenger_macro_f1 is not None
        assert entry.gain is not None
        assert entry.ci_low is not None
        assert entry.p_value is not None
        assert entry.reason.startswith(("promote", "keep"))
    assert {e.action.split()[0] for e in binary} <= {"promote", "keep"}
    assert any(e.actor == "policy" for e in binary)
    times = [e.when for e in data.history]
    assert times == sorted(times)  # oldest first
    assert data.history_total >= len(binary)


def test_the_gallery_holds_the_most_and_least_certain_images_of_the_champions(
    db_session: Session, sample: Sample
) -> None:
    data = load_report_data(db_session, gallery_size=5)
    key = repo.current_model_key(session=db_session)
    assert data.gallery_model_key == key
    most = [i for i in data.gallery if i.most_certain]
    least = [i for i in data.gallery if not i.most_certain]
    assert len(most) == 5
    assert len(least) == 5
    assert [i.confidence for i in most] == sorted((i.confidence for i in most), reverse=True)
    assert [i.confidence for i in least] == sorted(i.confidence for i in least)
    assert min(i.confidence for i in most) >= max(i.confidence for i in least)
    assert not {i.image_id for i in most} & {i.image_id for i in least}
    assert all(Path(i.path).is_file() for i in data.gallery)
    labelled = [i for i in data.gallery if i.label is not None]
    for item in labelled:
        assert repo.current_label(session=db_session, image_id=item.image_id) == item.label


def test_an_unknown_run_is_refused_naming_the_runs_there_are(db_session: Session, sample: Sample) -> None:
    with pytest.raises(DemoRunNotFoundError, match=f"no demo run named 'nope'.*runs: {sample.run_name}"):
        load_report_data(db_session, run_name="nope")


def test_a_named_run_is_shown_and_the_others_listed(db_session: Session, sample: Sample) -> None:
    other = repo.create_demo_run(session=db_session, name="later", settings={})
    record_round(db_session, other.id, 0, DemoArm.ACTIVE, labels_used=5, defects_found=1)
    latest = load_report_data(db_session)
    assert latest.run is not None
    assert latest.run.name == "later"
    assert len(latest.rounds) == 1
    assert latest.rounds[0].macro_f1 is None
    assert sample.run_name in latest.other_runs
    assert latest.settings_source.startswith("the current settings")
    named = load_report_data(db_session, run_name=sample.run_name)
    assert named.run is not None
    assert named.run.name == sample.run_name
    assert named.other_runs == ("later",)


def test_without_a_demo_or_a_model_the_report_still_loads(db_session: Session) -> None:
    image = new_image(db_session)
    data = load_report_data(
        db_session, current_settings={"DEFECTLOOP_X": "1"}, now=datetime(2026, 1, 1, tzinfo=UTC)
    )
    assert data.run is None
    assert data.rounds == ()
    assert data.champions == ()
    assert data.history == ()
    assert data.gallery == ()
    assert data.gallery_note is not None
    assert "no image has been predicted yet" in data.gallery_note
    assert data.settings == (("DEFECTLOOP_X", "1"),)
    assert ("new", 1) in data.image_counts
    assert image.id


def test_predictions_by_confidence_leave_out_images_whose_bytes_are_gone(db_session: Session) -> None:
    version = new_model_version(db_session)
    images = [new_image(db_session, f"p{i}.png") for i in range(5)]
    for image, confidence in zip(images, (0.9, 0.5, 0.7, 0.3, 0.99), strict=True):
        repo.add_prediction(
            session=db_session,
            image_id=image.id,
            binary_version_id=version.id,
            multiclass_version_id=None,
            probabilities={"ok": confidence, "defective": 1 - confidence},
            predicted_label="ok",
            confidence=confidence,
            uncertainty={},
        )
    repo.set_image_status(
        session=db_session, image_id=images[4].id, status=ImageStatus.QUARANTINED, reason="x"
    )
    key = repo.make_model_key(version.id, None)
    most = repo.list_predictions_by_confidence(session=db_session, model_key=key, limit=2)
    assert [p.confidence for p, _ in most] == [0.9, 0.7]
    assert [i.id for _, i in most] == [images[0].id, images[2].id]
    least = repo.list_predictions_by_confidence(
        session=db_session, model_key=key, limit=10, most_certain=False, exclude_image_ids=[images[3].id]
    )
    assert [p.confidence for p, _ in least] == [0.5, 0.7, 0.9]
    assert repo.list_predictions_by_confidence(session=db_session, model_key="b999-m-", limit=3) == []


def test_demo_runs_are_listed_newest_first_and_comparisons_counted(db_session: Session) -> None:
    assert repo.count_comparisons(session=db_session) == 0
    first = repo.create_demo_run(session=db_session, name="one", settings={})
    second = repo.create_demo_run(session=db_session, name="two", settings={})
    assert [r.id for r in repo.list_demo_runs(session=db_session)][:2] == [second.id, first.id]


def test_before_the_pool_is_rescored_the_gallery_shows_the_last_predictions_and_says_so(
    db_session: Session, sample: Sample
) -> None:
    before = repo.current_model_key(session=db_session)
    newer = new_model_version(db_session, name="binary-resnet18-newer")
    repo.set_champion(session=db_session, version_id=newer.id, actor="engineer", reason="a test promotion")
    data = load_report_data(db_session, gallery_size=3)
    assert data.gallery_model_key == before
    assert len(data.gallery) == 6
    assert data.gallery_note is not None
    assert "have predicted nothing yet" in data.gallery_note
    assert any(e.action == "promote" and e.actor == "engineer" for e in data.history)
