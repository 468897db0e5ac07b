"""The demo's photos: made once, split by role, named without their label, fed to the camera whole."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from defectloop.demo.photos import DemoPhotos, feed_camera, prepare_photos, write_compare_folder
from defectloop.demo.plan import DemoOptions
from defectloop.errors import DefectloopError
from defectloop.settings import DEFAULT_CLASSES
from defectloop.synth import generate_dataset

OPTIONS = DemoOptions(n_images=60, image_size=32, seed=2)


def test_photos_are_split_named_without_labels_and_kept_for_a_resume(tmp_path: Path) -> None:
    photos = prepare_photos(tmp_path / "run", OPTIONS, classes=DEFAULT_CLASSES)
    roles = {role: photos.of_role(role) for role in ("pool", "compare", "test")}
    assert sum(len(v) for v in roles.values()) == 60
    assert all(roles.values())
    for photo in roles["pool"]:
        assert photo.name.startswith("photo-")
        assert not any(label in photo.name for label in DEFAULT_CLASSES)
    assert len({p.name for p in photos.photos.values()}) == 60
    assert photos.camera_truth() == {p.name: p.label for p in roles["pool"]}
    again = prepare_photos(tmp_path / "run", DemoOptions(n_images=999), classes=DEFAULT_CLASSES)
    assert again == DemoPhotos.load(tmp_path / "run") == photos, "a resumed run reads photos.json"

    folder = write_compare_folder(photos)
    assert sorted(p.name for p in folder.rglob("*.png")) == sorted(p.name for p in roles["compare"])


def test_the_camera_gets_whole_files_once(tmp_path: Path) -> None:
    photos = prepare_photos(tmp_path / "run", OPTIONS, classes=DEFAULT_CLASSES)
    seen: list[int] = []
    assert feed_camera(photos, seconds=0.0, on_file=seen.append) == len(photos.of_role("pool"))
    camera = sorted(p.name for p in photos.camera_dir.iterdir())
    assert camera == sorted(p.name for p in photos.of_role("pool")), "no temporary file left behind"
    assert seen[-1] == len(camera)
    assert feed_camera(photos, seconds=0.0) == 0, "a resumed run feeds only what is missing"


def test_a_dataset_with_repeated_bytes_and_unknown_labels(tmp_path: Path) -> None:
    made = tmp_path / "synth"
    generate_dataset(made, n=24, seed=1, size=32, write_masks=False)
    root = tmp_path / "data"  # a plain labelled folder: class folders, no manifest
    for folder in made.iterdir():
        if folder.is_dir():
            shutil.copytree(folder, root / folder.name)
    first = sorted((root / "ok").glob("*.png"))[0]
    shutil.copy(first, root / "ok" / "copy-of-first.png")
    options = DemoOptions(n_images=100, dataset=str(root))
    photos = prepare_photos(tmp_path / "run", options, classes=DEFAULT_CLASSES)
    assert len(photos.photos) == 24, "the repeated bytes are one photo"

    (root / "stain").mkdir()
    shutil.copy(first, root / "stain" / "x.png")
    with pytest.raises(DefectloopError, match="--class-map"):
        prepare_photos(tmp_path / "other", options, classes=DEFAULT_CLASSES)
