"""Signed media URLs: signatures are deterministic, bound to (kind, id, secret), and checked strictly."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labelling.media import MEDIA_KINDS, SIGNATURE_LENGTH, media_url, sign_media, verify_media

SECRET = "media-secret-for-tests"
FAST = settings(max_examples=60, deadline=None)


def test_signature_is_short_url_safe_and_deterministic() -> None:
    sig = sign_media("image", 5, secret=SECRET)
    assert len(sig) == SIGNATURE_LENGTH
    assert re.fullmatch(r"[A-Za-z0-9_-]+", sig)
    assert sign_media("image", 5, secret=SECRET) == sig


def test_signature_depends_on_kind_id_and_secret() -> None:
    sigs = {
        sign_media("image", 5, secret=SECRET),
        sign_media("heatmap", 5, secret=SECRET),
        sign_media("image", 6, secret=SECRET),
        sign_media("image", 5, secret=SECRET + "x"),
        sign_media("image", 56, secret=SECRET),
    }
    assert len(sigs) == 5


def test_verify_accepts_only_the_right_signature() -> None:
    sig = sign_media("heatmap", 7, secret=SECRET)
    assert verify_media("heatmap", 7, sig, secret=SECRET)
    assert not verify_media("image", 7, sig, secret=SECRET)
    assert not verify_media("heatmap", 8, sig, secret=SECRET)
    assert not verify_media("heatmap", 7, sig, secret="other")
    assert not verify_media("heatmap", 7, sig[:-1], secret=SECRET)
    assert not verify_media("heatmap", 7, sig + "A", secret=SECRET)


@pytest.mark.parametrize("bad", [None, "", "é" * SIGNATURE_LENGTH, "=" * SIGNATURE_LENGTH, "A" * 100])
def test_verify_refuses_malformed_signatures(bad: str | None) -> None:
    assert not verify_media("image", 5, bad, secret=SECRET)


def test_verify_is_false_for_unknown_kinds_bad_ids_and_empty_secrets() -> None:
    sig = sign_media("image", 5, secret=SECRET)
    assert not verify_media("video", 5, sig, secret=SECRET)
    assert not verify_media("image", -5, sig, secret=SECRET)
    assert not verify_media("image", 5, sig, secret="")


def test_sign_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="valid kinds: image, heatmap"):
        sign_media("video", 5, secret=SECRET)
    with pytest.raises(ValueError, match="non-negative int"):
        sign_media("image", -1, secret=SECRET)
    with pytest.raises(ValueError, match="non-negative int"):
        sign_media("image", True, secret=SECRET)
    with pytest.raises(ValueError, match="media secret is empty"):
        sign_media("image", 1, secret="")


def test_media_url_shape() -> None:
    url = media_url("http://line-pc:8000/", "image", 42, secret=SECRET)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "line-pc:8000", "/media/image/42")
    assert parse_qs(parts.query) == {"sig": [sign_media("image", 42, secret=SECRET)]}
    assert media_url("https://h/prefix", "heatmap", 1, secret=SECRET).startswith(
        "https://h/prefix/media/heatmap/1?sig="
    )
    with pytest.raises(ValueError, match="http"):
        media_url("line-pc:8000", "image", 1, secret=SECRET)


@FAST
@given(
    kind=st.sampled_from(MEDIA_KINDS),
    image_id=st.integers(0, 2**63),
    secret=st.text(min_size=1, max_size=40),
    position=st.integers(0, SIGNATURE_LENGTH - 1),
)
def test_round_trip_and_any_one_character_change_fails(
    kind: str, image_id: int, secret: str, position: int
) -> None:
    sig = sign_media(kind, image_id, secret=secret)
    assert verify_media(kind, image_id, sig, secret=secret)
    changed = sig[:position] + ("A" if sig[position] != "A" else "B") + sig[position + 1 :]
    assert not verify_media(kind, image_id, changed, secret=secret)
