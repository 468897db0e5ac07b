"""Grad-CAM heat-maps for the registry's models, PNG overlays, and a faithfulness measure.

``explain`` runs pytorch-grad-cam inside a ``with`` block so its hooks are removed after every
call (a long-lived worker must not accumulate them) and leaves the model as it found it: same
train/eval mode per module, same ``requires_grad`` flags, same ``.grad`` tensors. The pointing
game (``pointing_hit``/``pointing_share``) measures whether the heat-map maximum falls on the defect.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from models.registry import ArchitectureSpec, get_spec

logger = logging.getLogger(__name__)

ImageLike = npt.NDArray[np.generic] | Image.Image


def count_hooks(model: nn.Module) -> int:
    """Hooks registered on ``model`` and its submodules, plus torch's global module hooks.

    Counts every hook dict torch keeps (forward, forward-pre, backward, backward-pre, state-dict,
    ...), so a leak of any kind shows as a change in this number.
    """
    total = 0
    for module in model.modules():
        for name, value in vars(module).items():
            if "hooks" in name and isinstance(value, dict):
                total += len(value)
    for name, value in vars(torch.nn.modules.module).items():
        if name.startswith("_global_") and "hooks" in name and isinstance(value, dict):
            total += len(value)
    return total


def explain(
    model: nn.Module,
    spec_or_name: ArchitectureSpec | str,
    images: torch.Tensor,
    target_classes: Sequence[int] | None = None,
) -> npt.NDArray[np.float32]:
    """Grad-CAM heat-maps, (N, H, W) float32 in [0, 1], for an (N, C, H, W) float batch.

    ``target_classes`` gives the class to explain per image; ``None`` explains the predicted class.
    Works when called under ``torch.inference_mode``/``no_grad`` (grads are switched on inside).
    """
    spec = spec_or_name if isinstance(spec_or_name, ArchitectureSpec) else get_spec(spec_or_name)
    if images.ndim != 4:
        raise ValueError(f"images must be an (N, C, H, W) batch, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float tensors prepared like the model's input, got {images.dtype}")
    targets: list[ClassifierOutputTarget] | None = None
    if target_classes is not None:
        if len(target_classes) != images.shape[0]:
            raise ValueError(f"got {len(target_classes)} target classes for {images.shape[0]} images")
        targets = [ClassifierOutputTarget(int(c)) for c in target_classes]

    target_layer = spec.gradcam_target(model)
    params = list(model.parameters())
    modes = [(module, module.training) for module in model.modules()]
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    hooks_before = count_hooks(model)
    try:
        # inference_mode(False) as well as enable_grad: enable_grad alone does nothing inside
        # inference mode, and an inference tensor cannot enter autograd until cloned outside it.
        with torch.inference_mode(False), torch.enable_grad():
            x = images.detach().to(params[0].device).clone().requires_grad_(True)
            # Gradients are needed only down to the target layer's output; freezing the parameters
            # keeps them from accumulating into .grad (the CAM library zeroes and fills it otherwise).
            for p in params:
                p.requires_grad_(False)
            with GradCAM(model=model, target_layers=[target_layer]) as cam:
                heatmaps = cam(input_tensor=x, targets=targets)
    finally:
        for p, flag, grad in zip(params, flags, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
        for module, training in modes:
            module.train(training)
    hooks_after = count_hooks(model)
    if hooks_after != hooks_before:
        logger.error("Grad-CAM left %d hook(s) behind on %s", hooks_after - hooks_before, spec.name)
    result = np.nan_to_num(np.asarray(heatmaps, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(result, 0.0, 1.0)


# --- overlays -------------------------------------------------------------------------------------


def _to_rgb_float(image: ImageLike) -> npt.NDArray[np.float32]:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = np.transpose(arr, (1, 2, 0))  # a CHW array, as taken from a tensor
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.stack([arr, arr, arr], axis=-1)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be HxW, HxWx1, HxWx3 or a PIL image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    out = arr.astype(np.float32)
    lo, hi = float(out.min()), float(out.max())
    if lo < 0.0 or hi > 1.0:
        # A normalised float image (mean/std) is only shown here: stretch it into [0, 1].
        out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    return out


def _resize_map(heatmap: npt.NDArray[np.float32], height: int, width: int) -> npt.NDArray[np.float32]:
    if heatmap.shape == (height, width):
        return heatmap
    resized = Image.fromarray(heatmap.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _as_heatmap(heatmap: npt.ArrayLike) -> npt.NDArray[np.float32]:
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {heat.shape}")
    if not np.isfinite(heat).all():
        raise ValueError("heatmap contains NaN or infinite values")
    return heat


def overlay_image(image: ImageLike, heatmap: npt.ArrayLike, *, alpha: float = 0.4) -> npt.NDArray[np.uint8]:
    """The heat-map in the jet colormap blended over ``image``: (H, W, 3) uint8 RGB at image size.

    ``alpha`` is the heat-map's weight. Grayscale images are shown as RGB; the heat-map is resized
    to the image.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _to_rgb_float(image)
    heat = np.clip(_resize_map(_as_heatmap(heatmap), rgb.shape[0], rgb.shape[1]), 0.0, 1.0)
    blended = show_cam_on_image(rgb, heat, use_rgb=True, image_weight=1.0 - alpha)
    return np.asarray(blended, dtype=np.uint8)


def overlay_png(image: ImageLike, heatmap: npt.ArrayLike, *, alpha: float = 0.4) -> bytes:
    """``overlay_image`` encoded as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(overlay_image(image, heatmap, alpha=alpha)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_overlay(
    path: str | os.PathLike[str], image: ImageLike, heatmap: npt.ArrayLike, *, alpha: float = 0.4
) -> Path:
    """Write the overlay PNG to ``path`` atomically (temporary file, then rename) and return the path.

    A reader (Label Studio serving the file) never sees a half-written PNG.
    """
    target = Path(path)
    data = overlay_png(image, heatmap, alpha=alpha)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


# --- faithfulness (pointing game) ------------------------------------------------------------------


def read_mask(path: str | os.PathLike[str]) -> npt.NDArray[np.bool_]:
    """A defect mask image (any mode; non-zero = defect) as an (H, W) bool array."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 0


def pointing_hit(heatmap: npt.ArrayLike, mask: npt.ArrayLike, *, tolerance: int = 0) -> bool:
    """Whether the heat-map maximum, resized to the mask, lies on the defect (within ``tolerance`` px).

    A flat heat-map points nowhere and counts as a miss. The mask must contain defect pixels.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    on = np.asarray(mask)
    if on.ndim == 3:
        on = np.asarray(on.any(axis=-1))
    if on.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {on.shape}")
    on = on > 0
    if not on.any():
        raise ValueError("mask has no defect pixels; the pointing game is defined for defect images only")
    heat = _as_heatmap(heatmap)
    if float(heat.max()) == float(heat.min()):
        return False
    heat = _resize_map(heat, on.shape[0], on.shape[1])
    row, col = (int(i) for i in np.unravel_index(int(np.argmax(heat)), heat.shape))
    if tolerance == 0:
        return bool(on[row, col])
    r0, r1 = max(row - tolerance, 0), min(row + tolerance + 1, on.shape[0])
    c0, c1 = max(col - tolerance, 0), min(col + tolerance + 1, on.shape[1])
    rr, cc = np.ogrid[r0:r1, c0:c1]
    disc = (rr - row) ** 2 + (cc - col) ** 2 <= tolerance**2
    return bool((on[r0:r1, c0:c1] & disc).any())


def pointing_share(
    heatmaps: Iterable[npt.ArrayLike], masks: Iterable[npt.ArrayLike], *, tolerance: int = 0
) -> float:
    """Share of (heat-map, defect mask) pairs whose heat-map maximum falls inside the mask."""
    heat_list, mask_list = list(heatmaps), list(masks)
    if len(heat_list) != len(mask_list):
        raise ValueError(
            f"got {len(heat_list)} heat-maps but {len(mask_list)} masks; pass one mask per heat-map"
        )
    if not heat_list:
        raise ValueError("pointing_share needs at least one heat-map and mask")
    hits = [pointing_hit(h, m, tolerance=tolerance) for h, m in zip(heat_list, mask_list, strict=True)]
    return sum(hits) / len(hits)
