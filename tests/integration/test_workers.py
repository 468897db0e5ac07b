"""Classification through real ``defectloop worker`` processes, on Redis and on the embedded broker.

Real processes, real files, a real SQLite registry migrated to head, champions from real checkpoints
(untrained 32 px baseline CNNs: the numbers do not matter, the bookkeeping does). Every check polls the
database up to a deadline; nothing asserts a timing.
"""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from PIL import Image as PILImage
from sqlalchemy import select

from db import repositories as repo
from db.schema import Image, ImageStatus, ModelTask, Prediction, SourceKind
from models.data import load_image
from models.infer import Predictor
from models.train import load_checkpoint
from tests.db_helpers import add_image_file
from tests.worker_harness import DEADLINE_S, SPEC, Loop, loop_on, require_redis
from workers.claims import Claimant

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/13"  # this suite's own database number; only it is flushed


@pytest.fixture(params=["redis", "embedded"])
def loop(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Loop]:
    if request.param == "redis":
        require_redis(REDIS_URL)
        redis.Redis.from_url(REDIS_URL).flushdb()
        broker_url = REDIS_URL
    else:
        broker_url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    try:
        with loop_on(broker_url, tmp_path) as state:
            yield state
    finally:
        if request.param == "redis":
            redis.Redis.from_url(REDIS_URL).flushdb()


def test_sigkill_mid_batch_loses_nothing_and_sigterm_finishes_the_batch(loop: Loop) -> None:
    binary = loop.register(ModelTask.BINARY, seed=1)
    multiclass = loop.register(ModelTask.MULTICLASS, seed=2)
    key = repo.make_model_key(binary, multiclass)
    ids = loop.add_images(160)
    loop.publish(ids, per_message=40)
    first = loop.start_worker()

    loop.wait_for("the first predictions", lambda: loop.predicted(ids) > 0, interval=0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    done_at_kill = loop.predicted(ids)
    assert done_at_kill < len(ids), "the batch ended before the kill; make it larger"

    second = loop.start_worker()
    loop.sweep()  # re-publishes what the dead worker held: no broker redelivers it soon enough
    loop.wait_for("every image predicted", lambda: loop.predicted(ids) == len(ids))
    loop.assert_exactly_once(ids, key)

    # SIGTERM while a batch is in hand: it is finished and committed, then the worker exits 0.
    more = loop.add_images(80)
    loop.publish(more, per_message=80)
    loop.wait_for("the batch to start", lambda: loop.predicted(more) > 0, interval=0.02)
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=DEADLINE_S) == 0, loop.log(1)[-3000:]
    loop.assert_exactly_once(more, key)
    assert "warm shutdown" in loop.log(1).lower()


def test_images_wait_for_a_champion_and_a_new_champion_is_used_without_restart(loop: Loop) -> None:
    worker = loop.start_worker()
    waiting = loop.add_images(6)
    loop.publish(waiting, per_message=6)
    loop.wait_for("the worker to see the images", lambda: "no binary champion yet" in loop.log(0))
    assert loop.predicted(waiting) == 0

    binary = loop.register(ModelTask.BINARY, seed=1)
    multiclass = loop.register(ModelTask.MULTICLASS, seed=2)
    loop.sweep()
    loop.wait_for("the waiting images", lambda: loop.predicted(waiting) == len(waiting))
    loop.assert_exactly_once(waiting, repo.make_model_key(binary, multiclass))

    challenger = loop.register(ModelTask.BINARY, seed=3)  # a candidate: the champion stays
    before = loop.add_images(20)
    loop.publish(before, per_message=4)
    loop.wait_for("images before the promotion", lambda: loop.predicted(before) == len(before))
    loop.assert_exactly_once(before, repo.make_model_key(binary, multiclass))

    loop.promote(challenger)
    after = loop.add_images(20)
    loop.publish(after, per_message=4)
    loop.wait_for("images after the promotion", lambda: loop.predicted(after) == len(after))
    loop.assert_exactly_once(after, repo.make_model_key(challenger, multiclass))
    assert worker.poll() is None, "the worker was restarted"
    assert "swapped in without restart" in loop.log(0)


def test_up_watches_classifies_and_sweeps_then_stops_cleanly_on_sigterm(loop: Loop) -> None:
    """The whole chain as processes (``defectloop up``: watcher, worker, beat): files recorded while
    there is no champion wait in new; once one is registered, beat's sweep gets them classified."""
    camera = loop.root / "cam1"
    camera.mkdir()
    loop.env["DEFECTLOOP_INGEST_STABLE_SECONDS"] = "0.2"
    up = loop.start("up", str(camera), "--sweep-every=1", "--stuck-after=0", "--inference-backend=eager")
    for index in range(5):
        pixels = np.random.default_rng(1000 + index).integers(0, 256, size=(64, 64), dtype=np.uint8)
        PILImage.fromarray(pixels, mode="L").save(camera / f"shot{index}.png")

    def ingested() -> list[int]:
        with loop.sessions() as session:
            return list(session.scalars(select(Image.id).where(Image.path.like(f"{camera}%"))).all())

    loop.wait_for("the watcher to record the files", lambda: len(ingested()) == 5)
    ids = ingested()
    loop.wait_for("the worker to see them", lambda: "no binary champion yet" in loop.log(0))
    assert loop.predicted(ids) == 0

    binary = loop.register(ModelTask.BINARY, seed=1)
    loop.wait_for("beat's sweep and the worker", lambda: loop.predicted(ids) == len(ids))
    loop.assert_exactly_once(ids, repo.make_model_key(binary, None))

    up.send_signal(signal.SIGTERM)
    assert up.wait(timeout=DEADLINE_S) == 0, loop.log(0)[-3000:]
    log = loop.log(0)
    for name in ("worker", "trainer", "beat", "watch"):
        assert f"{name} stopped (exit 0)" in log, name


def claims_of(loop: Loop, ids: list[int]) -> dict[int, str | None]:
    with loop.sessions() as session:
        return dict(
            session.execute(
                select(Image.id, Image.claimed_by).where(
                    Image.id.in_(ids), Image.status == ImageStatus.QUEUED
                )
            ).all()
        )


def test_a_new_worker_publishes_again_at_once_what_a_killed_one_held(loop: Loop) -> None:
    """No sweep here (no beat, no sweep task): what the killed worker had taken is published again by the
    next worker as it starts, from the claims the dead process left; nothing is lost or doubled."""
    binary = loop.register(ModelTask.BINARY, seed=1)
    ids = loop.add_images(120)
    loop.publish(ids, per_message=60)
    first = loop.start_worker()
    loop.wait_for("the first predictions", lambda: loop.predicted(ids) > 0, interval=0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    held = claims_of(loop, ids)
    assert held, "the worker held nothing when it was killed; make its message larger"
    claimants = {Claimant.parse(text or "") for text in held.values()}
    assert {c.pid for c in claimants if c is not None} == {first.pid}

    loop.start_worker()
    loop.wait_for("every image predicted", lambda: loop.predicted(ids) == len(ids))
    loop.assert_exactly_once(ids, repo.make_model_key(binary, None))
    assert f"re-published {len(held)} orphaned image(s)" in loop.log(1), loop.log(1)[-3000:]


def test_an_inference_worker_loads_the_champions_as_it_starts_not_at_its_first_batch(loop: Loop) -> None:
    """A worker started after a crash has its champions (or is loading them) before a message arrives;
    one that takes no photos (the trainer) loads nothing."""
    loop.register(ModelTask.BINARY, seed=1)
    trainer = loop.start("worker", "--queues", "training", "--inference-backend", "eager")
    loop.start_worker()
    loop.wait_for("the worker to warm its champions", lambda: "champions warmed at start" in loop.log(1))
    warmed = next(line for line in loop.log(1).splitlines() if "champions warmed at start" in line)
    assert "binary-baseline_cnn-0001" in warmed
    assert "Task defectloop.classify_images[" not in loop.log(1)  # no message was ever sent
    loop.wait_for("the trainer to be ready", lambda: " ready." in loop.log(0))
    assert trainer.poll() is None
    assert "champions warmed" not in loop.log(0)


def vm_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for process {pid}")


def test_a_huge_photo_is_classified_from_a_reduced_decode(tmp_path: Path) -> None:
    """A 16 Mpx RGBA PNG through a real worker: predicted as the models' own full decoding would predict
    it, while the worker's peak memory grows by less than two copies of the decoded photo (decoding it in
    full, the models' loader holds about five)."""
    side = 4000
    decoded_kib = side * side * 4 // 1024
    with loop_on(
        f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        tmp_path,
        DEFECTLOOP_STRATEGY="entropy",  # the workers run MC passes for bald only: reproducible numbers
    ) as loop:
        loop.register(ModelTask.BINARY, seed=1)
        warmup = loop.add_images(4)
        loop.publish(warmup, per_message=4)
        worker = loop.start_worker()
        loop.wait_for("the warm-up", lambda: loop.predicted(warmup) == len(warmup))
        before = vm_kib(worker.pid, "VmHWM")

        rng = np.random.default_rng(3)
        y, x = np.mgrid[0:side, 0:side].astype(np.float32)
        grey = np.clip(128 + 60 * np.sin(x / 41) * np.cos(y / 29) + rng.normal(0, 8, (side, side)), 0, 255)
        pixels = np.dstack([grey, np.roll(grey, 7, 0), np.roll(grey, 11, 1), 255 - grey / 4]).astype(np.uint8)
        del x, y, grey
        path = tmp_path / "camera" / "huge.png"
        PILImage.fromarray(pixels, mode="RGBA").save(path, compress_level=1)
        del pixels
        [image_id] = record(loop, path)
        loop.publish([image_id], per_message=1)
        loop.wait_for("the huge photo", lambda: loop.predicted([image_id]) == 1)
        grown = vm_kib(worker.pid, "VmHWM") - before
        assert grown < 2 * decoded_kib, f"peak grew by {grown} KiB; the photo decoded is {decoded_kib} KiB"

        artifact = loop.root / "artifacts" / "binary-1.pt"
        checkpoint = load_checkpoint(
            artifact, expected_sha256=hashlib.sha256(artifact.read_bytes()).hexdigest()
        )
        predictor = Predictor(
            checkpoint.model,
            checkpoint.architecture,
            class_names=checkpoint.class_names,
            image_size=SPEC.image_size,
            channels=SPEC.channels,
            backend="eager",
        )
        full = predictor.predict(torch.stack([load_image(path, SPEC)]))
        with loop.sessions() as session:
            stored = session.scalars(select(Prediction).where(Prediction.image_id == image_id)).one()
        assert stored.probabilities["ok"] == pytest.approx(float(full.probs[0][0]), abs=0.02)


def record(loop: Loop, path: Path) -> list[int]:
    """The row of ``path``, as the watcher records it (status new)."""
    with loop.sessions() as session:
        source = repo.get_or_create_source(session=session, name="cam", kind=SourceKind.CAMERA)
        image_row = add_image_file(session, path, source.id)
        session.commit()
        return [image_row.id]
