"""Classification of new images with the champions, and the sweep that re-queues images left waiting.

``classify_images`` is what the ``inference`` task runs. It is idempotent and safe to run twice at the
same time on the same ids (a message redelivered after a crash, or re-published by the sweeper):

1. the champions come from a per-process ``ChampionCache``: one cheap query per call compares the
   registry's champion ids with the loaded ones, and a changed champion is loaded (checkpoint verified
   against its sha256) and swapped in without a restart;
2. without a binary champion nothing is done: the images stay ``new`` and the sweeper re-publishes
   them once a champion exists (no retry storm);
3. of the given ids, those still ``new`` or ``queued`` are classified in batches of ``batch_size``; the
   ``new`` ones among them are first moved to ``queued`` (taken), so that another worker's collection
   (below) leaves them alone;
4. micro-batching: a batch smaller than ``batch_size`` (a message with a single id, the usual case
   under a steady camera flow) is topped up with images waiting in ``new``, oldest first, taken with the
   same compare-and-set ``new -> queued`` (of two workers, one takes an image), polling until the batch
   is full or ``collect_timeout_s`` (a worker's ``DEFECTLOOP_INFERENCE_BATCH_TIMEOUT_MS``) has passed
   since the oldest image of the batch was recorded: an image waits for company at most that long in
   all, broker included, and one that already waited that long in a backlog is not held back further
   (a busy worker never idles while images queue up). Every image taken has its own message in the
   broker: that message finds the image predicted and is a no-op. A message that brings nothing to
   classify does not wait;
5. each batch is committed in ONE transaction per batch: the compare-and-set ``new|queued ->
   predicted`` first, then the prediction row (idempotent on image and model versions), only for the
   images whose status this call moved. Of two runs racing on one image, exactly one moves it and
   records a prediction; a crash before the commit leaves the image ``queued`` (or ``new``): its own
   message, or the sweeper, has it classified by the next run.

A ``queued`` image cannot tell whether the sweeper re-published it or another worker holds it, so a
message for it is always honoured: two workers may then compute the same image, but only one records
it (exactly once is kept; only work is wasted, and only with several workers racing).

An image file that can no longer be read is quarantined with the reason, never retried. The file is
read once and hashed (`workers.image_reading.load_verified`): a file that no longer holds the row's bytes
(overwritten in place, or replaced by a rename, since it was recorded) is never classified under that
row; the row becomes ``superseded`` (the watcher records the new bytes as an image of their own).

Every image a call takes is claimed by this worker process (``images.claimed_by``, see
`workers.claims`): a worker that starts re-publishes at once the images claimed by processes that no
longer exist, instead of leaving them to the sweeper's ``stuck_after``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import ImageStatus, ModelTask
from db.session import session_scope
from models.comparison import stored_threshold
from models.labels import LabelSpace
from workers.claims import Claimant
from workers.image_reading import FileChangedError, load_verified

if TYPE_CHECKING:
    from models.infer import CombinedPrediction

logger = logging.getLogger(__name__)

__all__ = [
    "ChampionCache",
    "Champions",
    "ClassifyReport",
    "LoadedModel",
    "VersionRef",
    "classify_images",
    "load_predictor",
    "requeue_waiting_images",
]

_WAITING = (ImageStatus.NEW, ImageStatus.QUEUED)
_CHAMPION_CHANGE_RETRIES = 3
DEFAULT_POLL_INTERVAL_S = 0.025
"""How often a worker collecting a batch looks for more waiting images (a short read transaction)."""


@dataclass(frozen=True)
class VersionRef:
    """What a worker needs to know about a registered model version to load it (read from the registry)."""

    id: int
    name: str
    architecture: str
    classes: tuple[str, ...]
    input_spec: Mapping[str, Any]
    artifact_path: str
    artifact_sha256: str
    defect_threshold: float = 0.5  # a binary version's decision threshold, tuned on its validation split


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A loaded champion: its registry row and something with ``predict(batch) -> PredictionOutput``."""

    version: VersionRef
    predictor: Any


ModelLoader = Callable[[VersionRef], LoadedModel]


@dataclass(frozen=True)
class Champions:
    """The champions in use for one batch; ``binary`` is None before the first model is registered."""

    binary: LoadedModel | None
    multiclass: LoadedModel | None

    @property
    def model_key(self) -> str | None:
        if self.binary is None:
            return None
        return repo.make_model_key(
            self.binary.version.id, None if self.multiclass is None else self.multiclass.version.id
        )


def _ref(version: Any) -> VersionRef:
    return VersionRef(
        id=int(version.id),
        name=str(version.name),
        architecture=str(version.architecture),
        classes=tuple(str(c) for c in version.classes),
        input_spec=dict(version.input_spec),
        artifact_path=str(version.artifact_path),
        artifact_sha256=str(version.artifact_sha256),
        defect_threshold=stored_threshold(version.metrics),
    )


class ChampionCache:
    """The champions loaded in this process, swapped when the registry's champions change.

    ``refresh`` costs one short read transaction (the two champion ids) when nothing changed; a changed
    champion is loaded outside any transaction (on SQLite every transaction holds the write lock) and
    replaces the old one. The model of the task that did not change is kept.
    """

    def __init__(self, load: ModelLoader) -> None:
        self._load = load
        self._loaded: dict[ModelTask, LoadedModel] = {}
        self._lock = threading.Lock()  # a threads-pool worker shares one cache between its threads
        self.loads = 0

    def refresh(self, sessions: sessionmaker[Session]) -> Champions:
        with self._lock:
            return self._refresh(sessions)

    def _refresh(self, sessions: sessionmaker[Session]) -> Champions:
        with session_scope(sessions) as session:
            refs = {
                task: None if (row := repo.get_champion(session=session, task=task)) is None else _ref(row)
                for task in (ModelTask.BINARY, ModelTask.MULTICLASS)
            }
        for task, ref in refs.items():
            held = self._loaded.get(task)
            if ref is None:
                if held is not None:
                    logger.warning(
                        "the %s champion %s is no longer champion; none now", task, held.version.name
                    )
                    del self._loaded[task]
                continue
            if held is not None and held.version.id == ref.id:
                continue
            loaded = self._load(ref)
            self.loads += 1
            self._loaded[task] = loaded
            if held is None:
                logger.info("loaded %s champion %s (version %d)", task, ref.name, ref.id)
            else:
                logger.info(
                    "%s champion changed: %s -> %s (version %d); swapped in without restart",
                    task,
                    held.version.name,
                    ref.name,
                    ref.id,
                )
        return Champions(
            binary=self._loaded.get(ModelTask.BINARY), multiclass=self._loaded.get(ModelTask.MULTICLASS)
        )


def load_predictor(
    ref: VersionRef, *, mc_passes: int = 0, backend: str = "auto", num_threads: int | None = None
) -> LoadedModel:
    """Load ``ref``'s checkpoint (sha256 verified) into a ``models.infer.Predictor``."""
    from models.infer import Predictor
    from models.train import load_checkpoint

    checkpoint = load_checkpoint(ref.artifact_path, expected_sha256=ref.artifact_sha256)
    predictor = Predictor(
        checkpoint.model,
        checkpoint.architecture,
        class_names=checkpoint.class_names,
        image_size=checkpoint.input_spec.image_size,
        channels=checkpoint.input_spec.channels,
        mc_passes=mc_passes,
        backend=backend,  # type: ignore[arg-type]  # checked by Predictor, which names the valid ones
        num_threads=num_threads,
    )
    return LoadedModel(version=ref, predictor=predictor)


@dataclass
class ClassifyReport:
    """What one ``classify_images`` call did, by image id.

    ``collected`` are images taken from the database to fill a batch (not named by the message);
    ``batches`` the size of each batch classified, in order.
    """

    model_key: str | None = None
    predicted: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    quarantined: list[int] = field(default_factory=list)
    superseded: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    collected: list[int] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_key": self.model_key,
            "predicted": len(self.predicted),
            "skipped": len(self.skipped),
            "quarantined": len(self.quarantined),
            "superseded": len(self.superseded),
            "waiting": len(self.waiting),
            "collected": len(self.collected),
            "batches": list(self.batches),
        }


_Item = tuple[int, str, str | None]  # image id, path, sha256 of the bytes recorded


@dataclass
class _Predicted:
    """What `_predict` made of a batch: the ids predicted (row order of ``combined``), the unreadable
    ones with the reason, and those whose file holds other bytes now, with the reason."""

    ok: list[int] = field(default_factory=list)
    combined: CombinedPrediction | None = None
    failed: dict[int, str] = field(default_factory=dict)
    changed: dict[int, str] = field(default_factory=dict)


def _predict(champions: Champions, batch: Sequence[_Item], label_space: LabelSpace) -> _Predicted:
    """Read (bytes checked against the row), decode and classify ``batch``."""
    import torch

    from models.data import ImageLoadError, InputSpec
    from models.infer import combine_predictions

    assert champions.binary is not None
    models = [champions.binary, *([champions.multiclass] if champions.multiclass else [])]
    specs = {id(m): InputSpec.from_dict(m.version.input_spec) for m in models}
    distinct = list(dict.fromkeys(specs.values()))  # two champions with one input spec: decode once
    tensors: dict[InputSpec, list[torch.Tensor]] = {spec: [] for spec in distinct}
    out = _Predicted()
    for image_id, path, sha256 in batch:
        try:
            loaded = load_verified(path, sha256, distinct)
        except FileChangedError as exc:
            out.changed[image_id] = f"file changed after it was recorded: {exc}"[:500]
            continue
        except ImageLoadError as exc:
            out.failed[image_id] = f"unreadable at classification: {exc}"[:500]
            continue
        out.ok.append(image_id)
        for spec, tensor in loaded.items():
            tensors[spec].append(tensor)
    if not out.ok:
        return out
    stacked = {spec: torch.stack(items) for spec, items in tensors.items()}
    binary_out = champions.binary.predictor.predict(stacked[specs[id(champions.binary)]])
    multi_out = None
    if champions.multiclass is not None:
        multi_out = champions.multiclass.predictor.predict(stacked[specs[id(champions.multiclass)]])
    combined = combine_predictions(
        binary_out,
        multi_out,
        label_space=label_space,
        defect_threshold=champions.binary.version.defect_threshold,
    )
    out.combined = combined
    return out


def _take_named(
    sessions: sessionmaker[Session], ids: Sequence[int], claimant: str
) -> tuple[list[_Item], dict[int, datetime]] | None:
    """The waiting images among ``ids`` and when each was recorded, each claimed by ``claimant`` (the
    ``new`` ones moved to ``queued`` on the way); None, and nothing taken, without a binary champion."""
    with session_scope(sessions) as session:
        if repo.get_champion(session=session, task=ModelTask.BINARY) is None:
            return None
        rows = repo.list_images_by_ids(session=session, image_ids=ids, statuses=_WAITING)
        items = [(image.id, image.path, image.sha256, image.created_at) for image in rows]
        taken: list[_Item] = []
        for image_id, path, sha256, _ in items:
            # A queued image named by its message is honoured whoever held it (see the module docstring):
            # this process holds it now. Lost to another worker's collection between the read and here
            # (PostgreSQL only), a new image is queued and still waiting, so it is classified anyway.
            if repo.set_image_status(
                session=session,
                image_id=image_id,
                status=ImageStatus.QUEUED,
                expected=_WAITING,
                claimed_by=claimant,
            ):
                taken.append((image_id, path, sha256))
    return taken, {i: created for i, _, _, created in items}


def _take_new(sessions: sessionmaker[Session], limit: int, claimant: str) -> list[_Item]:
    """Up to ``limit`` images waiting in ``new``, oldest first, each moved to ``queued`` (claimed by
    ``claimant``) by this call."""
    with session_scope(sessions) as session:
        candidates = [
            (image.id, image.path, image.sha256)
            for image in repo.list_images_by_status(session=session, status=ImageStatus.NEW, limit=limit)
        ]
        return [
            item
            for item in candidates
            if repo.set_image_status(
                session=session,
                image_id=item[0],
                status=ImageStatus.QUEUED,
                expected=ImageStatus.NEW,
                claimed_by=claimant,
            )
        ]


def _collect(
    sessions: sessionmaker[Session],
    want: int,
    *,
    claimant: str,
    deadline: float,
    poll_interval_s: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> list[_Item]:
    """Take up to ``want`` waiting images: what waits now, then what arrives until ``deadline``."""
    taken: list[_Item] = []
    while True:
        taken += _take_new(sessions, want - len(taken), claimant)
        remaining = deadline - clock()
        if len(taken) >= want or remaining <= 0:
            return taken
        sleep(min(poll_interval_s, remaining))


def classify_images(
    image_ids: Iterable[int],
    *,
    sessions: sessionmaker[Session],
    champions: ChampionCache,
    label_space: LabelSpace,
    batch_size: int,
    collect_timeout_s: float = 0.0,
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    claimant: str | None = None,
) -> ClassifyReport:
    """Classify the given images that still wait, with the current champions, topping a short batch up
    with other waiting images until ``collect_timeout_s`` after the oldest of the batch was recorded
    (see the module docstring). ``clock``/``sleep`` time the wait, ``wall_clock`` tells the images'
    age (the recording time is the database's ``created_at``, in UTC). ``claimant`` is recorded on the
    images taken (default: this process, `workers.claims.Claimant`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if collect_timeout_s < 0 or poll_interval_s <= 0:
        raise ValueError(
            "collect_timeout_s must be >= 0 and poll_interval_s > 0, "
            f"got {collect_timeout_s} and {poll_interval_s}"
        )
    ids = sorted({int(i) for i in image_ids})
    report = ClassifyReport()
    claimant = claimant or str(Claimant.current())
    # Taken (claimed) before the champions are loaded: a worker killed while loading them leaves claims
    # that the next worker re-publishes, not images waiting in new for the sweeper.
    taken = _take_named(sessions, ids, claimant)
    current = None if taken is None else champions.refresh(sessions)
    if taken is None or current is None or current.binary is None:
        report.waiting = ids
        logger.info("no binary champion yet: images %s wait until one is registered", ids)
        return report
    report.model_key = current.model_key
    todo, recorded = taken
    waiting = {image_id for image_id, _, _ in todo}
    report.skipped = [i for i in ids if i not in waiting]
    while todo:
        batch, todo = todo[:batch_size], todo[batch_size:]
        if len(batch) < batch_size and collect_timeout_s > 0:
            # Skewed clocks (watcher and worker on two machines) only move the wait within [0, timeout].
            age = (wall_clock() - min(recorded[image_id] for image_id, _, _ in batch)).total_seconds()
            deadline = clock() + min(collect_timeout_s, max(0.0, collect_timeout_s - age))
            extra = _collect(
                sessions,
                batch_size - len(batch),
                claimant=claimant,
                deadline=deadline,
                poll_interval_s=poll_interval_s,
                clock=clock,
                sleep=sleep,
            )
            report.collected.extend(image_id for image_id, _, _ in extra)
            batch = [*batch, *extra]
        for _ in range(_CHAMPION_CHANGE_RETRIES):
            if _classify_batch(batch, current, sessions, label_space, report):
                break
            current = champions.refresh(sessions)
            report.model_key = current.model_key
        else:  # champions changing faster than a batch is predicted: the sweeper re-publishes them
            logger.warning("images %s left queued: the champions kept changing", [i for i, _, _ in batch])
    return report


def _classify_batch(
    batch: Sequence[_Item],
    current: Champions,
    sessions: sessionmaker[Session],
    label_space: LabelSpace,
    report: ClassifyReport,
) -> bool:
    """Classify one batch and commit it in one transaction (compare-and-set first, see step 5); False,
    with nothing committed, when the champions changed while it was predicted (the caller runs it again
    with the new ones: a prediction committed under a former champion would never be re-scored)."""
    assert current.binary is not None
    binary_id = current.binary.version.id
    multi_id = None if current.multiclass is None else current.multiclass.version.id
    result = _predict(current, batch, label_space)
    predicted_ids, combined = result.ok, result.combined
    moved: list[int] = []
    with session_scope(sessions) as session:
        if repo.current_model_key(session=session, hold=True) != current.model_key:
            logger.info(
                "the champions changed while images %s were predicted; again with the new ones", predicted_ids
            )
            return False
        for row, image_id in enumerate(predicted_ids):
            assert combined is not None
            if not repo.set_image_status(
                session=session, image_id=image_id, status=ImageStatus.PREDICTED, expected=_WAITING
            ):
                continue  # another run classified it first (a redelivered or re-published message)
            repo.add_prediction(
                session=session,
                image_id=image_id,
                binary_version_id=binary_id,
                multiclass_version_id=multi_id,
                probabilities=dict(zip(combined.class_names, combined.probs[row].tolist(), strict=True)),
                predicted_label=combined.labels[row],
                confidence=float(combined.confidence[row]),
                uncertainty={name: float(scores[row]) for name, scores in combined.uncertainty.items()},
            )
            moved.append(image_id)
        # A changed file is never predicted from another row's bytes: the watcher records those as an
        # image of their own, and this row is superseded.
        for reasons, status, moved_to in (
            (result.failed, ImageStatus.QUARANTINED, report.quarantined),
            (result.changed, ImageStatus.SUPERSEDED, report.superseded),
        ):
            for image_id, reason in reasons.items():
                if repo.set_image_status(
                    session=session, image_id=image_id, status=status, reason=reason, expected=_WAITING
                ):
                    moved_to.append(image_id)
                    logger.warning(
                        "image %d %s: %s", image_id, status.value, reason, extra={"image_id": image_id}
                    )
    report.batches.append(len(batch))
    report.predicted.extend(moved)
    lost = set(predicted_ids) - set(moved)
    report.skipped.extend(i for i in predicted_ids if i in lost)
    logger.info(
        "classified images %s with %s (batch of %d)",
        moved,
        report.model_key,
        len(batch),
        extra={"image_ids": moved},
    )
    return True


def requeue_waiting_images(
    *,
    sessions: sessionmaker[Session],
    publish: Callable[[list[int]], None],
    older_than: timedelta,
    batch_size: int,
    limit: int = 10_000,
) -> list[int]:
    """Re-publish images that wait in ``new`` or ``queued`` longer than ``older_than``; their ids.

    Does nothing before a binary champion exists (the images keep waiting in ``new``). The rows are
    moved to ``queued`` (which restarts their clock) and committed before anything is published, so a
    failed publish is retried by the next sweep; a duplicate message is harmless (classification is
    idempotent).
    """
    with session_scope(sessions) as session:
        if repo.get_champion(session=session, task=ModelTask.BINARY) is None:
            logger.info("sweep: no binary champion yet; images wait in new")
            return []
        stuck = [
            image.id
            for status in _WAITING
            for image in repo.find_stuck_images(
                session=session, status=status, older_than=older_than, limit=limit
            )
        ]
        ids = [
            image_id
            for image_id in sorted(set(stuck))[:limit]
            if repo.set_image_status(
                session=session, image_id=image_id, status=ImageStatus.QUEUED, expected=_WAITING
            )
        ]
    for start in range(0, len(ids), batch_size):
        publish(ids[start : start + batch_size])
    if ids:
        logger.info("sweep: re-published %d waiting image(s): %s", len(ids), ids)
    return ids
