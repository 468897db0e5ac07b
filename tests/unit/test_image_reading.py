"""Reading an image row's file for the models: the bytes checked, huge photos reduced before the models'
decoder sees them, with the same inputs as the models' own decoding (real files, real Pillow)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.data import ImageLoadError, InputSpec, load_image
from workers import image_reading
from workers.image_reading import REDUCE_ABOVE_PIXELS, FileChangedError, load_verified

SPECS = [InputSpec(image_size=64, channels=1), InputSpec(image_size=128, channels=3)]


def texture(side: int, mode: str, seed: int = 0) -> Image.Image:
    """A photo-like ``side`` x ``side`` image in ``mode``: smooth weave plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    base = 128 + 60 * np.sin(x / 37.0) * np.cos(y / 23.0) + rng.normal(0, 10, size=(side, side))
    grey = np.clip(base, 0, 255).astype(np.uint8)
    rgb = np.stack([grey, np.roll(grey, 5, axis=0), np.roll(grey, 9, axis=1)], axis=-1)
    if mode == "RGB":
        return Image.fromarray(rgb, mode="RGB")
    if mode == "RGBA":
        alpha = np.where((x + y) % 400 < 200, 255, 90).astype(np.uint8)
        return Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA")
    if mode == "L":
        return Image.fromarray(grey, mode="L")
    if mode == "I;16":
        return Image.fromarray(grey.astype(np.uint16) * 257)
    if mode == "P":
        return Image.fromarray(rgb, mode="RGB").quantize(64)
    if mode == "1":
        return Image.fromarray(grey, mode="L").convert("1")
    raise ValueError(mode)


def write(path: Path, image: Image.Image, fmt: str = "PNG", **options: object) -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    path.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "I;16", "P", "1"])
def test_a_huge_photo_is_reduced_first_and_gives_the_models_the_same_inputs(
    tmp_path: Path, mode: str
) -> None:
    side = 2200  # 4.8 Mpx: above the reduction threshold, small enough for a unit test
    assert side * side > REDUCE_ABOVE_PIXELS
    path = tmp_path / f"huge_{mode.replace(';', '')}.png"
    sha = write(path, texture(side, mode), compress_level=1)
    fd = image_reading.os.open(path, image_reading.os.O_RDONLY)
    try:
        reduced = image_reading._reduced_copy(f"/proc/self/fd/{fd}", 128)
        assert reduced is not None, "the reduction was not used"
        image_reading.os.close(reduced)
    finally:
        image_reading.os.close(fd)
    got = load_verified(str(path), sha, SPECS)
    for spec in SPECS:
        expected = load_image(path, spec)  # the models' own decoding of the full photo
        assert got[spec].shape == expected.shape
        # Box-reduced, then resized: what Pillow's own reducing_gap does; inputs are in [-1, 1].
        difference = (got[spec] - expected).abs()
        assert float(difference.mean()) < 0.01, mode
        assert float(difference.max()) < 0.15, mode


def test_an_exif_orientation_is_applied_after_the_reduction(tmp_path: Path) -> None:
    image = texture(2400, "RGB").crop((0, 0, 2400, 1800))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    path = tmp_path / "turned.png"
    sha = write(path, image, exif=exif.tobytes(), compress_level=1)
    spec = InputSpec(image_size=64, channels=3)
    got = load_verified(str(path), sha, [spec])[spec]
    expected = load_image(path, spec)
    assert float((got - expected).abs().mean()) < 0.01
    write(tmp_path / "plain.png", image)
    unturned = load_image(tmp_path / "plain.png", spec)
    assert float((got - unturned).abs().mean()) > 0.05  # the turn mattered


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_small_photos_and_jpegs_go_to_the_models_as_they_are(tmp_path: Path, fmt: str) -> None:
    small = tmp_path / f"small.{fmt.lower()}"
    write(small, texture(600, "RGB"), fmt)
    big_jpeg = tmp_path / "big.jpg"
    write(big_jpeg, texture(2200, "RGB"), "JPEG")  # decoded at a reduced scale by the models already
    for path in (small, big_jpeg):
        fd = image_reading.os.open(path, image_reading.os.O_RDONLY)
        try:
            assert image_reading._reduced_copy(f"/proc/self/fd/{fd}", 128) is None
        finally:
            image_reading.os.close(fd)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        got = load_verified(str(path), sha, SPECS)
        for spec in SPECS:
            assert torch.equal(got[spec], load_image(path, spec))


def test_other_bytes_are_refused_and_bad_files_name_their_path(tmp_path: Path) -> None:
    path = tmp_path / "shot.png"
    write(path, texture(64, "L"))
    with pytest.raises(FileChangedError) as changed:
        load_verified(str(path), "0" * 64, SPECS)
    assert changed.value.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_bytes(b"no image")
    with pytest.raises(ImageLoadError, match=r"shot\.png"):
        load_verified(str(path), None, SPECS)
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_verified(str(tmp_path / "gone.png"), None, SPECS)
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_verified(str(tmp_path), None, SPECS)
