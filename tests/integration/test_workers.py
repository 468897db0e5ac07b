"""Classification through real ``defectloop worker`` processes, on Redis and on the embedded broker.

Real processes, real files, a real SQLite registry migrated to head, champions from real checkpoints
(untrained 32 px baseline CNNs: the numbers do not matter, the bookkeeping does). Every check polls the
database up to a deadline; nothing asserts a timing.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image as PILImage
from sqlalchemy import select

from db import repositories as repo
from db.schema import Image, ModelTask
from tests.worker_harness import DEADLINE_S, Loop, loop_on, require_redis

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
