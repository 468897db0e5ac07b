"""Builders of good and bad image files for the validation and camera-ingestion tests.

Plain functions, imported by the test modules. Every bad file comes with the `Reason` it must be
quarantined for, so a test can check each one by kind.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from defectloop.synth import DEFAULT_CLASSES, render_sample
from workers.validation import Reason


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """The bytes of ``image`` saved as ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def synthetic_photo(index: int, *, seed: int = 11, fmt: str = "PNG") -> bytes:
    """A distinct seeded synthetic garment photo, 32-48 px, encoded as PNG or JPEG."""
    rng = np.random.default_rng([seed, index])
    label = DEFAULT_CLASSES[index % len(DEFAULT_CLASSES)]
    sample = render_sample(label, rng, size=32 + index % 17, grayscale=index % 3 == 0)
    return encode(sample.image, fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def noise_image(mode: str = "RGB", size: tuple[int, int] = (40, 40), seed: int = 0) -> Image.Image:
    """A random image in ``mode`` (noise, so that two seeds give different bytes)."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    return rgb if mode == "RGB" else rgb.convert(mode)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (one row of data): a decompression bomb
    when the numbers are large, since Pillow opens lazily and only the header says how big it is."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + min(width, 64)))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose SOF header is patched to declare ``width`` x ``height`` (at most 65535)."""
    data = bytearray(encode(noise_image(size=(16, 16)), "JPEG"))
    pos = 2
    while data[pos] == 0xFF and data[pos + 1] not in (0xC0, 0xC2):
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_bad_crc(seed: int = 0) -> bytes:
    """A complete PNG whose image-data checksum is wrong."""
    data = bytearray(encode(noise_image(seed=seed), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF
    return bytes(data)


def converted_images() -> dict[str, bytes]:
    """Images in modes the classifier converts, by file name: each must be accepted."""
    gray16 = Image.fromarray((np.arange(48 * 40).reshape(40, 48) * 30).astype(np.uint16))
    palette = noise_image(size=(40, 36), seed=3).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "gray16.png": encode(gray16, "PNG"),
        "cmyk.jpg": encode(noise_image("CMYK", seed=4), "JPEG"),
        "palette_transparent.png": encode(palette, "PNG", transparency=0),
        "rgba.png": encode(noise_image("RGBA", seed=5), "PNG"),
        "bilevel.tif": encode(noise_image("1", seed=6), "TIFF"),
        "float.tif": encode(noise_image("F", seed=7), "TIFF"),
    }


def bad_files(seed: int = 0) -> dict[str, tuple[bytes, Reason]]:
    """Malformed files (content only) by file name, with the reason each must be quarantined for."""
    jpeg = encode(noise_image(seed=seed + 1, size=(48, 48)), "JPEG")
    jpeg2 = encode(noise_image(seed=seed + 2, size=(40, 48)), "JPEG", quality=50)
    png = encode(noise_image(seed=seed + 3, size=(48, 40)), "PNG")
    png2 = encode(noise_image(seed=seed + 4, size=(44, 44)), "PNG")
    gif = encode(noise_image(seed=seed + 5).convert("P"), "GIF")
    lab = encode(Image.new("LAB", (32, 32), (50, 10, 10)), "TIFF")
    return {
        "truncated_half.jpg": (jpeg[: len(jpeg) // 2], Reason.TRUNCATED),
        "truncated_no_eoi.jpg": (jpeg2[:-2], Reason.TRUNCATED),
        "truncated_header.jpg": (jpeg[:40], Reason.TRUNCATED),
        "truncated_half.png": (png[: len(png) // 2], Reason.TRUNCATED),
        "truncated_no_iend.png": (png2[:-12], Reason.TRUNCATED),
        "truncated_signature.png": (png[:12], Reason.TRUNCATED),
        "bad_crc.png": (png_bad_crc(seed), Reason.CORRUPT),
        "notes.jpg": (b"line one\nline two: not a photo at all\n" * 8, Reason.NOT_AN_IMAGE),
        "report.png": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", Reason.NOT_AN_IMAGE),
        "archive.jpeg": (b"PK\x03\x04" + bytes(range(256)), Reason.NOT_AN_IMAGE),
        "page.jpg": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", Reason.NOT_AN_IMAGE),
        "zeros.png": (b"\x00" * 4096, Reason.NOT_AN_IMAGE),
        "noise.bmp": (
            bytes(np.random.default_rng(seed).integers(0, 256, 2000, dtype=np.uint8)),
            Reason.NOT_AN_IMAGE,
        ),
        "bomb.png": (png_declaring(50_000, 50_000), Reason.DECOMPRESSION_BOMB),
        "bomb.jpg": (jpeg_declaring(60_000, 60_000), Reason.DECOMPRESSION_BOMB),
        "sliver.png": (png_declaring(1, 20_000), Reason.ABSURD_DIMENSIONS),
        "strip.png": (encode(noise_image(size=(2000, 40), seed=seed + 6), "PNG"), Reason.ABSURD_DIMENSIONS),
        "tiny.png": (encode(noise_image(size=(4, 4), seed=seed + 7), "PNG"), Reason.ABSURD_DIMENSIONS),
        "lab.tif": (lab, Reason.UNSUPPORTED_MODE),
        "animated.png": (gif, Reason.UNSUPPORTED_FORMAT),
    }


def write_slowly(
    path: Path, data: bytes, *, chunks: int, pause: float, stop_after: int | None = None
) -> None:
    """Write ``data`` to ``path`` in ``chunks`` pieces with ``pause`` seconds between them, flushing
    each, through one open file (a camera that keeps the file open); ``stop_after`` pieces only if set."""
    size = -(-len(data) // chunks)
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    with path.open("wb") as handle:
        for i, piece in enumerate(pieces[:stop_after]):
            if i:
                time.sleep(pause)
            handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())


def walk_files(root: Path) -> Iterator[Path]:
    """Every non-directory entry under ``root`` (symlinks included, not followed)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            yield Path(dirpath) / name


# --- what a test drops into camera folders ---------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def storable(path: Path) -> str:
    """How the watcher stores a path (a name that is not UTF-8 shown with \\x escapes)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# Names a camera may write: an accent decomposed (NFD) and composed (NFC), emoji, a line break.
ODD_NAMES = ("de\u0301faut nfd.png", "d\u00e9faut nfc.png", "🧵 seam 🪡.jpg", "line\nbreak.png")


@dataclass
class Drop:
    """What a test dropped into the camera folders and what must come of it."""

    good: list[tuple[Path, bytes]] = field(default_factory=list)
    bad: dict[str, Reason] = field(default_factory=dict)  # stored path -> reason
    ignored: list[Path] = field(default_factory=list)

    def put(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.good.append((path, data))

    def put_bad(self, path: Path, data: bytes, reason: Reason) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.bad[storable(path)] = reason

    def put_named(self, cam1: Path, cam2: Path, photos: list[bytes], odd_names: tuple[str, ...]) -> None:
        """``photos``, two thirds into cam1 and one into cam2, the first under ``odd_names``, then pre_NNN."""
        for i, data in enumerate(photos):
            name = odd_names[i] if i < len(odd_names) else f"pre_{i:03d}.{'jpg' if i % 2 else 'png'}"
            self.put((cam1 if i % 3 else cam2) / name, data)

    def put_unusual(self, cam1: Path, cam2: Path, outside: Path, *, seed: int) -> None:
        """A link out of the cameras' folders, a dangling link, a named pipe and a name that is not UTF-8
        (photos ``seed`` and ``seed + 1``), each with the reason it is quarantined for."""
        (outside / "elsewhere.png").write_bytes(synthetic_photo(seed))
        (cam1 / "linked_out.png").symlink_to(outside / "elsewhere.png")
        self.bad[str(cam1 / "linked_out.png")] = Reason.SYMLINK_OUTSIDE
        (cam2 / "dangling.jpg").symlink_to(cam2 / "never_written.jpg")
        self.bad[str(cam2 / "dangling.jpg")] = Reason.BROKEN_SYMLINK
        os.mkfifo(cam1 / "pipe.jpg")
        self.bad[str(cam1 / "pipe.jpg")] = Reason.NOT_A_FILE
        raw_name = os.fsencode(cam2) + b"/bad\xffname.png"
        with open(raw_name, "wb") as handle:  # noqa: PTH123  (a bytes path: the name is not UTF-8)
            handle.write(synthetic_photo(seed + 1))
        self.bad[storable(Path(os.fsdecode(raw_name)))] = Reason.BAD_NAME

    def distinct(self) -> dict[str, set[str]]:
        """sha256 -> the paths carrying those bytes."""
        found: dict[str, set[str]] = {}
        for path, data in self.good:
            found.setdefault(sha(data), set()).add(str(path))
        return found
