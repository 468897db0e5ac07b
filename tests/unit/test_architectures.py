"""Registry and factory: every architecture builds, runs forward and backward on 1 and 3 channels,
and weights files are loaded, adapted or rejected with errors that say what to do. No downloads."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from torch import nn

from models.errors import ModelError, UnknownArchitectureError, WeightsError
from models.registry import (
    ARCHITECTURES,
    create_model,
    embedding_dim,
    enable_mc_dropout,
    get_spec,
    list_architectures,
    model_embedding,
)

ARCH_NAMES = sorted(ARCHITECTURES)
SIZE = 64


# Belt and braces: nothing here asks for hub weights, and if something did it must fail fast.
pytestmark = pytest.mark.usefixtures("hub_offline")


def _images(in_chans: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, in_chans, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_registry_names_the_architectures() -> None:
    assert list_architectures() == [
        "baseline_cnn",
        "efficientnet_b0",
        "efficientnet_lite0",
        "improved_cnn",
        "resnet18",
    ]
    for name, spec in ARCHITECTURES.items():
        assert spec.name == name
        assert spec.description


@pytest.mark.parametrize("num_classes", [2, 5])
@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", ARCH_NAMES)
def test_forward_backward_and_embedding_are_finite(name: str, in_chans: int, num_classes: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, in_chans=in_chans)
    model.train()
    x = _images(in_chans)

    out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()

    out.sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for param_name, param in trainable:
        assert param.grad is not None, f"{name}: no gradient for {param_name}"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient for {param_name}"

    model.eval()
    with torch.no_grad():
        emb = model_embedding(model, x)
    assert emb.shape == (2, embedding_dim(model))
    assert torch.isfinite(emb).all()


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", ARCH_NAMES)
def test_spec_names_real_layers(name: str, in_chans: int) -> None:
    spec = get_spec(name)
    model = create_model(name, num_classes=4, in_chans=in_chans)
    modules = set(model.modules())
    assert spec.gradcam_target(model) in modules
    first_conv = model.get_submodule(spec.first_conv)
    assert isinstance(first_conv, nn.Conv2d)
    assert first_conv.in_channels == in_chans
    classifier = model.get_submodule(spec.classifier)
    assert isinstance(classifier, nn.Linear)
    assert classifier.out_features == 4


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_has_dropout_matches_behaviour(name: str) -> None:
    spec = get_spec(name)
    model = create_model(name, num_classes=3, in_chans=1)
    x = _images(1)

    # Train mode: batch norm uses batch statistics, which are deterministic for a fixed input, so
    # two passes differ only through dropout.
    model.train()
    with torch.no_grad():
        differ = not torch.allclose(model(x), model(x))
    assert differ == spec.has_dropout

    # MC mode: only the dropout modules sample; batch norm stays in eval mode.
    switched_on = enable_mc_dropout(model)
    assert (switched_on > 0) == spec.has_dropout
    assert all(not m.training for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    with torch.no_grad():
        differ = not torch.allclose(model(x), model(x))
    assert differ == spec.has_dropout


def test_models_accept_any_size_from_32() -> None:
    for name in ARCH_NAMES:
        model = create_model(name, num_classes=2, in_chans=1).eval()
        with torch.no_grad():
            for height, width in [(32, 32), (40, 56)]:
                assert model(torch.randn(1, 1, height, width)).shape == (1, 2)


# --- bad arguments --------------------------------------------------------------------------------


def test_unknown_architecture_lists_valid_names() -> None:
    with pytest.raises(UnknownArchitectureError) as info:
        create_model("resnet50", num_classes=2, in_chans=3)
    message = str(info.value)
    for name in ARCH_NAMES:
        assert name in message
    assert "resnet50" in message
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, ModelError)


@pytest.mark.parametrize(("in_chans", "num_classes"), [(2, 2), (4, 2), (0, 2), (3, 1), (3, 0)])
def test_bad_channels_or_classes_are_value_errors(in_chans: int, num_classes: int) -> None:
    with pytest.raises(ValueError, match=r"in_chans|num_classes"):
        create_model("baseline_cnn", num_classes=num_classes, in_chans=in_chans)


# --- weights files --------------------------------------------------------------------------------


def _save(tmp_path: Path, obj: Any, name: str = "weights.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_weights_for_other_class_count_reinitialise_the_head(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = get_spec(name)
    saved = create_model(name, num_classes=3, in_chans=3).state_dict()
    path = _save(tmp_path, saved)

    with caplog.at_level(logging.INFO, logger="models.registry"):
        model = create_model(name, num_classes=5, in_chans=3, weights=path)

    assert "head re-initialised for 5 classes" in caplog.text
    assert str(path) in caplog.text
    loaded = model.state_dict()
    head = spec.classifier + "."
    body_keys = [k for k in saved if not k.startswith(head)]
    assert body_keys
    for key in body_keys:
        assert torch.equal(loaded[key], saved[key]), key
    assert loaded[head + "weight"].shape[0] == 5


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_rgb_weights_are_adapted_to_grayscale(name: str, tmp_path: Path) -> None:
    spec = get_spec(name)
    rgb = create_model(name, num_classes=2, in_chans=3).eval()
    path = _save(tmp_path, {"state_dict": rgb.state_dict(), "epoch": 7})

    gray = create_model(name, num_classes=2, in_chans=1, weights=path).eval()

    conv_key = spec.first_conv + ".weight"
    expected = rgb.state_dict()[conv_key].sum(dim=1, keepdim=True)
    assert torch.allclose(gray.state_dict()[conv_key], expected)
    # Summed RGB filters see a gray image exactly as the RGB model sees it repeated on 3 channels.
    x = _images(1)
    with torch.no_grad():
        assert torch.allclose(gray(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4)


def test_unrelated_keys_name_the_keys(tmp_path: Path) -> None:
    path = _save(tmp_path, {"encoder.proj.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)})
    with pytest.raises(WeightsError) as info:
        create_model("baseline_cnn", num_classes=2, in_chans=3, weights=path)
    message = str(info.value)
    assert "does not match the architecture 'baseline_cnn'" in message
    assert "encoder.proj.weight" in message
    assert "decoder.bias" in message
    assert "features.0.0.weight" in message  # a missing key, named
    assert "pretrained=False" in message
    assert isinstance(info.value, ValueError)


def test_weights_of_another_architecture_are_rejected(tmp_path: Path) -> None:
    path = _save(tmp_path, create_model("improved_cnn", num_classes=2, in_chans=3).state_dict())
    with pytest.raises(
        WeightsError, match=r"does not match the architecture 'baseline_cnn'.*\(and \d+ more\)"
    ):
        create_model("baseline_cnn", num_classes=2, in_chans=3, weights=path)


def test_corrupt_weights_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(random.Random(1).randbytes(4096))
    with pytest.raises(WeightsError, match="unreadable or corrupt") as info:
        create_model("resnet18", num_classes=2, in_chans=3, weights=path)
    assert str(path) in str(info.value)
    assert "torch.save(model.state_dict(), PATH)" in str(info.value)


def test_truncated_weights_file_says_so(tmp_path: Path) -> None:
    good = _save(tmp_path, create_model("baseline_cnn", num_classes=2, in_chans=1).state_dict())
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(WeightsError, match="unreadable or corrupt"):
        create_model("baseline_cnn", num_classes=2, in_chans=1, weights=cut)


def test_missing_or_non_state_dict_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        create_model("baseline_cnn", num_classes=2, in_chans=1, weights=tmp_path / "nope.pt")
    path = _save(tmp_path, [1, 2, 3], "list.pt")
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        create_model("baseline_cnn", num_classes=2, in_chans=1, weights=path)


def test_data_parallel_prefix_is_stripped(tmp_path: Path) -> None:
    saved = create_model("baseline_cnn", num_classes=2, in_chans=1).state_dict()
    path = _save(tmp_path, {"model": {f"module.{k}": v for k, v in saved.items()}})
    model = create_model("baseline_cnn", num_classes=2, in_chans=1, weights=path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key])


# --- pretrained -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["baseline_cnn", "improved_cnn"])
def test_pretrained_for_scratch_models_is_an_error(name: str) -> None:
    with pytest.raises(ModelError, match=r"no pretrained weights.*pretrained=False"):
        create_model(name, num_classes=2, in_chans=1, pretrained=True)


def _spy_on_timm(monkeypatch: pytest.MonkeyPatch, *, hub_reachable: bool) -> list[bool]:
    real_create = timm.create_model
    calls: list[bool] = []

    def create(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        calls.append(pretrained)
        if pretrained and not hub_reachable:
            raise OSError("offline: cannot reach huggingface.co")
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", create)
    return calls


def test_pretrained_with_local_file_never_asks_the_hub(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls = _spy_on_timm(monkeypatch, hub_reachable=False)
    saved = create_model("resnet18", num_classes=2, in_chans=3).state_dict()
    path = _save(tmp_path, saved)

    with caplog.at_level(logging.INFO, logger="models.registry"):
        model = create_model("resnet18", num_classes=2, in_chans=3, pretrained=True, weights=path)

    assert calls
    assert not any(calls)
    assert f"resnet18: loaded weights from {path}" in caplog.text
    assert torch.equal(model.state_dict()["conv1.weight"], saved["conv1.weight"])


def test_unreachable_pretrained_weights_raise_instead_of_falling_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _spy_on_timm(monkeypatch, hub_reachable=False)
    with pytest.raises(ModelError, match="no pretrained weights reachable") as info:
        create_model("efficientnet_b0", num_classes=2, in_chans=1, pretrained=True)
    assert "weights=PATH" in str(info.value)
    assert "pretrained=False" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_from_scratch_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="models.registry"):
        create_model("resnet18", num_classes=2, in_chans=1)
    assert "resnet18: from scratch (no pretrained weights)" in caplog.text
