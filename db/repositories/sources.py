"""Sources (the folders and imports images come from) and the files quarantined from them."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.errors import IntegrityViolation
from db.repositories._common import _check_sha256, _insert_or_get, _integrity, _require_text
from db.schema import Image, ImageStatus, Source, SourceKind

logger = logging.getLogger(__name__)


def get_or_create_source(*, session: Session, name: str, kind: SourceKind, path: str | None = None) -> Source:
    """The source called `name`, created if missing (idempotent, safe against concurrent creators).

    Raises `IntegrityViolation` if the name exists with another kind.
    """
    source, _ = _insert_or_get(session, Source, {"name": name, "kind": kind, "path": path}, ["name"])
    if source.kind != kind:
        raise IntegrityViolation(
            f"source {name!r} already exists with kind {source.kind}, not {kind}; use another source name"
        )
    return source


def file_key_for(path: str, size_bytes: int, mtime_ns: int) -> str:
    """Identity of a file that has no content hash: the same path, size and mtime are the same file."""
    return hashlib.sha256(f"{path}\0{size_bytes}\0{mtime_ns}".encode()).hexdigest()


def quarantine_file(
    *,
    session: Session,
    path: str,
    reason: str,
    source_id: int,
    sha256: str | None = None,
    size_bytes: int | None = None,
    mtime_ns: int | None = None,
    original_name: str | None = None,
) -> tuple[Image, bool]:
    """Record a file that cannot be used, with the reason; returns ``(image, created)``.

    Idempotent: with a `sha256` the same bytes are one row; without one (the file could not be read)
    the same path, size and mtime are one row, so a watcher that sees a corrupt file twice records it
    once. An existing row is returned unchanged, whatever its status.
    """
    _require_text(reason, "reason")
    values: dict[str, Any] = {
        "path": path,
        "original_name": original_name,
        "source_id": source_id,
        "size_bytes": size_bytes,
        "status": ImageStatus.QUARANTINED,
        "reason": reason,
    }
    if sha256 is not None:
        _check_sha256(sha256)
        values["sha256"] = sha256
        key_column = "sha256"
    else:
        if size_bytes is None or mtime_ns is None:
            raise ValueError("a file without sha256 needs size_bytes and mtime_ns to be recognised again")
        key_column = "file_key"
        values["file_key"] = file_key_for(path, size_bytes, mtime_ns)
    with _integrity(f"quarantined file {path!r} could not be recorded (does source {source_id} exist?)"):
        image, created = _insert_or_get(session, Image, values, [key_column])
    if created:
        logger.info("file quarantined", extra={"image_id": image.id, "reason": reason})
    return image, created


def count_quarantined_by_reason(*, session: Session) -> dict[str, int]:
    """Number of quarantined files per kind of reason.

    Reasons are stored as ``"<kind>: <detail about this file>"`` (e.g. ``"truncated image: PNG data
    ends early"``); files are counted by the kind, the part before the first ``": "``.
    """
    stmt = (
        select(Image.reason, func.count())
        .where(Image.status == ImageStatus.QUARANTINED)
        .group_by(Image.reason)
    )
    counts: Counter[str] = Counter()
    for reason, count in session.execute(stmt):
        counts[(reason or "").split(": ", 1)[0]] += count
    return dict(counts)
