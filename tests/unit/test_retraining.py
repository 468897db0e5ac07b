"""Champion / challenger: the frozen evaluation sets, retraining on the database's labels, comparison,
promote / reject / rollback, the retrain policy and its Celery wiring, and the commands.

A real migrated SQLite database and real files; real training at 32 px for one epoch on a few dozen
synthetic images (one thread), so the file stays around a minute on two shared cores. Nothing downloads.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.errors import InvalidTransitionError
from db.schema import (
    ComparisonDecision,
    EvaluationSetMember,
    ImageStatus,
    ModelStatus,
    ModelTask,
    Promotion,
    PromotionAction,
    SourceKind,
    TrainingRun,
    TrainingRunStatus,
    TrainingTrigger,
)
from defectloop.settings import DEFAULT_CLASSES
from defectloop.synth import generate_dataset
from models.comparison import PromotionPolicy
from models.data import InputSpec
from models.labels import LabelSpace
from workers.errors import DatasetError
from workers.importing import import_folder
from workers.retrain_policy import (
    REQUEST_ARCHITECTURE,
    RetrainPlan,
    claim_requests,
    fail_stale_requests,
    pending_requests,
    request_retrain,
    retrain_due,
)
from workers.retraining import (
    EvaluationRule,
    PromotionRefusedError,
    compare_challengers,
    evaluation_set_name,
    held_out_image_ids,
    promote_version,
    reject_version,
    retrain_challengers,
    rollback_champion,
    run_requested_retrain,
    update_evaluation_sets,
)
from workers.retraining_tasks import (
    POLICY_TASK,
    PUBLISHED_CURSOR,
    RETRAIN_TASK,
    RetrainingConfig,
    check_retrain_policy,
)
from workers.training import (
    Hyperparameters,
    TrainingRequest,
    image_group,
    train_from_database,
    train_from_folder,
)

DEFECTLOOP = str(Path(sys.executable).parent / "defectloop")
GOOD, DEFECTS = DEFAULT_CLASSES[0], DEFAULT_CLASSES[1:]
KNOWN = (GOOD, "defective", *DEFECTS)
SPEC = InputSpec(image_size=32, channels=1)
LABELS = LabelSpace(GOOD, DEFECTS)
TINY = Hyperparameters(epochs=1, batch_size=8, val_fraction=0.25)
LENIENT = PromotionPolicy(min_macro_f1_gain=-1.0, require_significance=False, n_boot=200)
STRICT = PromotionPolicy(min_macro_f1_gain=1.0, n_boot=200)
SHA = "a" * 64

pytestmark = pytest.mark.usefixtures("hub_offline")


def _request(task: ModelTask) -> TrainingRequest:
    return TrainingRequest(
        task=task,
        architecture="baseline_cnn",
        label_space=LABELS,
        input_spec=SPEC,
        hyperparameters=TINY,
        threads=1,
    )


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 synthetic photos, 10 of each of the six classes, 32 px (read only: tests import it in place)."""
    root = tmp_path_factory.mktemp("labelled") / "images"
    generate_dataset(root, n=60, seed=5, size=32)
    return root


def _add_image(
    session: Session, sha256: str, path: Path, source_id: int, status: ImageStatus = ImageStatus.NEW
) -> int:
    image, _ = repo.add_image(
        session=session,
        sha256=sha256,
        path=str(path),
        source_id=source_id,
        width=32,
        height=32,
        mode="L",
        size_bytes=100,
        status=status,
    )
    return image.id


def _import(sessions: sessionmaker[Session], folder: Path, source: str | None = None) -> None:
    import_folder(sessions=sessions, root=folder, known_labels=KNOWN, source_name=source)


def _members(sessions: sessionmaker[Session], task: ModelTask) -> dict[int, str]:
    with sessions() as session:
        evaluation_set = repo.get_evaluation_set(session=session, name=evaluation_set_name(task))
        assert evaluation_set is not None
        return repo.list_evaluation_members(session=session, evaluation_set_id=evaluation_set.id)


def _labelled(sessions: sessionmaker[Session]) -> dict[int, tuple[str, str]]:
    """image id -> (group, current label)."""
    with sessions() as session:
        return {
            image.id: (image_group(image.source_id, image.path), label)
            for image, label in repo.list_labelled_images(session=session)
        }


# --- the evaluation rule ----------------------------------------------------------------------------


def test_the_rule_is_deterministic_close_to_its_fraction_and_salted() -> None:
    groups = [f"source-1/photo{i}" for i in range(20_000)]
    rule = EvaluationRule(fraction=0.2, salt="s1")
    held = {g for g in groups if rule.holds_out(g)}
    assert 0.185 < len(held) / len(groups) < 0.215
    assert held == {g for g in groups if EvaluationRule(0.2, "s1").holds_out(g)}, "same rule, same side"
    other = {g for g in groups if EvaluationRule(0.2, "s2").holds_out(g)}
    assert 0.02 < len(held & other) / len(groups) < 0.06, "another salt is an independent draw"
    assert EvaluationRule.from_dict(rule.to_dict()) == rule
    assert EvaluationRule.new(0.2).salt != EvaluationRule.new(0.2).salt
    with pytest.raises(ValueError, match=r"strictly in \(0, 1\)"):
        EvaluationRule(fraction=1.0, salt="s")
    with pytest.raises(ValueError, match="unknown evaluation rule"):
        EvaluationRule.from_dict({"kind": "random", "fraction": 0.2, "salt": "s"})


@given(
    low=st.floats(min_value=0.001, max_value=0.999),
    high=st.floats(min_value=0.001, max_value=0.999),
    group=st.text(max_size=40),
)
def test_a_larger_fraction_holds_out_everything_a_smaller_one_does(
    low: float, high: float, group: str
) -> None:
    low, high = min(low, high), max(low, high)
    if EvaluationRule(low, "salt").holds_out(group):
        assert EvaluationRule(high, "salt").holds_out(group)


# --- evaluation sets ------------------------------------------------------------------------------


def test_evaluation_sets_hold_out_whole_groups_grow_with_new_labels_and_keep_first_labels(
    sessions: sessionmaker[Session], labelled_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _import(sessions, labelled_folder)
    assert held_out_image_ids(sessions) == frozenset(), "no sets yet: nothing held out"
    # Tiles of two photos: each photo's tiles must fall on one side together.
    fresh, tiles = tmp_path / "fresh", tmp_path / "tiles"  # new bytes: the same bytes would be one image
    generate_dataset(fresh, n=12, seed=9, size=32, classes=("ok", "hole"))
    for cls in ("ok", "hole"):
        (tiles / cls).mkdir(parents=True)
        for i, src in enumerate(sorted((fresh / cls).glob("*.png"))[:6]):
            shutil.copy(src, tiles / cls / f"strip{cls}{i // 3}_t{i % 3:02d}.png")

    first = update_evaluation_sets(sessions=sessions, label_space=LABELS, fraction=0.3)
    assert first.created
    labelled = _labelled(sessions)
    binary, multiclass = _members(sessions, ModelTask.BINARY), _members(sessions, ModelTask.MULTICLASS)
    expected = {i for i, (group, _) in labelled.items() if first.rule.holds_out(group)}
    assert set(binary) == expected == first.held_out_image_ids
    assert 0 < len(binary) < len(labelled)
    assert set(binary.values()) <= {GOOD, "defective"}
    assert all(binary[i] == (GOOD if labelled[i][1] == GOOD else "defective") for i in binary)
    assert multiclass == {i: labelled[i][1] for i in binary if labelled[i][1] in DEFECTS}
    assert first.members == {ModelTask.BINARY: len(binary), ModelTask.MULTICLASS: len(multiclass)}

    again = update_evaluation_sets(sessions=sessions, label_space=LABELS, fraction=0.3)
    assert not again.created
    assert again.rule == first.rule
    assert again.added == {ModelTask.BINARY: 0, ModelTask.MULTICLASS: 0}

    # A member relabelled by an annotator keeps the label it entered the set with.
    member = next(i for i in binary if labelled[i][1] == GOOD)
    with sessions.begin() as session:
        repo.record_annotation(
            session=session, image_id=member, label="hole", annotator="a", ls_annotation_id=1
        )
    # New labels arrive: the held-out ones are added with a reason; the fraction setting cannot move them.
    _import(sessions, tiles, source="tiles")
    before = held_out_image_ids(sessions)  # what training must leave out, before the sets are topped up
    with caplog.at_level(logging.WARNING, logger="workers.retraining"):
        grown = update_evaluation_sets(sessions=sessions, label_space=LABELS, fraction=0.9)
    assert "the setting asks for 0.900 and is ignored" in caplog.text
    assert grown.rule == first.rule
    binary = _members(sessions, ModelTask.BINARY)
    assert before == grown.held_out_image_ids == set(binary)
    assert binary[member] == GOOD
    labelled = _labelled(sessions)
    tile_ids = [
        i for i, (group, _) in labelled.items() if group.endswith(("stripok0", "stripok1", "striphole0"))
    ]
    assert len(tile_ids) == 9
    for photo in ("stripok0", "stripok1", "striphole0", "striphole1"):
        sides = {i in binary for i, (group, _) in labelled.items() if group.endswith(photo)}
        assert len(sides) == 1, f"the tiles of {photo} are split across the sets"
    assert grown.added[ModelTask.BINARY] == sum(1 for i in binary if labelled[i][0].startswith("source-2/"))
    with sessions() as session:
        reasons = {m.added_reason for m in session.scalars(select(EvaluationSetMember))}
    assert all(
        reason.startswith("held out by the set's rule (0.3 of photo groups) on ") for reason in reasons
    )


def test_training_on_the_database_never_sees_an_evaluation_image(
    sessions: sessionmaker[Session], labelled_folder: Path, tmp_path: Path
) -> None:
    _import(sessions, labelled_folder)
    sets = update_evaluation_sets(sessions=sessions, label_space=LABELS, fraction=0.25)
    held = sets.held_out_image_ids
    outcome = train_from_database(
        _request(ModelTask.BINARY),
        sessions=sessions,
        artifacts_dir=tmp_path / "artifacts",
        exclude_image_ids=held,
    )
    assert outcome.n_train + outcome.n_val == 60 - len(held)
    with sessions() as session:
        snapshot = repo.get_model_version(session=session, version_id=outcome.version_id).training_snapshot
    assert snapshot is not None
    assert snapshot["left_out_evaluation"] == len(held)
    assert sum(snapshot["labels"].values()) == 60 - len(held)


# --- retrain, compare, promote by the policy --------------------------------------------------------


def test_retrain_trains_every_architecture_and_compare_decides_records_and_promotes_by_policy(
    sessions: sessionmaker[Session], labelled_folder: Path, tmp_path: Path
) -> None:
    _import(sessions, labelled_folder)
    report = retrain_challengers(
        sessions=sessions,
        tasks=(ModelTask.BINARY, ModelTask.MULTICLASS),
        architectures=("baseline_cnn", "improved_cnn"),
        label_space=LABELS,
        input_spec=SPEC,
        artifacts_dir=tmp_path / "artifacts",
        evaluation_fraction=0.3,
        hyperparameters=TINY,
        threads=1,
    )
    assert report.failed == []
    assert [(o.version_name, o.is_champion) for o in report.trained] == [
        ("binary-baseline_cnn-0001", True),
        ("binary-improved_cnn-0002", False),
        ("multiclass-baseline_cnn-0001", True),
        ("multiclass-improved_cnn-0002", False),
    ]
    n_eval = report.evaluation.members[ModelTask.BINARY]

    kept = compare_challengers(sessions=sessions, task=ModelTask.BINARY, policy=STRICT)
    assert kept.n_images == n_eval
    assert kept.champion is not None
    assert kept.champion.name == "binary-baseline_cnn-0001"
    assert kept.champion.threshold is not None, "a binary version is called at its own threshold"
    [result] = kept.challengers
    assert not result.decision.promote
    assert kept.best is None
    assert kept.change is None
    assert result.decision.reason.startswith("keep: macro-F1 gain")

    # An unlabelled image of the pool: a champion change must send it back to be scored again.
    with sessions.begin() as session:
        source = repo.get_or_create_source(session=session, name="cam1", kind=SourceKind.CAMERA)
        pool = _add_image(session, SHA, tmp_path / "x.png", source.id, ImageStatus.PREDICTED)

    # A version trained on the folder itself has seen the set's images, and the comparison says so.
    folder_trained = train_from_folder(
        _request(ModelTask.BINARY),
        sessions=sessions,
        dataset=labelled_folder,
        artifacts_dir=tmp_path / "artifacts",
    )
    [leaky] = compare_challengers(
        sessions=sessions, task=ModelTask.BINARY, challengers=[folder_trained.version_name], policy=STRICT
    ).challengers
    assert not leaky.version.held_out_respected
    assert result.version.held_out_respected
    with sessions() as session:
        flags = repo.get_comparison(session=session, comparison_id=leaky.comparison_id).numbers
    assert flags["trained_clear_of_the_set"] == {"challenger": False, "champion": True}

    with pytest.raises(DatasetError, match="every candidate has been compared with it"):
        compare_challengers(sessions=sessions, task=ModelTask.BINARY, policy=LENIENT)
    promoted = compare_challengers(
        sessions=sessions,
        task=ModelTask.BINARY,
        challengers=["binary-improved_cnn-0002"],
        policy=LENIENT,
        auto_promote=True,
        actor="policy (test)",
    )
    [result] = promoted.challengers
    assert result.decision.promote
    assert promoted.best is result
    assert promoted.change is not None
    assert promoted.promoted == "binary-improved_cnn-0002"
    assert promoted.change.requeued_image_ids == [pool]
    with sessions() as session:
        assert repo.get_champion(session=session, task=ModelTask.BINARY).name == "binary-improved_cnn-0002"  # type: ignore[union-attr]
        assert repo.get_image(session=session, image_id=pool).status is ImageStatus.QUEUED
        comparisons = repo.list_comparisons(session=session, task=ModelTask.BINARY)
        assert [c.decision for c in comparisons] == [
            ComparisonDecision.PROMOTE,
            ComparisonDecision.KEEP,
            ComparisonDecision.KEEP,
        ]
        assert comparisons[0].numbers["n_eval"] == n_eval
        assert comparisons[0].numbers["evaluation_set"] == "frozen-binary"
        promotion = repo.list_promotions(session=session, task=ModelTask.BINARY)[-1]
        assert (promotion.action, promotion.actor, promotion.comparison_id) == (
            PromotionAction.PROMOTE,
            "policy (test)",
            comparisons[0].id,
        )
        assert promotion.reason.startswith("automatic, by the promotion policy: promote:")
        assert promotion.numbers["challenger"]["macro_f1"] == pytest.approx(
            result.version.evaluation.macro_f1
        )

    # Multiclass: scored on the typed defects of the set, each version with its own classes.
    multi = compare_challengers(sessions=sessions, task=ModelTask.MULTICLASS, policy=STRICT)
    assert multi.n_images == report.evaluation.members[ModelTask.MULTICLASS]
    assert multi.champion is not None
    assert multi.champion.threshold is None
    assert multi.champion.evaluation.class_names == DEFECTS

    # A member whose file is gone is left out and counted, not an error.
    gone = next(iter(_members(sessions, ModelTask.MULTICLASS)))
    with sessions() as session:
        path = Path(repo.get_image(session=session, image_id=gone).path)
    moved = tmp_path / "moved.png"
    shutil.copy(path, moved)
    try:
        path.unlink()
        fewer = compare_challengers(
            sessions=sessions, task=ModelTask.MULTICLASS, challengers=["multiclass-improved_cnn-0002"]
        )
    finally:
        shutil.copy(moved, path)
    assert fewer.n_images == multi.n_images - 1
    assert fewer.left_out["file_gone"] == 1


# --- promote, reject, rollback ------------------------------------------------------------------------


def _register(sessions: sessionmaker[Session], n: int) -> list[str]:
    names = []
    with sessions.begin() as session:
        for i in range(n):
            version = repo.register_model_version(
                session=session,
                name=f"binary-baseline_cnn-{i + 1:04d}",
                task=ModelTask.BINARY,
                architecture="baseline_cnn",
                classes=("ok", "defective"),
                input_spec=SPEC.to_dict(),
                artifact_path=f"/nowhere/{i}.pt",
                artifact_sha256=f"{i:064x}",
            )
            names.append(version.name)
    return names


def _compare(sessions: sessionmaker[Session], challenger: str, decision: ComparisonDecision) -> int:
    with sessions.begin() as session:
        evaluation_set = repo.get_evaluation_set(session=session, name="frozen-binary") or (
            repo.create_evaluation_set(session=session, name="frozen-binary", task=ModelTask.BINARY)
        )
        champion = repo.get_champion(session=session, task=ModelTask.BINARY)
        assert champion is not None
        return repo.record_comparison(
            session=session,
            evaluation_set_id=evaluation_set.id,
            task=ModelTask.BINARY,
            champion_version_id=champion.id,
            challenger_version_id=repo.get_model_version_by_name(session=session, name=challenger).id,
            decision=decision,
            reason=f"{decision}: by hand",
            numbers={"macro_f1_gain": 0.1},
        ).id


def _status(sessions: sessionmaker[Session], name: str) -> ModelStatus:
    with sessions() as session:
        return repo.get_model_version_by_name(session=session, name=name).status


def test_promotion_needs_a_comparison_that_says_so_or_an_override_and_every_change_is_recorded(
    sessions: sessionmaker[Session],
) -> None:
    v1, v2, v3 = _register(sessions, 3)
    assert _status(sessions, v1) is ModelStatus.CHAMPION

    with pytest.raises(PromotionRefusedError, match="has not been compared with the champion"):
        promote_version(sessions=sessions, version_name=v2, actor="eng", reason="looks good")
    keep = _compare(sessions, v2, ComparisonDecision.KEEP)
    with pytest.raises(PromotionRefusedError, match=f"comparison {keep} says keep"):
        promote_version(sessions=sessions, version_name=v2, actor="eng", reason="looks good")
    with pytest.raises(PromotionRefusedError, match="needs a reason"):
        promote_version(sessions=sessions, version_name=v2, actor="eng", reason="  ", override=True)
    assert _status(sessions, v1) is ModelStatus.CHAMPION

    change = promote_version(
        sessions=sessions, version_name=v2, actor="eng", reason="line test passed", override=True
    )
    assert (change.action, change.previous, change.comparison_id) == ("promote", v1, keep)
    assert (_status(sessions, v1), _status(sessions, v2)) == (ModelStatus.RETIRED, ModelStatus.CHAMPION)
    with pytest.raises(PromotionRefusedError, match="already is the binary champion"):
        promote_version(sessions=sessions, version_name=v2, actor="eng", reason="again", override=True)

    # v3 compared with the *old* champion: that comparison is no evidence against the new one.
    with sessions.begin() as session:
        old = repo.get_model_version_by_name(session=session, name=v1)
        evaluation_set = repo.get_evaluation_set(session=session, name="frozen-binary")
        assert evaluation_set is not None
        repo.record_comparison(
            session=session,
            evaluation_set_id=evaluation_set.id,
            task=ModelTask.BINARY,
            champion_version_id=old.id,
            challenger_version_id=repo.get_model_version_by_name(session=session, name=v3).id,
            decision=ComparisonDecision.PROMOTE,
            reason="promote: against v1",
            numbers={},
        )
    with pytest.raises(PromotionRefusedError, match=f"has not been compared with the champion {v2}"):
        promote_version(sessions=sessions, version_name=v3, actor="eng", reason="r")

    back = rollback_champion(sessions=sessions, task=ModelTask.BINARY, actor="eng", reason="false alarms")
    assert (back.action, back.version, back.previous) == ("rollback", v1, v2)
    with pytest.raises(PromotionRefusedError, match="not a retired champion"):
        rollback_champion(sessions=sessions, task=ModelTask.BINARY, actor="eng", reason="r", to_version=v3)

    rejected = reject_version(sessions=sessions, version_name=v3, actor="eng", reason="blurry on cam2")
    assert rejected.action == "reject"
    assert _status(sessions, v3) is ModelStatus.REJECTED
    with pytest.raises(InvalidTransitionError, match="was rejected"):
        promote_version(sessions=sessions, version_name=v3, actor="eng", reason="r", override=True)
    with pytest.raises(InvalidTransitionError, match="is the champion"):
        reject_version(sessions=sessions, version_name=v1, actor="eng", reason="r")

    with sessions() as session:
        log = list(session.scalars(select(Promotion).order_by(Promotion.id)))
    assert [(p.action, p.actor, p.reason) for p in log] == [
        (PromotionAction.PROMOTE, "system", log[0].reason),
        (PromotionAction.PROMOTE, "eng", "line test passed"),
        (PromotionAction.ROLLBACK, "eng", "false alarms"),
        (PromotionAction.REJECT, "eng", "blurry on cam2"),
    ]
    assert log[1].numbers["override"] is True


def test_a_first_champion_has_nothing_to_roll_back_to(sessions: sessionmaker[Session]) -> None:
    _register(sessions, 1)
    with pytest.raises(PromotionRefusedError, match="first binary champion"):
        rollback_champion(sessions=sessions, task=ModelTask.BINARY, actor="eng", reason="r")
    with pytest.raises(PromotionRefusedError, match="no champion"):
        rollback_champion(sessions=sessions, task=ModelTask.MULTICLASS, actor="eng", reason="r")


# --- the retrain policy -----------------------------------------------------------------------------


def _label_images(sessions: sessionmaker[Session], tmp_path: Path, n: int, first_id: int = 1) -> None:
    with sessions.begin() as session:
        source = repo.get_or_create_source(session=session, name="cam", kind=SourceKind.CAMERA)
        for i in range(n):
            image_id = _add_image(session, f"{first_id + i:064x}", tmp_path / f"{i}.png", source.id)
            repo.record_annotation(
                session=session, image_id=image_id, label="ok", annotator="a", ls_annotation_id=first_id + i
            )


def _config(**overrides: Any) -> RetrainingConfig:
    values: dict[str, Any] = {
        "plan": RetrainPlan(
            architectures=("baseline_cnn",),
            image_size=32,
            channels=1,
            epochs=1,
            evaluation_fraction=0.25,
            auto_promote=False,
            policy=LENIENT,
            batch_size=8,
            threads=1,
        ),
        "min_new_labels": 5,
        "interval_s": 0,
    }
    return RetrainingConfig(**(values | overrides))


def test_the_policy_requests_one_retrain_at_a_time_and_fails_a_lost_one(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    published: list[int] = []
    now = datetime.now(UTC)

    def check(config: RetrainingConfig | None = None, at: datetime = now) -> dict[str, Any]:
        return check_retrain_policy(
            sessions=sessions, config=config or _config(), publish=lambda: published.append(1), now=at
        )

    assert check()["action"] == "none"
    _label_images(sessions, tmp_path, 4)
    assert check()["action"] == "none", "4 new labels, the policy wants 5"
    _label_images(sessions, tmp_path, 1, first_id=100)
    due = retrain_due(sessions=sessions, min_new_labels=5, interval_s=0)
    assert due is not None
    assert due.trigger is TrainingTrigger.LABEL_COUNT
    assert due.reason.startswith("5 new label(s) ever")

    first = check()
    assert first["action"] == "published"
    assert len(first["created"]) == 2
    assert published == [1]
    with sessions() as session:
        runs = repo.list_training_runs(session=session, architecture=REQUEST_ARCHITECTURE)
        assert {(r.task, r.status, r.trigger) for r in runs} == {
            (task, TrainingRunStatus.QUEUED, TrainingTrigger.LABEL_COUNT) for task in ModelTask
        }
    assert request_retrain(sessions=sessions, trigger=TrainingTrigger.MANUAL, reason="r") == [], "one pending"
    assert check(at=now + timedelta(seconds=60))["action"] == "waiting"
    assert check(at=now + timedelta(seconds=601))["action"] == "published"
    assert len(published) == 2

    claimed = claim_requests(sessions)
    assert sorted(claimed) == sorted(first["created"])
    assert claim_requests(sessions) == [], "a second worker gets nothing"
    assert check()["action"] == "running"
    assert pending_requests(sessions) == ([], claimed)

    stale = fail_stale_requests(sessions, older_than_s=3600, now=now + timedelta(hours=2))
    assert sorted(stale) == sorted(claimed)
    with sessions() as session:
        errors = {repo.get_training_run(session=session, run_id=i).error for i in claimed}
    assert errors == {"no result 3600 s after it started: its worker was lost"}
    # The labels arrived before the lost run started: they are not new any more.
    assert check(at=now + timedelta(hours=2))["action"] == "none"

    # The interval rule: a label arrived and the interval elapsed.
    _label_images(sessions, tmp_path, 1, first_id=200)
    hourly = _config(min_new_labels=0, interval_s=3600)
    assert check(hourly, at=now + timedelta(minutes=30))["action"] == "none"
    later = check(hourly, at=now + timedelta(hours=3))
    assert later["action"] == "published"
    with sessions() as session:
        assert repo.get_training_run(session=session, run_id=later["created"][0]).trigger is (
            TrainingTrigger.SCHEDULE
        )
        assert repo.get_sync_cursor(session=session, name=PUBLISHED_CURSOR) is not None


def test_a_label_studio_request_is_published_without_a_new_one(sessions: sessionmaker[Session]) -> None:
    from workers.backend import LabellingHandlers

    handlers = LabellingHandlers(
        sessions=sessions,
        publish_events=lambda events: None,
        classes=DEFAULT_CLASSES,
        strategy="entropy",
        heatmaps_dir=None,
    )
    handlers.request_training(reason="START_TRAINING from Label Studio")
    published: list[int] = []
    done = check_retrain_policy(sessions=sessions, config=_config(), publish=lambda: published.append(1))
    assert done["action"] == "published"
    assert done["created"] == []
    assert len(done["requests"]) == 2
    assert published == [1]


def test_a_requested_retrain_trains_closes_its_requests_and_a_duplicate_message_does_nothing(
    sessions: sessionmaker[Session], labelled_folder: Path, tmp_path: Path
) -> None:
    artifacts = tmp_path / "artifacts"
    plan = _config().plan
    nothing = run_requested_retrain(sessions=sessions, plan=plan, label_space=LABELS, artifacts_dir=artifacts)
    assert nothing["claimed"] == []

    # No labels yet: the request fails, saying why.
    empty = request_retrain(sessions=sessions, trigger=TrainingTrigger.MANUAL, reason="by hand")
    failed = run_requested_retrain(sessions=sessions, plan=plan, label_space=LABELS, artifacts_dir=artifacts)
    assert failed["trained"] == []
    assert len(failed["failed"]) == 2
    with sessions() as session:
        run = repo.get_training_run(session=session, run_id=empty[0])
        assert run.status is TrainingRunStatus.FAILED
        assert run.error is not None
        assert run.error.startswith("no version could be trained: binary baseline_cnn")

    _import(sessions, labelled_folder)
    requests = request_retrain(sessions=sessions, trigger=TrainingTrigger.LABEL_COUNT, reason="60 labels")
    done = run_requested_retrain(sessions=sessions, plan=plan, label_space=LABELS, artifacts_dir=artifacts)
    assert sorted(done["claimed"]) == sorted(requests)
    assert done["trained"] == ["binary-baseline_cnn-0001", "multiclass-baseline_cnn-0001"]
    assert done["comparisons"] == [], "first versions: nothing to compare with"
    with sessions() as session:
        for run_id in requests:
            run = repo.get_training_run(session=session, run_id=run_id)
            assert run.status is TrainingRunStatus.SUCCEEDED
            assert run.params["result"]["trained"] == done["trained"]
        per_arch = session.scalars(
            select(TrainingRun).where(TrainingRun.architecture == "baseline_cnn")
        ).all()
        assert {r.trigger for r in per_arch} == {TrainingTrigger.LABEL_COUNT}

    # Again, with a champion to beat: challengers compared, promoted by the lenient policy.
    promoting = RetrainPlan(**{**plan.__dict__, "auto_promote": True})
    request_retrain(sessions=sessions, trigger=TrainingTrigger.MANUAL, reason="again")
    second = run_requested_retrain(
        sessions=sessions, plan=promoting, label_space=LABELS, artifacts_dir=artifacts
    )
    assert second["trained"] == ["binary-baseline_cnn-0002", "multiclass-baseline_cnn-0002"]
    assert [(c["task"], c["promoted"]) for c in second["comparisons"]] == [
        ("binary", "binary-baseline_cnn-0002"),
        ("multiclass", "multiclass-baseline_cnn-0002"),
    ]


def test_the_app_routes_retraining_to_its_queue_and_schedules_the_policy(tmp_path: Path) -> None:
    from workers.celery_app import WorkerConfig, create_app

    base: dict[str, Any] = {
        "broker_url": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "database_url": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "artifacts_dir": tmp_path,
        "classes": DEFAULT_CLASSES,
    }
    assert RETRAIN_TASK not in create_app(WorkerConfig(**base)).tasks
    app = create_app(WorkerConfig(**base, retraining=_config(check_interval_s=30.0)))
    assert {RETRAIN_TASK, POLICY_TASK} <= set(app.tasks)
    assert app.conf.task_routes[RETRAIN_TASK] == {"queue": "training"}
    assert app.conf.task_routes[POLICY_TASK] == {"queue": "maintenance"}
    entry = app.conf.beat_schedule["check-retrain-policy"]
    assert (entry["task"], entry["schedule"]) == (POLICY_TASK, 30.0)
    assert "requeue-waiting-images" in app.conf.beat_schedule
    with pytest.raises(ValueError, match=">= 0"):
        _config(min_new_labels=-1)
    # Beat and the inference worker import the policy, never torch.
    code = "import sys, workers.celery_app, workers.retraining_tasks; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- the commands -------------------------------------------------------------------------------------


def _run_cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTLOOP_")}
    environ.update(
        {
            "DEFECTLOOP_DATA_DIR": str(data_dir),
            "DEFECTLOOP_IMAGE_SIZE": "32",
            "DEFECTLOOP_IMAGE_CHANNELS": "1",
            "DEFECTLOOP_TRAIN_EPOCHS": "1",
            "COLUMNS": "200",
            "NO_COLOR": "1",
            "HF_HUB_OFFLINE": "1",
        }
    )
    return subprocess.run(
        [DEFECTLOOP, *args], capture_output=True, text=True, env=environ, timeout=300, check=False
    )


def test_retrain_compare_promote_rollback_reject_and_versions_from_the_command_line(
    labelled_folder: Path, tmp_path: Path
) -> None:
    data = tmp_path / "var"
    assert _run_cli("db", "upgrade", data_dir=data).returncode == 0
    assert _run_cli("import", str(labelled_folder), data_dir=data).returncode == 0

    retrained = _run_cli(
        "retrain", "--task", "binary", "--arch", "baseline_cnn", "--arch", "improved_cnn",
        "--batch-size", "8", "--actor", "ana", data_dir=data,
    )  # fmt: skip
    assert retrained.returncode == 0, retrained.stderr
    out = retrained.stdout
    assert "evaluation sets created (holding out 0.2 of photo groups)" in out
    assert "binary-baseline_cnn-0001" in out
    assert "champion (first of its task)" in out
    assert "binary: frozen-binary" in out
    assert "scored in one run" in out
    assert "comparison 1: binary-improved_cnn-0002: " in out

    status = _run_cli("status", data_dir=data)
    assert re.search(r"evaluation set frozen-binary: \d+ images", status.stdout), status.stdout
    assert "evaluation set frozen-multiclass" in status.stdout

    compared = _run_cli("compare", "binary", "binary-improved_cnn-0002", data_dir=data)
    assert compared.returncode == 0, compared.stderr
    assert "comparison 2: binary-improved_cnn-0002" in compared.stdout

    promoted = _run_cli("promote", "binary-improved_cnn-0002", "--reason", "fewer misses on cam 2",
                        "--override", "--actor", "ana", data_dir=data)  # fmt: skip
    assert promoted.returncode == 0, promoted.stderr
    assert "promote: binary-improved_cnn-0002 is the binary champion (was binary-baseline_cnn-0001)" in (
        promoted.stdout
    )
    refused = _run_cli("reject", "binary-improved_cnn-0002", "--reason", "r", data_dir=data)
    assert refused.returncode == 1
    assert "is the champion of binary" in refused.stderr
    assert "Traceback" not in refused.stderr
    no_reason = _run_cli("promote", "binary-baseline_cnn-0001", data_dir=data)
    assert no_reason.returncode == 2
    assert "--reason" in no_reason.stderr

    back = _run_cli("rollback", "binary", "--reason", "false alarms on the night shift", data_dir=data)
    assert back.returncode == 0, back.stderr
    assert "rollback: binary-baseline_cnn-0001 is the binary champion" in back.stdout

    listed = _run_cli("versions", "--task", "binary", data_dir=data)
    assert listed.returncode == 0, listed.stderr
    expected = ("binary-improved_cnn-0002", "retired", "champion", "promotion history",
                "fewer misses on cam 2", "false alarms on the night shift", "ana")  # fmt: skip
    for text in expected:
        assert text in listed.stdout, text
