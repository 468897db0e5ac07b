"""Repository contracts, each run on SQLite and on PostgreSQL (the latter marked integration).

Every test runs inside a transaction rolled back at its end (see tests/db_fixtures.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import repositories as repo
from db.errors import IntegrityViolation, InvalidTransitionError, NotFoundError
from db.repositories import RecordOutcome
from db.schema import (
    Annotation,
    AnnotationOrigin,
    ComparisonDecision,
    DemoArm,
    DemoRunStatus,
    Image,
    ImageStatus,
    LabelTaskStatus,
    ModelStatus,
    ModelTask,
    Prediction,
    PromotionAction,
    SourceKind,
    TrainingRunStatus,
    TrainingTrigger,
)
from tests.db_helpers import mark_predicted, new_image, new_model_version, new_source, record_round, sha_of


def _count(session: Session, model: type[object]) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _annotate(session: Session, image_id: int, label: str | None, ls_id: int, **extra: Any) -> RecordOutcome:
    """Record Label Studio annotation ``ls_id`` of the image (by annotator "a" unless ``extra`` names one)."""
    extra.setdefault("annotator", "a")
    _, outcome = repo.record_annotation(
        session=session, image_id=image_id, label=label, ls_annotation_id=ls_id, **extra
    )
    return outcome


# --- sources and images ----------------------------------------------------------------------------


def test_get_or_create_source_is_idempotent_and_refuses_another_kind(db_session: Session) -> None:
    first = new_source(db_session, "cam7")
    again = new_source(db_session, "cam7")
    assert again.id == first.id
    with pytest.raises(IntegrityViolation, match="already exists with kind camera"):
        repo.get_or_create_source(session=db_session, name="cam7", kind=SourceKind.IMPORT)


def test_add_image_is_idempotent_on_sha256(db_session: Session) -> None:
    source = new_source(db_session)
    kwargs = {"sha256": sha_of("same bytes"), "source_id": source.id, "width": 10, "height": 20}
    first, created = repo.add_image(
        session=db_session, path="/mnt/cam1/a.png", mode="RGB", size_bytes=99, **kwargs
    )
    second, created_again = repo.add_image(
        session=db_session, path="/mnt/cam1/copy-of-a.png", mode="RGB", size_bytes=99, **kwargs
    )
    assert (created, created_again) == (True, False)
    assert second.id == first.id
    assert second.path == "/mnt/cam1/a.png"  # the first sighting wins; the copy changes nothing
    assert first.status is ImageStatus.NEW
    assert _count(db_session, Image) == 1


def test_add_image_refuses_a_malformed_hash_and_an_unknown_source(db_session: Session) -> None:
    common = {"session": db_session, "path": "/x", "width": 1, "height": 1, "mode": "L", "size_bytes": 1}
    with pytest.raises(ValueError, match="64 lowercase hex"):
        repo.add_image(sha256="ABC", source_id=1, **common)
    with pytest.raises(IntegrityViolation, match="does source 424242 exist"):
        repo.add_image(sha256=sha_of("orphan"), source_id=424242, **common)


def test_quarantine_file_without_a_hash_is_one_row_per_path_size_and_mtime(db_session: Session) -> None:
    source = new_source(db_session)
    common = {"session": db_session, "path": "/mnt/cam1/bad.jpg", "source_id": source.id, "size_bytes": 10}
    first, created = repo.quarantine_file(reason="truncated JPEG", mtime_ns=1000, **common)
    again, created_again = repo.quarantine_file(reason="truncated JPEG", mtime_ns=1000, **common)
    rewritten, created_rewritten = repo.quarantine_file(reason="truncated JPEG", mtime_ns=2000, **common)
    assert (created, created_again, created_rewritten) == (True, False, True)
    assert again.id == first.id != rewritten.id
    assert first.status is ImageStatus.QUARANTINED
    assert first.sha256 is None
    assert first.reason == "truncated JPEG"


def test_quarantine_file_with_a_hash_is_one_row_per_content(db_session: Session) -> None:
    source = new_source(db_session)
    sha = sha_of("not an image")
    first, created = repo.quarantine_file(
        session=db_session, path="/a.txt", reason="not an image", source_id=source.id, sha256=sha
    )
    again, created_again = repo.quarantine_file(
        session=db_session, path="/b.txt", reason="not an image", source_id=source.id, sha256=sha
    )
    assert (created, created_again) == (True, False)
    assert again.id == first.id
    with pytest.raises(ValueError, match="reason must not be empty"):
        repo.quarantine_file(session=db_session, path="/c", reason=" ", source_id=source.id, sha256=sha)
    with pytest.raises(ValueError, match="size_bytes and mtime_ns"):
        repo.quarantine_file(session=db_session, path="/c", reason="bad", source_id=source.id)


def test_set_image_status_is_a_compare_and_set(db_session: Session) -> None:
    image = new_image(db_session)
    before = image.status_changed_at
    assert repo.set_image_status(
        session=db_session, image_id=image.id, status=ImageStatus.QUEUED, expected=[ImageStatus.NEW]
    )
    # A second worker holding the same message loses: the image is no longer new.
    assert not repo.set_image_status(
        session=db_session, image_id=image.id, status=ImageStatus.QUEUED, expected=[ImageStatus.NEW]
    )
    assert repo.set_image_status(
        session=db_session,
        image_id=image.id,
        status=ImageStatus.PREDICTED,
        expected=(ImageStatus.NEW, ImageStatus.QUEUED),
    )
    reloaded = repo.get_image(session=db_session, image_id=image.id)
    assert reloaded.status is ImageStatus.PREDICTED
    assert reloaded.status_changed_at >= before
    assert reloaded.status_changed_at.tzinfo is not None


def test_set_image_status_unconditional_quarantine_needs_a_reason(db_session: Session) -> None:
    image = new_image(db_session)
    with pytest.raises(ValueError, match="reason"):
        repo.set_image_status(session=db_session, image_id=image.id, status=ImageStatus.QUARANTINED)
    assert repo.set_image_status(
        session=db_session, image_id=image.id, status=ImageStatus.QUARANTINED, reason="model crashed on it"
    )
    assert repo.get_image(session=db_session, image_id=image.id).reason == "model crashed on it"


def test_set_image_status_of_a_missing_image_is_not_found(db_session: Session) -> None:
    with pytest.raises(NotFoundError, match="image 987654 does not exist"):
        repo.set_image_status(
            session=db_session, image_id=987654, status=ImageStatus.QUEUED, expected=[ImageStatus.NEW]
        )


def test_rows_of_a_changed_file_are_superseded_linked_and_can_come_back(db_session: Session) -> None:
    old = new_image(db_session, "a.png")
    bad, _ = repo.quarantine_file(
        session=db_session, path=old.path, reason="truncated image: cut", source_id=old.source_id,
        size_bytes=10, mtime_ns=1,
    )  # fmt: skip
    elsewhere = new_image(db_session, "b.png")
    # A worker found the file changed before the watcher recorded the new bytes: superseded, by nothing yet.
    assert repo.set_image_status(
        session=db_session, image_id=old.id, status=ImageStatus.SUPERSEDED, reason="file changed: x"
    )
    with pytest.raises(ValueError, match="reason"):
        repo.set_image_status(session=db_session, image_id=elsewhere.id, status=ImageStatus.SUPERSEDED)
    new, _ = repo.add_image(
        session=db_session, sha256=sha_of("new bytes"), path=old.path, source_id=old.source_id,
        width=1, height=1, mode="L", size_bytes=1,
    )  # fmt: skip
    superseded = repo.supersede_images_at(
        session=db_session, paths=[old.path], reason="file changed: now image new", by_image_id=new.id
    )
    assert superseded == [bad.id]  # the one superseded earlier is only linked
    rows = {i: repo.get_image(session=db_session, image_id=i) for i in (old.id, bad.id, new.id, elsewhere.id)}
    assert [rows[i].status for i in (old.id, bad.id, new.id, elsewhere.id)] == [
        ImageStatus.SUPERSEDED, ImageStatus.SUPERSEDED, ImageStatus.NEW, ImageStatus.NEW,
    ]  # fmt: skip
    assert (rows[old.id].superseded_by_id, rows[bad.id].superseded_by_id) == (new.id, new.id)
    assert (rows[old.id].reason, rows[bad.id].reason) == ("file changed: x", "file changed: now image new")
    assert repo.count_quarantined_by_reason(session=db_session) == {}
    assert (
        repo.supersede_images_at(session=db_session, paths=[old.path], reason="again", by_image_id=new.id)
        == []
    )

    # The old bytes come back (at another path): the row is an image again, unlinked, unclaimed.
    assert repo.revive_image(
        session=db_session, image_id=old.id, status=ImageStatus.NEW, path="/mnt/cam1/back.png",
        original_name="back.png", source_id=old.source_id,
    )  # fmt: skip
    assert not repo.revive_image(
        session=db_session,
        image_id=old.id,
        status=ImageStatus.NEW,
        path="/x",
        original_name=None,
        source_id=old.source_id,
    )  # fmt: skip  (only a superseded row moves)
    back = repo.get_image(session=db_session, image_id=old.id)
    assert (back.status, back.path, back.superseded_by_id, back.reason) == (
        ImageStatus.NEW, "/mnt/cam1/back.png", None, None,
    )  # fmt: skip


def test_superseded_images_leave_the_training_set(db_session: Session) -> None:
    kept, gone = new_image(db_session, "kept.png"), new_image(db_session, "gone.png")
    for image in (kept, gone):
        repo.record_annotation(
            session=db_session, image_id=image.id, label="hole", annotator="a", origin=AnnotationOrigin.IMPORT
        )
    repo.set_image_status(
        session=db_session, image_id=gone.id, status=ImageStatus.SUPERSEDED, reason="changed"
    )
    assert [image.id for image, _ in repo.list_labelled_images(session=db_session)] == [kept.id]


def test_claims_are_found_and_released_only_by_their_claimant(db_session: Session) -> None:
    images = [new_image(db_session, f"c{i}.png") for i in range(3)]
    for image, claim in zip(images, ["w1", "w2", None], strict=True):
        repo.set_image_status(
            session=db_session, image_id=image.id, status=ImageStatus.QUEUED, claimed_by=claim
        )
    assert repo.find_claimed_images(session=db_session) == [(images[0].id, "w1"), (images[1].id, "w2")]
    ids = [image.id for image in images]
    assert repo.release_claims(session=db_session, image_ids=ids, claimant="w1") == [images[0].id]
    assert repo.release_claims(session=db_session, image_ids=ids, claimant="w1") == []
    assert repo.find_claimed_images(session=db_session) == [(images[1].id, "w2")]
    repo.set_image_status(session=db_session, image_id=images[1].id, status=ImageStatus.PREDICTED)
    assert repo.find_claimed_images(session=db_session) == []  # only waiting (queued) images count


def test_find_stuck_images_returns_only_rows_older_than_the_limit(db_session: Session) -> None:
    old, fresh, other = (new_image(db_session, name) for name in ("old.png", "fresh.png", "other.png"))
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    for image, age, status in (
        (old, timedelta(hours=2), ImageStatus.QUEUED),
        (fresh, timedelta(minutes=1), ImageStatus.QUEUED),
        (other, timedelta(hours=3), ImageStatus.PREDICTED),
    ):
        image.status = status
        image.status_changed_at = now - age
    db_session.flush()
    stuck = repo.find_stuck_images(
        session=db_session, status=ImageStatus.QUEUED, older_than=timedelta(minutes=30), now=now
    )
    assert [image.id for image in stuck] == [old.id]


def test_list_and_count_images_by_status(db_session: Session) -> None:
    source = new_source(db_session)
    images = [new_image(db_session, f"{index}.png", source=source) for index in range(3)]
    repo.set_image_status(session=db_session, image_id=images[1].id, status=ImageStatus.QUEUED)
    reasons = ("truncated image: PNG data ends early", "truncated image: JPEG cut", "not an image")
    for index, reason in enumerate(reasons):
        repo.quarantine_file(
            session=db_session,
            path=f"/bad{index}",
            reason=reason,
            source_id=source.id,
            size_bytes=1,
            mtime_ns=index,
        )
    listed = repo.list_images_by_status(session=db_session, status=ImageStatus.NEW)
    assert [image.id for image in listed] == [images[0].id, images[2].id]
    page = repo.list_images_by_status(
        session=db_session, status=ImageStatus.NEW, after_id=images[0].id, limit=5
    )
    assert [image.id for image in page] == [images[2].id]
    counts = repo.count_images_by_status(session=db_session)
    assert counts[ImageStatus.NEW] == 2
    assert counts[ImageStatus.QUEUED] == 1
    assert counts[ImageStatus.QUARANTINED] == 3
    assert counts[ImageStatus.LABELLED] == 0
    assert set(counts) == set(ImageStatus)
    assert repo.count_quarantined_by_reason(session=db_session) == {"truncated image": 2, "not an image": 1}


# --- predictions -----------------------------------------------------------------------------------


def test_model_key_is_never_null() -> None:
    assert repo.make_model_key(12, 7) == "b12-m7"
    assert repo.make_model_key(12, None) == "b12-m-"


def test_add_prediction_is_idempotent_per_image_and_models(db_session: Session) -> None:
    image = new_image(db_session)
    binary = new_model_version(db_session, ModelTask.BINARY)
    multiclass = new_model_version(db_session, ModelTask.MULTICLASS)
    kwargs = {
        "session": db_session,
        "image_id": image.id,
        "binary_version_id": binary.id,
        "predicted_label": "hole",
        "confidence": 0.7,
        "uncertainty": {"entropy": 0.9, "margin": 0.4},
    }
    first, created = repo.add_prediction(
        multiclass_version_id=multiclass.id, probabilities={"ok": 0.2, "hole": 0.7, "raw_edge": 0.1}, **kwargs
    )
    again, created_again = repo.add_prediction(
        multiclass_version_id=multiclass.id, probabilities={"ok": 0.1, "hole": 0.8, "raw_edge": 0.1}, **kwargs
    )
    binary_only, created_binary_only = repo.add_prediction(
        multiclass_version_id=None, probabilities={"ok": 0.3, "hole": 0.7}, **kwargs
    )
    assert (created, created_again, created_binary_only) == (True, False, True)
    assert again.id == first.id
    assert again.probabilities == {"ok": 0.2, "hole": 0.7, "raw_edge": 0.1}  # the first one stays
    assert first.model_key == f"b{binary.id}-m{multiclass.id}"
    assert binary_only.model_key == f"b{binary.id}-m-"
    assert _count(db_session, Prediction) == 2
    latest = repo.latest_prediction(session=db_session, image_id=image.id, model_key=first.model_key)
    assert latest is not None
    assert latest.id == first.id
    assert repo.latest_prediction(session=db_session, image_id=image.id + 1000) is None


def test_add_prediction_refuses_a_label_outside_the_distribution(db_session: Session) -> None:
    image = new_image(db_session)
    binary = new_model_version(db_session)
    with pytest.raises(ValueError, match="not one of the classes"):
        repo.add_prediction(
            session=db_session,
            image_id=image.id,
            binary_version_id=binary.id,
            multiclass_version_id=None,
            probabilities={"ok": 0.9, "hole": 0.1},
            predicted_label="raw_edge",
            confidence=0.9,
            uncertainty={},
        )


# --- model registry --------------------------------------------------------------------------------


def test_first_version_of_a_task_becomes_champion_and_later_ones_are_candidates(db_session: Session) -> None:
    assert repo.current_model_key(session=db_session) is None
    first = new_model_version(db_session, ModelTask.BINARY)
    assert (
        repo.current_model_key(session=db_session, hold=True) == f"b{first.id}-m-"
    )  # FOR SHARE on PostgreSQL
    second = new_model_version(db_session, ModelTask.BINARY)
    other_task = new_model_version(db_session, ModelTask.MULTICLASS)
    assert first.status is ModelStatus.CHAMPION
    assert second.status is ModelStatus.CANDIDATE
    assert other_task.status is ModelStatus.CHAMPION
    assert repo.current_model_key(session=db_session, hold=True) == f"b{first.id}-m{other_task.id}"
    champion = repo.get_champion(session=db_session, task=ModelTask.BINARY)
    assert champion is not None
    assert champion.id == first.id
    log = repo.list_promotions(session=db_session, task=ModelTask.BINARY)
    assert [(row.action, row.to_version_id, row.actor) for row in log] == [
        (PromotionAction.PROMOTE, first.id, "system")
    ]
    assert first.name == "binary-resnet18-0001"
    assert second.name == "binary-resnet18-0002"


def test_register_model_version_is_idempotent_on_name_and_artifact(db_session: Session) -> None:
    first = new_model_version(db_session, name="binary-resnet18-0042")
    again = new_model_version(db_session, name="binary-resnet18-0042")
    assert again.id == first.id
    with pytest.raises(IntegrityViolation, match="already exists with another artifact"):
        new_model_version(db_session, name="binary-resnet18-0042", artifact_sha256=sha_of("other weights"))


def test_set_champion_retires_the_old_one_and_writes_an_audit_row(db_session: Session) -> None:
    old = new_model_version(db_session)
    challenger = new_model_version(db_session)
    promotion = repo.set_champion(
        session=db_session,
        version_id=challenger.id,
        actor="engineer@plant",
        reason="beats the champion on eval-v1",
        numbers={"macro_f1_delta": 0.04},
    )
    assert promotion is not None
    assert (promotion.action, promotion.from_version_id, promotion.to_version_id) == (
        PromotionAction.PROMOTE,
        old.id,
        challenger.id,
    )
    assert promotion.numbers == {"macro_f1_delta": 0.04}
    assert repo.get_model_version(session=db_session, version_id=old.id).status is ModelStatus.RETIRED
    champion = repo.get_champion(session=db_session, task=ModelTask.BINARY)
    assert champion is not None
    assert champion.id == challenger.id

    # Back to the old one: a rollback, recorded as such; promoting the champion again writes nothing.
    rollback = repo.set_champion(session=db_session, version_id=old.id, actor="engineer", reason="regression")
    assert rollback is not None
    assert rollback.action is PromotionAction.ROLLBACK
    assert repo.set_champion(session=db_session, version_id=old.id, actor="engineer", reason="again") is None
    actions = [row.action for row in repo.list_promotions(session=db_session, task=ModelTask.BINARY)]
    assert actions == [PromotionAction.PROMOTE, PromotionAction.PROMOTE, PromotionAction.ROLLBACK]


def test_reject_model_version_records_why_and_protects_the_champion(db_session: Session) -> None:
    champion = new_model_version(db_session)
    candidate = new_model_version(db_session)
    with pytest.raises(InvalidTransitionError, match="is the champion"):
        repo.reject_model_version(session=db_session, version_id=champion.id, actor="e", reason="worse")
    rejection = repo.reject_model_version(
        session=db_session, version_id=candidate.id, actor="e", reason="worse"
    )
    assert rejection.action is PromotionAction.REJECT
    assert candidate.status is ModelStatus.REJECTED
    with pytest.raises(InvalidTransitionError, match="was rejected"):
        repo.set_champion(session=db_session, version_id=candidate.id, actor="e", reason="changed my mind")
    statuses = {v.id: v.status for v in repo.list_model_versions(session=db_session, task=ModelTask.BINARY)}
    assert statuses == {champion.id: ModelStatus.CHAMPION, candidate.id: ModelStatus.REJECTED}
    rejected = repo.list_model_versions(session=db_session, status=ModelStatus.REJECTED)
    assert [v.id for v in rejected] == [candidate.id]


def test_set_champion_needs_a_reason_and_an_existing_version(db_session: Session) -> None:
    with pytest.raises(ValueError, match="reason"):
        repo.set_champion(session=db_session, version_id=1, actor="e", reason="")
    with pytest.raises(NotFoundError, match="model version 31337"):
        repo.set_champion(session=db_session, version_id=31337, actor="e", reason="why not")


# --- annotations -----------------------------------------------------------------------------------


def test_record_annotation_is_idempotent_by_label_studio_id(db_session: Session) -> None:
    image = new_image(db_session)
    at = datetime(2030, 1, 1, tzinfo=UTC)
    kwargs = {"session": db_session, "image_id": image.id, "ls_annotation_id": 501, "ls_task_id": 77}
    first, outcome = repo.record_annotation(label="hole", annotator="ann@x", annotated_at=at, **kwargs)
    again, outcome_again = repo.record_annotation(label="hole", annotator="ann@x", annotated_at=at, **kwargs)
    edited, outcome_edit = repo.record_annotation(
        label="raw_edge", annotator="ann@x", annotated_at=at + timedelta(minutes=5), **kwargs
    )
    stale, outcome_stale = repo.record_annotation(label="hole", annotator="ann@x", annotated_at=at, **kwargs)
    assert (outcome, outcome_again, outcome_edit, outcome_stale) == (
        RecordOutcome.CREATED,
        RecordOutcome.UNCHANGED,
        RecordOutcome.UPDATED,
        RecordOutcome.UNCHANGED,
    )
    assert first.id == again.id == edited.id == stale.id
    assert stale.label == "raw_edge"
    assert _count(db_session, Annotation) == 1
    assert repo.current_label(session=db_session, image_id=image.id) == "raw_edge"


def test_record_annotation_refuses_a_label_studio_id_of_another_image(db_session: Session) -> None:
    first, second = new_image(db_session, "1.png"), new_image(db_session, "2.png")
    repo.record_annotation(
        session=db_session, image_id=first.id, label="ok", annotator="a", ls_annotation_id=9
    )
    with pytest.raises(IntegrityViolation, match="recorded for image"):
        repo.record_annotation(
            session=db_session, image_id=second.id, label="ok", annotator="a", ls_annotation_id=9
        )


def test_imported_labels_without_label_studio_id_are_deduplicated(db_session: Session) -> None:
    image = new_image(db_session)
    kwargs = {
        "session": db_session,
        "image_id": image.id,
        "origin": AnnotationOrigin.IMPORT,
        "annotator": None,
    }
    _, outcome = repo.record_annotation(label="hole", **kwargs)
    _, outcome_again = repo.record_annotation(label="hole", **kwargs)
    _, outcome_other = repo.record_annotation(label="ok", **kwargs)
    assert (outcome, outcome_again, outcome_other) == (
        RecordOutcome.CREATED,
        RecordOutcome.UNCHANGED,
        RecordOutcome.CREATED,
    )


def test_labelled_images_are_those_with_a_current_label_oldest_first(db_session: Session) -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    relabelled, deleted, cancelled, unlabelled = (new_image(db_session, f"{n}.png") for n in "abcd")

    def label(image_id: int, value: str | None, ls_id: int, hours: int, **extra: object) -> None:
        _annotate(db_session, image_id, value, ls_id, annotated_at=at + timedelta(hours=hours), **extra)

    label(relabelled.id, "hole", 1, 0)
    label(relabelled.id, "ok", 2, 1)  # a second annotator's later answer wins
    label(deleted.id, "raw_edge", 3, 0)
    repo.mark_annotation_deleted(session=db_session, ls_annotation_id=3)
    label(cancelled.id, "broken_stitch", 4, 0)
    label(cancelled.id, None, 5, 1, was_cancelled=True)  # a skip does not unlabel the image
    bad, _ = repo.quarantine_file(
        session=db_session,
        path="/mnt/cam1/bad.png",
        reason="truncated: x",
        source_id=relabelled.source_id,
        sha256=sha_of("bad.png"),
    )
    label(bad.id, "hole", 6, 0)
    rows = repo.list_labelled_images(session=db_session)
    assert [(image.id, value) for image, value in rows] == [
        (relabelled.id, "ok"),
        (cancelled.id, "broken_stitch"),
    ]
    assert unlabelled.id not in {image.id for image, _ in rows}
    for image, value in rows:
        assert repo.current_label(session=db_session, image_id=image.id) == value


def test_current_label_skips_deleted_and_cancelled_annotations(db_session: Session) -> None:
    image = new_image(db_session)
    at = datetime(2030, 1, 1, tzinfo=UTC)
    assert repo.current_label(session=db_session, image_id=image.id) is None
    _annotate(db_session, image.id, "hole", 1, annotated_at=at)
    _annotate(db_session, image.id, "ok", 2, annotator="b", annotated_at=at + timedelta(hours=1))
    _annotate(
        db_session, image.id, None, 3, annotator="c", was_cancelled=True, annotated_at=at + timedelta(hours=2)
    )
    assert repo.current_label(session=db_session, image_id=image.id) == "ok"
    assert repo.mark_annotation_deleted(session=db_session, ls_annotation_id=2)
    assert not repo.mark_annotation_deleted(session=db_session, ls_annotation_id=2)
    assert not repo.mark_annotation_deleted(session=db_session, ls_annotation_id=404)
    assert repo.current_label(session=db_session, image_id=image.id) == "hole"
    # A late re-delivery of the deleted annotation does not bring it back.
    outcome = _annotate(db_session, image.id, "ok", 2, annotator="b", annotated_at=at + timedelta(hours=5))
    assert outcome is RecordOutcome.UNCHANGED
    assert repo.current_label(session=db_session, image_id=image.id) == "hole"


# --- label tasks -----------------------------------------------------------------------------------


def test_label_tasks_are_never_planned_twice_for_a_project(db_session: Session) -> None:
    image = new_image(db_session)
    kwargs = {"session": db_session, "image_id": image.id, "informativeness": 0.9, "strategy": "entropy"}
    task, created = repo.add_label_task(ls_project_id=1, **kwargs)
    again, created_again = repo.add_label_task(ls_project_id=1, **kwargs)
    other_project, created_other = repo.add_label_task(ls_project_id=2, **kwargs)
    assert (created, created_again, created_other) == (True, False, True)
    assert again.id == task.id != other_project.id
    assert repo.list_label_task_image_ids(session=db_session, ls_project_id=1) == {image.id}

    pushed = repo.mark_label_task_pushed(session=db_session, label_task_id=task.id, ls_task_id=3001)
    assert pushed.status is LabelTaskStatus.PUSHED
    assert pushed.pushed_at is not None
    assert (
        repo.mark_label_task_pushed(session=db_session, label_task_id=task.id, ls_task_id=3001).id == task.id
    )
    with pytest.raises(InvalidTransitionError, match="already pushed as Label Studio task 3001"):
        repo.mark_label_task_pushed(session=db_session, label_task_id=task.id, ls_task_id=3002)
    assert repo.mark_label_task_completed(session=db_session, ls_project_id=1, ls_task_id=3001)
    assert not repo.mark_label_task_completed(session=db_session, ls_project_id=1, ls_task_id=3001)


def test_a_failed_push_keeps_its_reason_and_can_be_retried(db_session: Session) -> None:
    image = new_image(db_session)
    task, _ = repo.add_label_task(
        session=db_session, image_id=image.id, ls_project_id=1, informativeness=0.5, strategy="margin"
    )
    failed = repo.mark_label_task_failed(
        session=db_session, label_task_id=task.id, reason="Label Studio down"
    )
    assert (failed.status, failed.reason) == (LabelTaskStatus.FAILED, "Label Studio down")
    pushed = repo.mark_label_task_pushed(session=db_session, label_task_id=task.id, ls_task_id=12)
    assert (pushed.status, pushed.reason) == (LabelTaskStatus.PUSHED, None)
    with pytest.raises(InvalidTransitionError):
        repo.mark_label_task_failed(session=db_session, label_task_id=task.id, reason="too late")


def test_one_label_studio_task_cannot_belong_to_two_images(db_session: Session) -> None:
    first, second = new_image(db_session, "1.png"), new_image(db_session, "2.png")
    tasks = [
        repo.add_label_task(
            session=db_session, image_id=i.id, ls_project_id=1, informativeness=1, strategy="s"
        )[0]
        for i in (first, second)
    ]
    repo.mark_label_task_pushed(session=db_session, label_task_id=tasks[0].id, ls_task_id=55)
    with pytest.raises(IntegrityViolation, match="already linked"):
        repo.mark_label_task_pushed(session=db_session, label_task_id=tasks[1].id, ls_task_id=55)


# --- training runs, evaluation sets, comparisons ----------------------------------------------------


def test_training_run_lifecycle(db_session: Session) -> None:
    run = repo.create_training_run(
        session=db_session,
        task=ModelTask.BINARY,
        architecture="resnet18",
        trigger=TrainingTrigger.LABEL_COUNT,
        params={"epochs": 3},
    )
    assert run.status is TrainingRunStatus.QUEUED
    assert repo.start_training_run(session=db_session, run_id=run.id)
    assert not repo.start_training_run(session=db_session, run_id=run.id)  # a second worker does not start it
    version = new_model_version(db_session, training_run_id=run.id)
    finished = repo.finish_training_run(
        session=db_session,
        run_id=run.id,
        status=TrainingRunStatus.SUCCEEDED,
        n_train=80,
        n_val=20,
        model_version_id=version.id,
    )
    assert finished.status is TrainingRunStatus.SUCCEEDED
    assert finished.started_at is not None
    assert finished.finished_at is not None
    assert finished.finished_at >= finished.started_at
    assert finished.model_version_id == version.id
    with pytest.raises(InvalidTransitionError, match="already finished"):
        repo.finish_training_run(
            session=db_session, run_id=run.id, status=TrainingRunStatus.FAILED, error="x"
        )


def test_a_failed_training_run_needs_its_error(db_session: Session) -> None:
    run = repo.create_training_run(
        session=db_session,
        task=ModelTask.MULTICLASS,
        architecture="baseline_cnn",
        trigger=TrainingTrigger.MANUAL,
    )
    with pytest.raises(ValueError, match="error must not be empty"):
        repo.finish_training_run(session=db_session, run_id=run.id, status=TrainingRunStatus.FAILED)
    with pytest.raises(InvalidTransitionError, match="succeeded or failed"):
        repo.finish_training_run(session=db_session, run_id=run.id, status=TrainingRunStatus.RUNNING)
    failed = repo.finish_training_run(
        session=db_session, run_id=run.id, status=TrainingRunStatus.FAILED, error="CUDA out of memory"
    )
    assert failed.error == "CUDA out of memory"


def test_evaluation_members_are_only_added_never_relabelled(db_session: Session) -> None:
    images = [new_image(db_session, f"{index}.png") for index in range(3)]
    eval_set = repo.create_evaluation_set(session=db_session, name="eval-v1", task=ModelTask.BINARY)
    with pytest.raises(IntegrityViolation, match="already exists"):
        repo.create_evaluation_set(session=db_session, name="eval-v1", task=ModelTask.BINARY)
    found = repo.get_evaluation_set(session=db_session, name="eval-v1")
    assert found is not None
    assert found.id == eval_set.id
    added = repo.add_evaluation_members(
        session=db_session,
        evaluation_set_id=eval_set.id,
        members={images[0].id: "ok", images[1].id: "defective"},
        reason="initial stratified carve",
    )
    added_again = repo.add_evaluation_members(
        session=db_session,
        evaluation_set_id=eval_set.id,
        members={images[1].id: "ok", images[2].id: "ok"},
        reason="new labels",
    )
    assert (added, added_again) == (2, 1)
    members = repo.list_evaluation_members(session=db_session, evaluation_set_id=eval_set.id)
    assert members == {images[0].id: "ok", images[1].id: "defective", images[2].id: "ok"}
    with pytest.raises(ValueError, match="reason"):
        repo.add_evaluation_members(session=db_session, evaluation_set_id=eval_set.id, members={}, reason="")
    with pytest.raises(NotFoundError, match="evaluation set 999"):
        repo.add_evaluation_members(session=db_session, evaluation_set_id=999, members={}, reason="r")


def test_comparison_and_promotion_are_linked(db_session: Session) -> None:
    champion = new_model_version(db_session)
    challenger = new_model_version(db_session)
    eval_set = repo.create_evaluation_set(session=db_session, name="eval-v2", task=ModelTask.BINARY)
    comparison = repo.record_comparison(
        session=db_session,
        evaluation_set_id=eval_set.id,
        task=ModelTask.BINARY,
        champion_version_id=champion.id,
        challenger_version_id=challenger.id,
        decision=ComparisonDecision.PROMOTE,
        reason="McNemar p=0.01, macro-F1 +0.05",
        numbers={"p_value": 0.01, "delta_macro_f1": 0.05},
    )
    promotion = repo.set_champion(
        session=db_session,
        version_id=challenger.id,
        actor="policy",
        reason=comparison.reason,
        numbers=comparison.numbers,
        comparison_id=comparison.id,
    )
    assert promotion is not None
    assert promotion.comparison_id == comparison.id
    assert comparison.decision is ComparisonDecision.PROMOTE
    assert comparison.created_at.tzinfo is not None


# --- evaluations -----------------------------------------------------------------------------------


def test_evaluations_are_appended_per_run_and_listed_oldest_first(db_session: Session) -> None:
    version = new_model_version(db_session)
    found = repo.get_model_version_by_name(session=db_session, name=version.name)
    assert found.id == version.id
    first, second = (
        repo.record_evaluation(
            session=db_session,
            model_version_id=version.id,
            dataset="/data/aitex",
            dataset_sha256=sha_of("aitex-v1"),
            n_images=120,
            metrics={"macro_f1": 0.61},
        )
        for _ in range(2)  # the same evaluation run twice: two rows
    )
    listed = repo.list_evaluations(session=db_session, model_version_id=version.id)
    assert [e.id for e in listed] == [first.id, second.id]
    assert listed[0].metrics == {"macro_f1": 0.61}


def test_evaluation_needs_a_real_version_and_a_fingerprint(db_session: Session) -> None:
    with pytest.raises(NotFoundError, match="defectloop versions"):
        repo.get_model_version_by_name(session=db_session, name="binary-nope-0001")
    with pytest.raises(IntegrityViolation, match="64 lower-case hex"):
        repo.record_evaluation(
            session=db_session, model_version_id=1, dataset="x", dataset_sha256="abc", n_images=1, metrics={}
        )
    with pytest.raises(IntegrityViolation, match="does the model version exist"):
        repo.record_evaluation(
            session=db_session,
            model_version_id=987_654,
            dataset="x",
            dataset_sha256=sha_of("x"),
            n_images=1,
            metrics={},
        )


# --- labelling candidates and sync cursors ---------------------------------------------------------


def _predicted(session: Session, name: str, binary_id: int) -> Image:
    image = new_image(session, name)
    mark_predicted(
        session,
        image.id,
        binary_id,
        {"ok": 0.4, "hole": 0.6},
        label="hole",
        confidence=0.6,
        uncertainty={"entropy": 0.67},
    )
    return image


def test_labelling_candidates_skip_planned_labelled_and_other_model_images(db_session: Session) -> None:
    binary = new_model_version(db_session, ModelTask.BINARY)
    other = new_model_version(db_session, ModelTask.BINARY)
    key = repo.make_model_key(binary.id, None)
    free = _predicted(db_session, "free.png", binary.id)
    planned = _predicted(db_session, "planned.png", binary.id)
    labelled = _predicted(db_session, "labelled.png", binary.id)
    cancelled = _predicted(db_session, "cancelled.png", binary.id)
    _predicted(db_session, "other-model.png", other.id)
    repo.add_label_task(
        session=db_session, image_id=planned.id, ls_project_id=5, informativeness=0.5, strategy="entropy"
    )
    repo.record_annotation(
        session=db_session, image_id=labelled.id, label="ok", annotator="a", origin=AnnotationOrigin.IMPORT
    )
    _annotate(db_session, cancelled.id, None, 9, was_cancelled=True)

    found = repo.list_labelling_candidates(session=db_session, model_key=key, ls_project_id=5)
    assert [p.image_id for p in found] == [cancelled.id, free.id]  # newest first; a skip is no label
    other_project = repo.list_labelling_candidates(session=db_session, model_key=key, ls_project_id=6)
    assert planned.id in {p.image_id for p in other_project}
    assert (
        len(repo.list_labelling_candidates(session=db_session, model_key=key, ls_project_id=5, limit=1)) == 1
    )


def test_label_tasks_are_found_by_label_studio_id_and_listed_by_status(db_session: Session) -> None:
    image = new_image(db_session)
    task, _ = repo.add_label_task(
        session=db_session, image_id=image.id, ls_project_id=3, informativeness=0.9, strategy="margin"
    )
    assert repo.get_label_task_by_ls_id(session=db_session, ls_project_id=3, ls_task_id=77) is None
    assert [
        t.id
        for t in repo.list_label_tasks(
            session=db_session, ls_project_id=3, statuses=[LabelTaskStatus.PENDING]
        )
    ] == [task.id]
    repo.mark_label_task_pushed(session=db_session, label_task_id=task.id, ls_task_id=77)
    found = repo.get_label_task_by_ls_id(session=db_session, ls_project_id=3, ls_task_id=77)
    assert found is not None
    assert found.id == task.id
    assert repo.get_label_task_by_ls_id(session=db_session, ls_project_id=4, ls_task_id=77) is None
    assert (
        repo.list_label_tasks(session=db_session, ls_project_id=3, statuses=[LabelTaskStatus.PENDING]) == []
    )
    assert [
        t.id for t in repo.list_label_tasks(session=db_session, ls_project_id=3, image_ids=[image.id])
    ] == [task.id]
    repo.set_label_task_model_key(
        session=db_session, label_task_id=task.id, model_key="b9-m-", informativeness=0.1
    )
    assert (found.model_key, found.informativeness) == ("b9-m-", 0.1)


def test_a_deleted_label_reopens_its_task_and_only_open_tasks_can_be_forgotten(db_session: Session) -> None:
    done, still = new_image(db_session, "a.png"), new_image(db_session, "b.png")
    tasks = []
    for n, image in enumerate((done, still)):
        task, _ = repo.add_label_task(
            session=db_session, image_id=image.id, ls_project_id=3, informativeness=0.5, strategy="entropy"
        )
        repo.mark_label_task_pushed(session=db_session, label_task_id=task.id, ls_task_id=90 + n)
        tasks.append(task)
    assert repo.mark_label_task_completed(session=db_session, ls_project_id=3, ls_task_id=90)
    assert not repo.delete_open_label_task(session=db_session, label_task_id=tasks[0].id)  # completed
    assert repo.reopen_label_task(session=db_session, ls_task_id=90)  # its label was deleted
    assert not repo.reopen_label_task(session=db_session, ls_task_id=90)  # once
    assert repo.get_label_task(session=db_session, label_task_id=tasks[0].id).status is LabelTaskStatus.PUSHED
    assert repo.delete_open_label_task(session=db_session, label_task_id=tasks[1].id)
    assert not repo.delete_open_label_task(session=db_session, label_task_id=tasks[1].id)
    assert [t.id for t in repo.list_label_tasks(session=db_session, ls_project_id=3)] == [tasks[0].id]


def test_sync_cursor_only_moves_forward_and_can_be_reset(db_session: Session) -> None:
    t0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    assert repo.get_sync_cursor(session=db_session, name="reconcile:1") is None
    assert repo.advance_sync_cursor(session=db_session, name="reconcile:1", position=t0) == t0
    later = t0 + timedelta(minutes=5)
    assert repo.advance_sync_cursor(session=db_session, name="reconcile:1", position=later) == later
    assert (
        repo.advance_sync_cursor(session=db_session, name="reconcile:1", position=t0) == later
    )  # never back
    assert repo.get_sync_cursor(session=db_session, name="reconcile:2") is None
    assert repo.reset_sync_cursor(session=db_session, name="reconcile:1")
    assert not repo.reset_sync_cursor(session=db_session, name="reconcile:1")
    assert repo.get_sync_cursor(session=db_session, name="reconcile:1") is None


def test_a_lease_has_one_holder_until_it_is_released_or_runs_out(db_session: Session) -> None:
    now = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    until = now + timedelta(minutes=10)
    assert repo.try_acquire_lease(session=db_session, name="push:1", until=until, now=now)
    assert not repo.try_acquire_lease(
        session=db_session, name="push:1", until=until, now=now + timedelta(minutes=1)
    )
    assert repo.try_acquire_lease(session=db_session, name="push:2", until=until, now=now)  # another name
    # A holder that died: its lease runs out.
    assert repo.try_acquire_lease(
        session=db_session, name="push:1", until=until + timedelta(hours=1), now=until
    )
    repo.release_lease(session=db_session, name="push:1", now=until + timedelta(minutes=1))
    assert repo.try_acquire_lease(
        session=db_session, name="push:1", until=until + timedelta(hours=2), now=until + timedelta(minutes=1)
    )


# --- demo runs -------------------------------------------------------------------------------------


def test_demo_run_rounds_are_recorded_once_per_arm_and_listed_in_order(db_session: Session) -> None:
    run = repo.create_demo_run(session=db_session, name="demo-test", settings={"rounds": 2, "batch": 10})
    with pytest.raises(IntegrityViolation, match="exists already"):
        repo.create_demo_run(session=db_session, name="demo-test", settings={})
    db_session.rollback()
    run = repo.create_demo_run(session=db_session, name="demo-test", settings={"rounds": 2, "batch": 10})
    for round_number, arm, labels, defects in [
        (1, DemoArm.RANDOM, 10, 2),
        (0, DemoArm.ACTIVE, 0, 0),
        (1, DemoArm.ACTIVE, 10, 6),
    ]:
        record_round(
            db_session,
            run.id,
            round_number,
            arm,
            labels_used=labels,
            defects_found=defects,
            metrics={"macro_f1": 0.5},
            timings={"train": 1},
        )
    rounds = repo.list_demo_rounds(session=db_session, run_id=run.id)
    assert [(r.round, r.arm) for r in rounds] == [(0, "active"), (1, "active"), (1, "random")]
    assert rounds[1].timings == {"train": 1.0}
    assert rounds[1].metrics == {"macro_f1": 0.5}
    assert [
        r.round for r in repo.list_demo_rounds(session=db_session, run_id=run.id, arm=DemoArm.RANDOM)
    ] == [1]
    with pytest.raises(IntegrityViolation, match="defects_found <= labels_used"):
        record_round(db_session, run.id, 2, DemoArm.ACTIVE, labels_used=3, defects_found=4)
    with pytest.raises(IntegrityViolation, match="recorded already"):
        record_round(db_session, run.id, 1, DemoArm.ACTIVE, labels_used=10, defects_found=6)


def test_demo_run_status_moves_and_latest_is_the_last_started(db_session: Session) -> None:
    first = repo.create_demo_run(session=db_session, name="demo-a", settings={})
    second = repo.create_demo_run(session=db_session, name="demo-b", settings={})
    latest = repo.latest_demo_run(session=db_session)
    assert latest is not None
    assert latest.id == second.id
    stopped = repo.set_demo_run_status(
        session=db_session, run_id=first.id, status=DemoRunStatus.STOPPED, reason="Ctrl-C"
    )
    assert stopped.finished_at is not None
    assert stopped.reason == "Ctrl-C"
    resumed = repo.set_demo_run_status(session=db_session, run_id=first.id, status=DemoRunStatus.RUNNING)
    assert resumed.finished_at is None
    assert resumed.reason is None
    assert repo.get_demo_run_by_name(session=db_session, name="demo-a") is not None
    assert repo.get_demo_run_by_name(session=db_session, name="nope") is None
