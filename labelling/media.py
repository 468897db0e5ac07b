"""Signed media URLs: how the annotator's browser fetches our photos and heat-maps without a login.

Label Studio stores an http image URL in the task as is and never fetches it itself: the annotator's
browser does. Camera folders can be anywhere on disk, so Label Studio's local-files storage (one document
root, files served to logged-in users only) does not fit; our HTTP app serves ``/media/{kind}/{id}``
instead. The URL carries an HMAC of (kind, id), so knowing one URL does not open the other images and
no session or header is needed. URLs do not expire: Label Studio keeps them in the task for as long as
the task lives; rotating the media secret invalidates every pushed URL (re-push the open tasks).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Literal, get_args

__all__ = ["MEDIA_KINDS", "SIGNATURE_LENGTH", "MediaKind", "media_url", "sign_media", "verify_media"]

MediaKind = Literal["image", "heatmap"]
MEDIA_KINDS: tuple[str, ...] = get_args(MediaKind)

# 128 bits of the HMAC-SHA256 tag (22 url-safe base64 characters): forging one needs ~2^128 guesses,
# and the URL stays short enough to read in Label Studio's data manager.
_TAG_BYTES = 16
SIGNATURE_LENGTH = 22
# Domain separation: the same secret signing something else in future cannot yield a media signature.
_CONTEXT = b"defectloop-media-v1"


def _check(kind: str, image_id: int, secret: str) -> None:
    if kind not in MEDIA_KINDS:
        raise ValueError(f"unknown media kind {kind!r}; valid kinds: {', '.join(MEDIA_KINDS)}")
    if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id < 0:
        raise ValueError(f"image_id must be a non-negative int, got {image_id!r}")
    if not secret:
        raise ValueError("the media secret is empty; set one so media URLs cannot be guessed")


def sign_media(kind: MediaKind | str, image_id: int, *, secret: str) -> str:
    """The url-safe signature of one image's photo or heat-map (``SIGNATURE_LENGTH`` characters)."""
    _check(kind, image_id, secret)
    message = b"%s\n%s\n%d" % (_CONTEXT, kind.encode("ascii"), image_id)
    tag = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()[:_TAG_BYTES]
    return base64.urlsafe_b64encode(tag).rstrip(b"=").decode("ascii")


def media_url(base_url: str, kind: MediaKind | str, image_id: int, *, secret: str) -> str:
    """``{base_url}/media/{kind}/{image_id}?sig=...``; ``base_url`` is how the browser reaches our app."""
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(
            f"base_url must be an http(s) URL the annotator's browser can reach, got {base_url!r}"
        )
    signature = sign_media(kind, image_id, secret=secret)
    # The signature's alphabet (A-Z a-z 0-9 - _) needs no quoting in a query string.
    return f"{base_url.rstrip('/')}/media/{kind}/{image_id}?sig={signature}"


def verify_media(kind: str, image_id: int, sig: str | None, *, secret: str) -> bool:
    """Whether ``sig`` is the signature of (kind, image_id); constant-time, False for any malformed input."""
    if not sig or not isinstance(sig, str) or not sig.isascii() or len(sig) != SIGNATURE_LENGTH:
        return False
    try:
        expected = sign_media(kind, image_id, secret=secret)
    except ValueError:
        return False
    return hmac.compare_digest(expected.encode("ascii"), sig.encode("ascii"))
