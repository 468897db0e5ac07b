"""Records, labels, group splits, decoding and augmentation (models/data.py). No downloads, small images."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import models.data as data_module
from defectloop.synth import generate_dataset
from models.data import (
    ImageDataset,
    ImageLoadError,
    ImageRecord,
    InputSpec,
    augment_image,
    class_weights,
    group_kfold,
    group_split,
    load_image,
    scan_image_folder,
    task_labels,
)
from models.labels import LabelSpace

DEFECTS = ("hole", "seam_puckering", "uncut_thread", "raw_edge", "broken_stitch")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "images"
    generate_dataset(out, n=36, seed=1, size=48)
    return out


def _record(group: str, label: str | None = "ok") -> ImageRecord:
    return ImageRecord(path=Path(f"/nowhere/{group}.png"), label=label, group=group)


# --- InputSpec ------------------------------------------------------------------------------------


def test_input_spec_round_trips_through_json() -> None:
    spec = InputSpec(image_size=64, channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    assert InputSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert InputSpec(image_size=32).mean == (0.5,)
    assert InputSpec(image_size=32, channels=3).std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    "kwargs",
    [{"channels": 2}, {"image_size": 4}, {"mean": (0.5, 0.5)}, {"std": (0.0,)}, {"channels": True}],
)
def test_input_spec_refuses_bad_values(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"image_size": 32, "channels": 1, **kwargs}
    with pytest.raises(ValueError):  # noqa: PT011  # the messages are checked by reading, not by regex
        InputSpec(**args)  # type: ignore[arg-type]


# --- scanning -------------------------------------------------------------------------------------


def test_scan_of_a_synth_folder_skips_masks_and_reads_labels(
    synth: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="models.data"):
        records = scan_image_folder(synth)
    assert len(records) == 36
    assert {r.label for r in records} == {"ok", *DEFECTS}
    assert all(r.path.parent.name == r.label for r in records)
    assert "masks" in caplog.text
    # Synthetic renders are independent: each file is its own group.
    assert len({r.group for r in records}) == 36
    for r in records:
        if r.label == "ok":
            assert r.mask_path is None
        else:
            assert r.mask_path is not None
            assert r.mask_path.is_file()
    assert scan_image_folder(synth) == records  # deterministic order


def test_scan_maps_and_filters_folders(synth: Path, caplog: pytest.LogCaptureFixture) -> None:
    mapped = scan_image_folder(synth, class_map=dict.fromkeys(DEFECTS, "defective"))
    assert {r.label for r in mapped} == {"ok", "defective"}
    with caplog.at_level(logging.INFO, logger="models.data"):
        some = scan_image_folder(synth, include={"ok", "hole"})
    assert {r.label for r in some} == {"ok", "hole"}
    assert "raw_edge" in caplog.text  # each skipped folder is logged


def test_scan_ignores_non_images_and_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "ok").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "ok" / "a_000001.png")
    (tmp_path / "ok" / "notes.txt").write_text("not an image")
    (tmp_path / "ok" / ".b_000002.png.part.png").write_bytes(b"half")
    assert [r.path.name for r in scan_image_folder(tmp_path)] == ["a_000001.png"]


def _write_aitex_like(root: Path) -> None:
    """Two strips of fabric 00 and one of fabric 02; strip 0001 has a defect tile with its mask."""
    rows = []
    for fabric, strip in (("00", "0001_002_00"), ("00", "0002_000_00"), ("02", "0001_000_02")):
        for tile in range(4):
            defect = fabric == "00" and strip.startswith("0001") and tile == 2
            label = "defect" if defect else "ok"
            name = f"f{fabric}_{strip[:8]}_t{tile:02d}.png"
            (root / label).mkdir(parents=True, exist_ok=True)
            Image.new("L", (16, 16), color=100 + tile).save(root / label / name)
            if defect:
                (root / "masks").mkdir(exist_ok=True)
                Image.new("L", (16, 16), color=255).save(root / "masks" / name)
            rows.append({"path": f"{label}/{name}", "label": label, "fabric": fabric, "strip": strip})
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "fabric", "strip"])
        writer.writeheader()
        writer.writerows(rows)


def test_aitex_like_manifest_groups_by_fabric_and_strip(tmp_path: Path) -> None:
    _write_aitex_like(tmp_path)
    records = scan_image_folder(tmp_path, class_map={"defect": "defective"})
    assert len(records) == 12
    assert {r.group for r in records} == {"00/0001_002_00", "00/0002_000_00", "02/0001_000_02"}
    defect = [r for r in records if r.label == "defective"]
    assert len(defect) == 1
    assert defect[0].mask_path == tmp_path / "masks" / defect[0].path.name
    assert all(r.mask_path is None for r in records if r.label == "ok")


def test_without_a_manifest_tiles_of_one_source_share_a_group(tmp_path: Path) -> None:
    (tmp_path / "ok").mkdir()
    names = ["f00_0001_002_t00", "f00_0001_002_t13", "A_00_1", "A_00_10", "IMG_1234", "ok_000017", "plain"]
    for name in names:
        Image.new("L", (8, 8)).save(tmp_path / "ok" / f"{name}.png")
    groups = {r.path.stem: r.group for r in scan_image_folder(tmp_path)}
    assert groups["f00_0001_002_t00"] == groups["f00_0001_002_t13"] == "f00_0001_002"
    assert groups["A_00_1"] == groups["A_00_10"] == "A_00"
    # A long number is a photo's own name, not a tile index.
    assert groups["IMG_1234"] == "IMG_1234"
    assert groups["ok_000017"] == "ok_000017"
    assert groups["plain"] == "plain"


def test_scan_of_a_missing_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_image_folder(tmp_path / "absent")


# --- task labels ----------------------------------------------------------------------------------


def test_binary_task_folds_every_defect_into_one_class() -> None:
    records = [_record("a", "ok"), _record("b", "hole"), _record("c", "defective"), _record("d", "raw_edge")]
    kept, labels, names = task_labels(records, "binary", LabelSpace("ok", DEFECTS))
    assert kept == records
    assert labels == [0, 1, 1, 1]
    assert names == ("ok", "defective")


def test_multiclass_task_keeps_typed_defects_only() -> None:
    records = [_record("a", "ok"), _record("b", "raw_edge"), _record("c", "defective"), _record("d", "hole")]
    kept, labels, names = task_labels(records, "multiclass", LabelSpace("ok", ("hole", "raw_edge")))
    assert [r.group for r in kept] == ["b", "d"]
    assert labels == [1, 0]
    assert names == ("hole", "raw_edge")


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_an_unknown_label_is_named_with_the_known_ones(task: str) -> None:
    records = [_record("a", "ok"), _record("b", "stain")]
    with pytest.raises(ValueError, match=r"'stain'.*known labels: ok, defective, hole"):
        task_labels(records, task, LabelSpace("ok", ("hole",)))  # type: ignore[arg-type]


def test_an_unlabelled_record_is_refused() -> None:
    with pytest.raises(ValueError, match="None"):
        task_labels([_record("a", None)], "binary", LabelSpace("ok", ("hole",)))


# --- splits ---------------------------------------------------------------------------------------


def _split_sides(records: list[ImageRecord], train: list[int], val: list[int]) -> tuple[set[str], set[str]]:
    return {records[i].group for i in train}, {records[i].group for i in val}


@settings(max_examples=60, deadline=None)
@given(
    assignments=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 3)), min_size=2, max_size=80).filter(
        lambda a: len({g for g, _ in a}) >= 2
    ),
    seed=st.integers(0, 2**16),
    fraction=st.sampled_from([0.1, 0.2, 0.3, 0.5]),
)
def test_group_split_never_puts_a_group_on_both_sides(
    assignments: list[tuple[int, int]], seed: int, fraction: float
) -> None:
    records = [_record(f"g{g}") for g, _ in assignments]
    labels = [c for _, c in assignments]
    train, val = group_split(records, labels, val_fraction=fraction, seed=seed)
    assert sorted(train + val) == list(range(len(records)))
    assert train
    assert val
    train_groups, val_groups = _split_sides(records, train, val)
    assert not train_groups & val_groups
    assert group_split(records, labels, val_fraction=fraction, seed=seed) == (train, val)


@settings(max_examples=60, deadline=None)
@given(
    group_labels=st.lists(st.integers(0, 3), min_size=2, max_size=30),
    sizes=st.lists(st.integers(1, 5), min_size=30, max_size=30),
    seed=st.integers(0, 2**16),
)
def test_group_split_is_stratified_by_class(group_labels: list[int], sizes: list[int], seed: int) -> None:
    """With one class per group (a photo and its crops), every class in >= 2 groups is on both sides."""
    records: list[ImageRecord] = []
    labels: list[int] = []
    for g, (label, size) in enumerate(zip(group_labels, sizes, strict=False)):
        records += [_record(f"g{g}")] * size
        labels += [label] * size
    train, val = group_split(records, labels, seed=seed)
    train_classes = {labels[i] for i in train}
    val_classes = {labels[i] for i in val}
    for c in set(group_labels):
        if group_labels.count(c) >= 2:
            assert c in train_classes
            assert c in val_classes


def test_group_split_keeps_strips_together_and_puts_a_defect_strip_in_validation(tmp_path: Path) -> None:
    records: list[ImageRecord] = []
    labels: list[int] = []
    for strip in range(20):
        for tile in range(16):
            defect = strip % 5 == 0 and tile == 7  # 4 strips hold one defect tile each
            records.append(_record(f"00/{strip:04d}", "defective" if defect else "ok"))
            labels.append(int(defect))
    for seed in range(5):
        train, val = group_split(records, labels, val_fraction=0.25, seed=seed)
        train_groups, val_groups = _split_sides(records, train, val)
        assert not train_groups & val_groups
        assert sum(labels[i] for i in val) == 1  # round(0.25 * 4) defect strips
        assert len(val) == 16 * 5  # whole strips: one defect strip and round(0.25 * 16) ok strips
    assert group_split(records, labels, seed=1) != group_split(records, labels, seed=2)


def test_group_split_needs_two_groups() -> None:
    with pytest.raises(ValueError, match="at least two groups"):
        group_split([_record("a"), _record("a")], [0, 1])


def test_group_kfold_puts_each_group_in_one_validation_fold() -> None:
    records = [_record(f"g{i // 3}") for i in range(60)]
    labels = [(i // 3) % 3 for i in range(60)]
    folds = group_kfold(records, labels, n_splits=4, seed=0)
    assert len(folds) == 4
    seen: list[int] = []
    for train, val in folds:
        train_groups, val_groups = _split_sides(records, train, val)
        assert not train_groups & val_groups
        assert {labels[i] for i in val} == {0, 1, 2}
        seen += val
    assert sorted(seen) == list(range(60))


def test_class_weights_are_inverse_frequency_with_mean_one() -> None:
    weights = class_weights([0, 0, 0, 1], 3)
    assert weights.tolist() == pytest.approx([0.5, 1.5, 0.0])
    assert float(weights[:2].mean()) == pytest.approx(1.0)
    assert class_weights([1, 0], 2).tolist() == pytest.approx([1.0, 1.0])


# --- decoding -------------------------------------------------------------------------------------


def _make(mode: str, path: Path) -> Path:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16))
    elif mode == "P":
        image = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert("P")
    else:
        bands = len(Image.new(mode, (1, 1)).getbands())
        image = Image.fromarray(rng.integers(0, 255, (20, 30, bands), dtype=np.uint8).squeeze(), mode)
    image.save(path)
    return path


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
@pytest.mark.parametrize("channels", [1, 3])
def test_load_image_gives_the_spec_shape_and_range(tmp_path: Path, mode: str, channels: int) -> None:
    path = _make(mode, tmp_path / f"img_{mode.replace(';', '')}.png")
    x = load_image(path, InputSpec(image_size=24, channels=channels))
    assert x.shape == (channels, 24, 24)
    assert x.dtype == torch.float32
    assert bool(torch.isfinite(x).all())
    assert float(x.min()) >= -1.0 - 1e-6  # mean 0.5, std 0.5: inputs lie in [-1, 1]
    assert float(x.max()) <= 1.0 + 1e-6
    assert float(x.std()) > 0.05  # not flattened to one value (as PIL's own I;16 -> L clip would be)


def test_sixteen_bit_grey_is_scaled_by_range(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(path)
    x = load_image(path, InputSpec(image_size=8, channels=1))
    assert float(x.mean()) == pytest.approx((128 / 255 - 0.5) / 0.5, abs=1e-6)


def test_a_camera_jpeg_is_turned_upright_and_shrunk(tmp_path: Path) -> None:
    pixels = np.zeros((300, 400, 3), dtype=np.uint8)
    pixels[:, 200:] = 255  # left half black, right half white, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the viewer turns the stored image 90 degrees clockwise
    path = tmp_path / "camera.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    x = load_image(path, InputSpec(image_size=16, channels=1))
    assert x.shape == (1, 16, 16)
    # Upright, the black half is on top.
    assert float(x[0, :6].mean()) < -0.9
    assert float(x[0, -6:].mean()) > 0.9


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    path = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (10, 200, 30, 0)).save(path)
    x = load_image(path, InputSpec(image_size=8, channels=3))
    assert torch.allclose(x, torch.ones_like(x))


def test_a_truncated_png_raises_a_clear_error(tmp_path: Path) -> None:
    good = _make("RGB", tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(ImageLoadError, match=r"bad\.png.*truncated, corrupt or not an image"):
        load_image(bad, InputSpec(image_size=16))


def test_not_an_image_and_a_missing_file_raise_image_load_errors(tmp_path: Path) -> None:
    text = tmp_path / "text.png"
    text.write_text("hello")
    with pytest.raises(ImageLoadError, match=r"text\.png"):
        load_image(text, InputSpec(image_size=16))
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "absent.png", InputSpec(image_size=16))
    assert issubclass(ImageLoadError, ValueError)


# --- dataset and augmentation ---------------------------------------------------------------------


def test_augmentation_keeps_shape_and_range_and_repeats_under_a_seed() -> None:
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    first = [augment_image(x) for _ in range(8)]
    torch.manual_seed(5)
    second = [augment_image(x) for _ in range(8)]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
        assert a.shape == x.shape
        assert float(a.min()) >= 0.0
        assert float(a.max()) <= 1.0
    assert any(not torch.equal(a, first[0]) for a in first[1:])  # it does vary
    # The pixels are rearranged and mildly rescaled, not replaced.
    assert abs(float(first[0].mean()) - float(x.mean())) < 0.15


def test_dataset_decodes_each_file_once_and_augments_repeatably(
    synth: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records, labels, _ = task_labels(scan_image_folder(synth)[:6], "binary", LabelSpace("ok", DEFECTS))
    calls: list[Path] = []
    real = data_module.decode_image

    def counting(path: str | Path, spec: InputSpec) -> npt.NDArray[np.uint8]:
        calls.append(Path(path))
        return real(path, spec)

    monkeypatch.setattr(data_module, "decode_image", counting)
    spec = InputSpec(image_size=32, channels=3)
    dataset = ImageDataset(records, labels, spec, augment=True)
    torch.manual_seed(1)
    first = [dataset[i] for i in range(len(dataset))]
    torch.manual_seed(1)
    second = [dataset[i] for i in range(len(dataset))]
    plain = dataset.with_augment(False)
    third = [plain[i] for i in range(len(plain))]
    assert len(calls) == len(records)  # the cache is shared with the un-augmented view
    for (a, ya), (b, yb), (c, _) in zip(first, second, third, strict=True):
        assert torch.equal(a, b)
        assert ya == yb
        assert a.shape == c.shape == (3, 32, 32)
    assert [y for _, y in first] == labels
    assert torch.equal(third[0][0], load_image(records[0].path, spec))


def test_a_subset_keeps_order_labels_and_decoded_pixels(synth: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records, labels, _ = task_labels(scan_image_folder(synth)[:6], "binary", LabelSpace("ok", DEFECTS))
    spec = InputSpec(image_size=32, channels=3)
    dataset = ImageDataset(records, labels, spec, augment=False)
    for i in range(len(dataset)):
        dataset.pixels(i)
    monkeypatch.setattr(data_module, "decode_image", lambda *a: pytest.fail("decoded again"))
    part = dataset.subset([4, 1], augment=True)
    assert part.records == (records[4], records[1])
    assert part.labels == (labels[4], labels[1])
    assert part.augment
    assert not dataset.augment
    assert np.array_equal(part.pixels(0), dataset.pixels(4))
    assert torch.equal(part.with_augment(False)[1][0], dataset[1][0])
    assert dataset.subset([]).labels == ()


def test_dataset_without_labels_and_with_a_wrong_label_count() -> None:
    with pytest.raises(ValueError, match="2 records but 1 labels"):
        ImageDataset([_record("a"), _record("b")], [0], InputSpec(image_size=16), augment=False)
    unlabelled = ImageDataset([_record("a")], None, InputSpec(image_size=16), augment=False)
    assert len(unlabelled) == 1
    assert unlabelled.labels is None
