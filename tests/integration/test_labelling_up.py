"""The whole stack as `defectloop up` runs it, with default settings, feeding a real Label Studio.

Camera photos dropped into a watched folder must reach annotators without anyone running a command:
the watcher records them, the worker classifies them, beat pushes the most informative as soon as it
starts (not one interval later) and keeps the queue topped up, and `serve` gives Label Studio the photos.
The deadline below is the promise made to annotators (first tasks within a minute), polled, not timed;
the measured figure is in docs/benchmarks.md (benchmarks/bench_labelling_supply.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from labelling.devserver import LabelStudioServer
from tests.label_studio_fixtures import unique_project_title
from tests.labelling_deployment import DEFECTLOOP, Deployment, deploy

pytestmark = pytest.mark.integration

N_PHOTOS = 30
FIRST_TASKS_WITHIN_S = 60.0


@pytest.fixture
def stack(
    label_studio: LabelStudioServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    with deploy(
        label_studio, tmp_path / "data", unique_project_title(request), recorded_images=False, processes=False
    ) as state:
        yield state


def test_photos_dropped_in_a_camera_folder_reach_annotators_within_a_minute_with_defaults(
    stack: Deployment,
) -> None:
    camera = stack.root / "camera"
    camera.mkdir()
    stack.start("up", "up", str(camera))
    stack.wait_for("up's receiver", stack._receiver_up)
    project_id = stack.project_id
    rng = np.random.default_rng(0)

    def shot(name: str, n: int) -> None:
        pixels = np.clip(rng.normal(40 + 6 * n, 30, size=(64, 64)), 0, 255).astype(np.uint8)
        PILImage.fromarray(pixels, mode="L").save(camera / name)

    def tasks() -> int:
        return len(stack.gateway.list_tasks(project_id=project_id))

    # The stack is warm once one photo went through (a line's stack runs all day); then a burst.
    shot("warm-up.png", 0)
    stack.wait_for("the warm-up photo in Label Studio", lambda: tasks() == 1, deadline_s=180)
    for n in range(1, N_PHOTOS):
        shot(f"shot{n:03d}.png", n)
    stack.wait_for(
        "the burst's first tasks in Label Studio", lambda: tasks() > 1, deadline_s=FIRST_TASKS_WITHIN_S
    )
    # The queue is topped up towards its default target; each image once.
    stack.wait_for("every photo to be pushed", lambda: tasks() == N_PHOTOS, deadline_s=FIRST_TASKS_WITHIN_S)
    listed = stack.gateway.list_tasks(project_id=project_id)
    assert len({task["data"]["defectloop_image_id"] for task in listed}) == N_PHOTOS
    log = stack.log("up")
    assert "beat start: sent" in log
    assert "push-labelling-batch" in log


def test_serve_dev_keeps_its_projects_login_and_token_across_restarts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTLOOP_")}
    env.update(DEFECTLOOP_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")

    def serve_once() -> dict[str, str]:
        process = subprocess.Popen(
            [DEFECTLOOP, "labelling", "serve-dev"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        shown: dict[str, str] = {}
        try:
            assert process.stdout is not None
            for line in process.stdout:
                key, _, value = line.partition(":")
                if key in ("Label Studio", "API token", "data dir"):
                    shown[key] = value.strip()
                if line.startswith("Ctrl-C stops it"):
                    break
            assert "API token" in shown, shown
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
        return shown

    first = serve_once()
    second = serve_once()
    assert first["data dir"].startswith(str(tmp_path / "data" / "label-studio"))
    assert second["API token"] == first["API token"]  # the same token: settings that use it keep working
