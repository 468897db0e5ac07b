"""A deployment of real defectloop processes for the integration tests (``tests/integration``).

``loop_on(broker_url, tmp_path)`` migrates a SQLite registry in ``tmp_path``, builds a Celery app for
publishing, and yields a `Loop`: it registers champions from real checkpoints (untrained 32 px
baseline CNNs: the numbers do not matter, the bookkeeping does), starts ``defectloop`` commands as
child processes (each logging to its own file), and polls the database up to a deadline. Every child
still running at the end is killed. `RedisServer` is a redis-server of a test's own, on a free port,
with nothing persisted, which a test may stop and start again.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
from tests.db_helpers import add_image_file
from workers.celery_app import SWEEP_TASK, WorkerConfig, create_app, publish_classification
from workers.queues import Queue

DEFECTLOOP = str(Path(sys.executable).parent / "defectloop")
DEADLINE_S = 90.0
SPEC = InputSpec(image_size=32, channels=1)


def register_untrained(
    sessions: sessionmaker[Session], path: Path, task: ModelTask, *, seed: int, name: str
) -> int:
    """Save a seeded, untrained 32 px baseline CNN for ``task`` at ``path`` and register it; its id.

    The first version of a task becomes its champion. The numbers such a model gives do not matter to
    the tests that use it; the bookkeeping does.
    """
    classes = ("ok", "defective") if task is ModelTask.BINARY else DEFAULT_CLASSES[1:]
    torch.manual_seed(seed)
    model = create_model("baseline_cnn", num_classes=len(classes), in_chans=SPEC.channels)
    digest = save_checkpoint(
        path, model, architecture="baseline_cnn", task=task.value, class_names=classes, input_spec=SPEC
    )
    with sessions.begin() as session:
        version = repo.register_model_version(
            session=session,
            name=name,
            task=task,
            architecture="baseline_cnn",
            classes=classes,
            input_spec=SPEC.to_dict(),
            artifact_path=str(path),
            artifact_sha256=digest,
        )
        return int(version.id)


@dataclass
class Loop:
    """One isolated deployment: data dir, database, broker, and the processes started in it."""

    root: Path
    broker_url: str
    sessions: sessionmaker[Session]
    app: Any
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    n_images: int = 0
    n_versions: int = 0

    def start(self, *args: str, prefix: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start ``[PREFIX...] defectloop ARGS`` as process number ``len(processes)``, logging to
        ``worker<N>.log`` (``log(N)`` reads it)."""
        with (self.root / f"worker{len(self.processes)}.log").open("wb") as log:
            process = subprocess.Popen(
                [*prefix, DEFECTLOOP, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process

    def start_worker(self) -> subprocess.Popen[bytes]:
        return self.start("worker", "--inference-backend", "eager")

    def log(self, index: int) -> str:
        return (self.root / f"worker{index}.log").read_text(errors="replace")

    def logs(self, tail: int = 2000) -> str:
        return "\n".join(
            f"--- process {i} ({' '.join(map(str, p.args[-3:]))}):\n{self.log(i)[-tail:]}"  # type: ignore[index]
            for i, p in enumerate(self.processes)
        )

    def register(self, task: ModelTask, *, seed: int) -> int:
        self.n_versions += 1
        return register_untrained(
            self.sessions,
            self.root / "artifacts" / f"{task}-{self.n_versions}.pt",
            task,
            seed=seed,
            name=f"{task}-baseline_cnn-{self.n_versions:04d}",
        )

    def promote(self, version_id: int) -> None:
        with self.sessions() as session:
            repo.set_champion(session=session, version_id=version_id, actor="test", reason="swap test")
            session.commit()

    def add_images(self, n: int) -> list[int]:
        """``n`` new image rows (status new) with their files, as the watcher would record them."""
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
                ids.append(add_image_file(session, path, source.id).id)
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

    def counts(self) -> dict[ImageStatus, int]:
        """Rows per status, statuses without rows left out."""
        with self.sessions() as session:
            return {s: n for s, n in repo.count_images_by_status(session=session).items() if n}

    def wait_for(self, what: str, check: Callable[[], bool], interval: float = 0.05) -> None:
        """Poll ``check`` until it holds; fail (with the logs) at the deadline or when a process died."""
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            if check():
                return
            for i, process in enumerate(self.processes):
                if process.poll() is not None and process.returncode not in (0, -signal.SIGKILL):
                    pytest.fail(f"process {i} exited with {process.returncode}:\n{self.log(i)[-3000:]}")
            time.sleep(interval)
        pytest.fail(f"timed out waiting for {what} (rows by status: {self.counts()}); logs:\n{self.logs()}")

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


def require_redis(url: str) -> None:
    """Fail (never skip) when no Redis answers at ``url``."""
    try:
        redis.Redis.from_url(url).ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"these tests need Redis at {url} (start redis-server): {exc}")


@contextmanager
def loop_on(broker_url: str, root: Path, **env: str) -> Iterator[Loop]:
    """A `Loop` in ``root`` on ``broker_url`` (a SQLite registry of its own); ``env``: extra settings.

    A Redis broker is not flushed here: the caller owns its database number (or server).
    """
    database_url = f"sqlite:///{root / 'defectloop.db'}"
    upgrade(database_url)
    engine = create_engine_for(database_url)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTLOOP_")}
    child_env.update(
        DEFECTLOOP_DATA_DIR=str(root),
        DEFECTLOOP_DATABASE_URL=database_url,
        DEFECTLOOP_BROKER_URL=broker_url,
        DEFECTLOOP_INFERENCE_BATCH_SIZE="2",
        DEFECTLOOP_MC_DROPOUT_PASSES="2",
        DEFECTLOOP_STRATEGY="bald",  # the workers then run (and store) the MC-dropout passes
        DEFECTLOOP_LOG_LEVEL="INFO",
        OMP_NUM_THREADS="1",
        COLUMNS="200",
    )
    child_env.update(env)
    app = create_app(
        WorkerConfig(
            broker_url=broker_url,
            database_url=database_url,
            artifacts_dir=root / "artifacts",
            classes=DEFAULT_CLASSES,
        )
    )
    state = Loop(
        root=root, broker_url=broker_url, sessions=make_session_factory(engine), app=app, env=child_env
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


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own on a free port, persisting nothing; stop and start it at will."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("this test needs the redis-server binary on PATH (apt-get install redis-server)")
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it on its port (the same each time) and wait until it answers."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.starts += 1
        log = (self.folder / f"redis{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.folder),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    text = (self.folder / f"redis{self.starts}.log").read_text(errors="replace")
                    pytest.fail(f"redis-server did not start on port {self.port}:\n{text[-2000:]}")
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop it (SIGTERM: every message it held is gone, nothing was persisted)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def pause(self) -> None:
        """Make it hang (SIGSTOP): connections stay open, nothing answers, as in a network partition."""
        assert self.process is not None
        assert self.process.poll() is None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=30)
