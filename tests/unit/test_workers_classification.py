"""Classification service, champion cache, sweeper and Celery app configuration, without a broker.

The services run against a real migrated SQLite file; models are stand-ins that return fixed
probabilities (what is checked is the bookkeeping: statuses, one prediction per image and model key,
swaps), so no checkpoint is trained or loaded here.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import Image, ImageStatus, ModelTask, Prediction, SourceKind
from defectloop.app import ingest_config, worker_config
from defectloop.settings import DEFAULT_CLASSES, load_settings
from models.infer import PredictionOutput
from models.labels import LabelSpace
from tests.db_helpers import add_image_file
from workers import classification, image_reading
from workers.celery_app import (
    CLASSIFY_TASK,
    EMBEDDED_POLLING_INTERVAL_S,
    PURGE_TASK,
    REDIS_SOCKET_TIMEOUT_S,
    SWEEP_TASK,
    EmbeddedTransport,
    WorkerConfig,
    create_app,
    publish_classification,
)
from workers.claims import Claimant
from workers.classification import ChampionCache, LoadedModel, VersionRef
from workers.queues import Queue, purge_delivered_messages

SPEC = {"image_size": 16, "channels": 1, "mean": [0.5], "std": [0.5]}


class FixedPredictor:
    """Returns the same probability row for every image of a batch."""

    def __init__(self, class_names: tuple[str, ...], row: list[float]) -> None:
        self.class_names = class_names
        self.row = np.asarray(row, dtype=np.float64)
        self.batches: list[int] = []

    def predict(self, batch: torch.Tensor) -> PredictionOutput:
        n = int(batch.shape[0])
        self.batches.append(n)
        return PredictionOutput(
            probs=np.tile(self.row, (n, 1)),
            embeddings=np.zeros((n, 4), dtype=np.float32),
            mc_probs=None,
            class_names=self.class_names,
        )


def fake_loader(loaded: list[VersionRef]) -> classification.ModelLoader:
    def load(ref: VersionRef) -> LoadedModel:
        loaded.append(ref)
        if len(ref.classes) == 2:
            return LoadedModel(ref, FixedPredictor(ref.classes, [0.25, 0.75]))
        return LoadedModel(ref, FixedPredictor(ref.classes, [0.6, 0.1, 0.1, 0.1, 0.1]))

    return load


def register(
    sessions: sessionmaker[Session], task: ModelTask, n: int, metrics: dict[str, Any] | None = None
) -> int:
    classes = ("ok", "defective") if task is ModelTask.BINARY else DEFAULT_CLASSES[1:]
    with sessions() as session:
        version = repo.register_model_version(
            session=session,
            name=f"{task}-baseline_cnn-{n:04d}",
            task=task,
            architecture="baseline_cnn",
            classes=classes,
            input_spec=SPEC,
            artifact_path=f"/nowhere/{task}-{n}.pt",
            artifact_sha256=hashlib.sha256(f"{task}{n}".encode()).hexdigest(),
            metrics=metrics,
        )
        session.commit()
        return version.id


def add_images(sessions: sessionmaker[Session], folder: Path, n: int, *, start: int = 0) -> list[int]:
    folder.mkdir(exist_ok=True)
    ids = []
    with sessions() as session:
        source = repo.get_or_create_source(session=session, name="cam", kind=SourceKind.CAMERA)
        for index in range(start, start + n):
            path = folder / f"{index}.png"
            pixels = np.random.default_rng(index).integers(0, 256, size=(20, 20), dtype=np.uint8)
            PILImage.fromarray(pixels, mode="L").save(path)
            ids.append(add_image_file(session, path, source.id).id)
        session.commit()
    return ids


def classify(sessions: sessionmaker[Session], cache: ChampionCache, ids: list[int]) -> Any:
    return classification.classify_images(
        ids,
        sessions=sessions,
        champions=cache,
        label_space=LabelSpace.from_classes(DEFAULT_CLASSES),
        batch_size=3,
    )


def predictions(sessions: sessionmaker[Session]) -> list[tuple[int, str]]:
    with sessions() as session:
        return [
            (r.image_id, r.model_key) for r in session.scalars(select(Prediction).order_by(Prediction.id))
        ]


def statuses(sessions: sessionmaker[Session], ids: list[int]) -> list[ImageStatus]:
    with sessions() as session:
        return [repo.get_image(session=session, image_id=i).status for i in ids]


def test_cache_loads_each_champion_once_and_swaps_only_what_changed(sessions: sessionmaker[Session]) -> None:
    loaded: list[VersionRef] = []
    cache = ChampionCache(fake_loader(loaded))
    assert cache.refresh(sessions).binary is None

    binary = register(sessions, ModelTask.BINARY, 1)
    first = cache.refresh(sessions)
    assert first.binary is not None
    assert first.binary.version.id == binary
    assert first.model_key == f"b{binary}-m-"
    cache.refresh(sessions)
    assert [ref.id for ref in loaded] == [binary]  # cached: no second load

    multiclass = register(sessions, ModelTask.MULTICLASS, 1)
    both = cache.refresh(sessions)
    assert both.binary is first.binary  # the binary model was kept
    assert both.model_key == f"b{binary}-m{multiclass}"

    challenger = register(sessions, ModelTask.BINARY, 2)
    assert cache.refresh(sessions).binary is first.binary  # a candidate does not replace the champion
    with sessions() as session:
        repo.set_champion(session=session, version_id=challenger, actor="test", reason="better")
        session.commit()
    swapped = cache.refresh(sessions)
    assert swapped.model_key == f"b{challenger}-m{multiclass}"
    assert [ref.id for ref in loaded] == [binary, multiclass, challenger]


def test_without_a_champion_images_wait_in_new(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    ids = add_images(sessions, tmp_path / "cam", 4)
    report = classify(sessions, ChampionCache(fake_loader([])), ids)
    assert report.waiting == ids
    assert statuses(sessions, ids) == [ImageStatus.NEW] * 4
    assert predictions(sessions) == []


def test_classification_is_once_per_image_and_idempotent(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    binary = register(sessions, ModelTask.BINARY, 1)
    multiclass = register(sessions, ModelTask.MULTICLASS, 1)
    ids = add_images(sessions, tmp_path / "cam", 7)
    cache = ChampionCache(fake_loader([]))
    report = classify(sessions, cache, ids)
    key = repo.make_model_key(binary, multiclass)
    assert report.model_key == key
    assert sorted(report.predicted) == ids
    assert statuses(sessions, ids) == [ImageStatus.PREDICTED] * 7
    assert predictions(sessions) == [(i, key) for i in ids]

    # A redelivered message, and one naming an unknown id: nothing is added or changed.
    again = classify(sessions, cache, [*ids, 999])
    assert again.predicted == []
    assert sorted(again.skipped) == [*ids, 999]
    assert len(predictions(sessions)) == 7

    with sessions() as session:
        row = session.scalars(select(Prediction).where(Prediction.image_id == ids[0])).one()
        # p(ok) = 1 - p(defect); p(k) = p(defect) * p(k | defect)
        assert row.probabilities["ok"] == pytest.approx(0.25)
        assert row.probabilities["hole"] == pytest.approx(0.75 * 0.6)
        assert row.predicted_label == "hole"
        assert set(row.uncertainty) == {"entropy", "margin", "least_confidence"}
        assert (row.binary_version_id, row.multiclass_version_id) == (binary, multiclass)


def test_the_call_is_made_at_the_binary_versions_tuned_threshold(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # The fake binary model gives p(defect) = 0.75 to every image: "hole" at 0.5 (the test above), but
    # a version whose validation tuned the cut to 0.8 calls it ok; the stored distribution is the same.
    register(sessions, ModelTask.BINARY, 1, metrics={"macro_f1": 0.5, "decision_threshold": 0.8})
    register(sessions, ModelTask.MULTICLASS, 1)
    ids = add_images(sessions, tmp_path / "cam", 2)
    loaded: list[VersionRef] = []
    classify(sessions, ChampionCache(fake_loader(loaded)), ids)
    assert [ref.defect_threshold for ref in loaded if len(ref.classes) == 2] == [0.8]
    with sessions() as session:
        rows = session.scalars(select(Prediction).where(Prediction.image_id.in_(ids))).all()
        assert [row.predicted_label for row in rows] == ["ok", "ok"]
        assert rows[0].probabilities["ok"] == pytest.approx(0.25)
        assert rows[0].confidence == pytest.approx(0.25)  # the called class's probability


def test_an_unreadable_file_is_quarantined_with_its_reason(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    register(sessions, ModelTask.BINARY, 1)
    ids = add_images(sessions, tmp_path / "cam", 4)
    (tmp_path / "cam" / "1.png").unlink()  # gone
    bad = b"not an image"  # a row whose own bytes do not decode (recorded by an older watcher, say)
    (tmp_path / "cam" / "2.png").write_bytes(bad)
    with sessions() as session:
        repo.get_image(session=session, image_id=ids[2]).sha256 = hashlib.sha256(bad).hexdigest()
        session.commit()
    report = classify(sessions, ChampionCache(fake_loader([])), ids)
    assert report.quarantined == [ids[1], ids[2]]
    assert statuses(sessions, ids) == [
        ImageStatus.PREDICTED,
        ImageStatus.QUARANTINED,
        ImageStatus.QUARANTINED,
        ImageStatus.PREDICTED,
    ]
    with sessions() as session:
        gone, undecodable = (repo.get_image(session=session, image_id=i).reason or "" for i in ids[1:3])
    assert gone.startswith("unreadable at classification: ")
    assert "does not exist" in gone
    assert undecodable.startswith("unreadable at classification: ")
    assert "2.png" in undecodable
    assert "/proc/self/fd" not in undecodable  # the message names the camera file


def test_a_file_that_holds_other_bytes_now_is_superseded_never_predicted(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Overwritten in place, replaced by a rename, or written to while it is read: the row's own bytes are
    gone, so the row is superseded; the new bytes are the watcher's to record as an image of their own."""
    register(sessions, ModelTask.BINARY, 1)
    cam = tmp_path / "cam"
    ids = add_images(sessions, cam, 5)
    other = PILImage.fromarray(np.full((20, 20), 7, dtype=np.uint8), mode="L")
    other.save(cam / "0.png")  # overwritten in place (same inode)
    other.save(cam / "replacement.png")
    (cam / "replacement.png").replace(cam / "1.png")  # replaced by a rename
    real_decode = image_reading._decode

    def decode_while_a_writer_appends(view: str, specs: Any) -> Any:
        if Path(view).resolve() == (cam / "2.png").resolve():
            with (cam / "2.png").open("ab") as handle:
                handle.write(b"more")
        return real_decode(view, specs)

    monkeypatch.setattr(image_reading, "_decode", decode_while_a_writer_appends)
    report = classify(sessions, ChampionCache(fake_loader([])), ids)
    assert sorted(report.superseded) == ids[:3]
    assert sorted(report.predicted) == ids[3:]
    assert statuses(sessions, ids) == [ImageStatus.SUPERSEDED] * 3 + [ImageStatus.PREDICTED] * 2
    assert sorted(image_id for image_id, _ in predictions(sessions)) == ids[3:]
    with sessions() as session:
        reasons = [repo.get_image(session=session, image_id=i).reason or "" for i in ids[:3]]
    new_sha = hashlib.sha256((cam / "0.png").read_bytes()).hexdigest()
    assert reasons[0].startswith("file changed after it was recorded: ")
    assert new_sha[:12] in reasons[0]
    assert new_sha[:12] in reasons[1]
    assert "changed while it was read" in reasons[2]
    # A superseded row is not waiting any more: a redelivered message leaves it alone.
    assert classify(sessions, ChampionCache(fake_loader([])), ids[:3]).skipped == ids[:3]


def test_images_taken_carry_the_claim_of_the_worker_process(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    register(sessions, ModelTask.BINARY, 1)
    ids = add_images(sessions, tmp_path / "cam", 2)
    with sessions() as session:
        assert {repo.get_image(session=session, image_id=i).claimed_by for i in ids} == {None}
    classification.classify_images(
        ids[:1],
        sessions=sessions,
        champions=ChampionCache(fake_loader([])),
        label_space=LabelSpace.from_classes(DEFAULT_CLASSES),
        batch_size=2,
        collect_timeout_s=0.05,  # the second image is collected into the batch
        claimant="host:boot:4242:77:celery@test",
    )
    with sessions() as session:
        assert {repo.get_image(session=session, image_id=i).claimed_by for i in ids} == {
            "host:boot:4242:77:celery@test"
        }
    assert statuses(sessions, ids) == [ImageStatus.PREDICTED] * 2
    more = add_images(sessions, tmp_path / "cam", 1, start=5)
    classify(sessions, ChampionCache(fake_loader([])), more)  # the default: this very process
    with sessions() as session:
        claimant = Claimant.parse(repo.get_image(session=session, image_id=more[0]).claimed_by or "")
    assert claimant is not None
    assert claimant.pid == os.getpid()
    assert claimant.is_alive() is True


def test_a_new_champion_is_used_for_later_batches(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    first = register(sessions, ModelTask.BINARY, 1)
    cache = ChampionCache(fake_loader([]))
    early = add_images(sessions, tmp_path / "cam", 2)
    classify(sessions, cache, early)
    second = register(sessions, ModelTask.BINARY, 2)
    with sessions() as session:
        repo.set_champion(session=session, version_id=second, actor="test", reason="better")
        session.commit()
    late = add_images(sessions, tmp_path / "cam", 2, start=10)
    classify(sessions, cache, late)
    assert predictions(sessions) == [(i, f"b{first}-m-") for i in early] + [
        (i, f"b{second}-m-") for i in late
    ]


def test_a_batch_predicted_while_the_champion_changed_is_predicted_again_by_the_new_one(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    first = register(sessions, ModelTask.BINARY, 1)
    second = register(sessions, ModelTask.BINARY, 2)
    ids = add_images(sessions, tmp_path / "cam", 3)
    loaded: list[VersionRef] = []
    plain = fake_loader(loaded)

    def promote_during_the_forward(ref: VersionRef) -> LoadedModel:
        model = plain(ref)
        if ref.id == first:
            predict = model.predictor.predict

            def predict_then_promote(batch: torch.Tensor) -> PredictionOutput:
                out = predict(batch)
                with sessions.begin() as session:  # an engineer promotes while the batch is in flight
                    repo.set_champion(session=session, version_id=second, actor="test", reason="better")
                    repo.requeue_predicted_images(session=session)
                return out

            model.predictor.predict = predict_then_promote  # type: ignore[method-assign]
        return model

    report = classify(sessions, ChampionCache(promote_during_the_forward), ids)
    # Nothing was committed under the former champion: the new one scored the batch, and the images are
    # not left predicted by a model nobody will re-score them with.
    assert predictions(sessions) == [(i, f"b{second}-m-") for i in ids]
    assert report.model_key == f"b{second}-m-"
    assert statuses(sessions, ids) == [ImageStatus.PREDICTED] * 3
    assert [ref.id for ref in loaded] == [first, second]


def test_sweep_waits_for_a_champion_then_requeues_new_and_stuck_images(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    ids = add_images(sessions, tmp_path / "cam", 5)
    published: list[list[int]] = []

    def sweep(older_than: timedelta) -> list[int]:
        return classification.requeue_waiting_images(
            sessions=sessions, publish=published.append, older_than=older_than, batch_size=2
        )

    assert sweep(timedelta(0)) == []
    register(sessions, ModelTask.BINARY, 1)
    classify(sessions, ChampionCache(fake_loader([])), ids[:1])
    assert sweep(timedelta(hours=1)) == []  # nothing has waited that long
    assert sweep(timedelta(0)) == ids[1:]
    assert published == [ids[1:3], ids[3:5]]
    assert statuses(sessions, ids) == [ImageStatus.PREDICTED] + [ImageStatus.QUEUED] * 4
    assert sweep(timedelta(0)) == ids[1:]  # still queued (the messages were lost): published again


# --- micro-batching: a short batch is topped up with images waiting in new -------------------------


class FakeClock:
    """A clock that only moves when the code under test sleeps; ``on_sleep`` runs at each sleep.

    ``wall()`` is the matching wall clock, starting at ``wall_start`` (default: now).
    """

    def __init__(
        self, on_sleep: Callable[[int], None] | None = None, *, wall_start: datetime | None = None
    ) -> None:
        self.now = 100.0
        self.wall_start = wall_start or datetime.now(UTC)
        self.sleeps: list[float] = []
        self._on_sleep = on_sleep

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return self.wall_start + timedelta(seconds=self.now - 100.0)

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds
        if self._on_sleep is not None:
            self._on_sleep(len(self.sleeps))


def collect(
    sessions: sessionmaker[Session],
    cache: ChampionCache,
    ids: list[int],
    *,
    batch_size: int = 4,
    timeout_s: float = 0.2,
    clock: FakeClock | None = None,
) -> classification.ClassifyReport:
    clock = clock or FakeClock()
    return classification.classify_images(
        ids,
        sessions=sessions,
        champions=cache,
        label_space=LabelSpace.from_classes(DEFAULT_CLASSES),
        batch_size=batch_size,
        collect_timeout_s=timeout_s,
        poll_interval_s=0.05,
        clock=clock,
        sleep=clock.sleep,
        wall_clock=clock.wall,
    )


def binary_batches(cache: ChampionCache, sessions: sessionmaker[Session]) -> list[int]:
    binary = cache.refresh(sessions).binary
    assert binary is not None
    return list(binary.predictor.batches)


def test_a_single_image_message_is_topped_up_with_waiting_images_oldest_first(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    binary = register(sessions, ModelTask.BINARY, 1)
    ids = add_images(sessions, tmp_path / "cam", 7)
    cache = ChampionCache(fake_loader([]))
    clock = FakeClock()

    report = collect(sessions, cache, [ids[5]], clock=clock)
    # Its own image plus the three oldest waiting ones: one full batch, at once (no wait needed).
    assert sorted(report.predicted) == sorted([ids[5], *ids[:3]])
    assert report.collected == ids[:3]
    assert report.batches == [4]
    assert clock.sleeps == []
    assert binary_batches(cache, sessions) == [4]
    assert statuses(sessions, ids) == [ImageStatus.PREDICTED] * 3 + [ImageStatus.NEW] * 2 + [
        ImageStatus.PREDICTED,
        ImageStatus.NEW,
    ]

    # The messages of the collected images arrive later: no-ops, nothing waits, nothing is added.
    again = collect(sessions, cache, ids[:3], clock=clock)
    assert (again.predicted, again.collected, again.batches) == ([], [], [])
    assert sorted(again.skipped) == ids[:3]
    assert clock.sleeps == []
    key = repo.make_model_key(binary, None)
    assert sorted(predictions(sessions)) == [(i, key) for i in sorted([ids[5], *ids[:3]])]


def test_collection_waits_for_images_that_arrive_and_stops_at_the_timeout(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    register(sessions, ModelTask.BINARY, 1)
    first = add_images(sessions, tmp_path / "cam", 1)
    arrived: list[int] = []

    def camera(n_sleeps: int) -> None:
        if n_sleeps == 2:  # an image arrives while the worker waits
            arrived.extend(add_images(sessions, tmp_path / "cam", 1, start=50))

    clock = FakeClock(on_sleep=camera, wall_start=recorded_at(sessions, first[0]))
    cache = ChampionCache(fake_loader([]))
    report = collect(sessions, cache, first, batch_size=4, timeout_s=0.2, clock=clock)
    assert report.collected == arrived
    assert sorted(report.predicted) == sorted(first + arrived)
    assert report.batches == [2]  # not full: the timeout ended the wait
    assert sum(clock.sleeps) == pytest.approx(0.2)  # waited the whole timeout after it was recorded
    assert all(s <= 0.05 for s in clock.sleeps)

    # A full batch does not wait at all; a zero timeout never collects.
    full = add_images(sessions, tmp_path / "cam", 4, start=60)
    clock = FakeClock()
    assert collect(sessions, cache, full, clock=clock).batches == [4]
    assert clock.sleeps == []
    lone, other = add_images(sessions, tmp_path / "cam", 2, start=70)
    report = collect(sessions, cache, [lone], timeout_s=0.0, clock=clock)
    assert (report.predicted, report.collected, clock.sleeps) == ([lone], [], [])
    assert statuses(sessions, [other]) == [ImageStatus.NEW]


def recorded_at(sessions: sessionmaker[Session], image_id: int) -> datetime:
    with sessions() as session:
        return repo.get_image(session=session, image_id=image_id).created_at


def test_an_image_that_already_waited_the_timeout_is_not_held_back(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """A busy worker finds its images already old (they waited in the broker): it takes what waits
    now to fill the batch, and never idles for more."""
    register(sessions, ModelTask.BINARY, 1)
    lone, other = add_images(sessions, tmp_path / "cam", 2)
    cache = ChampionCache(fake_loader([]))
    late = FakeClock(wall_start=recorded_at(sessions, lone) + timedelta(seconds=0.15))
    report = collect(sessions, cache, [lone], batch_size=4, timeout_s=0.2, clock=late)
    assert (report.collected, report.batches) == ([other], [2])
    assert sum(late.sleeps) == pytest.approx(0.05)  # only what was left of its 0.2 s
    stale = add_images(sessions, tmp_path / "cam", 1, start=10)
    old = FakeClock(wall_start=recorded_at(sessions, stale[0]) + timedelta(seconds=5))
    report = collect(sessions, cache, stale, batch_size=4, timeout_s=0.2, clock=old)
    assert (report.predicted, report.batches, old.sleeps) == (stale, [1], [])


def test_a_message_with_nothing_to_classify_does_not_wait_or_collect(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    register(sessions, ModelTask.BINARY, 1)
    done = add_images(sessions, tmp_path / "cam", 1)
    cache = ChampionCache(fake_loader([]))
    collect(sessions, cache, done, timeout_s=0.0)
    waiting = add_images(sessions, tmp_path / "cam", 2, start=10)
    clock = FakeClock()
    report = collect(sessions, cache, [*done, 999], clock=clock)
    assert (report.predicted, report.collected, clock.sleeps) == ([], [], [])
    assert statuses(sessions, waiting) == [ImageStatus.NEW] * 2  # left to their own messages


def test_workers_racing_on_one_image_record_it_once_and_collection_spares_images_in_hand(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """Worker A holds a batch (its images taken: queued); while it computes, worker B runs with a
    message naming one of A's images and another image, and tops up its batch. B must not collect A's
    other images; the image both hold is recorded once; every image ends with one prediction."""
    binary = register(sessions, ModelTask.BINARY, 1)
    ids = add_images(sessions, tmp_path / "cam", 8)
    a_ids, b_own, rest = ids[:3], ids[3], ids[4:]
    b_reports: list[classification.ClassifyReport] = []
    cache_b = ChampionCache(fake_loader([]))

    class InterleavingPredictor(FixedPredictor):
        def predict(self, batch: torch.Tensor) -> PredictionOutput:
            if not b_reports:  # A is between taking its images and committing them: B runs now
                b_reports.append(collect(sessions, cache_b, [a_ids[0], b_own], batch_size=4))
            return super().predict(batch)

    def load_a(ref: VersionRef) -> LoadedModel:
        return LoadedModel(ref, InterleavingPredictor(ref.classes, [0.25, 0.75]))

    report_a = classification.classify_images(
        a_ids,
        sessions=sessions,
        champions=ChampionCache(load_a),
        label_space=LabelSpace.from_classes(DEFAULT_CLASSES),
        batch_size=3,
    )
    (report_b,) = b_reports
    assert not set(report_b.collected) & set(a_ids)  # A's images in hand were spared
    assert report_b.collected == rest[:2]
    assert sorted(report_b.predicted) == sorted([a_ids[0], b_own, *rest[:2]])  # B committed first
    assert sorted(report_a.predicted) == a_ids[1:]
    assert report_a.skipped == [a_ids[0]]  # A lost the race on the shared image: nothing recorded twice
    key = repo.make_model_key(binary, None)
    assert sorted(predictions(sessions)) == [(i, key) for i in sorted([*ids[:4], *rest[:2]])]
    assert statuses(sessions, rest[2:]) == [ImageStatus.NEW] * 2


def test_list_images_by_ids_filters_by_status(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    ids = add_images(sessions, tmp_path / "cam", 3)
    with sessions() as session:
        repo.set_image_status(session=session, image_id=ids[1], status=ImageStatus.QUEUED)
        found = repo.list_images_by_ids(session=session, image_ids=[ids[2], ids[1], 404, ids[1]])
        assert [image.id for image in found] == ids[1:]
        queued = repo.list_images_by_ids(session=session, image_ids=ids, statuses=[ImageStatus.QUEUED])
        assert [image.id for image in queued] == [ids[1]]
        assert repo.list_images_by_ids(session=session, image_ids=[]) == []
        assert isinstance(found[0], Image)


# --- configuration ----------------------------------------------------------------------------


def config(broker_url: str = "redis://127.0.0.1:6379/13", **kw: Any) -> WorkerConfig:
    return WorkerConfig(
        broker_url=broker_url,
        database_url="sqlite:///x.db",
        artifacts_dir=Path("/tmp/artifacts"),
        classes=DEFAULT_CLASSES,
        **kw,
    )


def test_the_app_is_json_only_late_acking_with_prefetch_one_and_routes_per_queue() -> None:
    app = create_app(config(visibility_timeout_s=120))
    conf = app.conf
    assert (conf.task_serializer, conf.result_serializer, list(conf.accept_content)) == (
        "json",
        "json",
        ["json"],
    )
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result is True
    assert conf.broker_connection_retry_on_startup is True
    assert conf.broker_transport_options == {
        "visibility_timeout": 120,
        "socket_timeout": REDIS_SOCKET_TIMEOUT_S,
        "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_S,
    }
    assert conf.task_routes[CLASSIFY_TASK] == {"queue": Queue.INFERENCE.value}
    assert conf.task_routes[SWEEP_TASK] == {"queue": Queue.MAINTENANCE.value}
    for name in (CLASSIFY_TASK, SWEEP_TASK):
        task = app.tasks[name]
        assert task.acks_late is True
        assert task.reject_on_worker_lost is True
    assert conf.beat_schedule["requeue-waiting-images"]["task"] == SWEEP_TASK
    with pytest.raises(TypeError):
        app.tasks[CLASSIFY_TASK].run("1,2")  # bad input fails at once and is not retried
    app.close()


def test_apps_in_one_process_keep_their_own_tasks() -> None:
    """Celery shares decorated tasks between apps by default: a second app would then run the first
    app's closure (its config and runtime). Each app must keep its own."""
    apps = [create_app(config(stuck_after_s=float(n))) for n in (1, 2, 3)]
    for n, app in zip((1, 2, 3), apps, strict=True):
        function = app.tasks[SWEEP_TASK]._decorated_fun
        cells = dict(zip(function.__code__.co_freevars, function.__closure__, strict=True))
        assert cells["config"].cell_contents.stuck_after_s == n
        assert cells["app"].cell_contents is app
        app.close()


def test_the_embedded_broker_polls_fast_without_options_sqlalchemy_would_refuse() -> None:
    app = create_app(config(f"sqla+sqlite:///{Path('/tmp') / 'b.db'}"))
    assert app.conf.broker_transport_options == {}  # kombu would pass them to create_engine
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, EmbeddedTransport)
        assert connection.transport.polling_interval == EMBEDDED_POLLING_INTERVAL_S
        assert connection.hostname == "sqlite:////tmp/b.db"
    app.close()


def broker_rows(path: Path) -> tuple[int, int]:
    """(undelivered, delivered) message rows in an embedded broker's database."""
    with sqlite3.connect(path) as db:
        rows = dict(db.execute("SELECT visible, count(*) FROM kombu_message GROUP BY visible").fetchall())
    return rows.get(1, 0), rows.get(0, 0)


def deliver(app: Any, n: int) -> list[list[int]]:
    """Take ``n`` messages off the inference queue and acknowledge them, as a worker does."""
    got = []
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        for _ in range(n):
            message = channel.basic_get(Queue.INFERENCE.value)
            assert message is not None
            got.append(message.decode()[0][0])
            channel.basic_ack(message.delivery_tag)
    return got


def test_the_embedded_broker_keeps_delivered_rows_until_they_are_purged(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    url = f"sqla+sqlite:///{path}"
    assert purge_delivered_messages(url) == 0  # no broker database yet: nothing to do
    app = create_app(config(url))
    for i in range(30):
        publish_classification(app, [i])
    assert deliver(app, 20) == [[i] for i in range(20)]
    # kombu marks a delivered message invisible; the acknowledgement deletes nothing.
    assert broker_rows(path) == (10, 20)

    assert purge_delivered_messages(url) == 0  # delivered just now: kept for a while
    later = datetime.now() + timedelta(hours=1)
    assert purge_delivered_messages(url, now=later) == 20
    assert broker_rows(path) == (10, 0)  # undelivered messages untouched, and still delivered in order
    assert deliver(app, 10) == [[i] for i in range(20, 30)]
    assert app.tasks[PURGE_TASK].run() == 0  # the beat task: the 10 just delivered are recent
    assert "purge-broker-messages" in app.conf.beat_schedule
    assert app.conf.beat_schedule["purge-broker-messages"]["task"] == PURGE_TASK
    assert app.conf.task_routes[PURGE_TASK] == {"queue": Queue.MAINTENANCE.value}

    # Purged rows leave free pages that later messages reuse: the file stops growing.
    sizes = []
    for _ in range(3):
        for i in range(100):
            publish_classification(app, [i] * 20)
        deliver(app, 100)
        purge_delivered_messages(url, now=datetime.now() + timedelta(hours=1))
        sizes.append(path.stat().st_size)
    assert sizes[2] <= sizes[0], sizes
    app.close()


def test_the_purge_leaves_other_brokers_alone() -> None:
    assert purge_delivered_messages("redis://127.0.0.1:1/0") == 0  # not even connected to
    app = create_app(config())
    assert "purge-broker-messages" not in app.conf.beat_schedule
    app.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [("broker_url", "localhost"), ("classes", ("ok",)), ("inference_batch_size", 0), ("mc_passes", -1)],
)
def test_worker_config_refuses_bad_values(field: str, value: Any) -> None:
    values: dict[str, Any] = {
        "broker_url": "redis://x",
        "database_url": "sqlite:///x.db",
        "artifacts_dir": Path("a"),
        "classes": DEFAULT_CLASSES,
        field: value,
    }
    with pytest.raises(ValueError, match=field.split("_")[0]):
        WorkerConfig(**values)


def test_settings_feed_the_worker_and_the_watcher(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "DEFECTLOOP_DATA_DIR": str(tmp_path),
            "DEFECTLOOP_INFERENCE_BATCH_SIZE": "5",
            "DEFECTLOOP_INFERENCE_BATCH_TIMEOUT_MS": "75",
            "DEFECTLOOP_INGEST_EXTENSIONS": "JPG, .png",
            "DEFECTLOOP_INGEST_STABLE_SECONDS": "0.5",
            "DEFECTLOOP_INGEST_POLLING": "true",
            "DEFECTLOOP_INGEST_MAX_PIXELS": "1000000",
        }
    )
    worker = worker_config(settings)
    assert worker.broker_url == f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    assert (worker.inference_batch_size, worker.inference_batch_timeout_ms) == (5, 75)
    assert worker.classes == settings.classes
    ingest = ingest_config(settings, [tmp_path])
    assert ingest.extensions == frozenset({".jpg", ".png"})
    assert (ingest.stable_seconds, ingest.poll, ingest.max_pixels) == (0.5, True, 1_000_000)
    assert ingest.rescan_seconds == 30.0


def embedded_app(tmp_path: Path) -> Any:
    """An app on the embedded broker file ``tmp_path / "broker.db"`` (database and artifacts in tmp_path)."""
    return create_app(
        WorkerConfig(
            broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
            database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
            artifacts_dir=tmp_path,
            classes=DEFAULT_CLASSES,
        )
    )


def test_the_embedded_broker_file_is_in_wal_mode_so_publishers_do_not_block_pollers(tmp_path: Path) -> None:
    broker = tmp_path / "broker.db"
    app = embedded_app(tmp_path)
    publish_classification(app, [1, 2, 3])
    with sqlite3.connect(broker) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("SELECT count(*) FROM kombu_message").fetchone()[0] == 1
    app.close()


def test_publish_in_batches_sends_one_message_per_batch(tmp_path: Path) -> None:
    from workers.celery_app import publish_in_batches

    broker = tmp_path / "broker.db"
    app = embedded_app(tmp_path)
    publish_in_batches(app, [1, 2, 3, 4, 5], batch_size=2, retry=False)
    publish_in_batches(app, [], batch_size=2)
    with sqlite3.connect(broker) as connection:
        assert connection.execute("SELECT count(*) FROM kombu_message").fetchone()[0] == 3
    app.close()
