"""Image file checks: every kind of bad file gets its reason; convertible modes are accepted."""

from __future__ import annotations

import hashlib
import os
import threading
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from tests.image_files import (
    bad_files,
    converted_images,
    encode,
    noise_image,
    png_declaring,
    synthetic_photo,
)
from workers import validation
from workers.validation import (
    DEFAULT_EXTENSIONS,
    ImageFacts,
    InvalidImageError,
    Reason,
    check_file_name,
    check_image,
    check_image_bytes,
    check_symlink,
    is_structurally_complete,
    reason_of,
)


def _refusal(path: Path, **kwargs: object) -> InvalidImageError:
    with pytest.raises(InvalidImageError) as caught:
        check_image(path, **kwargs)  # type: ignore[arg-type]
    return caught.value


@pytest.mark.parametrize("name", sorted(bad_files()))
def test_each_bad_file_is_refused_with_its_reason(tmp_path: Path, name: str) -> None:
    data, reason = bad_files()[name]
    path = tmp_path / name
    path.write_bytes(data)
    error = _refusal(path)
    assert error.reason is reason, str(error)
    assert str(error).startswith(f"{reason.value}: ")
    assert error.detail
    assert reason_of(str(error)) == reason.value
    # The bytes were read: the same bad bytes can be one quarantined row, whatever their path.
    assert error.sha256 == hashlib.sha256(data).hexdigest()
    assert error.size_bytes == len(data)


def test_messages_say_what_is_wrong() -> None:
    files = bad_files()

    def message(name: str) -> str:
        with pytest.raises(InvalidImageError) as caught:
            check_image_bytes(files[name][0])
        return str(caught.value)

    assert message("bomb.png") == ("decompression bomb: 50000x50000 = 2,500 Mpx exceeds the limit of 64 Mpx")
    assert "60000x60000" in message("bomb.jpg")
    assert message("sliver.png") == "absurd dimensions: 1x20000: a side is shorter than 16 px"
    assert message("strip.png") == "absurd dimensions: 2000x40: aspect ratio 50:1 exceeds 20:1"
    assert message("report.png") == "not an image: looks like a PDF document"
    assert message("page.jpg") == "not an image: looks like an HTML page"
    assert message("notes.jpg") == "not an image: looks like text"
    assert message("animated.png").startswith("unsupported image format: GIF")
    assert message("lab.tif").startswith("unsupported mode: LAB")
    assert message("truncated_half.jpg").startswith("truncated image: JPEG")
    assert message("truncated_half.png").startswith("truncated image: PNG")


def test_zero_byte_file_is_empty_without_a_content_hash(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    error = _refusal(path)
    assert error.reason is Reason.EMPTY
    # Every empty file has the same hash: they are told apart by path, size and mtime instead.
    assert error.sha256 is None
    assert error.size_bytes == 0
    assert error.may_be_incomplete


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_good_photo_gives_its_facts_from_the_bytes_read(tmp_path: Path, fmt: str) -> None:
    data = synthetic_photo(5, fmt=fmt)
    path = tmp_path / f"photo.{fmt.lower()}"
    path.write_bytes(data)
    facts = check_image(path, extensions=DEFAULT_EXTENSIONS, roots=[tmp_path])
    with Image.open(path) as image:
        size, mode = image.size, image.mode
    assert facts == ImageFacts(
        width=size[0],
        height=size[1],
        mode=mode,
        format=fmt,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        converted_from=None,
    )
    assert facts.file_mode == mode
    assert mode in ("L", "RGB")


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("gray16.png", "I;16"),
        ("cmyk.jpg", "CMYK"),
        ("palette_transparent.png", "P"),
        ("rgba.png", "RGBA"),
        ("bilevel.tif", "1"),
        ("float.tif", "F"),
    ],
)
def test_convertible_modes_are_accepted_and_say_so(name: str, mode: str) -> None:
    facts = check_image_bytes(converted_images()[name])
    assert facts.converted_from == mode
    assert facts.file_mode == mode
    assert facts.mode == ("L" if mode in ("I;16", "1", "F") else "RGB")


@pytest.mark.parametrize("channels", [1, 3])
def test_what_is_accepted_as_convertible_the_classifier_can_load(tmp_path: Path, channels: int) -> None:
    from models.data import InputSpec, decode_image  # imports torch: only here

    spec = InputSpec(image_size=32, channels=channels)
    for name, data in converted_images().items():
        path = tmp_path / name
        path.write_bytes(data)
        check_image(path)
        pixels = decode_image(path, spec)
        assert pixels.shape == (32, 32, channels)
        assert pixels.dtype == np.uint8


def test_pillow_global_settings_are_never_touched() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    for data, _reason in bad_files().values():
        with pytest.raises(InvalidImageError):
            check_image_bytes(data, max_pixels=10**9)
    assert before == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_limit_is_checked_before_decoding_whatever_pillows_own_limit() -> None:
    # 100 Mpx: above Pillow's warning threshold (89 Mpx), below its error threshold.
    with pytest.raises(InvalidImageError) as caught:
        check_image_bytes(png_declaring(10_000, 10_000))
    assert str(caught.value) == "decompression bomb: 10000x10000 = 100 Mpx exceeds the limit of 64 Mpx"
    # The limit is a parameter: a small photo is a bomb under a tiny limit.
    small = encode(noise_image(size=(48, 40)), "PNG")
    with pytest.raises(InvalidImageError) as caught:
        check_image_bytes(small, max_pixels=1000)
    error = caught.value
    assert error.reason is Reason.DECOMPRESSION_BOMB
    assert "48x40" in str(error)


def test_dimension_limits_are_parameters() -> None:
    data = encode(noise_image(size=(300, 20)), "PNG")
    assert check_image_bytes(data).width == 300
    with pytest.raises(InvalidImageError) as caught:
        check_image_bytes(data, max_aspect=10)
    assert str(caught.value) == "absurd dimensions: 300x20: aspect ratio 15:1 exceeds 10:1"
    with pytest.raises(InvalidImageError) as caught:
        check_image_bytes(data, min_side=32)
    assert str(caught.value) == "absurd dimensions: 300x20: a side is shorter than 32 px"


def test_checks_run_concurrently_without_interfering() -> None:
    good = [synthetic_photo(i) for i in range(8)]
    bad = [data for data, _ in bad_files().values()]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                for data in good:
                    check_image_bytes(data)
                for data in bad:
                    with pytest.raises(InvalidImageError):
                        check_image_bytes(data)
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors


# --- files that are not plain readable files ----------------------------------------------------


def test_unreadable_file_is_refused_when_permissions_really_block_it(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading (see the monkeypatched test)")
    path = tmp_path / "locked.jpg"
    path.write_bytes(synthetic_photo(1, fmt="JPEG"))
    path.chmod(0)
    try:
        error = _refusal(path)
    finally:
        path.chmod(0o644)
    assert error.reason is Reason.UNREADABLE
    assert "permission denied" in str(error)


def test_unreadable_file_is_refused_when_open_is_denied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "locked.jpg"
    path.write_bytes(synthetic_photo(1, fmt="JPEG"))

    def deny(opened: Path) -> int:
        raise PermissionError(13, "Permission denied", str(opened))

    monkeypatch.setattr(validation, "_open_readonly", deny)
    error = _refusal(path)
    assert str(error) == "unreadable: permission denied; give the watcher's user read access"
    assert error.may_be_incomplete  # permissions are often fixed right after a copy


def test_fifo_named_like_an_image_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "stream.jpg"
    os.mkfifo(path)
    error = _refusal(path)
    assert error.reason is Reason.NOT_A_FILE
    assert "FIFO" in str(error)


def test_directory_named_like_an_image_is_not_a_file(tmp_path: Path) -> None:
    path = tmp_path / "folder.jpg"
    path.mkdir()
    assert _refusal(path).reason is Reason.NOT_A_FILE


def test_oversized_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.jpg"
    path.write_bytes(synthetic_photo(2, fmt="JPEG"))
    error = _refusal(path, max_bytes=100)
    assert error.reason is Reason.TOO_LARGE
    assert error.sha256 is None


def test_missing_file_is_not_a_bad_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        check_image(tmp_path / "gone.jpg")


def test_extension_is_checked_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "photo.gif"
    path.write_bytes(synthetic_photo(3))
    error = _refusal(path, extensions=DEFAULT_EXTENSIONS)
    assert error.reason is Reason.UNSUPPORTED_EXTENSION
    upper = tmp_path / "PHOTO.PNG"
    upper.write_bytes(synthetic_photo(3))
    assert check_image(upper, extensions=DEFAULT_EXTENSIONS).format == "PNG"


# --- symlinks -------------------------------------------------------------------------------------


def test_symlinks_are_followed_inside_the_roots_only(tmp_path: Path) -> None:
    root, outside = tmp_path / "cam", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (outside / "photo.png").write_bytes(synthetic_photo(4))
    (root / "inside.png").write_bytes(synthetic_photo(5))
    (root / "link_in.png").symlink_to(root / "inside.png")
    (root / "link_out.png").symlink_to(outside / "photo.png")
    (root / "dangling.png").symlink_to(root / "never_written.png")
    (root / "loop_a.png").symlink_to(root / "loop_b.png")
    (root / "loop_b.png").symlink_to(root / "loop_a.png")
    roots = [root.resolve()]

    assert check_image(root / "link_in.png", roots=roots).width > 0
    error = _refusal(root / "link_out.png", roots=roots)
    assert error.reason is Reason.SYMLINK_OUTSIDE
    assert "elsewhere" in str(error)
    assert not error.may_be_incomplete
    assert _refusal(root / "dangling.png", roots=roots).reason is Reason.BROKEN_SYMLINK
    assert _refusal(root / "loop_a.png", roots=roots).reason is Reason.BROKEN_SYMLINK
    # Another allowed folder makes the outside link acceptable.
    check_symlink(root / "link_out.png", [*roots, outside.resolve()])


# --- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        unicodedata.normalize("NFC", "défaut_é.png"),
        unicodedata.normalize("NFD", "défaut_é.png"),
        "camera 1 – photo (2).png",
        "🧵 seam 🪡.png",
        "line\nbreak.png",
        "-leading-dash.png",
        "tab\tand ünïcödé 漢字.png",
    ],
)
def test_odd_unicode_names_are_fine(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(synthetic_photo(6))
    assert check_image(path, extensions=DEFAULT_EXTENSIONS).format == "PNG"


def test_a_name_that_is_not_utf8_is_refused_with_a_readable_reason(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/bad\xff\xfename.png"
    with open(raw, "wb") as handle:  # noqa: PTH123  (a bytes path: pathlib has no bytes paths)
        handle.write(synthetic_photo(7))
    path = Path(os.fsdecode(raw))
    error = _refusal(path)
    assert error.reason is Reason.BAD_NAME
    assert str(error) == (
        f'bad file name: "{tmp_path}/bad\\xff\\xfename.png" is not valid UTF-8 (bad bytes shown as \\xNN); '
        "rename the file"
    )
    str(error).encode("utf-8")  # the reason itself can be stored


def test_a_path_longer_than_the_column_is_refused() -> None:
    with pytest.raises(InvalidImageError) as caught:
        check_file_name(Path("/cam/" + "x" * 1100 + ".png"))
    assert str(caught.value) == "bad file name: the path is 1109 characters long, more than 1024"


def test_reason_phrases_are_stable_and_readable() -> None:
    for reason in Reason:
        assert reason.value == reason.value.lower()
        assert ":" not in reason.value
    error = InvalidImageError(Reason.TRUNCATED, "PNG data ends early")
    assert str(error) == "truncated image: PNG data ends early"
    assert reason_of(str(error)) == "truncated image"
    assert reason_of("empty file") == "empty file"
    assert isinstance(error, ValueError)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_a_file_is_structurally_complete_only_when_it_ends_where_its_format_says(fmt: str) -> None:
    data = encode(noise_image(size=(48, 40), seed=3), fmt)
    assert is_structurally_complete(data)
    for cut in (1, 2, len(data) // 3, len(data) // 2, len(data) - 1):
        assert not is_structurally_complete(data[:cut]), cut
    assert not is_structurally_complete(data + b"\x00")  # more than its structure says: still being written?


def test_formats_without_an_end_marker_and_bad_files_are_never_complete() -> None:
    assert not is_structurally_complete(encode(noise_image(seed=4), "TIFF"))
    assert not is_structurally_complete(b"")
    for name, (data, _) in bad_files().items():
        if name.startswith("truncated"):
            assert not is_structurally_complete(data), name
