"""Reading an image row's file for the models: the bytes checked against the row, huge photos decoded small.

`load_verified` opens the file once and hashes it from that descriptor: bytes other than the row's
(the file was overwritten in place, or replaced by a rename, since the watcher recorded it) raise
`FileChangedError` instead of being classified under the old row. The models then decode the same open
file (through ``/proc/self/fd``), and a change between the hash and the end of the decoding (size,
mtime or ctime moved) raises `FileChangedError` too: a row is only ever predicted from its own bytes.

Memory: ``models.data.decode_image`` decodes the whole image and keeps a few full-size copies on the way
(orientation, mode conversion), about four for an RGB PNG: 0.7 GB for a 64 Mpx photo. A photo above
`REDUCE_ABOVE_PIXELS` that is not a JPEG (JPEGs are decoded at a reduced scale by the models already) is
decoded once, reduced here by an integer box filter in strips (converted per strip where the mode needs
it), keeping at least `REDUCING_GAP` times the model's input size per side, as Pillow's own
``reducing_gap`` does, and handed to the models as a small uncompressed TIFF in memory. The peak is then
the decoded photo itself plus a strip.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    import torch

    from models.data import InputSpec

__all__ = ["REDUCE_ABOVE_PIXELS", "REDUCING_GAP", "FileChangedError", "load_verified"]

REDUCE_ABOVE_PIXELS = 4_000_000
REDUCING_GAP = 3
_STRIP_BYTES = 4 * 1024 * 1024
_HASH_CHUNK = 1 << 20
# Modes a box reduction averages faithfully (not palette indices, not premultiplied ones) and TIFF keeps.
_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "I", "F", "CMYK", "YCbCr"})
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class FileChangedError(Exception):
    """The file no longer holds the bytes its row was recorded with; ``sha256`` is what it holds now
    (None when it changed while being read)."""

    def __init__(self, path: str, sha256: str | None) -> None:
        self.path = path
        self.sha256 = sha256
        if sha256 is None:
            message = f"{path} changed while it was read"
        else:
            message = f"{path} now holds other bytes (sha256 {sha256[:12]}…)"
        super().__init__(message)


def _signature(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _sha256_of(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _HASH_CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def _fd_path(fd: int) -> str:
    """A path that opens the very file behind ``fd``, whatever has been renamed over its name since."""
    return f"/proc/self/fd/{fd}" if Path("/proc/self/fd").is_dir() else f"/dev/fd/{fd}"


def load_verified(path: str, sha256: str | None, specs: Sequence[InputSpec]) -> dict[InputSpec, torch.Tensor]:
    """The model inputs of the image at ``path``, one per spec, decoded from bytes whose sha256 is
    ``sha256`` (not checked when None).

    Raises `FileChangedError` (other bytes now) or ``models.data.ImageLoadError`` (missing, not a file,
    unreadable, not an image), whose message names ``path``.
    """
    from models.data import ImageLoadError

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ImageLoadError(f"image {path} does not exist") from None
    except OSError as exc:
        raise ImageLoadError(f"cannot open image {path}: {exc.strerror or exc}") from None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise ImageLoadError(f"{path} is not a regular file")
        try:
            found = _sha256_of(fd)
        except OSError as exc:
            raise ImageLoadError(f"cannot read image {path}: {exc.strerror or exc}") from None
        if sha256 is not None and found != sha256:
            raise FileChangedError(path, found)
        view = _fd_path(fd)
        try:
            inputs = _decode(view, specs)
        except ImageLoadError as exc:
            raise ImageLoadError(str(exc).replace(view, path)) from None
        if _signature(os.fstat(fd)) != _signature(before):
            raise FileChangedError(path, None)
        return inputs
    finally:
        os.close(fd)


def _decode(view: str, specs: Sequence[InputSpec]) -> dict[InputSpec, torch.Tensor]:
    from models.data import load_image

    with ExitStack() as stack:
        reduced_fd = _reduced_copy(view, max(spec.image_size for spec in specs))
        if reduced_fd is not None:
            stack.callback(os.close, reduced_fd)
            view = _fd_path(reduced_fd)
        return {spec: load_image(Path(view), spec) for spec in specs}


def _reduced_copy(view: str, size: int) -> int | None:
    """A descriptor of an in-memory TIFF of the photo at ``view`` reduced for a ``size`` px model, or
    None when the photo is small enough (or a JPEG, or of a mode this does not reduce) to be decoded
    as it is. Errors of a bad file are left to the models' decoder (None)."""
    try:
        with Image.open(view) as image:
            width, height = image.size
            factor = min(width, height) // (REDUCING_GAP * size)
            if width * height <= REDUCE_ABOVE_PIXELS or factor < 2 or image.format == "JPEG":
                return None
            mode = image.mode
            convert: str | None = {
                "1": "L",
                "P": "RGBA" if "transparency" in image.info else "RGB",
                "PA": "RGBA",
            }.get(mode)
            if mode.startswith("I;16"):
                convert = "I"
            if (convert or mode) not in _REDUCIBLE:
                return None
            image.load()
            orientation = image.getexif().get(_EXIF_ORIENTATION)
            reduced = Image.new(convert or mode, (math.ceil(width / factor), math.ceil(height / factor)))
            # Whole boxes per strip: the strips reduced one by one give exactly the whole image reduced.
            rows = factor * max(1, _STRIP_BYTES // (width * factor * 4))
            for top in range(0, height, rows):
                strip = image.crop((0, top, width, min(height, top + rows)))
                if convert is not None:
                    strip = strip.convert(convert)
                reduced.paste(strip.reduce(factor), (0, top // factor))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    if mode.startswith("I;16"):
        reduced = reduced.convert("I;16")
    method = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    if method is not None:
        reduced = reduced.transpose(method)
    fd = os.memfd_create("defectloop-reduced", os.MFD_CLOEXEC) if hasattr(os, "memfd_create") else None
    if fd is None:  # no memfd (not Linux): an unlinked temporary file
        import tempfile

        fd, name = tempfile.mkstemp(suffix=".tif")
        Path(name).unlink()
    try:
        with os.fdopen(os.dup(fd), "wb") as handle:
            reduced.save(handle, "TIFF")
    except BaseException:
        os.close(fd)
        raise
    return fd
