"""The whole stack as `defectloop up` runs it, with default settings, feeding a real Label Studio.

Camera photos dropped into a watched folder must reach annotators without anyone running a command:
the watcher records them, the worker classifies them, beat pushes the most informative as soon as it
starts (not one interval later) and keeps the queue topped up, and `serve` gives Label Studio the photos.
The deadline below is the promise made to annotators (first tasks within a minute), polled, not timed;
the measured figure is in docs/benchmarks.md (benchmarks/bench_labelling_supply.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from labelling.devserver import LabelStudioServer
from tests.label_studio_fixtures import unique_project_title
from tests.labelling_deployment import Deployment, deploy

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
    rng = np.random.default_rng(0)
    for n in range(N_PHOTOS):
        pixels = np.clip(rng.normal(40 + 6 * n, 30, size=(64, 64)), 0, 255).astype(np.uint8)
        PILImage.fromarray(pixels, mode="L").save(camera / f"shot{n:03d}.png")
    project_id = stack.project_id
    stack.wait_for(
        "the first tasks in Label Studio",
        lambda: bool(stack.gateway.list_tasks(project_id=project_id)),
        deadline_s=FIRST_TASKS_WITHIN_S,
    )
    # Beat topped the queue up to its default target; each image once.
    stack.wait_for(
        "every photo to be predicted and pushed",
        lambda: len(stack.gateway.list_tasks(project_id=project_id)) == N_PHOTOS,
        deadline_s=FIRST_TASKS_WITHIN_S,
    )
    listed = stack.gateway.list_tasks(project_id=project_id)
    assert len({task["data"]["defectloop_image_id"] for task in listed}) == N_PHOTOS
    log = stack.log("up")
    assert "beat start: sent" in log
    assert "push-labelling-batch" in log
