"""Image records, datasets, augmentation and group-aware splits for training the classifiers.

A labelled set is a list of ``ImageRecord`` (from an ImageFolder via ``scan_image_folder`` or from
database rows), turned into integer targets for one task by ``task_labels`` and split by ``group``
(a strip, a source photo: near-duplicates stay on one side) with ``group_split``. ``ImageDataset``
decodes each file once, keeps the resized 8-bit pixels in memory and augments on tensors with torch's
RNG, so a seeded training run repeats exactly.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from models.errors import ModelError
from models.labels import BINARY_CLASSES, DEFECTIVE, LabelSpace

logger = logging.getLogger(__name__)

__all__ = [
    "BINARY_CLASSES",
    "DEFECTIVE",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ImageLoadError",
    "ImageRecord",
    "InputSpec",
    "Task",
    "class_weights",
    "decode_image",
    "group_kfold",
    "group_split",
    "load_image",
    "scan_image_folder",
    "task_labels",
]

Task = Literal["binary", "multiclass"]
TASKS: tuple[Task, ...] = ("binary", "multiclass")

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
MANIFEST_NAME = "manifest.csv"
# Folders of defect masks sit beside the class folders in AITEX and synth outputs; never a class.
MASK_DIR_NAMES = frozenset({"masks"})
# The synth generator's manifest (defectloop.synth.MANIFEST_COLUMNS); copied, since models may not
# import defectloop. Its images are independent renders, so each file is its own group.
_SYNTH_MARKER = ".defectloop-synth"
_SYNTH_COLUMNS = frozenset({"path", "label", "index", "seed", "texture", "colour_mode"})
# A tile index is short ("_t03", "_12"); a long number ("IMG_1234", "ok_000017") names a photo of its own.
_TILE_SUFFIX = re.compile(r"_(?:t\d+|\d{1,3})$")

# Mild on purpose: fabric defects are subtle contrast changes that strong jitter could wash out.
_BRIGHTNESS = 0.1
_CONTRAST = 0.1


class ImageLoadError(ModelError, ValueError):
    """An image file that cannot be opened or decoded (missing, truncated, not an image)."""


# --- input specification --------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes a model input: square size, channel count and normalisation.

    ``mean``/``std`` default to 0.5 per channel (inputs in [-1, 1]). Stored in the registry with a
    model version (``to_dict``), so inference prepares images exactly as training did.
    """

    image_size: int
    channels: int = 1
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {self.image_size!r}")
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        # Frozen: fill the defaults through object.__setattr__, the dataclass-sanctioned way.
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name)) or (0.5,) * self.channels
            if len(values) != self.channels:
                raise ValueError(f"{name} needs {self.channels} value(s), one per channel, got {values}")
            object.__setattr__(self, name, values)
        if any(s <= 0 or not math.isfinite(s) for s in self.std):
            raise ValueError(f"std values must be positive and finite, got {self.std}")

    @property
    def mode(self) -> Literal["L", "RGB"]:
        """The PIL mode images are converted to."""
        return "L" if self.channels == 1 else "RGB"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in the registry."""
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        try:
            return cls(
                image_size=int(data["image_size"]),
                channels=int(data["channels"]),
                mean=tuple(float(v) for v in data.get("mean", ())),
                std=tuple(float(v) for v in data.get("std", ())),
            )
        except KeyError as exc:
            raise ValueError(f"input spec {dict(data)} lacks {exc.args[0]!r}") from None


# --- records --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRecord:
    """One image to train or evaluate on. ``group`` is the split unit: records sharing it are near
    duplicates (tiles of one strip, crops of one photo) and always land on the same side of a split."""

    path: Path
    label: str | None
    group: str
    image_id: int | None = None  # database row, when the record comes from the database
    mask_path: Path | None = None  # defect mask (255 = defect), when one is known


def file_group(stem: str) -> str:
    """The split group of a file named ``stem`` when nothing better is known: the stem without a
    trailing tile index (``_t03``, or ``_12`` up to three digits), so the tiles of one photo or strip
    stay together while ``IMG_1234`` stays its own group."""
    return _TILE_SUFFIX.sub("", stem) or stem


def _read_manifest(root: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    manifest = root / MANIFEST_NAME
    with manifest.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        if "path" not in columns:
            raise ValueError(f"{manifest} has no 'path' column (columns: {', '.join(columns)})")
        rows = {Path(row["path"]).as_posix(): row for row in reader if row.get("path")}
    return columns, rows


def scan_image_folder(
    root: str | Path,
    *,
    class_map: Mapping[str, str] | None = None,
    include: Collection[str] | None = None,
) -> list[ImageRecord]:
    """Records for an ImageFolder under ``root``: one sub-folder per class, searched recursively.

    - A folder's name is its label, mapped through ``class_map`` (e.g. ``{"defect": "defective"}``).
    - ``include`` (folder names or mapped labels) keeps only those folders; ``masks/`` folders, and
      folders none of whose files a ``manifest.csv`` lists, are never classes. Each skip is logged.
    - Only files with an image extension count; hidden files (half-written uploads) are ignored.
    - ``group``: with a ``manifest.csv`` holding a ``strip`` column (AITEX tiles) it is fabric/strip;
      with a synth manifest, the file itself (independent renders); otherwise the file stem without a
      trailing tile index (``_t03``, or ``_12`` up to three digits: ``IMG_1234`` stays its own group),
      so the tiles of one source stay together.
    - ``mask_path`` from the manifest's ``mask_path`` column, or ``masks/<file name>`` for AITEX.

    Records are sorted by relative path, so the same folder always gives the same list.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    class_map = dict(class_map or {})
    wanted = None if include is None else set(include)

    columns: list[str] = []
    rows: dict[str, dict[str, str]] = {}
    if (root / MANIFEST_NAME).is_file():
        columns, rows = _read_manifest(root)
    is_synth = bool(rows) and ((root / _SYNTH_MARKER).exists() or set(columns) >= _SYNTH_COLUMNS)
    has_strip = "strip" in columns
    listed_folders = {rel.split("/", 1)[0] for rel in rows}

    records: list[ImageRecord] = []
    unlisted = 0
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = class_map.get(folder.name, folder.name)
        if folder.name in MASK_DIR_NAMES:
            logger.info("scan %s: skipping %s/ (defect masks, not a class)", root, folder.name)
            continue
        if wanted is not None and folder.name not in wanted and label not in wanted:
            logger.info("scan %s: skipping %s/ (not in include: %s)", root, folder.name, sorted(wanted))
            continue
        if rows and folder.name not in listed_folders:
            logger.info(
                "scan %s: skipping %s/ (%s lists none of its files)", root, folder.name, MANIFEST_NAME
            )
            continue
        files = sorted(
            f
            for f in folder.rglob("*")
            if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".") and f.is_file()
        )
        for file in files:
            rel = file.relative_to(root).as_posix()
            row = rows.get(rel)
            mask: Path | None = None
            if row is None:
                unlisted += bool(rows)
                group = file_group(file.stem)
            elif is_synth:
                group = rel
            elif has_strip and row.get("strip"):
                fabric = row.get("fabric") or ""
                group = f"{fabric}/{row['strip']}" if fabric else row["strip"]
            else:
                group = file_group(file.stem)
            if row is not None and row.get("mask_path"):
                mask = root / row["mask_path"]
            elif row is not None and has_strip and (root / "masks" / file.name).is_file():
                mask = root / "masks" / file.name
            records.append(ImageRecord(path=file, label=label, group=group, mask_path=mask))
    if unlisted:
        logger.warning("scan %s: %d image(s) not in %s; grouped by file name", root, unlisted, MANIFEST_NAME)
    if not records:
        logger.warning(
            "scan %s: no images in class folders; the layout is %s/<class>/<image> (loose files at the "
            "top level are not read)",
            root,
            root,
        )
    records.sort(key=lambda r: r.path.relative_to(root).as_posix())
    logger.info(
        "scan %s: %d images, %d groups, classes %s",
        root,
        len(records),
        len({r.group for r in records}),
        dict(sorted(Counter(r.label for r in records if r.label is not None).items())),
    )
    return records


def task_labels(
    records: Sequence[ImageRecord], task: Task, label_space: LabelSpace
) -> tuple[list[ImageRecord], list[int], tuple[str, ...]]:
    """Integer targets for ``task``: ``(kept records, labels, class names)``.

    - binary: every record; the good class -> 0, any defect type or a plain "defective" -> 1;
      class names ``("ok", "defective")``.
    - multiclass: only records labelled with one of the defect types (its index), as the defect-type
      model is trained on defective images; the good class and "defective" (no type) are left out.

    A label that is none of these (or a record without a label) raises ``ValueError`` naming it.
    """
    good_class, defects = label_space.good_class, label_space.defect_classes
    known = label_space.known_labels
    for record in records:
        if record.label not in known:
            raise ValueError(
                f"unknown label {record.label!r} for {record.path}; known labels: {', '.join(known)} "
                "(map folder names with class_map, or add the class to defect_classes)"
            )
    if task == "binary":
        return list(records), [0 if r.label == good_class else 1 for r in records], BINARY_CLASSES
    if task == "multiclass":
        index = {name: i for i, name in enumerate(defects)}
        kept = [r for r in records if r.label in index]
        return kept, [index[str(r.label)] for r in kept], defects
    raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")


# --- decoding -------------------------------------------------------------------------------------


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float grayscale -> 8-bit by range (PIL's own convert("L") would clip them)."""
    if image.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8))
    if image.mode == "I":
        arr = np.asarray(image, dtype=np.int64)
        # Mode I is how Pillow opens many 16-bit PNGs; values above 255 mean a 16-bit range.
        if arr.size and arr.max() > 255:
            arr = arr >> 8
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if image.mode == "F":
        arr64 = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if arr64.size and arr64.max() <= 1.0:
            arr64 = arr64 * 255.0
        return Image.fromarray(np.clip(np.rint(arr64), 0, 255).astype(np.uint8))
    return image


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite a transparent image on white, so hidden pixels do not show up as arbitrary colour."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image


def decode_image(path: str | Path, spec: InputSpec) -> npt.NDArray[np.uint8]:
    """Decode ``path`` to a (size, size, channels) uint8 array in ``spec``'s mode and size.

    EXIF orientation is applied (camera JPEGs), transparency composited on white, 16-bit grayscale
    scaled to 8 bits; the image is resized to a square (bilinear, antialiased; no crop, so a non-square
    photo is squeezed). ``ImageLoadError`` for a missing, truncated or non-image file.
    """
    path = Path(path)
    try:
        with Image.open(path) as opened:
            # JPEG only: decode at a reduced scale (still >= the target size); a 12 MP camera photo
            # shrunk to 128 px then decodes several times faster.
            opened.draft(spec.mode, (spec.image_size, spec.image_size))
            opened.load()  # decode now: a truncated file fails here, not later inside convert()
            image = ImageOps.exif_transpose(opened)
            image = _flatten_alpha(_to_8bit(image))
            image = image.convert(spec.mode)
            if image.size != (spec.image_size, spec.image_size):
                # Pillow widens the bilinear kernel when shrinking, i.e. it antialiases.
                image = image.resize((spec.image_size, spec.image_size), Image.Resampling.BILINEAR)
            arr = np.array(image, dtype=np.uint8)  # a writable copy: torch refuses read-only memory
    except FileNotFoundError:
        raise ImageLoadError(f"image {path} does not exist") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # PIL reports bad bytes as OSError ("truncated", "cannot identify"), SyntaxError or ValueError.
        raise ImageLoadError(
            f"cannot read image {path}: {type(exc).__name__}: {exc}; the file is truncated, corrupt or "
            "not an image: replace it or leave it out"
        ) from exc
    return arr[:, :, None] if arr.ndim == 2 else arr


def _to_tensor(arr: npt.NDArray[np.uint8]) -> torch.Tensor:
    """(H, W, C) uint8 -> (C, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255.0)


def _normalise(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    mean = torch.tensor(spec.mean, dtype=x.dtype).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype).view(-1, 1, 1)
    return (x - mean) / std


def load_image(path: str | Path, spec: InputSpec) -> torch.Tensor:
    """A (C, H, W) float tensor ready for the model: decoded, resized and normalised per ``spec``."""
    return _normalise(_to_tensor(decode_image(path, spec)), spec)


def augment_image(x: torch.Tensor) -> torch.Tensor:
    """Random flips, 90-degree rotation and mild brightness/contrast on a (C, H, W) image in [0, 1].

    Fabric has no up or left, so all eight flips/rotations are plausible. Draws from torch's global
    RNG (seed it with ``torch.manual_seed`` for a repeatable run); the result stays in [0, 1].
    """
    if torch.rand(()) < 0.5:
        x = x.flip(-1)
    if torch.rand(()) < 0.5:
        x = x.flip(-2)
    if x.shape[-1] == x.shape[-2]:
        k = int(torch.randint(0, 4, ()))
        if k:
            x = torch.rot90(x, k, dims=(-2, -1))
    brightness = 1.0 + (torch.rand(()) * 2 - 1) * _BRIGHTNESS
    contrast = 1.0 + (torch.rand(()) * 2 - 1) * _CONTRAST
    mean = x.mean()
    x = (x - mean) * contrast + mean * brightness
    return x.clamp_(0.0, 1.0)


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Model-ready ``(image, label)`` pairs over records; the label is -1 when ``labels`` is None.

    With ``cache=True`` each file is decoded and resized once and its uint8 pixels kept in memory
    (a CPU run re-reads the same small images every epoch; 2,500 tiles at 128 px grey are 40 MB).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        labels: Sequence[int] | None,
        spec: InputSpec,
        *,
        augment: bool,
        cache: bool = True,
    ) -> None:
        if labels is not None and len(labels) != len(records):
            raise ValueError(f"{len(records)} records but {len(labels)} labels")
        self.records: tuple[ImageRecord, ...] = tuple(records)
        self.labels: tuple[int, ...] | None = None if labels is None else tuple(int(v) for v in labels)
        self.spec = spec
        self.augment = augment
        self.cache = cache
        self._pixels: dict[int, npt.NDArray[np.uint8]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def with_augment(self, augment: bool) -> ImageDataset:
        """The same images with augmentation switched on or off, sharing the decoded-pixel cache."""
        other = ImageDataset(self.records, self.labels, self.spec, augment=augment, cache=self.cache)
        other._pixels = self._pixels
        return other

    def subset(self, indices: Sequence[int], *, augment: bool | None = None) -> ImageDataset:
        """The images at ``indices`` (in that order) as a dataset of their own, with the pixels decoded
        so far carried over (not decoded again); ``augment`` None keeps this dataset's setting."""
        picked = [int(i) for i in indices]
        other = ImageDataset(
            [self.records[i] for i in picked],
            None if self.labels is None else [self.labels[i] for i in picked],
            self.spec,
            augment=self.augment if augment is None else augment,
            cache=self.cache,
        )
        other._pixels = {new: self._pixels[old] for new, old in enumerate(picked) if old in self._pixels}
        return other

    def pixels(self, index: int) -> npt.NDArray[np.uint8]:
        """The decoded, resized (H, W, C) uint8 pixels of image ``index``."""
        cached = self._pixels.get(index)
        if cached is not None:
            return cached
        arr = decode_image(self.records[index].path, self.spec)
        if self.cache:
            self._pixels[index] = arr
        return arr

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = _to_tensor(self.pixels(index))
        if self.augment:
            x = augment_image(x)
        label = -1 if self.labels is None else self.labels[index]
        return _normalise(x, self.spec), label


# --- splits and balance ---------------------------------------------------------------------------


@dataclass
class _Groups:
    """Records grouped: each group's member indices and label counts, in a seeded order."""

    order: list[str]
    members: dict[str, list[int]]
    labels: dict[str, Counter[int]]
    class_groups: dict[int, list[str]] = field(default_factory=dict)

    def stratum(self, group: str) -> int:
        # A group is dealt with its rarest class (fewest groups), so rare classes spread first.
        return min(self.labels[group], key=lambda c: (len(self.class_groups[c]), c))


def _collect_groups(records: Sequence[ImageRecord], labels: Sequence[int], seed: int) -> _Groups:
    if len(records) != len(labels):
        raise ValueError(f"{len(records)} records but {len(labels)} labels")
    members: dict[str, list[int]] = defaultdict(list)
    counts: dict[str, Counter[int]] = defaultdict(Counter)
    for i, (record, label) in enumerate(zip(records, labels, strict=True)):
        members[record.group].append(i)
        counts[record.group][int(label)] += 1
    names = sorted(members)
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    class_groups: dict[int, list[str]] = defaultdict(list)
    for name in order:
        for c in counts[name]:
            class_groups[c].append(name)
    return _Groups(order, dict(members), dict(counts), dict(class_groups))


def _on_both_sides(owners: Collection[str], val: Collection[str]) -> bool:
    return any(g in val for g in owners) and any(g not in val for g in owners)


def _repair(groups: _Groups, val: set[str]) -> set[str]:
    """Move groups so each class found in >= 2 groups has one on each side, where a move is possible
    without taking that away from another class."""
    for c in sorted(groups.class_groups, key=lambda c: (len(groups.class_groups[c]), c)):
        owners = groups.class_groups[c]
        if len(owners) < 2 or _on_both_sides(owners, val):
            continue
        to_val = not any(g in val for g in owners)  # all on one side: move one across
        for g in owners:
            trial = val | {g} if to_val else val - {g}
            keeps_others = all(
                _on_both_sides(gs, trial)
                for k, gs in groups.class_groups.items()
                if k != c and k in groups.labels[g] and _on_both_sides(gs, val)
            )
            if keeps_others:
                val = trial
                break
    return val


def _indices(groups: _Groups, chosen: Collection[str]) -> list[int]:
    return sorted(i for g in chosen for i in groups.members[g])


def group_split(
    records: Sequence[ImageRecord],
    labels: Sequence[int],
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[list[int], list[int]]:
    """``(train indices, validation indices)``, whole groups to one side, stratified by class.

    Groups are dealt per stratum (a group's rarest class): ``round(val_fraction * n)`` of a stratum's
    groups go to validation, at least one and at most n - 1 when it has two or more. Then every class
    found in two or more groups is checked to have a group on each side, moving a group when one can
    move without breaking that for another class. Deterministic for a given seed.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    groups = _collect_groups(records, labels, seed)
    if len(groups.order) < 2:
        raise ValueError(
            f"cannot split {len(records)} images in {len(groups.order)} group(s): a group never straddles "
            "the split, so at least two groups are needed"
        )
    lonely = sorted(c for c, gs in groups.class_groups.items() if len(gs) < 2)
    if lonely:
        logger.warning(
            "class(es) %s lie in a single group each: they can be on one side of the split only", lonely
        )
    by_stratum: dict[int, list[str]] = defaultdict(list)
    for g in groups.order:
        by_stratum[groups.stratum(g)].append(g)
    val: set[str] = set()
    for c in sorted(by_stratum):
        stratum = by_stratum[c]
        k = round(val_fraction * len(stratum))
        if len(stratum) >= 2:
            k = min(max(k, 1), len(stratum) - 1)
        val.update(stratum[:k])
    val = _repair(groups, val)
    if not val or len(val) == len(groups.order):
        # Every stratum had a single group: fall back to the seeded group order.
        val = {groups.order[0]}
    train = [g for g in groups.order if g not in val]
    return _indices(groups, train), _indices(groups, val)


def group_kfold(
    records: Sequence[ImageRecord],
    labels: Sequence[int],
    *,
    n_splits: int = 5,
    seed: int = 0,
) -> list[tuple[list[int], list[int]]]:
    """``n_splits`` (train, validation) index pairs; each group is in exactly one validation fold.

    Groups are dealt round-robin per stratum (rarest class first), continuing the rotation across
    strata so folds get similar sizes. Deterministic for a given seed.
    """
    groups = _collect_groups(records, labels, seed)
    if n_splits < 2 or n_splits > len(groups.order):
        raise ValueError(f"n_splits must lie in [2, number of groups = {len(groups.order)}], got {n_splits}")
    by_stratum: dict[int, list[str]] = defaultdict(list)
    for g in groups.order:
        by_stratum[groups.stratum(g)].append(g)
    folds: list[list[str]] = [[] for _ in range(n_splits)]
    turn = 0
    for c in sorted(by_stratum, key=lambda c: (len(by_stratum[c]), c)):
        for g in by_stratum[c]:
            folds[turn % n_splits].append(g)
            turn += 1
    return [
        (_indices(groups, [g for g in groups.order if g not in set(fold)]), _indices(groups, fold))
        for fold in folds
    ]


def class_weights(labels: Sequence[int], n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, shape (n_classes,), with mean 1 over the classes present.

    A class absent from ``labels`` gets weight 0: no sample carries it, so its weight cannot change
    a loss, and 0 keeps it out of the normalisation.
    """
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=n_classes).double()
    if counts.numel() > n_classes:
        raise ValueError(f"labels hold a class index >= n_classes={n_classes}")
    present = counts > 0
    if not bool(present.any()):
        raise ValueError("cannot weigh classes of an empty label list")
    weights = torch.zeros(n_classes, dtype=torch.float64)
    weights[present] = 1.0 / counts[present]
    weights[present] /= weights[present].mean()
    return weights.float()
