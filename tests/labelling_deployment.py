"""One labelling deployment against the test session's Label Studio, used by the API-level and browser tests.

A migrated SQLite registry with champions (untrained 32 px CNNs: the bookkeeping matters here, not the
accuracy), 24 classified camera images, the embedded broker, a ``defectloop serve`` process (webhook
receiver + ML backend + media) and a ``defectloop worker`` on the ``labelling`` queue, all pointed at
the session's Label Studio (tests/label_studio_fixtures.py). Every wait polls up to a deadline; nothing
asserts a timing.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageEnhance
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.migrate import upgrade
from db.schema import Annotation, LabelTask, ModelTask, SourceKind
from db.session import create_engine_for, make_session_factory
from defectloop.settings import DEFAULT_CLASSES
from labelling.devserver import LabelStudioServer, find_free_port
from labelling.gateway import LabelStudioGateway
from models.data import InputSpec
from models.labels import LabelSpace
from tests.worker_harness import register_untrained
from workers import classification

DEFECTLOOP = str(Path(sys.executable).parent / "defectloop")
DEADLINE_S = 60.0
SECRET = "webhook-secret-for-tests-0123456789"
SPEC = InputSpec(image_size=32, channels=1)
N_IMAGES = 24


@dataclass
class Deployment:
    root: Path
    env: dict[str, str]
    sessions: sessionmaker[Session]
    gateway: LabelStudioGateway
    server: LabelStudioServer
    public_url: str
    title: str
    image_ids: list[int]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [DEFECTLOOP, *args], env=self.env, capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, (
            f"defectloop {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
        return result

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        """Start ``defectloop ARGS`` as process ``name`` (``env``: settings added for it alone)."""
        with (self.root / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [DEFECTLOOP, *args], env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
            )

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, self.log(name)[-3000:]

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def start_receiver(self) -> None:
        self.start("serve", "serve")
        self.wait_for("the receiver to answer /health", self._receiver_up)

    def _receiver_up(self) -> bool:
        try:
            return httpx.get(f"{self.public_url}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_for(self, what: str, check: Callable[[], bool], deadline_s: float = DEADLINE_S) -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if check():
                return
            for name, process in self.processes.items():
                if process.poll() is not None:
                    pytest.fail(f"{name} exited with {process.returncode}:\n{self.log(name)[-3000:]}")
            time.sleep(0.2)
        logs = "\n".join(f"--- {name}\n{self.log(name)[-2000:]}" for name in self.processes)
        pytest.fail(f"timed out waiting for {what}\n{logs}")

    @property
    def project_id(self) -> int:
        matches = self.gateway.project_ids(title=self.title)
        assert len(matches) == 1, matches
        return matches[0]

    def annotations(self) -> list[Annotation]:
        with self.sessions() as session:
            return list(session.scalars(select(Annotation).order_by(Annotation.id)))

    def label_tasks(self) -> list[LabelTask]:
        with self.sessions() as session:
            return list(session.scalars(select(LabelTask).order_by(LabelTask.id)))


def register_champion(sessions: sessionmaker[Session], root: Path, task: ModelTask, seed: int) -> None:
    register_untrained(
        sessions,
        root / "artifacts" / f"{task}-{seed}.pt",
        task,
        seed=seed,
        name=f"{task}-baseline_cnn-{seed:04d}",
    )


def camera_images(
    sessions: sessionmaker[Session], folder: Path, photos: Sequence[Path] | None = None
) -> list[int]:
    """N_IMAGES recorded camera images: noise, or ``photos`` (cycled), of varied brightness."""
    folder.mkdir(parents=True)
    ids = []
    with sessions.begin() as session:
        source = repo.get_or_create_source(
            session=session, name="cam1", kind=SourceKind.CAMERA, path=str(folder)
        )
        for n in range(N_IMAGES):
            path = folder / f"shot{n:03d}.png"
            if photos:
                # Exposure varies per shot (as on a line), so the untrained models are not equally unsure.
                with PILImage.open(photos[n % len(photos)]) as photo:
                    ImageEnhance.Brightness(photo.convert("RGB")).enhance(0.4 + 1.2 * n / N_IMAGES).save(path)
            else:
                rng = np.random.default_rng(n)
                # Brightness varies per image so the untrained models are not equally unsure of all.
                pixels = np.clip(rng.normal(40 + 8 * n, 30, size=(64, 64)), 0, 255).astype(np.uint8)
                PILImage.fromarray(pixels, mode="L").save(path)
            with PILImage.open(path) as shown:
                width, height, mode = shown.width, shown.height, shown.mode
            image, _ = repo.add_image(
                session=session,
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),  # the worker checks it
                path=str(path),
                source_id=source.id,
                width=width,
                height=height,
                mode=mode,
                size_bytes=path.stat().st_size,
            )
            ids.append(image.id)
    return ids


@contextmanager
def deploy(
    label_studio: LabelStudioServer,
    root: Path,
    title: str,
    *,
    photos: Sequence[Path] | None = None,
    recorded_images: bool = True,
    processes: bool = True,
    **extra_env: str,
) -> Iterator[Deployment]:
    """Registry, classified camera images, ``labelling init``, a receiver and a labelling worker.

    ``photos``: files the camera images are copied from (default: noise). Without
    ``recorded_images`` the registry holds no image (a camera feeds it); without ``processes`` the test
    starts what it needs. ``extra_env`` adds or overrides ``DEFECTLOOP_`` settings of every process.
    """
    database_url = f"sqlite:///{root / 'defectloop.db'}"
    upgrade(database_url)
    engine = create_engine_for(database_url)
    sessions = make_session_factory(engine)
    register_champion(sessions, root, ModelTask.BINARY, seed=1)
    register_champion(sessions, root, ModelTask.MULTICLASS, seed=2)
    ids = []
    if recorded_images:
        ids = camera_images(sessions, root / "camera", photos)
        champions = classification.ChampionCache(
            lambda ref: classification.load_predictor(ref, backend="eager")
        )
        report = classification.classify_images(
            ids,
            sessions=sessions,
            champions=champions,
            label_space=LabelSpace.from_classes(DEFAULT_CLASSES),
            batch_size=8,
        )
        assert len(report.predicted) == N_IMAGES

    port = find_free_port()
    public_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTLOOP_")}
    env.update(
        DEFECTLOOP_DATA_DIR=str(root),
        DEFECTLOOP_DATABASE_URL=database_url,
        DEFECTLOOP_BROKER_URL=f"sqla+sqlite:///{root / 'broker.db'}",
        DEFECTLOOP_LABEL_STUDIO_URL=label_studio.url,
        DEFECTLOOP_LABEL_STUDIO_API_KEY=label_studio.token,
        DEFECTLOOP_LABEL_STUDIO_PROJECT_TITLE=title,
        DEFECTLOOP_WEBHOOK_SECRET=SECRET,
        DEFECTLOOP_HTTP_PORT=str(port),
        DEFECTLOOP_PUBLIC_URL=public_url,
        DEFECTLOOP_MC_DROPOUT_PASSES="1",
        DEFECTLOOP_STRATEGY="entropy",
        DEFECTLOOP_LOG_LEVEL="INFO",
        OMP_NUM_THREADS="1",
        COLUMNS="200",
        NO_COLOR="1",
    )
    env.update(extra_env)
    with LabelStudioGateway(label_studio.url, label_studio.token) as gateway:
        state = Deployment(
            root=root,
            env=env,
            sessions=sessions,
            gateway=gateway,
            server=label_studio,
            public_url=public_url,
            title=title,
            image_ids=ids,
        )
        try:
            state.cli("labelling", "init")
            if processes:
                state.start_receiver()
                state.start("worker", "worker", "--queues", "labelling", "--inference-backend", "eager")
            yield state
        finally:
            for process in state.processes.values():
                process.send_signal(signal.SIGTERM)
            for process in state.processes.values():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
            engine.dispose()
