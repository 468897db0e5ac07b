"""Classification through real ``defectloop worker`` processes, on Redis and on the embedded broker.

Real processes, real files, a real SQLite registry migrated to head, champions from real checkpoints
(untrained 32 px baseline CNNs: the numbers do not matter, the bookkeeping does). Every check polls the
database up to a deadline; nothing asserts a timing.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from PIL import Image as PILImage
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.migrate import upgrade
from db.schema import Image, ImageStatus, ModelTask, Prediction, SourceKind
from db.session import create_engine_for, make_session_factory
from defectloop.settings import DEFAULT_CLASSES
from models.data import InputSpec
from models.registry import create_model
from models.train import save_checkpoint
from workers.celery_app import SWEEP_TASK, WorkerConfig, create_app, publish_classification
from workers.queues import Queue

pytestmark = pytest.mark.integration

DEFECTLOOP = str(Path(sys.executable).parent / "defectloop")
REDIS_URL = "redis://127.0.0.1:6379/13"  # this suite's own database number; only it is flushed
DEADLINE_S = 90.0
SPEC = InputSpec(image_size=32, channels=1)


@dataclass
class Loop:
    """One isolated deployment: data dir, database, broker, and the worker processes started in it."""

    root: Path
    broker_url: str
    sessions: sessionmaker[Session]
    app: Any
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    n_images: int = 0
    n_versions: int = 0

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """Start ``defectloop ARGS`` as process number ``len(processes)``, logging to worker<N>.log."""
        with (self.root / f"worker{len(self.processes)}.log").open("wb") as log:
            process = subprocess.Popen(
                [DEFECTLOOP, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process

    def start_worker(self) -> subprocess.Popen[bytes]:
        return self.start("worker", "--inference-backend", "eager")

    def log(self, index: int) -> str:
        return (self.root / f"worker{index}.log").read_text(errors="replace")

    def register(self, task: ModelTask, *, seed: int) -> int:
        classes = ("ok", "defective") if task is ModelTask.BINARY else DEFAULT_CLASSES[1:]
        torch.manual_seed(seed)
        model = create_model("baseline_cnn", num_classes=len(classes), in_chans=SPEC.channels)
        self.n_versions += 1
        path = self.root / "artifacts" / f"{task}-{self.n_versions}.pt"
        digest = save_checkpoint(
            path, model, architecture="baseline_cnn", task=task.value, class_names=classes, input_spec=SPEC
        )
        with self.sessions() as session:
            version = repo.register_model_version(
                session=session,
                name=f"{task}-baseline_cnn-{self.n_versions:04d}",
                task=task,
                architecture="baseline_cnn",
                classes=classes,
                input_spec=SPEC.to_dict(),
                artifact_path=str(path),
                artifact_sha256=digest,
            )
            session.commit()
            return version.id

    def promote(self, version_id: int) -> None:
        with self.sessions() as session:
            repo.set_champion(session=session, version_id=version_id, actor="test", reason="swap test")
            session.commit()

    def add_images(self, n: int) -> list[int]:
        folder = self.root / "camera"
        folder.mkdir(exist_ok=True)
        ids = []
        with self.sessions() as session:
            source = repo.get_or_create_source(session=session, name="cam", kind=SourceKind.CAMERA)
            for _ in range(n):
                self.n_images += 1
                rng = np.random.default_rng(self.n_images)
                pixels = rng.integers(0, 256, size=(96, 96), dtype=np.uint8)
                path = folder / f"img{self.n_images:05d}.png"
                PILImage.fromarray(pixels, mode="L").save(path)
                data = path.read_bytes()
                image, _ = repo.add_image(
                    session=session,
                    sha256=hashlib.sha256(data).hexdigest(),
                    path=str(path),
                    source_id=source.id,
                    width=96,
                    height=96,
                    mode="L",
                    size_bytes=len(data),
                )
                ids.append(image.id)
            session.commit()
        return ids

    def publish(self, ids: list[int], per_message: int) -> None:
        for start in range(0, len(ids), per_message):
            publish_classification(self.app, ids[start : start + per_message])

    def sweep(self) -> None:
        self.app.send_task(SWEEP_TASK, kwargs={"stuck_after_s": 0}, queue=Queue.MAINTENANCE.value)

    def predicted(self, ids: list[int]) -> int:
        with self.sessions() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(Image)
                    .where(Image.id.in_(ids), Image.status == ImageStatus.PREDICTED)
                )
                or 0
            )

    def wait_for(self, what: str, check: Callable[[], bool], interval: float = 0.05) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            if check():
                return
            for i, process in enumerate(self.processes):
                if process.poll() is not None and process.returncode not in (0, -signal.SIGKILL):
                    pytest.fail(f"worker {i} exited with {process.returncode}:\n{self.log(i)[-3000:]}")
            time.sleep(interval)
        logs = "\n".join(self.log(i)[-2000:] for i in range(len(self.processes)))
        pytest.fail(f"timed out waiting for {what}; worker logs:\n{logs}")

    def assert_exactly_once(self, ids: list[int], model_key: str | None = None) -> None:
        with self.sessions() as session:
            rows = session.execute(
                select(Prediction.image_id, Prediction.model_key).where(Prediction.image_id.in_(ids))
            ).all()
            statuses = set(session.scalars(select(Image.status).where(Image.id.in_(ids)).distinct()).all())
        per_image: dict[int, int] = {}
        for image_id, _ in rows:
            per_image[image_id] = per_image.get(image_id, 0) + 1
        assert statuses == {ImageStatus.PREDICTED}
        assert sorted(per_image) == sorted(ids), "an image has no prediction"
        assert set(per_image.values()) == {1}, {i: n for i, n in per_image.items() if n != 1}
        if model_key is not None:
            assert {key for _, key in rows} == {model_key}


@pytest.fixture(params=["redis", "embedded"])
def loop(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Loop]:
    if request.param == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        try:
            client.ping()
        except redis.ConnectionError as exc:
            pytest.fail(f"these tests need Redis at {REDIS_URL} (start redis-server): {exc}")
        client.flushdb()
        broker_url = REDIS_URL
    else:
        broker_url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    database_url = f"sqlite:///{tmp_path / 'defectloop.db'}"
    upgrade(database_url)
    engine = create_engine_for(database_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTLOOP_")}
    env.update(
        DEFECTLOOP_DATA_DIR=str(tmp_path),
        DEFECTLOOP_DATABASE_URL=database_url,
        DEFECTLOOP_BROKER_URL=broker_url,
        DEFECTLOOP_INFERENCE_BATCH_SIZE="2",
        DEFECTLOOP_MC_DROPOUT_PASSES="2",
        DEFECTLOOP_LOG_LEVEL="INFO",
        OMP_NUM_THREADS="1",
        COLUMNS="200",
    )
    app = create_app(
        WorkerConfig(
            broker_url=broker_url,
            database_url=database_url,
            artifacts_dir=tmp_path / "artifacts",
            classes=DEFAULT_CLASSES,
        )
    )
    state = Loop(
        root=tmp_path, broker_url=broker_url, sessions=make_session_factory(engine), app=app, env=env
    )
    try:
        yield state
    finally:
        for process in state.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
        app.close()
        engine.dispose()
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
    for name in ("worker", "beat", "watch"):
        assert f"{name} stopped (exit 0)" in log, name
