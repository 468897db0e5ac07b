"""An unsupervised defect score per camera / fabric: a texture-anomaly model fitted on unlabelled photos.

In the spirit of PatchCore: a frozen encoder (by default EfficientNet-Lite0 with the ImageNet weights a
package ships, ``models.pretrained``) turns each image into a grid of patch descriptors (intermediate
stages, upsampled to the finest one and averaged over 3x3 neighbourhoods); fitting keeps a random
subsample of the patches of one source's images as a memory bank (most photos of a line are good, so the
bank describes the good texture). An image's score is the largest, over its patches, of the mean distance
to the ``k`` nearest bank patches; the per-patch distances are its heat-map. It needs no label, so it
ranks a new fabric's photos before the first annotation (cold start).

Scores of different sources are not on one scale: ``percentile`` places a score among the scores of
images held out of the bank when fitting (their fraction below it), which is comparable across sources.
An ``AnomalyModel`` is saved with its encoder's name and weights hash (``save``/``load``, sha256
checked, read with ``weights_only=True``), so it can be stored per source beside a model version.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 (the usual torch alias)
from torch import nn

from models.errors import CheckpointIntegrityError, ModelError
from models.registry import create_model

logger = logging.getLogger(__name__)

__all__ = [
    "ANOMALY_FORMAT",
    "AnomalyConfig",
    "AnomalyModel",
    "build_encoder",
    "fit_anomaly_model",
    "load_anomaly_model",
    "patch_descriptors",
    "pooled_descriptors",
    "stage_features",
]

ANOMALY_FORMAT = 1
# EfficientNet stages after which features are taken (timm ``blocks`` indices): 1/8 and 1/16 of the input.
DEFAULT_STAGES = (2, 3)


@dataclass(frozen=True)
class AnomalyConfig:
    """How an anomaly model is fitted. ``stages``: encoder blocks whose outputs form the patch
    descriptors; ``k``: neighbours averaged; ``bank_size``: patches kept; ``holdout``: share of the fit
    images kept out of the bank to place scores (``percentile``)."""

    encoder: str = "efficientnet_lite0"
    stages: tuple[int, ...] = DEFAULT_STAGES
    k: int = 3
    bank_size: int = 20_000
    holdout: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(int(s) for s in self.stages))
        if not self.stages or any(s < 0 for s in self.stages):
            raise ValueError(f"stages must be non-negative block indices, got {self.stages}")
        if self.k < 1 or self.bank_size < self.k:
            raise ValueError(f"need 1 <= k <= bank_size, got k={self.k}, bank_size={self.bank_size}")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder,
            "stages": list(self.stages),
            "k": self.k,
            "bank_size": self.bank_size,
            "holdout": self.holdout,
            "seed": self.seed,
        }


def build_encoder(name: str, weights: str | os.PathLike[str] | None, *, in_chans: int = 1) -> nn.Module:
    """A registry model in eval mode to take features from (its classifier is never used)."""
    model = create_model(name, num_classes=2, in_chans=in_chans, weights=weights)
    model.eval()
    return model


def _blocks(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], Sequence[nn.Module]]:
    """(stem, stages) of an encoder: timm EfficientNets (``conv_stem``/``bn1``/``blocks``) or the two
    small CNNs (``features``)."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and hasattr(model, "conv_stem"):
        conv_stem = model.get_submodule("conv_stem")
        bn1 = model.get_submodule("bn1")

        def stem(x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = bn1(conv_stem(x))
            return out

        return stem, list(blocks)
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return (lambda x: x), list(features)
    raise ModelError(
        f"{type(model).__name__} has no stages to take patch features from; use an EfficientNet "
        "(efficientnet_lite0, efficientnet_b0) or one of the small CNNs as the encoder"
    )


@torch.no_grad()
def stage_features(model: nn.Module, x: torch.Tensor, stages: Sequence[int]) -> dict[int, torch.Tensor]:
    """The outputs of the encoder's ``stages`` for a normalised (N, C, H, W) batch."""
    stem, blocks = _blocks(model)
    if max(stages) >= len(blocks):
        raise ValueError(f"stage {max(stages)} does not exist: the encoder has {len(blocks)} stages")
    out: dict[int, torch.Tensor] = {}
    h = stem(x)
    for i, block in enumerate(blocks[: max(stages) + 1]):
        h = block(h)
        if i in stages:
            out[i] = h.float()
    return out


def patch_descriptors(features: dict[int, torch.Tensor]) -> torch.Tensor:
    """(N, D, h, w): each stage upsampled to the finest grid, averaged over 3x3 neighbourhoods, stacked."""
    size = max(f.shape[-1] for f in features.values())
    maps = []
    for key in sorted(features):
        f = features[key]
        if f.shape[-1] != size:
            f = F.interpolate(f, size=(size, size), mode="bilinear", align_corners=False)
        maps.append(F.avg_pool2d(f, 3, stride=1, padding=1))
    return torch.cat(maps, dim=1)


def pooled_descriptors(features: dict[int, torch.Tensor]) -> torch.Tensor:
    """(N, 2 * sum of channels): each stage's global average and global max, a compact image descriptor
    (a linear classifier on it is the cheapest use of the frozen encoder)."""
    parts = []
    for key in sorted(features):
        f = features[key]
        parts += [f.mean(dim=(2, 3)), f.amax(dim=(2, 3))]
    return torch.cat(parts, dim=1)


def _nearest_mean(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    out = []
    for i in range(0, len(queries), chunk):
        dist = torch.cdist(queries[i : i + chunk], bank)
        out.append(dist.topk(min(k, len(bank)), dim=1, largest=False).values.mean(dim=1))
    return torch.cat(out)


@dataclass(frozen=True, eq=False)
class AnomalyModel:
    """A fitted per-source texture model. ``reference`` holds the sorted scores of held-out fit images."""

    config: AnomalyConfig
    encoder_weights_sha256: str | None
    bank: torch.Tensor  # (M, D) float32
    reference: npt.NDArray[np.float64]
    n_images: int
    source: str | None = None

    def score_descriptors(self, descriptors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (N,), maps (N, h, w)) from (N, D, h, w) patch descriptors."""
        n, d, h, w = descriptors.shape
        flat = descriptors.permute(0, 2, 3, 1).reshape(-1, d)
        maps = _nearest_mean(flat, self.bank, self.config.k).view(n, h, w)
        return maps.flatten(1).amax(dim=1), maps

    @torch.no_grad()
    def score(self, encoder: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and heat-maps (on the patch grid) of a normalised image batch, with ``encoder``."""
        return self.score_descriptors(patch_descriptors(stage_features(encoder, images, self.config.stages)))

    def percentile(self, scores: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Fraction of this source's held-out fit images scoring below each score (0.5 = typical)."""
        s = np.asarray(scores, dtype=np.float64)
        if self.reference.size == 0:
            return np.full(s.shape, np.nan)
        return np.searchsorted(self.reference, s, side="left") / float(self.reference.size)

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": ANOMALY_FORMAT,
            "config": self.config.to_dict(),
            "encoder_weights_sha256": self.encoder_weights_sha256,
            "bank": self.bank.detach().cpu().contiguous(),
            "reference": torch.as_tensor(self.reference, dtype=torch.float64),
            "n_images": self.n_images,
            "source": self.source,
        }

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write atomically (temporary file, then rename); return the file's sha256."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(self.to_payload(), buffer)
        data = buffer.getvalue()
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
        return hashlib.sha256(data).hexdigest()


def load_anomaly_model(path: str | os.PathLike[str], *, expected_sha256: str) -> AnomalyModel:
    """Read a saved model after checking its sha256 (``CheckpointIntegrityError`` when it differs)."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointIntegrityError(f"anomaly model {file} does not exist; refit it for its source")
    data = file.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256.strip().lower():
        raise CheckpointIntegrityError(
            f"anomaly model {file} has sha256 {actual}, expected {expected_sha256}; it was changed: refit it"
        )
    obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != ANOMALY_FORMAT:
        raise ModelError(f"{file} is not a defectloop anomaly model (format {ANOMALY_FORMAT})")
    config = obj["config"]
    return AnomalyModel(
        config=AnomalyConfig(
            encoder=str(config["encoder"]),
            stages=tuple(config["stages"]),
            k=int(config["k"]),
            bank_size=int(config["bank_size"]),
            holdout=float(config["holdout"]),
            seed=int(config["seed"]),
        ),
        encoder_weights_sha256=obj["encoder_weights_sha256"],
        bank=obj["bank"].float(),
        reference=obj["reference"].numpy().astype(np.float64),
        n_images=int(obj["n_images"]),
        source=obj["source"],
    )


@torch.no_grad()
def fit_anomaly_model(
    encoder: nn.Module,
    images: torch.Tensor,
    config: AnomalyConfig | None = None,
    *,
    groups: Sequence[str] | None = None,
    encoder_weights_sha256: str | None = None,
    source: str | None = None,
    batch_size: int = 32,
    descriptors: torch.Tensor | None = None,
) -> AnomalyModel:
    """Fit on unlabelled, normalised (N, C, H, W) ``images`` of one source (mostly good ones).

    ``descriptors``: the images' (N, D, h, w) ``patch_descriptors`` when already computed with this
    encoder and ``config.stages`` (``images`` is then not read).

    ``holdout`` of the images (whole ``groups`` when given: tiles of one photo stay together) are kept
    out of the bank and scored against it, to place later scores (``percentile``). The bank is a seeded
    random subsample of the other images' patches. Deterministic for a given seed.
    """
    config = config or AnomalyConfig()
    n = len(images) if descriptors is None else len(descriptors)
    if n < 2:
        raise ValueError(f"an anomaly model needs at least 2 images of the source, got {n}")
    rng = np.random.default_rng(config.seed)
    keys = list(groups) if groups is not None else [str(i) for i in range(n)]
    if len(keys) != n:
        raise ValueError(f"{n} images but {len(keys)} groups")
    unique = sorted(set(keys))
    rng.shuffle(unique)
    n_hold = round(config.holdout * len(unique))
    n_hold = min(n_hold, len(unique) - 1)
    held_groups = set(unique[:n_hold])
    held = np.array([k in held_groups for k in keys])

    if descriptors is None:
        parts = [
            patch_descriptors(stage_features(encoder, images[i : i + batch_size], config.stages))
            for i in range(0, n, batch_size)
        ]
        desc = torch.cat(parts)
    else:
        desc = descriptors.float()
    fit_desc = desc[torch.as_tensor(~held)]
    patches = fit_desc.permute(0, 2, 3, 1).reshape(-1, desc.shape[1])
    if len(patches) > config.bank_size:
        keep = torch.as_tensor(rng.choice(len(patches), config.bank_size, replace=False))
        patches = patches[keep]
    model = AnomalyModel(
        config=config,
        encoder_weights_sha256=encoder_weights_sha256,
        bank=patches.contiguous(),
        reference=np.zeros(0),
        n_images=n,
        source=source,
    )
    reference = np.zeros(0)
    if held.any():
        reference = np.sort(
            model.score_descriptors(desc[torch.as_tensor(held)])[0].numpy().astype(np.float64)
        )
    logger.info(
        "anomaly model%s: %d images (%d held out), bank of %d patches of %d dims",
        f" for {source}" if source else "",
        n,
        int(held.sum()),
        len(patches),
        patches.shape[1],
    )
    return AnomalyModel(
        config=config,
        encoder_weights_sha256=encoder_weights_sha256,
        bank=model.bank,
        reference=reference,
        n_images=n,
        source=source,
    )
