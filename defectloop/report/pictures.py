"""The gallery's pictures: each image's photo and the binary champion's Grad-CAM heat-map, as PNG bytes.

Heat-maps are made by the labelling worker's own `workers.explain.GradcamHeatmaps` (the champion's
checkpoint verified against its recorded sha256 and loaded through the registry), into a temporary
folder. When one cannot be made the photo is shown alone, with the reason.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import ModelTask
from db.session import session_scope
from defectloop.report.data import GalleryItem

logger = logging.getLogger(__name__)

# Shown at about 125 px each in the page; twice that keeps them sharp on a high-density screen.
THUMBNAIL_SIDE = 256


def thumbnail_png(source: Path | bytes, side: int = THUMBNAIL_SIDE) -> bytes:
    """The picture (a file or PNG bytes) as an RGB PNG at most ``side`` pixels on its long side."""
    with PILImage.open(source if isinstance(source, Path) else io.BytesIO(source)) as picture:
        picture.thumbnail((side, side))
        shown = picture.convert("RGB")
    buffer = io.BytesIO()
    shown.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _no_heatmap_reason(sessions: sessionmaker[Session]) -> str | None:
    """Why no heat-map can be made at all (no binary champion, its checkpoint gone), or None."""
    with session_scope(sessions) as session:
        champion = repo.get_champion(session=session, task=ModelTask.BINARY)
        if champion is None:
            return "no heat-map: there is no binary champion to explain"
        if not Path(champion.artifact_path).is_file():
            return f"no heat-map: the binary champion's checkpoint {champion.artifact_path} is missing"
    return None


def add_pictures(
    items: Sequence[GalleryItem],
    *,
    sessions: sessionmaker[Session],
    on_item: Callable[[], None] | None = None,
) -> tuple[GalleryItem, ...]:
    """``items`` with their photo and heat-map PNGs filled in (or a note saying why one is missing)."""
    from models.errors import ModelError
    from workers.explain import GradcamHeatmaps

    done: list[GalleryItem] = []
    blocked = _no_heatmap_reason(sessions) if items else None
    with tempfile.TemporaryDirectory(prefix="defectloop-report-") as folder:
        heatmaps = GradcamHeatmaps(Path(folder), sessions)
        for item in items:
            path = Path(item.path)
            if not path.is_file():
                done.append(replace(item, note=f"photo not found at {item.path}"))
                if on_item:
                    on_item()
                continue
            try:
                photo = thumbnail_png(path)
            except (OSError, ValueError, PILImage.DecompressionBombError) as exc:
                done.append(replace(item, note=f"photo unreadable: {exc}"))
                if on_item:
                    on_item()
                continue
            heatmap, note = None, blocked
            if blocked is None:
                try:
                    made = heatmaps(item.image_id, str(path))
                except (ModelError, RuntimeError) as exc:
                    blocked = note = f"no heat-map: {exc}"
                    logger.warning("report: no heat-maps: %s", exc)
                else:
                    target = heatmaps.heatmap_path(item.image_id)
                    if made and target.is_file():
                        heatmap = thumbnail_png(target)
                    else:
                        note = "no heat-map: Grad-CAM failed for this image (the log says why)"
            done.append(replace(item, photo_png=photo, heatmap_png=heatmap, note=note))
            if on_item:
                on_item()
    return tuple(done)
