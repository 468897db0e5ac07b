"""Champion / challenger: the frozen evaluation sets, challengers retrained on the database's labels,
champion and challengers scored on the same images in one run, and the engineers' promote, reject and
rollback, each a recorded row with who, why and the numbers.

**Evaluation sets.** Each task has one, ``frozen-binary`` and ``frozen-multiclass``. An image belongs
on the evaluation side when the hash of its *group* (source + file name without a tile index, see
``workers.training.image_group``) with the sets' salt falls below the sets' fraction. The rule is
fixed when the sets are created and stored with them, so an image's side never changes: one labelled
today and one labelled next month are held out by the same rule, near-duplicate tiles of one photo
fall on one side, and no version is ever trained on an image either set holds (both tasks share the
rule, so the multiclass set is the typed defects of the binary one). Sets only grow: each retrain
adds the held-out images labelled since, with a recorded reason; a member keeps its first label.

**Comparison.** Every version is scored with its own input spec and, for binary, at its own decision
threshold (the call the workers make). The decision is ``models.comparison.decide_promotion``; each
challenger's comparison is a row. Promotion is by an engineer (``promote``), or by the policy when
``auto_promote`` is on: the challenger the rule promotes with the best macro-F1. A champion change
sends the unlabelled pool back to ``queued`` in the same transaction, to be scored again.

Transactions stay short: nothing holds the database while models train or predict.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import ComparisonDecision, ModelStatus, ModelTask, TrainingTrigger
from db.session import session_scope
from models.comparison import (
    Decision,
    Evaluation,
    PromotionPolicy,
    classification_report,
    decide_promotion,
    stored_threshold,
)
from models.data import DEFECTIVE, ImageDataset, ImageRecord, InputSpec
from models.errors import ModelError
from models.labels import LabelSpace
from models.train import load_checkpoint, predict_dataset
from workers.errors import DatasetError, IncompatibleVersionError, WorkerError
from workers.retrain_policy import RetrainPlan, claim_requests, finish_requests
from workers.training import Hyperparameters, TrainingRequest, TrainOutcome, image_group, train_from_database

logger = logging.getLogger(__name__)

__all__ = [
    "ComparisonReport",
    "EvaluationRule",
    "EvaluationSetsReport",
    "RetrainReport",
    "compare_challengers",
    "compare_new_challengers",
    "evaluation_set_name",
    "held_out_image_ids",
    "promote_version",
    "reject_version",
    "retrain_challengers",
    "rollback_champion",
    "train_clear_of_evaluation_sets",
    "update_evaluation_sets",
]

RULE_KIND = "group_hash"
POLICY_ACTOR = "policy"


class PromotionRefusedError(WorkerError, ValueError):
    """A promotion the evidence does not support, asked for without an explicit override."""


def evaluation_set_name(task: ModelTask) -> str:
    return f"frozen-{ModelTask(task).value}"


@dataclass(frozen=True)
class EvaluationRule:
    """Which groups are held out for evaluation: those whose salted hash falls below ``fraction``."""

    fraction: float
    salt: str

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"the evaluation fraction must lie strictly in (0, 1), got {self.fraction}")
        if not self.salt:
            raise ValueError("the evaluation rule needs a non-empty salt")

    @classmethod
    def new(cls, fraction: float) -> EvaluationRule:
        return cls(fraction=fraction, salt=uuid.uuid4().hex)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationRule:
        if data.get("kind") != RULE_KIND:
            raise ValueError(f"unknown evaluation rule {data!r}; this code knows kind {RULE_KIND!r}")
        return cls(fraction=float(data["fraction"]), salt=str(data["salt"]))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": RULE_KIND, "fraction": self.fraction, "salt": self.salt}

    def holds_out(self, group: str) -> bool:
        digest = hashlib.sha256(f"{self.salt}\0{group}".encode()).digest()
        return int.from_bytes(digest[:8], "big") < self.fraction * 2.0**64


@dataclass(frozen=True)
class EvaluationSetsReport:
    """The evaluation sets after an update: the rule, members per task, what this update added."""

    rule: EvaluationRule
    created: bool
    members: dict[ModelTask, int]
    added: dict[ModelTask, int]
    labels: dict[ModelTask, dict[str, int]]
    held_out_image_ids: frozenset[int]
    labelled_images: int


def update_evaluation_sets(
    *,
    sessions: sessionmaker[Session],
    label_space: LabelSpace,
    fraction: float,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> EvaluationSetsReport:
    """Create the two sets on first use (with a new rule at ``fraction``), then add every labelled image
    the rule holds out that is not a member yet. Returns the counts and the ids never to train on: the
    members of both sets and every labelled image the rule holds out (whatever its label)."""
    with session_scope(sessions) as session:
        sets = {
            task: repo.get_evaluation_set(session=session, name=evaluation_set_name(task))
            for task in ModelTask
        }
        stored = next((s.rule for s in sets.values() if s is not None and s.rule is not None), None)
        created = stored is None and all(s is None for s in sets.values())
        if stored is not None:
            rule = EvaluationRule.from_dict(stored)
            if abs(rule.fraction - fraction) > 1e-12:
                logger.warning(
                    "the evaluation sets hold out %.3f of the photo groups (fixed when they were created); "
                    "the setting asks for %.3f and is ignored, so that no image changes side",
                    rule.fraction,
                    fraction,
                )
        elif created:
            rule = EvaluationRule.new(fraction)
        else:
            raise DatasetError(
                "the evaluation sets exist without a rule (created before migration 0004); they only grow "
                "by explicit additions, so retraining cannot tell which new images to hold out"
            )
        for task in ModelTask:
            if sets[task] is None:
                sets[task] = repo.create_evaluation_set(
                    session=session, name=evaluation_set_name(task), task=task, rule=rule.to_dict()
                )
        labelled = [
            (image.id, image.source_id, image.path, label)
            for image, label in repo.list_labelled_images(session=session)
        ]
        stamp = now().strftime("%Y-%m-%d %H:%M UTC")
        held_out: set[int] = set()
        added: dict[ModelTask, int] = {}
        for task in ModelTask:
            evaluation_set = sets[task]
            assert evaluation_set is not None
            new_members = {}
            for image_id, source_id, path, label in labelled:
                if not rule.holds_out(image_group(source_id, path)):
                    continue
                held_out.add(image_id)
                task_label = label_space.task_label(label, task)
                if task_label is not None:
                    new_members[image_id] = task_label
            added[task] = (
                repo.add_evaluation_members(
                    session=session,
                    evaluation_set_id=evaluation_set.id,
                    members=new_members,
                    reason=f"held out by the set's rule ({rule.fraction:g} of photo groups) on {stamp}",
                )
                if new_members
                else 0
            )
        members = {
            task: repo.list_evaluation_members(session=session, evaluation_set_id=sets[task].id)  # type: ignore[union-attr]
            for task in ModelTask
        }
    for task, n in added.items():
        if n:
            logger.info("evaluation set %s: %d image(s) added", evaluation_set_name(task), n)
    return EvaluationSetsReport(
        rule=rule,
        created=created,
        members={task: len(m) for task, m in members.items()},
        added=added,
        labels={task: dict(sorted(Counter(m.values()).items())) for task, m in members.items()},
        held_out_image_ids=frozenset(held_out.union(*(set(m) for m in members.values()))),
        labelled_images=len(labelled),
    )


def held_out_image_ids(sessions: sessionmaker[Session]) -> frozenset[int]:
    """The images no training may see: the members of the evaluation sets and every labelled image
    their rule holds out (empty before the sets exist). Reads only; adds no member."""
    with session_scope(sessions) as session:
        sets = [
            repo.get_evaluation_set(session=session, name=evaluation_set_name(task)) for task in ModelTask
        ]
        held: set[int] = set()
        rule = None
        for evaluation_set in sets:
            if evaluation_set is None:
                continue
            held.update(repo.list_evaluation_members(session=session, evaluation_set_id=evaluation_set.id))
            if evaluation_set.rule is not None:
                rule = EvaluationRule.from_dict(evaluation_set.rule)
        if rule is not None:
            held.update(
                image.id
                for image, _ in repo.list_labelled_images(session=session)
                if rule.holds_out(image_group(image.source_id, image.path))
            )
    return frozenset(held)


def train_clear_of_evaluation_sets(
    request: TrainingRequest, *, sessions: sessionmaker[Session], artifacts_dir: Path
) -> TrainOutcome:
    """Train on the database's labels (``train_from_database``), leaving out every image the frozen
    evaluation sets hold or their rule holds out, so a later comparison scores it on unseen images."""
    return train_from_database(
        request,
        sessions=sessions,
        artifacts_dir=artifacts_dir,
        exclude_image_ids=held_out_image_ids(sessions),
    )


# --- retraining ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingFailure:
    task: ModelTask
    architecture: str
    error: str


@dataclass(frozen=True)
class RetrainReport:
    """What a retrain did: the evaluation sets, the versions trained, the architectures that failed."""

    evaluation: EvaluationSetsReport
    trained: list[TrainOutcome] = field(default_factory=list)
    failed: list[TrainingFailure] = field(default_factory=list)


def retrain_challengers(
    *,
    sessions: sessionmaker[Session],
    tasks: Sequence[ModelTask],
    architectures: Sequence[str],
    label_space: LabelSpace,
    input_spec: InputSpec,
    artifacts_dir: Path,
    evaluation_fraction: float,
    hyperparameters: Hyperparameters,
    threads: int | None = None,
    progress: bool = False,
    trigger: TrainingTrigger = TrainingTrigger.MANUAL,
    actor: str = "cli",
) -> RetrainReport:
    """Update the evaluation sets, then train every architecture for every task on the labels outside
    them (``train_from_database``); each version is registered as a candidate (the first of a task
    becomes champion, there being nothing to compare with). A task or architecture that cannot be
    trained (too few labels of a class, an image size the architecture refuses) is reported and the
    others go on. Every run shares ``label_space``, ``input_spec``, ``hyperparameters`` and ``threads``."""
    evaluation = update_evaluation_sets(
        sessions=sessions, label_space=label_space, fraction=evaluation_fraction
    )
    report = RetrainReport(evaluation=evaluation)
    for task in tasks:
        for architecture in architectures:
            request = TrainingRequest(
                task=task,
                architecture=architecture,
                label_space=label_space,
                input_spec=input_spec,
                hyperparameters=hyperparameters,
                threads=threads,
                progress=progress,
                actor=actor,
                trigger=trigger,
            )
            try:
                outcome = train_from_database(
                    request,
                    sessions=sessions,
                    artifacts_dir=artifacts_dir,
                    exclude_image_ids=evaluation.held_out_image_ids,
                )
            except (DatasetError, ModelError, IncompatibleVersionError) as exc:
                logger.warning("retrain: %s %s not trained: %s", task, architecture, exc)
                report.failed.append(TrainingFailure(task=task, architecture=architecture, error=str(exc)))
                continue
            report.trained.append(outcome)
    return report


# --- comparison ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredVersion:
    name: str
    version_id: int
    architecture: str
    evaluation: Evaluation
    threshold: float | None
    held_out_respected: bool = True  # False: it may have trained on some of the set's images


@dataclass(frozen=True)
class ChallengerResult:
    version: ScoredVersion
    decision: Decision
    comparison_id: int


@dataclass(frozen=True)
class ComparisonReport:
    """Champion and challengers on one evaluation set, scored in one run."""

    task: ModelTask
    evaluation_set: str
    n_images: int
    left_out: dict[str, int]
    champion: ScoredVersion | None
    challengers: list[ChallengerResult]
    skipped: dict[str, str]
    best: ChallengerResult | None
    change: ChampionChange | None = None  # the promotion ``auto_promote`` made

    @property
    def promoted(self) -> str | None:
        return None if self.change is None else self.change.version


@dataclass(frozen=True)
class _Version:
    name: str
    version_id: int
    architecture: str
    classes: tuple[str, ...]
    input_spec: InputSpec
    artifact_path: Path
    artifact_sha256: str
    threshold: float | None
    held_out_respected: bool


def _version(row: Any) -> _Version:
    task = ModelTask(row.task)
    snapshot = row.training_snapshot or {}
    return _Version(
        # Trained on the database's labels with the evaluation images left out; a version trained on a
        # folder, or before the sets existed, may have seen some of them.
        held_out_respected="left_out_evaluation" in snapshot,
        name=row.name,
        version_id=row.id,
        architecture=row.architecture,
        classes=tuple(row.classes),
        input_spec=InputSpec.from_dict(row.input_spec),
        artifact_path=Path(row.artifact_path),
        artifact_sha256=row.artifact_sha256,
        threshold=stored_threshold(row.metrics) if task is ModelTask.BINARY else None,
    )


@dataclass(frozen=True)
class _Member:
    image_id: int
    path: Path
    source_id: int
    label: str


@dataclass(frozen=True)
class _Contest:
    """What one comparison reads from the database: the frozen set, its members (in image-id order,
    those whose image row exists), the champion and the challengers to score against it."""

    set_id: int
    set_name: str
    n_members: int
    members: tuple[_Member, ...]
    champion: _Version | None
    contenders: tuple[_Version, ...]


@dataclass(frozen=True)
class _EvaluationImages:
    """The members every version is scored on: file present, label one of ``classes``; ``labels`` are
    the class indices of ``records``. ``left_out`` counts the others, by why."""

    classes: tuple[str, ...]
    records: tuple[ImageRecord, ...]
    labels: tuple[int, ...]
    left_out: dict[str, int]


@dataclass(frozen=True, eq=False)
class _Score:
    """A version's evaluation with the calls (binary: at its own threshold) and probabilities behind it."""

    version: ScoredVersion
    calls: npt.NDArray[np.int64]
    probs: npt.NDArray[np.float32]


def _load_contest(
    sessions: sessionmaker[Session], task: ModelTask, challengers: Sequence[str] | None
) -> _Contest:
    """Read the task's evaluation set, champion and challengers (the named versions, or every candidate
    not yet compared with this champion) in one transaction."""
    set_name = evaluation_set_name(task)
    with session_scope(sessions) as session:
        evaluation_set = repo.get_evaluation_set(session=session, name=set_name)
        if evaluation_set is None:
            raise DatasetError(
                f"no evaluation set {set_name!r} yet: `defectloop retrain` creates it from the labels"
            )
        set_id = evaluation_set.id
        labels = repo.list_evaluation_members(session=session, evaluation_set_id=set_id)
        images = {image.id: image for image in repo.list_images_by_ids(session=session, image_ids=labels)}
        members = tuple(
            _Member(image_id, Path(images[image_id].path), images[image_id].source_id, label)
            for image_id, label in sorted(labels.items())
            if image_id in images
        )
        champion_row = repo.get_champion(session=session, task=task)
        champion = None if champion_row is None else _version(champion_row)
        if challengers is None:
            # Candidates not yet compared with this champion: old losers are not scored again and again.
            rows = [
                row
                for row in repo.list_model_versions(session=session, task=task, status=ModelStatus.CANDIDATE)
                if champion is None
                or (last := repo.latest_comparison(session=session, challenger_version_id=row.id)) is None
                or last.champion_version_id != champion.version_id
            ]
        else:
            rows = [repo.get_model_version_by_name(session=session, name=name) for name in challengers]
        contenders = []
        for row in rows:
            if ModelTask(row.task) is not task:
                raise IncompatibleVersionError(f"{row.name} is a {row.task} model, this compares {task}")
            if row.status is ModelStatus.CHAMPION:
                continue  # the champion is not its own challenger
            contenders.append(_version(row))
    if not contenders:
        raise DatasetError(
            f"no challenger for the {task} champion: every candidate has been compared with it; "
            "`defectloop retrain` trains new ones, or name versions to compare them again"
        )
    return _Contest(
        set_id=set_id,
        set_name=set_name,
        n_members=len(labels),
        members=members,
        champion=champion,
        contenders=tuple(contenders),
    )


def _evaluation_images(contest: _Contest) -> _EvaluationImages:
    """The members to score: those whose file is gone, or whose label is not one of the champion's
    classes (or, with no champion, the first challenger's), are left out and counted."""
    missing = [m for m in contest.members if not m.path.is_file()]
    kept = [m for m in contest.members if m.path.is_file()]
    classes = contest.champion.classes if contest.champion is not None else contest.contenders[0].classes
    unknown = [m for m in kept if m.label not in classes]
    kept = [m for m in kept if m.label in classes]
    if not kept:
        raise DatasetError(
            f"evaluation set {contest.set_name!r} has no image to score ({contest.n_members} member(s), "
            f"{len(missing)} with the file gone): label more images and retrain, which adds the held-out ones"
        )
    if missing:
        logger.warning(
            "evaluation set %s: %d member(s) left out, their file is gone", contest.set_name, len(missing)
        )
    return _EvaluationImages(
        classes=classes,
        records=tuple(
            ImageRecord(
                path=m.path, label=m.label, group=image_group(m.source_id, m.path), image_id=m.image_id
            )
            for m in kept
        ),
        labels=tuple(classes.index(m.label) for m in kept),
        left_out={"file_gone": len(missing), "label_not_in_classes": len(unknown)},
    )


def _score(version: _Version, images: _EvaluationImages, batch_size: int) -> _Score:
    """The version's calls (binary: at its own threshold) and probabilities, and its evaluation."""
    checkpoint = load_checkpoint(version.artifact_path, expected_sha256=version.artifact_sha256)
    data = ImageDataset(images.records, images.labels, version.input_spec, augment=False, cache=False)
    probs = predict_dataset(checkpoint.model, data, batch_size=batch_size)
    calls = probs.argmax(axis=1)
    if version.threshold is not None:
        column = version.classes.index(DEFECTIVE)
        calls = np.where(probs[:, column] >= version.threshold, column, 1 - column)
    evaluation = classification_report(images.labels, calls, version.classes, probs=probs)
    scored = ScoredVersion(
        name=version.name,
        version_id=version.version_id,
        architecture=version.architecture,
        evaluation=evaluation,
        threshold=version.threshold,
        held_out_respected=version.held_out_respected,
    )
    return _Score(version=scored, calls=calls, probs=probs)


def _decide(
    challenger: _Score, champion: _Score | None, images: _EvaluationImages, policy: PromotionPolicy
) -> Decision:
    """``decide_promotion`` on the two versions' calls for the same images."""
    return decide_promotion(
        y_true=images.labels,
        challenger_pred=challenger.calls,
        champion_pred=None if champion is None else champion.calls,
        class_names=images.classes,
        policy=policy,
        challenger_probs=challenger.probs,
        champion_probs=None if champion is None else champion.probs,
    )


def _comparison_numbers(
    decision: Decision,
    challenger: _Version,
    champion: _Version | None,
    set_name: str,
    left_out: dict[str, int],
) -> dict[str, Any]:
    """The decision's numbers with what was compared: the set, who was left out, thresholds, and whether
    each version was trained clear of the set."""
    return {
        **decision.numbers,
        "evaluation_set": set_name,
        "left_out": left_out,
        "challenger_threshold": challenger.threshold,
        "champion_threshold": None if champion is None else champion.threshold,
        "trained_clear_of_the_set": {
            "challenger": challenger.held_out_respected,
            "champion": None if champion is None else champion.held_out_respected,
        },
    }


def _record_comparison(
    sessions: sessionmaker[Session],
    task: ModelTask,
    contest: _Contest,
    challenger: _Score,
    decision: Decision,
    numbers: dict[str, Any],
) -> ChallengerResult:
    """Write the challenger's comparisons row (its own transaction) and log it."""
    champion = contest.champion
    with session_scope(sessions) as session:
        comparison = repo.record_comparison(
            session=session,
            evaluation_set_id=contest.set_id,
            task=task,
            champion_version_id=None if champion is None else champion.version_id,
            challenger_version_id=challenger.version.version_id,
            decision=ComparisonDecision.PROMOTE if decision.promote else ComparisonDecision.KEEP,
            reason=decision.reason,
            numbers=numbers,
        )
        comparison_id = comparison.id
    logger.info(
        "comparison %d: %s vs %s: %s",
        comparison_id,
        challenger.version.name,
        "(no champion)" if champion is None else champion.name,
        decision.reason,
    )
    return ChallengerResult(version=challenger.version, decision=decision, comparison_id=comparison_id)


def _best(results: Sequence[ChallengerResult]) -> ChallengerResult | None:
    """Of the challengers the rule promotes, the one with the best macro-F1."""
    winners = [r for r in results if r.decision.promote]
    return max(winners, key=lambda r: r.version.evaluation.macro_f1, default=None)


def compare_challengers(
    *,
    sessions: sessionmaker[Session],
    task: ModelTask,
    challengers: Sequence[str] | None = None,
    policy: PromotionPolicy | None = None,
    auto_promote: bool = False,
    batch_size: int = 64,
    actor: str = POLICY_ACTOR,
) -> ComparisonReport:
    """Score the champion of ``task`` and its challengers (the named versions, or every candidate not yet
    compared with this champion) on the task's frozen evaluation set in one run, decide for each
    challenger and record the comparison.
    With ``auto_promote``, the promoted-by-the-rule challenger with the best macro-F1 becomes champion.

    Members whose file is gone are left out (counted). A challenger whose classes differ from the
    champion's cannot be compared on the same labels and is skipped with the reason. Raises
    ``DatasetError`` when the set is missing or empty, ``NotFoundError`` for an unknown name.
    """
    task = ModelTask(task)
    policy = policy or PromotionPolicy()
    contest = _load_contest(sessions, task, challengers)
    images = _evaluation_images(contest)
    champion = None if contest.champion is None else _score(contest.champion, images, batch_size)
    skipped: dict[str, str] = {}
    results: list[ChallengerResult] = []
    for version in contest.contenders:
        if version.classes != images.classes:
            skipped[version.name] = f"predicts {list(version.classes)}, the champion {list(images.classes)}"
            continue
        scored = _score(version, images, batch_size)
        decision = _decide(scored, champion, images, policy)
        numbers = _comparison_numbers(decision, version, contest.champion, contest.set_name, images.left_out)
        # Recorded as each is decided: a later challenger that fails to load keeps the rows before it.
        results.append(_record_comparison(sessions, task, contest, scored, decision, numbers))
    best = _best(results)
    change = None
    if auto_promote and best is not None:
        change = _change_champion(
            sessions,
            best.version.name,
            actor=actor,
            reason=f"automatic, by the promotion policy: {best.decision.reason}",
            numbers=best.decision.numbers,
            comparison_id=best.comparison_id,
        )
    return ComparisonReport(
        task=task,
        evaluation_set=contest.set_name,
        n_images=len(images.records),
        left_out=images.left_out,
        champion=None if champion is None else champion.version,
        challengers=results,
        skipped=skipped,
        best=best,
        change=change,
    )


# --- promote, reject, roll back --------------------------------------------------------------------


@dataclass(frozen=True)
class ChampionChange:
    """A recorded champion change (or rejection) and the pool sent back to be scored again."""

    promotion_id: int
    action: str
    task: ModelTask
    version: str
    previous: str | None
    comparison_id: int | None
    requeued_image_ids: list[int]


def _change_champion(
    sessions: sessionmaker[Session],
    version_name: str,
    *,
    actor: str,
    reason: str,
    numbers: Mapping[str, Any] | None,
    comparison_id: int | None,
) -> ChampionChange:
    with session_scope(sessions) as session:
        version = repo.get_model_version_by_name(session=session, name=version_name)
        task = ModelTask(version.task)
        previous = repo.get_champion(session=session, task=task)
        previous_name = None if previous is None else previous.name
        promotion = repo.set_champion(
            session=session,
            version_id=version.id,
            actor=actor,
            reason=reason,
            numbers=numbers,
            comparison_id=comparison_id,
        )
        if promotion is None:
            raise PromotionRefusedError(f"{version_name} already is the {task} champion: nothing to do")
        requeued = repo.requeue_predicted_images(session=session)
        change = ChampionChange(
            promotion_id=promotion.id,
            action=str(promotion.action),
            task=task,
            version=version_name,
            previous=previous_name,
            comparison_id=comparison_id,
            requeued_image_ids=requeued,
        )
    logger.info(
        "%s: %s champion %s (was %s) by %s; %d unlabelled image(s) queued to be scored again",
        change.action,
        task,
        version_name,
        previous_name,
        actor,
        len(requeued),
    )
    return change


def promote_version(
    *,
    sessions: sessionmaker[Session],
    version_name: str,
    actor: str,
    reason: str,
    override: bool = False,
) -> ChampionChange:
    """Make ``version_name`` the champion of its task, with the actor's reason.

    The evidence is the version's newest comparison against the current champion. Without one, or when
    it said keep, the promotion is refused unless ``override`` (the reason then says why the engineer
    overrides, and the row records that it was an override). A retired version is rolled back to.
    """
    if not reason.strip():
        raise PromotionRefusedError("a promotion needs a reason (--reason)")
    with session_scope(sessions) as session:
        version = repo.get_model_version_by_name(session=session, name=version_name)
        champion = repo.get_champion(session=session, task=ModelTask(version.task))
        comparison = repo.latest_comparison(session=session, challenger_version_id=version.id)
        evidence = None
        if comparison is not None and champion is not None and comparison.champion_version_id == champion.id:
            evidence = (comparison.id, str(comparison.decision), comparison.reason, dict(comparison.numbers))
        champion_name = None if champion is None else champion.name
    if evidence is None and not override and champion_name is not None and champion_name != version_name:
        raise PromotionRefusedError(
            f"{version_name} has not been compared with the champion {champion_name} on the frozen "
            f"evaluation set: run `defectloop compare {ModelTask(version.task)}` first, or promote with "
            "--override and a reason"
        )
    if evidence is not None and evidence[1] != ComparisonDecision.PROMOTE and not override:
        raise PromotionRefusedError(
            f"comparison {evidence[0]} says keep the champion {champion_name} ({evidence[2]}); "
            "promote with --override and a reason to go against it"
        )
    numbers: dict[str, Any] = {} if evidence is None else dict(evidence[3])
    if override:
        numbers["override"] = True
    return _change_champion(
        sessions,
        version_name,
        actor=actor,
        reason=reason,
        numbers=numbers,
        comparison_id=None if evidence is None else evidence[0],
    )


def rollback_champion(
    *,
    sessions: sessionmaker[Session],
    task: ModelTask,
    actor: str,
    reason: str,
    to_version: str | None = None,
) -> ChampionChange:
    """Return ``task`` to the champion before the current one (or to ``to_version``, a retired
    version), with the actor's reason."""
    if not reason.strip():
        raise PromotionRefusedError("a rollback needs a reason (--reason)")
    task = ModelTask(task)
    with session_scope(sessions) as session:
        if to_version is None:
            champion = repo.get_champion(session=session, task=task)
            if champion is None:
                raise PromotionRefusedError(f"the {task} task has no champion to roll back from")
            history = [
                p
                for p in repo.list_promotions(session=session, task=task)
                if p.to_version_id == champion.id and p.from_version_id is not None
            ]
            if not history:
                raise PromotionRefusedError(
                    f"{champion.name} was the first {task} champion: there is no earlier one to roll back to"
                )
            target = repo.get_model_version(session=session, version_id=history[-1].from_version_id)  # type: ignore[arg-type]
        else:
            target = repo.get_model_version_by_name(session=session, name=to_version)
            if ModelTask(target.task) is not task:
                raise IncompatibleVersionError(f"{target.name} is a {target.task} model, not {task}")
        if target.status is not ModelStatus.RETIRED:
            raise PromotionRefusedError(
                f"{target.name} is {target.status}, not a retired champion: a rollback returns to an earlier "
                "champion; use `defectloop promote` for a candidate"
            )
        name = target.name
    return _change_champion(sessions, name, actor=actor, reason=reason, numbers=None, comparison_id=None)


def reject_version(
    *, sessions: sessionmaker[Session], version_name: str, actor: str, reason: str
) -> ChampionChange:
    """Mark a candidate (or retired) version rejected, with the actor's reason: it never becomes champion."""
    if not reason.strip():
        raise PromotionRefusedError("a rejection needs a reason (--reason)")
    with session_scope(sessions) as session:
        version = repo.get_model_version_by_name(session=session, name=version_name)
        comparison = repo.latest_comparison(session=session, challenger_version_id=version.id)
        row = repo.reject_model_version(
            session=session,
            version_id=version.id,
            actor=actor,
            reason=reason,
            numbers=None if comparison is None else dict(comparison.numbers),
            comparison_id=None if comparison is None else comparison.id,
        )
        return ChampionChange(
            promotion_id=row.id,
            action=str(row.action),
            task=ModelTask(version.task),
            version=version_name,
            previous=None,
            comparison_id=row.comparison_id,
            requeued_image_ids=[],
        )


def compare_new_challengers(
    *,
    sessions: sessionmaker[Session],
    report: RetrainReport,
    tasks: Sequence[ModelTask],
    policy: PromotionPolicy,
    auto_promote: bool,
    actor: str,
) -> list[ComparisonReport]:
    """After a retrain: each task's new challengers against its champion (a first champion has nothing
    to meet), promoting by ``policy`` when ``auto_promote``. One comparison per task that has any."""
    comparisons = []
    for task in tasks:
        names = [o.version_name for o in report.trained if o.task is task and not o.is_champion]
        if names:
            comparisons.append(
                compare_challengers(
                    sessions=sessions,
                    task=task,
                    challengers=names,
                    policy=policy,
                    auto_promote=auto_promote,
                    actor=actor,
                )
            )
    return comparisons


def run_requested_retrain(
    *,
    sessions: sessionmaker[Session],
    plan: RetrainPlan,
    label_space: LabelSpace,
    artifacts_dir: Path,
    actor: str = "worker",
) -> dict[str, Any]:
    """Claim the queued whole-retrain requests and, if there were any, retrain every architecture for
    both tasks, compare the challengers with the champions and (with ``plan.auto_promote``) promote by
    the policy; close the requests with what was done. Nothing queued: nothing done (a duplicate
    message is harmless). Returns a JSON-able summary, with the images a champion change re-queued."""
    claimed = claim_requests(sessions)
    if not claimed:
        return {"claimed": [], "trained": [], "failed": [], "comparisons": [], "requeued_image_ids": []}
    with session_scope(sessions) as session:
        trigger = repo.get_training_run(session=session, run_id=claimed[0]).trigger
    try:
        report = retrain_challengers(
            sessions=sessions,
            tasks=tuple(ModelTask),
            architectures=plan.architectures,
            label_space=label_space,
            input_spec=InputSpec(image_size=plan.image_size, channels=plan.channels),
            artifacts_dir=artifacts_dir,
            evaluation_fraction=plan.evaluation_fraction,
            hyperparameters=Hyperparameters(
                epochs=plan.epochs, batch_size=plan.batch_size, patience=plan.patience
            ),
            threads=plan.threads,
            trigger=trigger,
            actor=actor,
        )
        comparisons: list[dict[str, Any]] = []
        requeued: list[int] = []
        for comparison in compare_new_challengers(
            sessions=sessions,
            report=report,
            tasks=tuple(ModelTask),
            policy=plan.policy,
            auto_promote=plan.auto_promote,
            actor=POLICY_ACTOR,
        ):
            if comparison.change is not None:
                requeued.extend(comparison.change.requeued_image_ids)
            comparisons.append(
                {
                    "task": str(comparison.task),
                    "champion": None if comparison.champion is None else comparison.champion.name,
                    "n_images": comparison.n_images,
                    "decisions": {r.version.name: r.decision.reason for r in comparison.challengers},
                    "best": None if comparison.best is None else comparison.best.version.name,
                    "promoted": comparison.promoted,
                }
            )
    except BaseException as exc:
        finish_requests(sessions, claimed, details={}, error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    failed = [f"{f.task} {f.architecture}: {f.error}" for f in report.failed]
    details: dict[str, Any] = {
        "trained": [o.version_name for o in report.trained],
        "failed": failed,
        "comparisons": comparisons,
        "evaluation_members": {str(t): n for t, n in report.evaluation.members.items()},
    }
    error = None if report.trained else "no version could be trained: " + "; ".join(failed)
    finish_requests(sessions, claimed, details=details, error=error)
    return {"claimed": claimed, **details, "requeued_image_ids": sorted(set(requeued))}
