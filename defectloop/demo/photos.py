"""The demo's photos: made (synthetic garments) or taken from a labelled folder, split into the camera
pool, the loop's frozen evaluation set and the demo's frozen test set, with the ground truth kept aside
in ``photos.json`` (the camera folder holds only the photos, under names that say nothing of their
label); and the camera fed over time with atomic writes (copy to a hidden name, then rename)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectloop.demo.metrics import DEFECTIVE
from defectloop.demo.plan import DemoOptions, PhotoSplit, split_photos
from defectloop.errors import DefectloopError

logger = logging.getLogger(__name__)

__all__ = ["DemoPhotos", "feed_camera", "link_or_copy", "prepare_photos"]

PHOTOS_FILE = "photos.json"
_SLUG = re.compile(r"[^A-Za-z0-9-]+")


@dataclass(frozen=True)
class Photo:
    key: str
    source: Path
    label: str
    role: str  # pool, compare or test
    name: str  # file name under camera/ (pool) or compare/<label>/ (compare); test photos stay at source


@dataclass(frozen=True)
class DemoPhotos:
    """Every photo of a run, by key; the ground truth of the camera's photos by file name."""

    run_dir: Path
    photos: dict[str, Photo]

    @property
    def camera_dir(self) -> Path:
        return self.run_dir / "camera"

    @property
    def compare_dir(self) -> Path:
        return self.run_dir / "compare"

    def of_role(self, role: str) -> list[Photo]:
        return [p for p in self.photos.values() if p.role == role]

    def camera_truth(self) -> dict[str, str]:
        """Camera file name -> ground-truth label."""
        return {p.name: p.label for p in self.of_role("pool")}

    def save(self) -> None:
        data = {
            key: {"source": str(p.source), "label": p.label, "role": p.role, "name": p.name}
            for key, p in self.photos.items()
        }
        tmp = self.run_dir / f".{PHOTOS_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(self.run_dir / PHOTOS_FILE)

    @classmethod
    def load(cls, run_dir: Path) -> DemoPhotos | None:
        path = run_dir / PHOTOS_FILE
        if not path.is_file():
            return None
        data: dict[str, dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
        photos = {
            key: Photo(key=key, source=Path(v["source"]), label=v["label"], role=v["role"], name=v["name"])
            for key, v in data.items()
        }
        return cls(run_dir=run_dir, photos=photos)


def _synthetic(run_dir: Path, options: DemoOptions, classes: tuple[str, ...], progress: bool) -> Path:
    from defectloop.synth import generate_dataset

    out = run_dir / "synth"
    if (out / "manifest.csv").is_file():
        return out
    generate_dataset(
        out,
        n=options.n_images,
        seed=options.seed,
        size=options.image_size,
        classes=classes,
        balanced=False,  # mostly good garments, as on a line: active learning has defects to find
        write_masks=False,
        progress=progress,
    )
    return out


def prepare_photos(
    run_dir: Path, options: DemoOptions, *, classes: tuple[str, ...], progress: bool = False
) -> DemoPhotos:
    """The run's photos (made once; a resumed run reads ``photos.json``)."""
    existing = DemoPhotos.load(run_dir)
    if existing is not None:
        return existing
    from models.data import scan_image_folder

    run_dir.mkdir(parents=True, exist_ok=True)
    if options.dataset is None:
        root = _synthetic(run_dir, options, classes, progress)
        records = scan_image_folder(root)
    else:
        root = Path(options.dataset).expanduser().resolve()
        if not root.is_dir():
            raise DefectloopError(f"--dataset {root} is not a folder (an ImageFolder: DIR/<class>/<image>)")
        records = scan_image_folder(root, class_map=options.class_map)
    allowed = {*classes, DEFECTIVE}
    bad = sorted({str(r.label) for r in records if r.label not in allowed})
    if bad:
        raise DefectloopError(
            f"{root}: folder label(s) {bad} are not among the classes {list(classes)} (or 'defective'): "
            "map them with --class-map FOLDER=LABEL (e.g. defect=defective) or set DEFECTLOOP_CLASSES"
        )
    if not records:
        raise DefectloopError(f"{root} holds no images in class folders")
    if options.dataset is not None and len(records) > options.n_images:
        import random

        records = sorted(
            random.Random(options.seed).sample(records, options.n_images), key=lambda r: str(r.path)
        )
    labels = {r.path.relative_to(root).as_posix(): str(r.label) for r in records}
    groups = {r.path.relative_to(root).as_posix(): r.group for r in records}
    split: PhotoSplit = split_photos(
        labels,
        groups,
        good_class=classes[0],
        test_fraction=options.test_fraction,
        compare_fraction=options.compare_fraction,
        seed=options.seed,
    )
    photos: dict[str, Photo] = {}
    group_index: dict[str, int] = {}
    for role, keys in (("pool", split.pool), ("compare", split.compare), ("test", split.test)):
        for key in keys:
            source = root / key
            if options.dataset is None:
                name = f"photo-{len(photos):05d}{source.suffix.lower()}"
            else:
                # Tiles of one strip keep a common stem (the loop keeps a group on one side of a split).
                group = _SLUG.sub("-", groups[key]).strip("-") or "photo"
                j = group_index[group] = group_index.get(group, -1) + 1
                name = f"{group}_t{j:03d}{source.suffix.lower()}"
            photos[key] = Photo(key=key, source=source, label=labels[key], role=role, name=name)
    result = DemoPhotos(run_dir=run_dir, photos=photos)
    result.save()
    logger.info(
        "demo photos: %d in the camera pool, %d in the loop's evaluation set, %d in the test set",
        len(split.pool),
        len(split.compare),
        len(split.test),
    )
    return result


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` holds ``source``'s bytes, written atomically (a hidden temporary name, then a rename):
    a hard link where the file system allows one (no copy of the data set), else a copy."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    tmp.replace(target)


def write_compare_folder(photos: DemoPhotos) -> Path:
    """The loop's frozen evaluation set as an ImageFolder (``compare/<label>/<name>``) to import."""
    for photo in photos.of_role("compare"):
        link_or_copy(photo.source, photos.compare_dir / photo.label / photo.name)
    return photos.compare_dir


def feed_camera(
    photos: DemoPhotos,
    *,
    seconds: float,
    on_file: Callable[[int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Drop the pool's photos into the camera folder one by one over ``seconds`` (files already there
    are skipped: a resumed run feeds what is missing); the number written. A copy, not a link: the
    watcher must see a new file, as from a camera."""
    camera = photos.camera_dir
    camera.mkdir(parents=True, exist_ok=True)
    pool = sorted(photos.of_role("pool"), key=lambda p: p.name)
    pause = seconds / max(1, len(pool))
    written = 0
    for done, photo in enumerate(pool, start=1):
        target = camera / photo.name
        if not target.exists():
            tmp = camera / f".{photo.name}.part"
            shutil.copyfile(photo.source, tmp)
            tmp.replace(target)
            written += 1
            if pause > 0:
                sleep(pause)
        if on_file is not None:
            on_file(done)
    return written


def truth_by_name(photos: DemoPhotos) -> Mapping[str, str]:
    return photos.camera_truth()
