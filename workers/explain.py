"""What the labelling worker asks of the champions: heat-maps, embeddings and on-demand predictions.

- ``GradcamHeatmaps`` writes the binary champion's Grad-CAM overlay of an image to
  ``HEATMAPS_DIR/<image id>.png`` (atomically), keeping one loaded model per champion version;
- ``ChampionEmbedder`` gives penultimate embeddings for the diversity strategies (kcenter, hybrid);
- ``score_images`` stores predictions of the current champions for images that are already past
  classification (open label tasks after a champion change; an ML-backend ``/predict`` for an image
  predicted by an older model), without touching their status.

Torch is imported lazily, on first use in a worker, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import ModelTask
from db.session import session_scope
from models.labels import LabelSpace
from workers import classification

logger = logging.getLogger(__name__)

__all__ = ["ChampionEmbedder", "GradcamHeatmaps", "score_images"]

# Overlays are for people: the photo at most this many pixels on its long side.
OVERLAY_MAX_SIDE = 512


class GradcamHeatmaps:
    """Grad-CAM overlays of the binary champion, one PNG per image (``heatmap_path``)."""

    def __init__(self, directory: Path, sessions: sessionmaker[Session]) -> None:
        self.directory = directory
        self._sessions = sessions
        self._lock = threading.Lock()
        self._held: tuple[int, Any] | None = None  # (version id, checkpoint)

    def heatmap_path(self, image_id: int) -> Path:
        return self.directory / f"{int(image_id)}.png"

    def _checkpoint(self) -> Any | None:
        from models.train import load_checkpoint

        with session_scope(self._sessions) as session:
            champion = repo.get_champion(session=session, task=ModelTask.BINARY)
            if champion is None:
                return None
            version_id, path, digest = champion.id, champion.artifact_path, champion.artifact_sha256
        if self._held is None or self._held[0] != version_id:
            self._held = (version_id, load_checkpoint(path, expected_sha256=digest))
            logger.info("heat-maps now from binary champion version %d", version_id)
        return self._held[1]

    def __call__(self, image_id: int, path: str) -> bool:
        """Write the overlay of ``path`` for image ``image_id``; False (logged) when it cannot be made."""
        import torch
        from PIL import Image as PILImage

        from models.data import ImageLoadError, load_image
        from models.gradcam import explain, save_overlay

        with self._lock:
            try:
                checkpoint = self._checkpoint()
                if checkpoint is None:
                    return False
                tensor = load_image(Path(path), checkpoint.input_spec).unsqueeze(0)
                with torch.inference_mode():
                    heat = explain(checkpoint.model, checkpoint.architecture, tensor)[0]
                with PILImage.open(path) as photo:
                    photo.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE))
                    shown = photo.convert("RGB")
                save_overlay(self.heatmap_path(image_id), shown, heat)
                return True
            except (ImageLoadError, OSError, ValueError) as exc:
                logger.warning("no heat-map for image %d: %s", image_id, exc)
                return False


class ChampionEmbedder:
    """Penultimate embeddings of images under the binary champion (for kcenter / hybrid selection)."""

    def __init__(self, sessions: sessionmaker[Session], champions: classification.ChampionCache) -> None:
        self._sessions = sessions
        self._champions = champions

    def __call__(self, items: Sequence[tuple[int, str]]) -> npt.NDArray[np.float32]:
        import torch

        from models.data import ImageLoadError, InputSpec, load_image

        current = self._champions.refresh(self._sessions)
        if current.binary is None:
            raise RuntimeError("no binary champion: embeddings need a model")
        spec = InputSpec.from_dict(current.binary.version.input_spec)
        rows: list[npt.NDArray[np.float32] | None] = []
        dim: int | None = None
        for start in range(0, len(items), 64):
            tensors, ok = [], []
            for index, (_, path) in enumerate(items[start : start + 64]):
                try:
                    tensors.append(load_image(Path(path), spec))
                    ok.append(index)
                except ImageLoadError as exc:
                    logger.warning("embedding: %s unreadable: %s", path, exc)
            chunk: list[npt.NDArray[np.float32] | None] = [None] * len(items[start : start + 64])
            if tensors:
                out = current.binary.predictor.predict(torch.stack(tensors))
                dim = int(out.embeddings.shape[1])
                for row, index in enumerate(ok):
                    chunk[index] = np.asarray(out.embeddings[row], dtype=np.float32)
            rows.extend(chunk)
        width = dim or 1
        # An unreadable image sits at the origin: far from nothing, so diversity never prefers it.
        return np.stack([row if row is not None else np.zeros(width, np.float32) for row in rows])


def score_images(
    items: Sequence[tuple[int, str]],
    *,
    sessions: sessionmaker[Session],
    champions: classification.ChampionCache,
    label_space: LabelSpace,
    batch_size: int = 32,
) -> int:
    """Store predictions of the current champions for these images (status untouched); how many stored."""
    current = champions.refresh(sessions)
    if current.binary is None or current.model_key is None:
        return 0
    stored = 0
    for start in range(0, len(items), batch_size):
        batch = [(image_id, path, None) for image_id, path in items[start : start + batch_size]]
        result = classification._predict(current, batch, label_space)
        ids, combined = result.ok, result.combined
        for image_id, reason in result.failed.items():
            logger.warning("scoring image %d failed: %s", image_id, reason)
        if combined is None:
            continue
        with session_scope(sessions) as session:
            for row, image_id in enumerate(ids):
                _, created = repo.add_prediction(
                    session=session,
                    image_id=image_id,
                    binary_version_id=current.binary.version.id,
                    multiclass_version_id=None
                    if current.multiclass is None
                    else current.multiclass.version.id,
                    probabilities={
                        name: float(p)
                        for name, p in zip(combined.class_names, combined.probs[row], strict=True)
                    },
                    predicted_label=combined.labels[row],
                    confidence=float(combined.confidence[row]),
                    uncertainty={name: float(s[row]) for name, s in combined.uncertainty.items()},
                )
                stored += int(created)
    return stored
