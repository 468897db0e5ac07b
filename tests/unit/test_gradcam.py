"""Grad-CAM: heat-maps for every architecture, hooks released after every call, the model left as
it was found, PNG overlays, and the pointing-game faithfulness measure."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from pytorch_grad_cam import GradCAM
from torch import nn

from models.gradcam import (
    count_hooks,
    explain,
    overlay_image,
    overlay_png,
    pointing_hit,
    pointing_share,
    read_mask,
    save_overlay,
)
from models.registry import ARCHITECTURES, create_model, enable_mc_dropout, get_spec

ARCH_NAMES = sorted(ARCHITECTURES)
SIZE = 64


def _module_hook_count(model: nn.Module) -> int:
    """The four module hook dicts named explicitly, independently of ``count_hooks``."""
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(m, name)) for m in model.modules() for name in names)


def _images(in_chans: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, in_chans, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# --- explain --------------------------------------------------------------------------------------


def test_hook_counter_sees_hooks() -> None:
    model = create_model("baseline_cnn", num_classes=2, in_chans=1)
    base = count_hooks(model)
    handle = model.get_submodule("fc").register_forward_hook(lambda *_: None)
    assert count_hooks(model) == base + 1
    handle.remove()
    # pytorch-grad-cam registers its hooks in the constructor: what explain() must release.
    cam = GradCAM(model=model, target_layers=[get_spec("baseline_cnn").gradcam_target(model)])
    assert count_hooks(model) > base
    assert _module_hook_count(model) > 0
    cam.activations_and_grads.release()
    assert count_hooks(model) == base


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", ARCH_NAMES)
def test_explain_gives_heatmaps_and_leaves_the_model_as_found(name: str, in_chans: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=in_chans)
    # A mixed state to preserve: MC-dropout mode, one frozen tensor, one gradient already there.
    enable_mc_dropout(model)
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[-1].grad = torch.ones_like(params[-1])
    sentinel = params[-1].grad
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in params]
    hooks, module_hooks = count_hooks(model), _module_hook_count(model)

    heat = explain(model, name, _images(in_chans), target_classes=[0, 2])

    assert heat.shape == (2, SIZE, SIZE)
    assert heat.dtype == np.float32
    assert np.isfinite(heat).all()
    assert heat.min() >= 0.0
    assert heat.max() <= 1.0
    assert count_hooks(model) == hooks
    assert _module_hook_count(model) == module_hooks
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in params] == flags
    assert params[-1].grad is sentinel
    assert all(p.grad is None for p in params[:-1])


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_repeated_explain_does_not_accumulate_hooks(name: str) -> None:
    model = create_model(name, num_classes=2, in_chans=1).eval()
    hooks, module_hooks = count_hooks(model), _module_hook_count(model)
    x = torch.randn(1, 1, 32, 32)  # hook bookkeeping does not depend on size; keep 20 calls cheap
    for _ in range(20):
        explain(model, get_spec(name), x)
    assert count_hooks(model) == hooks
    assert _module_hook_count(model) == module_hooks


def test_explain_inside_inference_mode() -> None:
    model = create_model("improved_cnn", num_classes=2, in_chans=1).eval()
    with torch.inference_mode():
        x = _images(1)  # an inference tensor, which autograd refuses until cloned outside
        heat = explain(model, "improved_cnn", x)
    assert heat.shape == (2, SIZE, SIZE)
    assert np.isfinite(heat).all()


def test_explain_rejects_bad_input() -> None:
    model = create_model("baseline_cnn", num_classes=2, in_chans=1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        explain(model, "baseline_cnn", torch.randn(1, SIZE, SIZE))
    with pytest.raises(ValueError, match="target classes"):
        explain(model, "baseline_cnn", _images(1), target_classes=[1])
    with pytest.raises(ValueError, match="float"):
        explain(model, "baseline_cnn", torch.zeros(1, 1, SIZE, SIZE, dtype=torch.uint8))


def _squares(
    n: int, gen: torch.Generator, *, positive: bool, size: int = 32, side: int = 10
) -> tuple[torch.Tensor, npt.NDArray[np.bool_]]:
    x = torch.rand(n, 1, size, size, generator=gen) * 0.3
    masks = np.zeros((n, size, size), dtype=bool)
    if positive:
        for i in range(n):
            row, col = torch.randint(0, size - side + 1, (2,), generator=gen).tolist()
            x[i, 0, row : row + side, col : col + side] += 0.7
            masks[i, row : row + side, col : col + side] = True
    return x, masks


def test_gradcam_points_at_the_defect_of_a_trained_model() -> None:
    # A bright square (class 1) versus none (class 0); after a few dozen steps the heat-map maximum
    # should land on the square far more often than chance (~10% of the image).
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = create_model("baseline_cnn", num_classes=2, in_chans=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(40):
        pos, _ = _squares(8, gen, positive=True)
        neg, _ = _squares(8, gen, positive=False)
        loss = F.cross_entropy(model(torch.cat([pos, neg])), torch.tensor([1] * 8 + [0] * 8))
        optimiser.zero_grad()
        torch.autograd.backward(loss)
        optimiser.step()
    model.eval()

    images, masks = _squares(32, gen, positive=True)
    heat = explain(model, "baseline_cnn", images, target_classes=[1] * 32)

    assert pointing_share(heat, masks) > 0.5
    assert pointing_share(heat, masks, tolerance=2) > 0.8


# --- overlays -------------------------------------------------------------------------------------


def _decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_overlay_png_of_grayscale_image_is_rgb_at_image_size() -> None:
    gray = np.random.default_rng(0).integers(0, 256, size=(48, 40), dtype=np.uint8)
    heat = np.random.default_rng(1).random((8, 8)).astype(np.float32)
    image = _decode(overlay_png(gray, heat))
    assert image.format == "PNG"
    assert image.mode == "RGB"
    assert image.size == (40, 48)


def test_overlay_accepts_pil_float_and_chw_images() -> None:
    heat = np.zeros((16, 16), dtype=np.float32)
    heat[4, 4] = 1.0
    pil = Image.new("L", (32, 24), color=128)
    assert overlay_image(pil, heat).shape == (24, 32, 3)
    normalised = np.random.default_rng(0).normal(size=(24, 32, 3)).astype(np.float32)
    assert overlay_image(normalised, heat).shape == (24, 32, 3)
    chw = np.random.default_rng(0).random((1, 24, 32)).astype(np.float32)
    assert overlay_image(chw, heat, alpha=1.0).shape == (24, 32, 3)
    with pytest.raises(ValueError, match="alpha"):
        overlay_png(pil, heat, alpha=1.5)


def test_overlay_of_a_real_heatmap(tmp_path: Path) -> None:
    model = create_model("resnet18", num_classes=2, in_chans=3)
    x = _images(3, n=1)
    heat = explain(model, "resnet18", x)[0]
    path = save_overlay(tmp_path / "sub" / "overlay.png", x[0].numpy(), heat)
    assert path == tmp_path / "sub" / "overlay.png"
    assert _decode(path.read_bytes()).size == (SIZE, SIZE)
    assert sorted(p.name for p in path.parent.iterdir()) == ["overlay.png"]  # no temporary file left


# --- pointing game --------------------------------------------------------------------------------


def _mask(rows: slice, cols: slice, size: int = 32) -> npt.NDArray[np.bool_]:
    mask = np.zeros((size, size), dtype=bool)
    mask[rows, cols] = True
    return mask


def _peak(row: int, col: int, size: int = 8) -> npt.NDArray[np.float32]:
    heat = np.zeros((size, size), dtype=np.float32)
    heat[row, col] = 1.0
    return heat


def test_pointing_hit_and_miss() -> None:
    heat = _peak(2, 5)  # an 8x8 map: cell (2, 5) covers rows 8-11, cols 20-23 of a 32x32 mask
    assert pointing_hit(heat, _mask(slice(6, 14), slice(18, 26)))
    assert not pointing_hit(heat, _mask(slice(20, 30), slice(0, 10)))
    # Just beside the peak: a miss without tolerance, a hit with a few pixels of it.
    beside = _mask(slice(8, 12), slice(25, 28))
    assert not pointing_hit(heat, beside)
    assert pointing_hit(heat, beside, tolerance=4)


def test_pointing_hit_edge_cases() -> None:
    mask = _mask(slice(0, 4), slice(0, 4))
    assert not pointing_hit(np.zeros((8, 8)), mask)  # a flat map points nowhere
    assert pointing_hit(_peak(0, 0), mask.astype(np.uint8) * 255)
    with pytest.raises(ValueError, match="no defect pixels"):
        pointing_hit(_peak(0, 0), np.zeros((32, 32), dtype=bool))
    with pytest.raises(ValueError, match="tolerance"):
        pointing_hit(_peak(0, 0), mask, tolerance=-1)
    with pytest.raises(ValueError, match="NaN"):
        pointing_hit(np.full((8, 8), np.nan), mask)


def test_pointing_share() -> None:
    hit = (_peak(0, 0), _mask(slice(0, 4), slice(0, 4)))
    miss = (_peak(7, 7), _mask(slice(0, 4), slice(0, 4)))
    pairs = [hit, miss, hit, hit]
    assert pointing_share([h for h, _ in pairs], [m for _, m in pairs]) == 0.75
    with pytest.raises(ValueError, match="at least one"):
        pointing_share([], [])
    with pytest.raises(ValueError, match="one mask per heat-map"):
        pointing_share([hit[0]], [hit[1], miss[1]])


def test_read_mask(tmp_path: Path) -> None:
    raw = np.zeros((16, 20), dtype=np.uint8)
    raw[3:6, 4:9] = 255
    Image.fromarray(raw).save(tmp_path / "mask.png")
    mask = read_mask(tmp_path / "mask.png")
    assert mask.dtype == np.bool_
    assert mask.shape == (16, 20)
    assert mask.sum() == 15
