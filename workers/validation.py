"""Checks that decide whether a file is a usable image, and why not when it is not.

Every refusal is an `InvalidImageError` whose ``reason`` is one of a fixed set of short phrases
(`Reason`) and whose ``detail`` says what exactly was wrong with this file; ``str(error)`` is
``"<reason>: <detail>"``, the text stored on a quarantined row. Group by ``reason`` (or by the text
before the first ``": "``, see `reason_of`) to count bad files by kind.

A file is read once: the sha256 and the decoding both come from the same bytes, so what is recorded
is what was checked. Decoding never touches Pillow's global settings (``MAX_IMAGE_PIXELS``,
``LOAD_TRUNCATED_IMAGES``): the pixel limit is checked against the header before any pixel is decoded,
and only the plugins of the accepted formats are tried (no Ghostscript for an EPS named ``.jpg``).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import struct
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from PIL import Image, UnidentifiedImageError

__all__ = [
    "ACCEPTED_FORMATS",
    "CONVERTIBLE_MODES",
    "DEFAULT_EXTENSIONS",
    "DEFAULT_MAX_ASPECT",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "INCOMPLETE_REASONS",
    "MAX_PATH_LENGTH",
    "NATIVE_MODES",
    "FileData",
    "ImageFacts",
    "InvalidImageError",
    "Reason",
    "check_file_name",
    "check_image",
    "check_image_bytes",
    "check_symlink",
    "is_structurally_complete",
    "read_image_file",
    "reason_of",
]

DEFAULT_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# Below Pillow's own limit (89 Mpx), so Pillow never warns about an image this check would accept.
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MIN_SIDE = 16
# AITEX fabric photos are 4096 x 256 (16:1); a line-scan strip of 20:1 is still plausible.
DEFAULT_MAX_ASPECT = 20.0
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# Length of the images.path column.
MAX_PATH_LENGTH = 1024

# Pillow plugin ids tried on open (the JPEG plugin also returns MPO, the multi-picture JPEG of some cameras).
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")
NATIVE_MODES: frozenset[str] = frozenset({"L", "RGB"})
# Modes the classifier's loader turns into L or RGB (models.data.decode_image: alpha composited on
# white, 16-bit and float grayscale scaled to 8 bits, palettes expanded, CMYK/YCbCr converted).
# LAB and HSV are refused: Pillow "converts" them to RGB by copying the bands, i.e. false colours.
CONVERTIBLE_MODES: dict[str, str] = {
    "1": "L",
    "I": "L",
    "I;16": "L",
    "I;16L": "L",
    "I;16B": "L",
    "I;16N": "L",
    "F": "L",
    "LA": "L",
    "La": "L",
    "P": "RGB",
    "PA": "RGB",
    "RGBA": "RGB",
    "RGBa": "RGB",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
}
_NUMERIC_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

# Pillow reports bad bytes as any of these while parsing headers or decoding.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error)


class Reason(StrEnum):
    """Why a file was refused: short, stable phrases (the part of a stored reason before ``": "``)."""

    EMPTY = "empty file"
    TRUNCATED = "truncated image"
    CORRUPT = "corrupt image"
    NOT_AN_IMAGE = "not an image"
    UNSUPPORTED_FORMAT = "unsupported image format"
    DECOMPRESSION_BOMB = "decompression bomb"
    ABSURD_DIMENSIONS = "absurd dimensions"
    UNSUPPORTED_MODE = "unsupported mode"
    TOO_LARGE = "file too large"
    UNREADABLE = "unreadable"
    NOT_A_FILE = "not a regular file"
    SYMLINK_OUTSIDE = "symlink outside the watched folders"
    BROKEN_SYMLINK = "broken symlink"
    BAD_NAME = "bad file name"
    UNSUPPORTED_EXTENSION = "unsupported extension"
    INTERNAL_ERROR = "internal error"


# What a file still being written (or copied, or given its permissions) can look like for a while:
# a watcher waits longer before it quarantines a file for one of these.
INCOMPLETE_REASONS: frozenset[Reason] = frozenset(
    {
        Reason.EMPTY,
        Reason.TRUNCATED,
        Reason.CORRUPT,
        Reason.NOT_AN_IMAGE,
        Reason.UNREADABLE,
        Reason.BROKEN_SYMLINK,
    }
)


class InvalidImageError(ValueError):
    """A file that is not a usable image: quarantine it with ``str(error)``, do not retry it.

    ``sha256`` and ``size_bytes`` are set when the bytes were read (the same bad bytes are then one
    quarantined row, whatever their path); otherwise the file is identified by path, size and mtime.
    """

    def __init__(
        self, reason: Reason, detail: str = "", *, sha256: str | None = None, size_bytes: int | None = None
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.sha256 = sha256
        self.size_bytes = size_bytes
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)

    @property
    def may_be_incomplete(self) -> bool:
        """True when a file still being written could fail this way (see `INCOMPLETE_REASONS`)."""
        return self.reason in INCOMPLETE_REASONS


def reason_of(stored: str) -> str:
    """The reason phrase of a stored quarantine text (``"truncated image: ..."`` -> ``"truncated image"``)."""
    return stored.split(": ", 1)[0]


@dataclass(frozen=True)
class ImageFacts:
    """What a readable image is: ``mode`` is what the classifier sees (``L`` or ``RGB``);
    ``converted_from`` is the file's own mode when it differs (e.g. ``CMYK``, ``I;16``, ``P``)."""

    width: int
    height: int
    mode: str
    format: str
    size_bytes: int
    sha256: str
    converted_from: str | None = None

    @property
    def file_mode(self) -> str:
        """The mode stored in the file itself."""
        return self.converted_from or self.mode


@dataclass(frozen=True)
class FileData:
    """The bytes of a file and its status when they were read (from the same open file)."""

    data: bytes
    stat: os.stat_result


# --- names and links ------------------------------------------------------------------------------


def check_file_name(path: Path, *, max_length: int = MAX_PATH_LENGTH) -> None:
    """Refuse a path the database and the other workers could not hold or reopen.

    A Linux file name is bytes: one that is not UTF-8 reaches Python with surrogate escapes, which
    neither SQLite nor PostgreSQL can store. Spaces, emoji, newlines and either Unicode normal form
    are fine.
    """
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise InvalidImageError(
            Reason.BAD_NAME, f'"{shown}" is not valid UTF-8 (bad bytes shown as \\xNN); rename the file'
        ) from None
    if len(text) > max_length:
        raise InvalidImageError(
            Reason.BAD_NAME, f"the path is {len(text)} characters long, more than {max_length}"
        )


def check_symlink(path: Path, roots: Sequence[Path]) -> None:
    """Refuse a symlink that is dangling, loops, or points outside every one of ``roots``.

    ``roots`` must be resolved (absolute, symlink-free). A path that is not a symlink passes.
    """
    if not path.is_symlink():
        return
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        raise InvalidImageError(
            Reason.BROKEN_SYMLINK, f"points to {str(path.readlink())!r}, which does not exist"
        ) from None
    except (RuntimeError, OSError) as exc:  # RuntimeError: a symlink loop (Python 3.11)
        raise InvalidImageError(Reason.BROKEN_SYMLINK, f"cannot be followed ({exc})") from None
    if not any(target.is_relative_to(root) for root in roots):
        raise InvalidImageError(
            Reason.SYMLINK_OUTSIDE, f"points to {str(target)!r}, outside {[str(r) for r in roots]}"
        )


# --- reading --------------------------------------------------------------------------------------


def _open_readonly(path: Path) -> int:
    # O_NONBLOCK: opening a FIFO named like an image must not hang the caller (no effect on files).
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def read_image_file(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> FileData:
    """Read a whole regular file (at most ``max_bytes``) with its status from the same descriptor.

    Raises `InvalidImageError` (unreadable, not a regular file, too large) and lets
    ``FileNotFoundError`` through: a file that vanished is not a bad file.
    """
    try:
        fd = _open_readonly(path)
    except FileNotFoundError:
        raise
    except PermissionError:
        raise InvalidImageError(
            Reason.UNREADABLE, "permission denied; give the watcher's user read access"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidImageError(Reason.BROKEN_SYMLINK, "symlink loop") from None
        raise InvalidImageError(Reason.UNREADABLE, exc.strerror or str(exc)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidImageError(Reason.NOT_A_FILE, f"the path is {_file_kind(info.st_mode)}")
        if info.st_size > max_bytes:
            raise InvalidImageError(
                Reason.TOO_LARGE, f"{info.st_size:,} bytes, more than the limit of {max_bytes:,}"
            )
        chunks: list[bytes] = []
        total = 0
        try:
            while total <= max_bytes:
                chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except OSError as exc:
            raise InvalidImageError(Reason.UNREADABLE, f"read failed: {exc.strerror or exc}") from None
        if total > max_bytes:  # grew while being read
            raise InvalidImageError(Reason.TOO_LARGE, f"more than the limit of {max_bytes:,} bytes")
    finally:
        os.close(fd)
    return FileData(b"".join(chunks), info)


# --- sniffing -------------------------------------------------------------------------------------

_OTHER_IMAGE_FORMATS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"8BPS", "Photoshop PSD"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"%!PS", "PostScript/EPS"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
    (0, b"\x76\x2f\x31\x01", "OpenEXR"),
    (0, b"DDS ", "DDS"),
)
_OTHER_FILES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "a Linux executable"),
    (b"MZ", "a Windows executable"),
    (b"SQLite format 3\x00", "an SQLite database"),
)
_ACCEPTED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def _accepted_format_of(data: bytes) -> str | None:
    for magic, name in _ACCEPTED_MAGIC:
        if data.startswith(magic) or (len(data) < len(magic) and magic.startswith(data)):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _looks_cut(data: bytes, fmt: str | None) -> bool:
    """Whether an accepted-format file seems to stop before its end marker."""
    if fmt == "PNG":
        return b"IEND" not in data[-64:]
    if fmt == "JPEG":
        return not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if fmt == "WEBP" and len(data) >= 8:
        return len(data) < 8 + int.from_bytes(data[4:8], "little")
    return False


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC


def is_structurally_complete(data: bytes) -> bool:
    """Whether ``data`` ends where its own structure says a file of its format ends: a JPEG with its EOI
    marker, a PNG with its IEND chunk, a WebP or BMP whose header size is the file size.

    A cheap test of a file that was just closed or renamed into place, before deciding to take it without
    waiting for it to stay unchanged: False for any other format (TIFF has no end marker) and for any
    file that stops short. It says nothing of whether the image decodes (`check_image_bytes` does).
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return len(data) > 8 + len(_PNG_END) and data.endswith(_PNG_END)
    if data.startswith(b"\xff\xd8\xff"):
        return len(data) > 4 and data.endswith(b"\xff\xd9")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return len(data) == 8 + int.from_bytes(data[4:8], "little")
    if data[:2] == b"BM" and len(data) >= 14:
        return len(data) == int.from_bytes(data[2:6], "little")
    return False


def _describe_unknown(data: bytes) -> InvalidImageError:
    """The error for bytes no accepted decoder recognised: what they look like instead."""
    for offset, magic, name in _OTHER_IMAGE_FORMATS:
        if data[offset : offset + len(magic)] == magic:
            return InvalidImageError(
                Reason.UNSUPPORTED_FORMAT, f"{name}; accepted: {', '.join(ACCEPTED_FORMATS)}"
            )
    for magic, what in _OTHER_FILES:
        if data.startswith(magic):
            return InvalidImageError(Reason.NOT_AN_IMAGE, f"looks like {what}")
    head = data[:4096]
    if not head.strip(b"\x00"):
        return InvalidImageError(Reason.NOT_AN_IMAGE, "only zero bytes (space reserved but never written?)")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sample is still text.
        text = head[: exc.start].decode("utf-8") if exc.start > len(head) - 4 else ""
    if text and sum(ch.isprintable() or ch in "\r\n\t" for ch in text) >= 0.95 * len(text):
        stripped = text.lstrip().lower()
        if stripped.startswith(("<svg", "<?xml")) and "<svg" in stripped:
            return InvalidImageError(Reason.UNSUPPORTED_FORMAT, "an SVG drawing; accepted are raster images")
        if stripped.startswith(("<!doctype html", "<html")):
            return InvalidImageError(Reason.NOT_AN_IMAGE, "looks like an HTML page")
        if stripped.startswith("<"):
            return InvalidImageError(Reason.NOT_AN_IMAGE, "looks like XML text")
        return InvalidImageError(Reason.NOT_AN_IMAGE, "looks like text")
    start = data[:8].hex(" ")
    return InvalidImageError(Reason.NOT_AN_IMAGE, f"unrecognised binary data (starts with {start})")


# --- decoding -------------------------------------------------------------------------------------


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)


_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG or JPEG header, for messages when Pillow refused the file itself."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data.startswith(b"\xff\xd8"):
        pos = 2
        while pos + 9 <= len(data) and data[pos] == 0xFF:
            marker = data[pos + 1]
            if marker in _JPEG_SOF:
                height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
                return int(width), int(height)
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _bomb(width: int, height: int, max_pixels: int) -> InvalidImageError:
    return InvalidImageError(
        Reason.DECOMPRESSION_BOMB,
        f"{width}x{height} = {width * height / 1e6:,.0f} Mpx exceeds the limit of {max_pixels / 1e6:g} Mpx",
    )


def _check_dimensions(width: int, height: int, *, max_pixels: int, min_side: int, max_aspect: float) -> None:
    if width * height > max_pixels:
        raise _bomb(width, height, max_pixels)
    if min(width, height) < min_side:
        raise InvalidImageError(
            Reason.ABSURD_DIMENSIONS, f"{width}x{height}: a side is shorter than {min_side} px"
        )
    aspect = max(width, height) / min(width, height)
    if aspect > max_aspect:
        raise InvalidImageError(
            Reason.ABSURD_DIMENSIONS,
            f"{width}x{height}: aspect ratio {aspect:.0f}:1 exceeds {max_aspect:g}:1",
        )


def _decode_failure(exc: BaseException, data: bytes, fmt: str | None, stage: str) -> InvalidImageError:
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if "truncated" in message.lower() or _looks_cut(data, fmt):
        return InvalidImageError(Reason.TRUNCATED, f"{fmt or 'image'} data ends early ({message})")
    if "decompressed data too large" in message.lower():
        return InvalidImageError(Reason.DECOMPRESSION_BOMB, message)
    return InvalidImageError(Reason.CORRUPT, f"{fmt or 'image'} {stage} failed ({message})")


def _mode_policy(image: Image.Image) -> tuple[str, str | None]:
    """``(mode the classifier sees, file mode if converted)``; refuses what cannot become L or RGB."""
    mode = image.mode
    if mode in NATIVE_MODES:
        return mode, None
    target = CONVERTIBLE_MODES.get(mode)
    if target is None:
        raise InvalidImageError(
            Reason.UNSUPPORTED_MODE,
            f"{mode} cannot be turned into grayscale or RGB faithfully; save the image as L, RGB, "
            "RGBA, P, CMYK or 16-bit grayscale",
        )
    if mode not in _NUMERIC_MODES:
        # Conversion support depends on the mode (and palette), not on the pixels: try a corner.
        corner = image.crop((0, 0, min(image.width, 8), min(image.height, 8)))
        try:
            corner.convert("RGBA" if "A" in mode or "transparency" in image.info else target)
        except (ValueError, OSError) as exc:
            raise InvalidImageError(Reason.UNSUPPORTED_MODE, f"{mode} cannot be converted ({exc})") from None
    return target, mode


def check_image_bytes(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> ImageFacts:
    """Decide whether ``data`` is a usable image; returns its facts or raises `InvalidImageError`.

    The header is read first and the pixel count checked before anything is decoded; then the file is
    verified (PNG checksums) and fully decoded from a fresh open, so a truncated file is caught here
    and not in the classifier. A refusal carries the sha256 and size of ``data``.
    """
    size = len(data)
    if size == 0:
        raise InvalidImageError(Reason.EMPTY, "0 bytes", size_bytes=0)
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        width, height, fmt, mode_facts = _check_decoded(
            data, max_pixels=max_pixels, min_side=min_side, max_aspect=max_aspect
        )
    except InvalidImageError as exc:
        exc.sha256 = sha256
        exc.size_bytes = size
        raise
    mode, converted_from = mode_facts
    return ImageFacts(width, height, mode, fmt, size, sha256, converted_from)


def _check_decoded(
    data: bytes, *, max_pixels: int, min_side: int, max_aspect: float
) -> tuple[int, int, str, tuple[str, str | None]]:
    sniffed = _accepted_format_of(data)
    try:
        image = _open(data)
    except UnidentifiedImageError:
        if sniffed is None:
            raise _describe_unknown(data) from None
        if _looks_cut(data, sniffed) and len(data) < 4096:
            raise InvalidImageError(
                Reason.TRUNCATED, f"{sniffed} header incomplete ({len(data)} bytes)"
            ) from None
        raise InvalidImageError(
            Reason.CORRUPT, f"{sniffed} signature, but the header cannot be read"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own (global) limit, hit before ours could be checked.
        declared = _declared_size(data)
        if declared is not None:
            raise _bomb(*declared, max_pixels) from None
        raise InvalidImageError(Reason.DECOMPRESSION_BOMB, str(exc)) from None
    except _DECODE_ERRORS as exc:
        raise _decode_failure(exc, data, sniffed, "header") from None
    with image:
        width, height = image.size
        fmt = image.format or sniffed or "unknown"
        if width <= 0 or height <= 0:
            raise InvalidImageError(Reason.ABSURD_DIMENSIONS, f"{width}x{height}")
        _check_dimensions(width, height, max_pixels=max_pixels, min_side=min_side, max_aspect=max_aspect)
        try:
            image.verify()
        except _DECODE_ERRORS as exc:
            raise _decode_failure(exc, data, fmt, "verification") from None
    # verify() leaves the image unusable: decode from a fresh open.
    try:
        with _open(data) as image:
            image.load()
            mode_facts = _mode_policy(image)
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(Reason.DECOMPRESSION_BOMB, str(exc)) from None
    except _DECODE_ERRORS as exc:
        raise _decode_failure(exc, data, fmt, "decoding") from None
    return width, height, fmt, mode_facts


def check_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    extensions: Collection[str] | None = None,
    roots: Sequence[Path] | None = None,
) -> ImageFacts:
    """Check the file at ``path``: name, extension (if ``extensions``), symlink target (if ``roots``),
    then its bytes (`check_image_bytes`). Raises `InvalidImageError`, or ``FileNotFoundError`` when
    the file does not exist."""
    path = Path(path)
    check_file_name(path)
    if extensions is not None and path.suffix.lower() not in extensions:
        raise InvalidImageError(
            Reason.UNSUPPORTED_EXTENSION,
            f"{path.suffix or '(none)'}; accepted: {', '.join(sorted(extensions))}",
        )
    if roots is not None:
        check_symlink(path, roots)
    read = read_image_file(path, max_bytes=max_bytes)
    return check_image_bytes(read.data, max_pixels=max_pixels, min_side=min_side, max_aspect=max_aspect)
