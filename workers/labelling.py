"""The labelling side of the loop as the workers run it: choose images, push them, record the answers.

- ``plan_labelling_batch`` ranks the predicted, unlabelled images of the current champions with the
  configured strategy (``models.selection``) and plans the top ``k`` as ``pending`` label tasks.
- ``push_labelling_batch`` hands planned tasks to a ``LabellingSink`` (Label Studio in production, a
  recording fake in tests) and stores the task ids it gets back. The planned rows are committed BEFORE
  anything is sent, and a retried push first asks the sink to adopt tasks that already exist for those
  images, so a crash between Label Studio's import and our commit never makes a second task.
- ``refresh_labelling_predictions``: after a champion change, the open tasks get predictions of the new
  version and the project's model version moves, so Label Studio's queue re-ranks.
- ``record_annotation_events`` records what annotators did (webhook or reconciliation), idempotently by
  Label Studio annotation id, and moves the image to ``labelled`` (or back to ``labelling`` when its last
  label is deleted).
- ``reconcile_annotations`` pulls the annotations changed since the last sync from the Label Studio API
  (webhooks are sent once, without retry) and records them, and finds the annotations deleted while
  nobody listened; ``full=True`` is the disaster resync, which re-reads every annotation.

Everything that talks to Label Studio is injected (``LabellingSink``, ``AnnotationSource``); the
production implementations at the bottom wrap ``labelling.gateway``.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import AnnotationOrigin, ImageStatus, LabelTaskStatus, Prediction, utcnow
from db.session import session_scope
from labelling.errors import PayloadError
from labelling.names import IMAGE_ID_KEY, SIMULATED_ANNOTATOR
from labelling.payloads import AnnotationAction, AnnotationEvent, parse_annotation
from models.selection import DEFAULT_STRATEGY, select, strategy_spec
from workers.errors import WorkerError

if TYPE_CHECKING:
    from labelling.gateway import LabelStudioGateway

logger = logging.getLogger(__name__)

__all__ = [
    "AnnotationSource",
    "Embedder",
    "HeatmapWriter",
    "LabelStudioSink",
    "LabellingConfigError",
    "LabellingSink",
    "PushItem",
    "PushReport",
    "ReconcileReport",
    "RecordReport",
    "Scorer",
    "annotation_origin",
    "choose_candidates",
    "current_model_key",
    "cursor_name",
    "plan_labelling_batch",
    "push_labelling_batch",
    "reconcile_annotations",
    "record_annotation_events",
    "record_simulated_annotations",
    "refresh_labelling_predictions",
]

# Reconciliation re-reads a little before its cursor: Label Studio stamps updated_at before its
# transaction commits, so an annotation can become visible with a time slightly behind the cursor.
RECONCILE_OVERLAP = timedelta(minutes=2)

Embedder = Callable[[Sequence[tuple[int, str]]], npt.NDArray[np.float32]]
"""Penultimate embeddings (N, D) of the given (image id, path) pairs, in order (for kcenter / hybrid)."""


class LabellingConfigError(WorkerError, ValueError):
    """The labelling settings cannot work as given (e.g. BALD without MC-dropout passes)."""


@dataclass(frozen=True)
class PushItem:
    """One image to show annotators: the champion's guess and how informative its label would be."""

    image_id: int
    path: str
    predicted_label: str
    probabilities: Mapping[str, float]
    informativeness: float
    model_version: str
    ls_task_id: int | None = None


class LabellingSink(Protocol):
    """Where planned labelling work goes (Label Studio; a recording fake in tests)."""

    def push(self, items: Sequence[PushItem], *, adopt_existing: bool) -> dict[int, int]:
        """Create one task per item; image id -> task id for every item.

        With ``adopt_existing``, tasks that already exist for an item's image are returned instead of
        creating a second one (a retry after a crash between creating and recording).
        """
        ...

    def refresh(self, items: Sequence[PushItem], *, model_version: str) -> None:
        """Give existing tasks (``ls_task_id`` set) a prediction of ``model_version``; make it current."""
        ...

    def remove(self, ls_task_ids: Sequence[int]) -> None:
        """Delete these tasks (their photos changed under them: a label would go to the wrong bytes)."""
        ...


class AnnotationSource(Protocol):
    """Where reconciliation reads annotations from (the Label Studio API)."""

    def list_annotations(
        self, *, project_id: int, updated_after: datetime | None = None
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]: ...

    def annotation_counts(self, *, project_id: int) -> dict[int, int]:
        """Task id -> how many annotations (skipped ones included) the project's tasks hold now."""
        ...

    def annotation_ids(self, *, task_id: int) -> set[int]:
        """The ids of the annotations one task holds now."""
        ...


# --- choosing --------------------------------------------------------------------------------------


def _probability_matrix(predictions: Sequence[Prediction], classes: Sequence[str]) -> npt.NDArray[np.float64]:
    probs = np.array(
        [[float(p.probabilities.get(c, 0.0)) for c in classes] for p in predictions], dtype=float
    )
    sums = probs.sum(axis=1, keepdims=True)
    # A binary-only champion's distribution has every class; a guard for rows that lost mass anyway.
    return np.where(sums > 0, probs / np.where(sums > 0, sums, 1.0), 1.0 / len(classes))


def choose_candidates(
    predictions: Sequence[Prediction],
    *,
    strategy: str,
    k: int,
    classes: Sequence[str],
    seed: int = 0,
    embed: Embedder | None = None,
    paths: Mapping[int, str] | None = None,
) -> list[tuple[Prediction, float]]:
    """The ``k`` most informative predictions by ``strategy``, most informative first, with informativeness.

    Works on the stored predictions: probabilities for the strategies that rank them, the stored score
    (computed by the classifier from its MC-dropout passes) for one that needs MC passes (bald), and
    embeddings from ``embed`` for one that needs embeddings (kcenter / hybrid).
    """
    if not predictions or k <= 0:
        return []
    spec = strategy_spec(strategy)
    if spec.needs_mc_passes:
        # The classifier stores the score of its MC-dropout passes under the strategy's name.
        if any(spec.name not in p.uncertainty for p in predictions):
            raise LabellingConfigError(
                f"strategy {spec.name} needs predictions made with MC-dropout passes (workers run them "
                f"only while DEFECTLOOP_STRATEGY={spec.name}, with DEFECTLOOP_MC_DROPOUT_PASSES >= 2, and "
                "only for a champion with dropout, not baseline_cnn); images predicted before have none: "
                "choose another DEFECTLOOP_STRATEGY for them"
            )
        scores = np.array([float(p.uncertainty[spec.name]) for p in predictions])
        order = sorted(range(len(predictions)), key=lambda i: (-scores[i], predictions[i].image_id))[:k]
        bound = float(np.log(len(classes)))
        return [(predictions[i], float(np.clip(scores[i] / bound, 0.0, 1.0))) for i in order]
    embeddings = None
    if spec.needs_embeddings:
        if embed is None or paths is None:
            raise LabellingConfigError(f"strategy {strategy} needs image embeddings; none are available here")
        embeddings = embed([(p.image_id, paths[p.image_id]) for p in predictions])
    selection = select(
        strategy, k, probs=_probability_matrix(predictions, classes), embeddings=embeddings, seed=seed
    )
    return [
        (predictions[index], float(info))
        for index, info in zip(selection.indices, selection.informativeness, strict=True)
    ]


def current_model_key(session: Session) -> str | None:
    """The model key of the current champions ("b12-m7"), or None before a binary champion exists."""
    return repo.current_model_key(session=session)


_MODEL_KEY = re.compile(r"b(\d+)-m(\d+|-)")


def label_studio_version(session: Session, model_key: str) -> str:
    """The name Label Studio shows for a model key: the registry names of its versions.

    ``"b12-m7"`` -> ``"binary-resnet18-0012+multiclass-improved_cnn-0007"`` (``versions`` lists the
    same names), so an annotator or engineer reading a prediction in Label Studio can find its model.
    A key whose versions are gone stays as it is.
    """
    match = _MODEL_KEY.fullmatch(model_key)
    if match is None:
        return model_key
    try:
        names = [repo.get_model_version(session=session, version_id=int(match[1])).name]
        if match[2] != "-":
            names.append(repo.get_model_version(session=session, version_id=int(match[2])).name)
    except LookupError:
        return model_key
    return "+".join(names)


def plan_labelling_batch(
    *,
    session: Session,
    ls_project_id: int,
    strategy: str,
    k: int,
    classes: Sequence[str],
    seed: int = 0,
    embed: Embedder | None = None,
    pool_limit: int = 20_000,
) -> list[int]:
    """Choose up to ``k`` images and plan them as pending label tasks; the planned label task ids.

    Only images predicted by the current champions, not yet planned for the project and not labelled
    are candidates (``repo.list_labelling_candidates``); ``pool_limit`` caps the pool (newest first).
    """
    model_key = current_model_key(session)
    if model_key is None:
        logger.info("no binary champion yet: nothing to choose for labelling")
        return []
    pool = repo.list_labelling_candidates(
        session=session, model_key=model_key, ls_project_id=ls_project_id, limit=pool_limit
    )
    paths = None
    if strategy_spec(strategy).needs_embeddings:
        paths = {
            image.id: image.path
            for image in repo.list_images_by_ids(session=session, image_ids=[p.image_id for p in pool])
        }
    chosen = choose_candidates(
        pool, strategy=strategy, k=k, classes=classes, seed=seed, embed=embed, paths=paths
    )
    planned = []
    for prediction, informativeness in chosen:
        task, created = repo.add_label_task(
            session=session,
            image_id=prediction.image_id,
            ls_project_id=ls_project_id,
            informativeness=informativeness,
            strategy=strategy,
            model_key=model_key,
        )
        if created:
            planned.append(task.id)
    logger.info(
        "planned %d of %d candidates for labelling in project %d (strategy %s, model %s)",
        len(planned),
        len(pool),
        ls_project_id,
        strategy,
        model_key,
    )
    return planned


# --- pushing ---------------------------------------------------------------------------------------

PUSH_LEASE = timedelta(minutes=15)
"""How long a push may hold the project's push lease; a pusher that dies frees it when this runs out."""


def push_lease_name(ls_project_id: int) -> str:
    return f"label-studio:{ls_project_id}:push"


@contextmanager
def exclusive_push(sessions: sessionmaker[Session], ls_project_id: int) -> Iterator[bool]:
    """Hold the project's push lease while the block runs; yields False when another process holds it.

    Two pushes at once (beat's and an engineer's ``labelling push``) could otherwise both send the same
    pending tasks before either records the ids Label Studio gave them.
    """
    name = push_lease_name(ls_project_id)
    with session_scope(sessions) as session:
        held = repo.try_acquire_lease(session=session, name=name, until=utcnow() + PUSH_LEASE)
    if not held:
        logger.info("another push to project %d is running; this one does nothing", ls_project_id)
        yield False
        return
    try:
        yield True
    finally:
        with session_scope(sessions) as session:
            repo.release_lease(session=session, name=name)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _exclusive(on_busy: Callable[[], _R]) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Run the (keyword-only ``sessions``, ``ls_project_id``) function under the project's push lease;
    ``on_busy()`` is the answer when another process holds it."""

    def decorate(function: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(function)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            sessions = cast("sessionmaker[Session]", kwargs["sessions"])
            with exclusive_push(sessions, int(cast(int, kwargs["ls_project_id"]))) as held:
                return function(*args, **kwargs) if held else on_busy()

        return wrapper

    return decorate


@dataclass
class PushReport:
    """What one push did: label task ids planned now, and image id -> Label Studio task id pushed."""

    planned: list[int] = field(default_factory=list)
    pushed: dict[int, int] = field(default_factory=dict)
    retried: int = 0
    skipped: bool = False  # another push held the project's lease

    def as_dict(self) -> dict[str, Any]:
        return {
            "planned": len(self.planned),
            "pushed": len(self.pushed),
            "retried": self.retried,
            "skipped": self.skipped,
        }


def _push_items(session: Session, ls_project_id: int, tasks: Iterable[Any]) -> list[PushItem]:
    items = []
    for task in tasks:
        image = repo.get_image(session=session, image_id=task.image_id)
        if image.status is ImageStatus.SUPERSEDED:
            continue  # retire_superseded_tasks takes it back
        prediction = repo.latest_prediction(session=session, image_id=task.image_id, model_key=task.model_key)
        if prediction is None:  # planned under a key whose prediction is gone: take the newest one
            prediction = repo.latest_prediction(session=session, image_id=task.image_id)
        if prediction is None:
            logger.warning("label task %d: image %d has no prediction; not pushed", task.id, task.image_id)
            continue
        items.append(
            PushItem(
                image_id=image.id,
                path=image.path,
                predicted_label=prediction.predicted_label,
                probabilities=dict(prediction.probabilities),
                informativeness=float(task.informativeness),
                model_version=label_studio_version(session, prediction.model_key),
                ls_task_id=task.ls_task_id,
            )
        )
    return items


@_exclusive(lambda: PushReport(skipped=True))
def push_labelling_batch(
    *,
    sessions: sessionmaker[Session],
    sink: LabellingSink,
    ls_project_id: int,
    strategy: str,
    k: int,
    classes: Sequence[str],
    seed: int = 0,
    embed: Embedder | None = None,
    keep_open: int | None = None,
) -> PushReport:
    """Plan up to ``k`` new images (plus any earlier push that did not finish) and push them to ``sink``.

    With ``keep_open`` (beat's push), only as many as bring the project's open tasks (pushed, waiting
    for a label) up to it: the queue stays supplied while the rest of the pool waits to be ranked by
    later, better models.

    Safe to run twice at once or after a crash at any point: one push per project runs at a time (a
    lease in the database; the other returns an empty report), planning is idempotent per (image,
    project), the plan is committed before the sink is called, retried tasks are adopted rather than
    duplicated, and recording the Label Studio ids is idempotent. When the sink fails the tasks are
    marked ``failed`` with the reason and the error is re-raised (the Celery task retries transient ones).
    """
    report = PushReport()
    with session_scope(sessions) as session:
        unfinished = repo.list_label_tasks(
            session=session,
            ls_project_id=ls_project_id,
            statuses=[LabelTaskStatus.PENDING, LabelTaskStatus.FAILED],
        )
        report.retried = len(unfinished)
        if keep_open is not None:
            waiting = repo.list_label_tasks(
                session=session, ls_project_id=ls_project_id, statuses=[LabelTaskStatus.PUSHED]
            )
            k = min(k, max(0, keep_open - len(waiting) - len(unfinished)))
        report.planned = (
            []
            if k <= 0
            else plan_labelling_batch(
                session=session,
                ls_project_id=ls_project_id,
                strategy=strategy,
                k=k,
                classes=classes,
                seed=seed,
                embed=embed,
            )
        )
    with session_scope(sessions) as session:
        tasks = repo.list_label_tasks(
            session=session,
            ls_project_id=ls_project_id,
            statuses=[LabelTaskStatus.PENDING, LabelTaskStatus.FAILED],
        )
        items = _push_items(session, ls_project_id, tasks)
        task_ids = {task.image_id: task.id for task in tasks}
    if not items:
        return report
    # Most informative first, so a partial import leaves the best tasks in the queue.
    items.sort(key=lambda item: (-item.informativeness, item.image_id))
    try:
        pushed = sink.push(items, adopt_existing=report.retried > 0)
    except Exception as exc:
        with session_scope(sessions) as session:
            for item in items:
                repo.mark_label_task_failed(
                    session=session, label_task_id=task_ids[item.image_id], reason=f"push failed: {exc}"[:500]
                )
        raise
    with session_scope(sessions) as session:
        for image_id, ls_task_id in pushed.items():
            repo.mark_label_task_pushed(
                session=session, label_task_id=task_ids[image_id], ls_task_id=ls_task_id
            )
            repo.set_image_status(
                session=session,
                image_id=image_id,
                status=ImageStatus.LABELLING,
                expected=ImageStatus.PREDICTED,
            )
    report.pushed = dict(pushed)
    logger.info("pushed %d task(s) to project %d (%d retried)", len(pushed), ls_project_id, report.retried)
    return report


@_exclusive(lambda: 0)
def retire_superseded_tasks(
    *, sessions: sessionmaker[Session], sink: LabellingSink, ls_project_id: int
) -> int:
    """Take back the open tasks whose image was superseded (its file now holds other bytes); how many.

    Their photo URL would show the new bytes under the old image's task, and a label would go to a row
    that no longer is an image. The new bytes are an image of their own, ranked and pushed like any other.
    """
    with session_scope(sessions) as session:
        tasks = repo.list_label_tasks(
            session=session,
            ls_project_id=ls_project_id,
            statuses=[LabelTaskStatus.PENDING, LabelTaskStatus.PUSHED, LabelTaskStatus.FAILED],
        )
        images = {
            i.id: i for i in repo.list_images_by_ids(session=session, image_ids=[t.image_id for t in tasks])
        }
        stale = [
            (task.id, task.image_id, task.ls_task_id, images[task.image_id].superseded_by_id)
            for task in tasks
            if images[task.image_id].status is ImageStatus.SUPERSEDED
        ]
    if not stale:
        return 0
    sink.remove([ls_task_id for _, _, ls_task_id, _ in stale if ls_task_id is not None])
    with session_scope(sessions) as session:
        for label_task_id, image_id, ls_task_id, by in stale:
            repo.delete_open_label_task(session=session, label_task_id=label_task_id)
            logger.info(
                "task %s of image %d taken back from project %d: its file now holds image %s",
                ls_task_id,
                image_id,
                ls_project_id,
                by,
            )
    return len(stale)


Scorer = Callable[[Sequence[tuple[int, str]]], None]
"""Store predictions of the current champions for these (image id, path) pairs, without moving status."""


@_exclusive(lambda: 0)
def refresh_labelling_predictions(
    *,
    sessions: sessionmaker[Session],
    sink: LabellingSink,
    ls_project_id: int,
    strategy: str,
    classes: Sequence[str],
    score: Scorer | None = None,
) -> int:
    """After a champion change: predictions of the new champions for the open tasks; how many moved.

    Open tasks are pushed ones still waiting for a label whose prediction is of an older model. Images
    without a prediction of the current champions are scored first (``score``). Their informativeness
    is recomputed together so that Label Studio's order follows the new model; strategies that need
    embeddings re-rank by entropy here (the open tasks were already chosen for diversity). Runs under
    the project's push lease (0 when another push holds it).
    """
    with session_scope(sessions) as session:
        model_key = current_model_key(session)
        if model_key is None:
            return 0
        stale = [
            task
            for task in repo.list_label_tasks(
                session=session, ls_project_id=ls_project_id, statuses=[LabelTaskStatus.PUSHED]
            )
            if task.model_key != model_key
        ]
        missing = []
        for task in stale:
            if repo.latest_prediction(session=session, image_id=task.image_id, model_key=model_key) is None:
                image = repo.get_image(session=session, image_id=task.image_id)
                missing.append((image.id, image.path))
    if not stale:
        return 0
    if missing:
        if score is None:
            raise LabellingConfigError("open tasks need predictions of the new champions; no scorer given")
        score(missing)
    with session_scope(sessions) as session:
        rows = []
        for task in stale:
            prediction = repo.latest_prediction(session=session, image_id=task.image_id, model_key=model_key)
            if prediction is not None:
                rows.append((task, prediction))
        rank_by = DEFAULT_STRATEGY if strategy_spec(strategy).needs_embeddings else strategy
        ranked = choose_candidates([p for _, p in rows], strategy=rank_by, k=len(rows), classes=classes)
        info = {p.image_id: value for p, value in ranked}
        shown_version = label_studio_version(session, model_key)
        items = []
        for task, prediction in rows:
            image = repo.get_image(session=session, image_id=task.image_id)
            items.append(
                PushItem(
                    image_id=image.id,
                    path=image.path,
                    predicted_label=prediction.predicted_label,
                    probabilities=dict(prediction.probabilities),
                    informativeness=info[image.id],
                    model_version=shown_version,
                    ls_task_id=task.ls_task_id,
                )
            )
        task_ids = {task.image_id: task.id for task, _ in rows}
    sink.refresh(items, model_version=shown_version)
    with session_scope(sessions) as session:
        for item in items:
            repo.set_label_task_model_key(
                session=session,
                label_task_id=task_ids[item.image_id],
                model_key=model_key,
                informativeness=item.informativeness,
            )
    logger.info("re-ranked %d open task(s) of project %d under %s", len(items), ls_project_id, model_key)
    return len(items)


# --- recording annotations -------------------------------------------------------------------------


@dataclass
class RecordReport:
    """What recording a list of annotation events changed, by outcome."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    unknown: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "unknown": len(self.unknown),
        }


def _image_of(session: Session, event: AnnotationEvent) -> int | None:
    if event.ls_project_id is not None and event.ls_task_id is not None:
        task = repo.get_label_task_by_ls_id(
            session=session, ls_project_id=event.ls_project_id, ls_task_id=event.ls_task_id
        )
        if task is not None:
            return task.image_id
    return event.image_id


def _settle_image(session: Session, image_id: int, ls_project_id: int | None, ls_task_id: int | None) -> None:
    """Move the image to ``labelled`` when it has a standing label, back to ``labelling`` when not."""
    if repo.current_label(session=session, image_id=image_id) is not None:
        repo.set_image_status(
            session=session,
            image_id=image_id,
            status=ImageStatus.LABELLED,
            expected=[ImageStatus.PREDICTED, ImageStatus.LABELLING, ImageStatus.NEW, ImageStatus.QUEUED],
        )
        if ls_project_id is not None and ls_task_id is not None:
            repo.mark_label_task_completed(
                session=session, ls_project_id=ls_project_id, ls_task_id=ls_task_id
            )
    else:
        repo.set_image_status(
            session=session, image_id=image_id, status=ImageStatus.LABELLING, expected=ImageStatus.LABELLED
        )
        if ls_task_id is not None:
            # The task waits for a label again: the next champion re-scores it like any open task.
            repo.reopen_label_task(session=session, ls_task_id=ls_task_id, ls_project_id=ls_project_id)


def annotation_origin(annotator: str | None) -> AnnotationOrigin:
    """``simulated`` for the demo's simulated annotator (``labelling.names.SIMULATED_ANNOTATOR``, the
    Label Studio user it answers as), ``label_studio`` for everyone else who annotated in Label Studio."""
    if annotator is not None and annotator.lower() == SIMULATED_ANNOTATOR:
        return AnnotationOrigin.SIMULATED
    return AnnotationOrigin.LABEL_STUDIO


def record_annotation_events(*, session: Session, events: Sequence[AnnotationEvent]) -> RecordReport:
    """Record annotators' work; idempotent by Label Studio annotation id (the caller commits).

    A created or updated annotation becomes (or changes) the image's label; a skipped one is kept as
    cancelled; a deleted one is marked deleted, and the image waits for a label again if it has none
    left. Events for tasks defectloop did not push are counted as unknown and otherwise ignored.
    """
    report = RecordReport()
    for event in events:
        if event.action is AnnotationAction.DELETED:
            # A deletion carries only the annotation id: the stored row says which image it was.
            if repo.mark_annotation_deleted(session=session, ls_annotation_id=event.ls_annotation_id):
                report.deleted += 1
                stored = repo.get_annotation_by_ls_id(
                    session=session, ls_annotation_id=event.ls_annotation_id
                )
                if stored is not None:
                    _settle_image(session, stored.image_id, None, stored.ls_task_id)
                logger.info("annotation %d deleted", event.ls_annotation_id)
            else:
                report.unchanged += 1
            continue
        image_id = _image_of(session, event)
        if image_id is None or event.ls_task_id is None:
            report.unknown.append(f"annotation {event.ls_annotation_id} of task {event.ls_task_id}")
            logger.warning(
                "annotation %d of Label Studio task %d: not a task defectloop pushed; ignored",
                event.ls_annotation_id,
                event.ls_task_id,
            )
            continue
        origin = annotation_origin(event.annotator)
        annotation, outcome = repo.record_annotation(
            session=session,
            image_id=image_id,
            label=None if event.was_cancelled else event.label,
            annotator=event.annotator,
            ls_annotation_id=event.ls_annotation_id,
            ls_task_id=event.ls_task_id,
            origin=origin,
            was_cancelled=event.was_cancelled,
            annotated_at=event.annotated_at,
        )
        if annotation.annotator == event.annotator and annotation.origin is not origin:
            # The annotator became known on a later delivery (a webhook names a user id when Label
            # Studio could not say its e-mail; reconciliation names the e-mail): so does the origin.
            annotation.origin = origin
            session.flush()
        setattr(report, str(outcome), getattr(report, str(outcome)) + 1)
        _settle_image(session, image_id, event.ls_project_id, event.ls_task_id)
        logger.info(
            "annotation %d of image %d (task %d): %s %s",
            event.ls_annotation_id,
            image_id,
            event.ls_task_id,
            outcome,
            "skipped" if event.was_cancelled else event.label,
        )
    return report


def record_simulated_annotations(
    *, session: Session, labels: Mapping[int, str], annotator: str
) -> RecordReport:
    """Record labels a simulated annotator gave from ground truth (``defectloop demo`` without Label
    Studio): origin ``simulated``, through the same repository call and image settling as annotators'
    work. Idempotent: the same image, annotator and label twice is one annotation (the caller commits)."""
    report = RecordReport()
    for image_id, label in labels.items():
        _, outcome = repo.record_annotation(
            session=session,
            image_id=image_id,
            label=label,
            annotator=annotator,
            origin=AnnotationOrigin.SIMULATED,
        )
        setattr(report, str(outcome), getattr(report, str(outcome)) + 1)
        _settle_image(session, image_id, None, None)
    logger.info("recorded %d simulated label(s) by %s: %s", len(labels), annotator, report.as_dict())
    return report


# --- reconciliation --------------------------------------------------------------------------------


@dataclass
class ReconcileReport:
    """What one reconciliation found and recorded."""

    seen: int = 0
    invalid: list[str] = field(default_factory=list)
    recorded: RecordReport = field(default_factory=RecordReport)
    cursor: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "invalid": len(self.invalid),
            **self.recorded.as_dict(),
            "cursor": None if self.cursor is None else self.cursor.isoformat(),
        }


def cursor_name(ls_project_id: int) -> str:
    return f"label-studio:{ls_project_id}:annotations"


def reconcile_annotations(
    *,
    sessions: sessionmaker[Session],
    source: AnnotationSource,
    ls_project_id: int,
    classes: Sequence[str],
    full: bool = False,
) -> ReconcileReport:
    """Record the project's annotations changed since the last sync (all of them with ``full``).

    Idempotent: what webhooks already recorded is unchanged. The cursor advances only after the
    annotations up to it are committed. Annotations we hold that Label Studio no longer has are marked
    deleted: found by comparing per-task counts (``full``: by the complete listing).
    """
    report = ReconcileReport()
    with session_scope(sessions) as session:
        since = None if full else repo.get_sync_cursor(session=session, name=cursor_name(ls_project_id))
    updated_after = None if since is None else since - RECONCILE_OVERLAP
    pairs = source.list_annotations(project_id=ls_project_id, updated_after=updated_after)
    events: list[AnnotationEvent] = []
    newest = since
    for annotation, task in pairs:
        report.seen += 1
        try:
            event = parse_annotation(annotation, task, classes=classes)
        except PayloadError as exc:
            report.invalid.append(f"annotation {annotation.get('id')}: {exc}")
            logger.warning("reconcile: annotation %s not recorded: %s", annotation.get("id"), exc)
            continue
        events.append(event if event.ls_project_id is not None else _with_project(event, ls_project_id))
        if event.annotated_at is not None and (newest is None or event.annotated_at > newest):
            newest = event.annotated_at
    with session_scope(sessions) as session:
        report.recorded = record_annotation_events(session=session, events=events)
        held = repo.list_ls_annotation_ids(session=session, ls_project_id=ls_project_id)
        if full:
            listed = {event.ls_annotation_id for event in events}
            gone = [(annotation, task) for annotation, task in held if annotation not in listed]
        else:
            gone = _deleted_since(source, ls_project_id, held)
        if gone:
            deletions = [_deletion(annotation_id, task_id, ls_project_id) for annotation_id, task_id in gone]
            report.recorded.deleted += record_annotation_events(session=session, events=deletions).deleted
        if newest is not None:
            report.cursor = repo.advance_sync_cursor(
                session=session, name=cursor_name(ls_project_id), position=newest
            )
    logger.info("reconciled project %d: %s", ls_project_id, report.as_dict())
    return report


def _deleted_since(
    source: AnnotationSource, ls_project_id: int, held: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The annotations we hold that Label Studio deleted: (annotation id, task id) pairs.

    A deletion leaves nothing to list by time, so: one light count per task, and the annotation ids of
    just the tasks where Label Studio now holds fewer than we do (a task gone altogether lost them all).
    """
    ours: dict[int, set[int]] = {}
    for annotation_id, task_id in held:
        ours.setdefault(task_id, set()).add(annotation_id)
    if not ours:
        return []
    counts = source.annotation_counts(project_id=ls_project_id)
    gone: list[tuple[int, int]] = []
    for task_id, annotation_ids in sorted(ours.items()):
        if counts.get(task_id, 0) >= len(annotation_ids):
            continue
        still = source.annotation_ids(task_id=task_id) if task_id in counts else set()
        gone.extend((annotation_id, task_id) for annotation_id in sorted(annotation_ids - still))
    return gone


def _deletion(ls_annotation_id: int, ls_task_id: int, ls_project_id: int) -> AnnotationEvent:
    return AnnotationEvent(
        action=AnnotationAction.DELETED,
        ls_annotation_id=ls_annotation_id,
        ls_task_id=ls_task_id,
        ls_project_id=ls_project_id,
        image_id=None,
        label=None,
        annotator=None,
        annotated_at=None,
        was_cancelled=False,
    )


def _with_project(event: AnnotationEvent, ls_project_id: int) -> AnnotationEvent:
    from dataclasses import replace

    return replace(event, ls_project_id=ls_project_id)


# --- Label Studio implementations ------------------------------------------------------------------


class HeatmapWriter(Protocol):
    """Writes the Grad-CAM overlay of an image to a PNG file; False when it cannot."""

    def __call__(self, image_id: int, path: str) -> bool: ...


@dataclass
class LabelStudioSink:
    """``LabellingSink`` on a real Label Studio project through ``labelling.gateway``.

    Images and heat-maps are given to Label Studio as signed URLs of our HTTP app (``media_url``): the
    annotator's browser fetches them from us, wherever the camera folders are.
    """

    gateway: LabelStudioGateway
    project_id: int
    media_url: Callable[[str, int], str]
    heatmap: HeatmapWriter | None = None
    good_class: str = "ok"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _existing(self, image_ids: set[int]) -> dict[int, int]:
        found: dict[int, int] = {}
        for task in self.gateway.list_tasks(project_id=self.project_id):
            data = task.get("data") or {}
            image_id = data.get(IMAGE_ID_KEY)
            if isinstance(image_id, int) and image_id in image_ids:
                found.setdefault(image_id, int(task["id"]))
        return found

    def _task(self, item: PushItem) -> dict[str, Any]:
        """The task payload of an item, drawing its heat-map (with the current binary champion) first."""
        from labelling.payloads import TaskSpec, build_task

        has_heatmap = self.heatmap is not None and self.heatmap(item.image_id, item.path)
        return build_task(
            TaskSpec(
                image_id=item.image_id,
                image_url=self.media_url("image", item.image_id),
                heatmap_url=self.media_url("heatmap", item.image_id) if has_heatmap else None,
                predicted_label=item.predicted_label,
                informativeness=item.informativeness,
                model_version=item.model_version,
                probabilities=item.probabilities,
                good_class=self.good_class,
            )
        )

    def push(self, items: Sequence[PushItem], *, adopt_existing: bool) -> dict[int, int]:
        with self._lock:
            pushed = self._existing({item.image_id for item in items}) if adopt_existing else {}
            if pushed:
                logger.info("adopted %d task(s) already in Label Studio", len(pushed))
            fresh = [item for item in items if item.image_id not in pushed]
            tasks = [self._task(item) for item in fresh]
            if tasks:
                ids = self.gateway.import_tasks(project_id=self.project_id, tasks=tasks)
                pushed.update({item.image_id: task_id for item, task_id in zip(fresh, ids, strict=True)})
                self.gateway.set_model_version(
                    project_id=self.project_id, model_version=fresh[0].model_version
                )
            return pushed

    def refresh(self, items: Sequence[PushItem], *, model_version: str) -> None:
        """New champions: each open task gets the heat-map redrawn by the new binary champion, the new
        guess in its data and a prediction of ``model_version``; then the project's version moves."""
        with self._lock:
            for item in items:
                if item.ls_task_id is None:
                    continue
                task = self._task(item)
                self.gateway.update_task_data(task_id=item.ls_task_id, data=task["data"])
                self.gateway.add_prediction(task_id=item.ls_task_id, prediction=task["predictions"][0])
            self.gateway.set_model_version(project_id=self.project_id, model_version=model_version)

    def remove(self, ls_task_ids: Sequence[int]) -> None:
        with self._lock:
            for task_id in ls_task_ids:
                self.gateway.delete_task(task_id=task_id)
