"""Classification of new images with the champions, and the sweep that re-queues images left waiting.

``classify_images`` is what the ``inference`` task runs. It is idempotent and safe to run twice at the
same time on the same ids (a message redelivered after a crash, or re-published by the sweeper):

1. the champions come from a per-process ``ChampionCache``: one cheap query per call compares the
   registry's champion ids with the loaded ones, and a changed champion is loaded (checkpoint verified
   against its sha256) and swapped in without a restart;
2. without a binary champion nothing is done: the images stay ``new`` and the sweeper re-publishes
   them once a champion exists (no retry storm);
3. of the given ids, those still ``new`` or ``queued`` are classified in batches of ``batch_size``;
4. each batch is committed in ONE transaction per batch: the compare-and-set ``new|queued ->
   predicted`` first, then the prediction row (idempotent on image and model versions), only for the
   images whose status this call moved. Of two runs racing on one image, exactly one moves it and
   records a prediction; a crash before the commit leaves the image ``new``/``queued`` for the next run.

An image file that can no longer be read is quarantined with the reason, never retried.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import ImageStatus, ModelTask
from db.session import session_scope

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
    """What one ``classify_images`` call did, by image id."""

    model_key: str | None = None
    predicted: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    quarantined: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_key": self.model_key,
            "predicted": len(self.predicted),
            "skipped": len(self.skipped),
            "quarantined": len(self.quarantined),
            "waiting": len(self.waiting),
        }


def _chunks(items: Sequence[tuple[int, str]], size: int) -> Iterable[Sequence[tuple[int, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _predict(
    champions: Champions,
    batch: Sequence[tuple[int, str]],
    good_class: str,
    defect_classes: Sequence[str],
) -> tuple[list[int], CombinedPrediction | None, dict[int, str]]:
    """Decode and classify ``batch``; the ids predicted (row order of the result) and the unreadable ones."""
    import torch

    from models.data import ImageLoadError, InputSpec, load_image
    from models.infer import combine_predictions

    assert champions.binary is not None
    models = [champions.binary, *([champions.multiclass] if champions.multiclass else [])]
    specs = {id(m): InputSpec.from_dict(m.version.input_spec) for m in models}
    tensors: dict[int, list[torch.Tensor]] = {id(m): [] for m in models}
    ok: list[int] = []
    failed: dict[int, str] = {}
    for image_id, path in batch:
        try:
            loaded = {key: load_image(Path(path), spec) for key, spec in specs.items()}
        except ImageLoadError as exc:
            failed[image_id] = f"unreadable at classification: {exc}"[:500]
            continue
        ok.append(image_id)
        for key, tensor in loaded.items():
            tensors[key].append(tensor)
    if not ok:
        return ok, None, failed
    binary_out = champions.binary.predictor.predict(torch.stack(tensors[id(champions.binary)]))
    multi_out = None
    if champions.multiclass is not None:
        multi_out = champions.multiclass.predictor.predict(torch.stack(tensors[id(champions.multiclass)]))
    combined = combine_predictions(
        binary_out, multi_out, good_class=good_class, defect_classes=tuple(defect_classes)
    )
    return ok, combined, failed


def classify_images(
    image_ids: Iterable[int],
    *,
    sessions: sessionmaker[Session],
    champions: ChampionCache,
    good_class: str,
    defect_classes: Sequence[str],
    batch_size: int,
) -> ClassifyReport:
    """Classify the given images that still wait, with the current champions (see the module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = sorted({int(i) for i in image_ids})
    report = ClassifyReport()
    current = champions.refresh(sessions)
    if current.binary is None:
        report.waiting = ids
        logger.info("no binary champion yet: images %s wait in new until one is registered", ids)
        return report
    report.model_key = current.model_key
    binary_id = current.binary.version.id
    multi_id = None if current.multiclass is None else current.multiclass.version.id
    with session_scope(sessions) as session:
        todo = [
            (image.id, image.path)
            for image in repo.list_images_by_ids(session=session, image_ids=ids, statuses=_WAITING)
        ]
    waiting = {image_id for image_id, _ in todo}
    report.skipped = [i for i in ids if i not in waiting]
    for batch in _chunks(todo, batch_size):
        predicted_ids, combined, failed = _predict(current, batch, good_class, defect_classes)
        moved: list[int] = []
        with session_scope(sessions) as session:
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
            for image_id, reason in failed.items():
                if repo.set_image_status(
                    session=session,
                    image_id=image_id,
                    status=ImageStatus.QUARANTINED,
                    reason=reason,
                    expected=_WAITING,
                ):
                    report.quarantined.append(image_id)
                    logger.warning("image %d quarantined: %s", image_id, reason)
        report.predicted.extend(moved)
        report.skipped.extend(i for i in predicted_ids if i not in set(moved))
        logger.info("classified images %s with %s", moved, report.model_key)
    return report


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
