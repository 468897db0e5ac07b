"""What an annotator sees: Label Studio's labelling screen in a real headless Chromium, logged in.

The deployment (tests/labelling_deployment.py) pushes synthetic garment photos to the test session's
Label Studio; the browser opens the data manager and the label stream as an annotator does and checks
what API-level tests cannot: that the photo and the heat-map actually load and decode (Label Studio
fetches them cross-origin from our media server), that the model's guess is ticked and said in words,
that the choices are in view on a 1366x768 screen, and that a submit (by hotkey) and a skip reach our
database. Screenshots are kept under test-artifacts/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from db import repositories as repo
from defectloop.settings import DEFAULT_CLASSES
from defectloop.synth import generate_dataset
from labelling.devserver import LabelStudioServer
from tests.browser import VIEWPORT, image_states, wait_for_decoded_images
from tests.label_studio_fixtures import unique_project_title
from tests.labelling_deployment import Deployment, deploy

pytestmark = pytest.mark.integration

# Label Studio draws each <Image> from a blob it fetched itself (cross-origin, hence CORS), as an <img>.
LS_IMAGES = "img[crossorigin]"


@pytest.fixture(scope="module")
def deployment(
    label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    photos = tmp_path_factory.mktemp("photos")
    generate_dataset(photos, n=12, seed=3, size=160, write_masks=False)
    files = sorted(p for p in photos.rglob("*.png"))
    root = tmp_path_factory.mktemp("labelling-browser")
    with deploy(label_studio, root, unique_project_title(request), photos=files) as state:
        state.cli("labelling", "push", "--k", "10")
        yield state


def log_in(page: Any, server: LabelStudioServer) -> None:
    page.goto(f"{server.url}/user/login/")
    page.fill('input[name="email"]', server.username)
    page.fill('input[name="password"]', server.password)
    with page.expect_navigation():
        page.click('button[type="submit"]')
    assert "/user/login" not in page.url, "Label Studio refused the test admin's login"


def _open_label_stream(page: Any, deployment: Deployment) -> dict[str, Any]:
    """Open the project's data manager, then "Label All Tasks"; the first task Label Studio hands out."""
    server = deployment.server
    page.goto(f"{server.url}/projects/{deployment.project_id}/data")
    page.get_by_text("Label All Tasks").first.wait_for()
    # The data manager asks its server for the stream's next task (the project's sampling order).
    with page.expect_response(lambda r: "id=next_task" in r.url) as answer:
        page.get_by_text("Label All Tasks").first.click()
    task: dict[str, Any] = answer.value.json()
    wait_for_decoded_images(page, LS_IMAGES, 2)
    return task


def test_an_annotator_sees_photo_heatmap_and_guess_and_the_most_informative_task_first(
    deployment: Deployment, label_studio: LabelStudioServer, page: Any, artifacts: Path
) -> None:
    log_in(page, label_studio)
    page.goto(f"{label_studio.url}/projects/{deployment.project_id}/data")
    page.get_by_text("Label All Tasks").first.wait_for()
    page.wait_for_selector(".dm-table__row-wrapper, [class*=row-wrapper]")
    page.screenshot(path=str(artifacts / "data-manager.png"))

    task = _open_label_stream(page, deployment)
    page.screenshot(path=str(artifacts / "labelling.png"))

    # The first task of the stream is the one defectloop ranked most informative (and no tie decides it).
    tasks = sorted(
        (t for t in deployment.label_tasks() if t.ls_task_id is not None), key=lambda t: -t.informativeness
    )
    best = tasks[0]
    assert round(best.informativeness, 6) > round(tasks[1].informativeness, 6)
    assert task["id"] == best.ls_task_id

    # Photo and heat-map decoded (naturalWidth > 0) and shown side by side, both in view.
    shown = image_states(page, LS_IMAGES)
    assert len(shown) == 2, shown
    photo, heatmap = shown
    assert photo["naturalWidth"] > 0
    assert heatmap["naturalWidth"] > 0
    assert page.get_by_text("There was an issue loading URL").count() == 0
    boxes = [
        page.locator(LS_IMAGES).nth(i).evaluate("e => e.parentElement.getBoundingClientRect().toJSON()")
        for i in range(2)
    ]
    assert boxes[1]["left"] >= boxes[0]["left"] + boxes[0]["width"] - 1, boxes  # side by side
    # The model's guess is ticked and said in words.
    with deployment.sessions() as session:
        prediction = repo.latest_prediction(session=session, image_id=best.image_id)
        assert prediction is not None
    checked = page.eval_on_selector_all("input.ant-checkbox-input:checked", "els => els.map(e => e.name)")
    assert checked == [prediction.predicted_label]
    assert page.get_by_text("Model's guess:").first.is_visible()
    # Every choice and the submit button are on the screen without scrolling.
    controls = [page.locator(f'label:has(input[name="{name}"])') for name in DEFAULT_CLASSES]
    controls += [page.locator(f"button:has-text('{name}')") for name in ("Submit", "Skip")]
    for control in controls:
        box = control.first.bounding_box()
        assert box is not None, control
        assert box["y"] + box["height"] <= VIEWPORT["height"], (control, box)


def test_a_hotkey_submit_and_a_skip_in_the_browser_are_recorded(
    deployment: Deployment, label_studio: LabelStudioServer, page: Any, artifacts: Path
) -> None:
    log_in(page, label_studio)
    first = _open_label_stream(page, deployment)
    before = {a.ls_annotation_id for a in deployment.annotations()}
    page.keyboard.press("2")  # the second class: hole
    page.locator("button:has-text('Submit')").first.click()

    def recorded(task_id: int) -> list[Any]:
        return [
            a
            for a in deployment.annotations()
            if a.ls_task_id == task_id and a.ls_annotation_id not in before
        ]

    deployment.wait_for("the browser's annotation in our database", lambda: bool(recorded(first["id"])))
    (annotation,) = recorded(first["id"])
    assert annotation.label == "hole"
    assert annotation.annotator == label_studio.username  # by e-mail, not a user id

    # The stream hands out the next task; skipping it (the "unsure" path) is recorded as a skip.
    page.wait_for_function(
        "id => !document.body.innerText.includes('#' + id + '\\n')", arg=first["id"], timeout=30_000
    )
    wait_for_decoded_images(page, LS_IMAGES, 2)
    page.screenshot(path=str(artifacts / "next-task.png"))
    page.locator("button:has-text('Skip')").first.click()

    def skipped() -> list[Any]:
        return [a for a in deployment.annotations() if a.was_cancelled and a.ls_annotation_id not in before]

    deployment.wait_for("the skip in our database", lambda: bool(skipped()))
    (skip,) = skipped()
    assert skip.label is None
    assert skip.ls_task_id != first["id"]
