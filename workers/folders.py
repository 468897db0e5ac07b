"""Labelled image folders as the engineers' commands read them: scan, label check and fingerprint.

One sub-folder per class (ImageFolder layout), scanned by ``models.data.scan_image_folder`` so that
training, evaluation and import see exactly the same files and labels. A folder whose label is not a
known class is refused before anything is done, naming the class map that would fix it.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from models.data import ImageRecord, scan_image_folder
from workers.errors import DatasetError

logger = logging.getLogger(__name__)

__all__ = ["dataset_fingerprint", "label_counts", "relative_path", "scan_labelled_folder"]


def relative_path(record: ImageRecord, root: Path) -> str:
    """The record's path relative to ``root``, with forward slashes (as in a manifest)."""
    return record.path.relative_to(root).as_posix()


def scan_labelled_folder(
    root: Path, *, class_map: Mapping[str, str] | None, known_labels: Collection[str]
) -> list[ImageRecord]:
    """The labelled images under ``root`` (sorted by relative path), every label one of ``known_labels``.

    Raises ``DatasetError`` when the folder is missing, holds no image in a class folder, or has a
    class folder whose (mapped) label is unknown: nothing is returned then, so a caller that refuses
    here has done nothing yet.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a directory")
    class_map = dict(class_map or {})
    try:
        records = scan_image_folder(root, class_map=class_map)
    except ValueError as exc:  # a manifest.csv without a path column
        raise DatasetError(f"cannot read the labelled folder {root}: {exc}") from exc
    if not records:
        raise DatasetError(
            f"no images in the class folders of {root}: the layout is {root}/<class>/<image>, "
            "one folder per class (loose files at the top level are not read)"
        )
    folders = {record.path.relative_to(root).parts[0] for record in records}
    unused = sorted(set(class_map) - folders)
    if unused:
        logger.warning(
            "class map entries %s match no class folder of %s (folders: %s)",
            [f"{name}={class_map[name]}" for name in unused],
            root,
            sorted(folders),
        )
    unknown: dict[str, str] = {}
    for record in records:
        folder = record.path.relative_to(root).parts[0]
        if record.label not in known_labels:
            unknown.setdefault(folder, str(record.label))
    if unknown:
        shown = ", ".join(
            f"{folder}/" if folder == label else f"{folder}/ (mapped to {label!r})"
            for folder, label in sorted(unknown.items())
        )
        example = next(iter(sorted(unknown)))
        raise DatasetError(
            f"{root}: class folder(s) {shown} are not known labels; known labels: "
            f"{', '.join(known_labels)}. Map each folder to a known label with a class map "
            f"(--class-map FOLDER=LABEL, e.g. --class-map {example}=<one of the known labels>), "
            "or add the class to DEFECTLOOP_CLASSES"
        )
    return records


def dataset_fingerprint(records: Sequence[ImageRecord], root: Path) -> str:
    """sha256 of the sorted ``(relative path, label)`` list: the same files with the same labels, the same
    fingerprint; it changes when a file is added, removed, renamed or labelled differently."""
    digest = hashlib.sha256()
    for rel, label in sorted((relative_path(r, root), str(r.label)) for r in records):
        digest.update(f"{rel}\t{label}\n".encode())
    return digest.hexdigest()


def label_counts(records: Sequence[ImageRecord]) -> dict[str, int]:
    """Images per label, sorted by label."""
    return dict(sorted(Counter(str(r.label) for r in records).items()))
