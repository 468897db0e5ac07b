"""Batched CPU inference: class probabilities, penultimate embeddings and MC-dropout passes.

``Predictor`` wraps one trained model. Each ``predict`` call runs ONE forward that yields both the
logits and the penultimate embedding (``forward_features -> forward_head(pre_logits=True) ->
classifier``), on the fastest backend that ``benchmarks/bench_inference.py`` showed pays on CPU:

- ``"onnxruntime"``: the model exported to ONNX in memory and run by ONNX Runtime, which folds batch
  norm into the convs and uses its own conv kernels and thread pool. Needs ``onnxruntime`` and ``onnx``;
  exact to float32 rounding (max |dp| ~1e-5 on confident outputs).
- ``"channels_last"``: torch eager with weights and inputs in NHWC memory format (oneDNN's fast path);
  no extra dependency.
- ``"eager"``: the model as it is, under ``torch.inference_mode``.

``backend="auto"`` takes the per-architecture order in ``AUTO_BACKENDS`` (from the benchmark's JSON).
Every optimised backend is checked against eager on a probe batch when it is built; one that fails to
build or disagrees is logged and the next one is tried, ending at eager. ``Predictor.backend`` says
which one runs.

MC-dropout passes (``mc_passes = T > 0``) for BALD sample only the part of the network that holds
dropout: for the timm models the dropout sits in the classifier head, so T passes cost T tiny linear
layers on the embedding already computed; for the improved CNN the deterministic convs before its first
dropout run once and only the rest runs T times. The samples are those of T full passes of
``enable_mc_dropout(model)`` (with the same seed, the very same: dropout draws in the same order).
Models without dropout (``baseline_cnn``) give ``mc_probs=None``. Passes draw from torch's global RNG
(``torch.manual_seed`` makes them repeatable).

The predictor works on its own deep copy of the model, taken when it is built: it never changes the
caller's model (parameters, ``requires_grad``, train/eval mode, memory format), and later training of
that model is not seen; build a new predictor for new weights. It keeps no global state and changes no
module mode while predicting, so one predictor may serve the threads of one worker process.

``combine_predictions`` turns the binary (ok/defective) and multiclass (defect type) outputs into one
distribution over ``[good_class, *defect_classes]`` as DESIGN.md says, with uncertainty scores from
``models.selection``.
"""

from __future__ import annotations

import copy
import importlib
import io
import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast, get_args

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.architectures import BaselineCNN, ImprovedCNN
from models.arrays import FloatArray, IntArray
from models.labels import LabelSpace
from models.registry import DROPOUT_TYPES, enable_mc_dropout, get_spec
from models.selection import bald, combine_binary_multiclass, entropy, least_confidence, margin

__all__ = [
    "AUTO_BACKENDS",
    "BACKENDS",
    "Backend",
    "CombinedPrediction",
    "PredictionOutput",
    "Predictor",
    "combine_predictions",
    "iter_batches",
]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "eager", "channels_last", "onnxruntime"]
ConcreteBackend = Literal["eager", "channels_last", "onnxruntime"]
BACKENDS: tuple[ConcreteBackend, ...] = get_args(ConcreteBackend)

# What ``backend="auto"`` tries, in order, per architecture (eager always ends the list). Measured by
# benchmarks/bench_inference.py -> benchmarks/results/inference.json (128 px, 1 and 3 channels, batch 16
# and 32, 2 torch threads, 2-core AMD EPYC, 2026-11-25). ONNX Runtime was the fastest path for every
# architecture and configuration: predictor vs bare eager loop 3.1-4.9x at batch 32 in that (busy,
# shared) run, 1.7-5.0x in quieter exploratory side-by-side runs; no prediction changed. channels_last
# was next (1.2-1.9x) and needs no extra dependency. TorchScript freeze, torch.compile, bf16 autocast and int8
# dynamic quantisation were slower than ONNX Runtime or changed predictions (the JSON's "optimisations").
AUTO_BACKENDS: dict[str, tuple[ConcreteBackend, ...]] = {
    "baseline_cnn": ("onnxruntime", "channels_last"),
    "improved_cnn": ("onnxruntime", "channels_last"),
    "efficientnet_b0": ("onnxruntime", "channels_last"),
    "resnet18": ("onnxruntime", "channels_last"),
    # Not in that measurement; the same depthwise-conv family as efficientnet_b0. The probe check
    # (PROBE_TOLERANCE) still refuses a backend that changes its predictions.
    "efficientnet_lite0": ("onnxruntime", "channels_last"),
}

# An optimised backend must reproduce eager's probabilities on the probe batch to this (float32
# reordering noise is 1e-8 to 1e-5); otherwise it is not used.
PROBE_TOLERANCE = 1e-4
_PROBE_BATCH = 2
_ONNX_OPSET = 17

Float32Array = npt.NDArray[np.float32]
T = TypeVar("T")
_NetOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True, eq=False)
class PredictionOutput:
    """What one model says about a batch of N images.

    - ``probs``: (N, C) float64 softmax of the deterministic (eval-mode) pass; rows sum to 1.
    - ``embeddings``: (N, D) float32 penultimate features (global-pooled, before the classifier), for
      diversity selection; D is ``registry.embedding_dim(model)``.
    - ``mc_probs``: (T, N, C) float64 softmax of T MC-dropout passes, or None when no passes were asked
      for or the model has no dropout (``baseline_cnn``).
    - ``class_names``: the C class names, in column order.
    """

    probs: FloatArray
    embeddings: Float32Array
    mc_probs: FloatArray | None
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.probs.shape[0])


@dataclass(frozen=True, eq=False)
class CombinedPrediction:
    """One distribution over ``class_names = (good_class, *defect_classes)`` per image.

    ``labels``/``predicted`` are the called class (name / column index: the binary decision at its
    threshold, then the most likely defect type; see ``combine_predictions``), ``confidence`` its probability,
    ``uncertainty`` maps a score name (``entropy``, ``margin``, ``least_confidence`` and, with MC passes,
    ``bald``) to (N,) float64 scores where higher = more informative (``models.selection``'s convention).
    """

    class_names: tuple[str, ...]
    probs: FloatArray
    mc_probs: FloatArray | None
    predicted: IntArray
    labels: tuple[str, ...]
    confidence: FloatArray
    uncertainty: Mapping[str, FloatArray]

    def __len__(self) -> int:
        return int(self.probs.shape[0])


def iter_batches(items: Iterable[T], batch_size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``batch_size`` items (the last one may be shorter); nothing for no items."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, batch_size)):
        yield batch


# --- the network pieces ---------------------------------------------------------------------------


def _dropout_names(module: nn.Module) -> list[str]:
    return [name for name, sub in module.named_modules() if isinstance(sub, DROPOUT_TYPES)]


def _leaves(module: nn.Module) -> list[nn.Module]:
    """The modules of nested ``nn.Sequential`` containers, in execution order."""
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _leaves(child)]
    return [module]


class _InferenceNet(nn.Module):
    """x -> (logits, embedding, trunk output or None) in one forward.

    With ``split`` set (a CNN whose ``features`` is a plain sequence), ``features`` runs as ``trunk``
    (the deterministic layers before the first dropout) then ``rest``; the trunk's output is what the
    MC passes start from. In eval mode ``classifier(forward_head(f, pre_logits=True))`` equals
    ``forward_head(f)`` for every registry model: their head dropout is then the identity.
    """

    def __init__(self, model: nn.Module, classifier: nn.Module, split: int | None) -> None:
        super().__init__()
        self.model = model
        self.classifier = classifier
        self.trunk: nn.Module | None = None
        self.rest: nn.Module | None = None
        if split is not None:
            leaves = _leaves(model.get_submodule("features"))
            self.trunk = nn.Sequential(*leaves[:split])
            self.rest = nn.Sequential(*leaves[split:])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        forward_head = cast(Any, self.model).forward_head
        if self.trunk is None or self.rest is None:
            features: torch.Tensor = cast(Any, self.model).forward_features(x)
            embedding: torch.Tensor = forward_head(features, pre_logits=True).flatten(1)
            return self.classifier(embedding), embedding
        trunk: torch.Tensor = self.trunk(x)
        embedding = forward_head(self.rest(trunk), pre_logits=True).flatten(1)
        return self.classifier(embedding), embedding, trunk


class _TailWithHead(nn.Module):
    """The MC copy's layers after the trunk, then its own head (whose dropout samples too)."""

    def __init__(self, rest: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.rest = rest
        self.model = model

    def forward(self, trunk: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = cast(Any, self.model).forward_head(self.rest(trunk))
        return logits


@dataclass(frozen=True)
class _McSampler:
    """T stochastic passes through ``module``, an own copy whose dropout modules sample.

    ``source`` says what it reads: the embedding (dropout only in the classifier), the trunk output
    (dropout from some layer of ``features`` on) or the images (any other model).
    """

    source: Literal["embedding", "trunk", "images"]
    module: nn.Module

    def sample(
        self, images: torch.Tensor, embedding: torch.Tensor, trunk: torch.Tensor | None, passes: int
    ) -> torch.Tensor:
        if self.source == "embedding":
            start = embedding
        elif self.source == "trunk" and trunk is not None:
            start = trunk
        else:
            start = images
        if start.ndim == 4:
            start = start.contiguous(memory_format=torch.channels_last)
        # One pass at a time: memory stays that of one batch, and a batch already fills the cores.
        return torch.stack([self.module(start) for _ in range(passes)])


def _mc_copy(module: nn.Module) -> nn.Module:
    mc = copy.deepcopy(module).to(memory_format=torch.channels_last)
    enable_mc_dropout(mc)
    return mc


def _plan_mc(model: nn.Module, classifier_name: str) -> tuple[_McSampler | None, int | None]:
    """The MC sampler for ``model`` (None without dropout) and the ``features`` split it needs."""
    dropouts = _dropout_names(model)
    if not dropouts:
        return None, None
    if all(name == classifier_name or name.startswith(classifier_name + ".") for name in dropouts):
        return _McSampler("embedding", _mc_copy(model.get_submodule(classifier_name))), None
    if isinstance(model, BaselineCNN | ImprovedCNN):
        leaves = _leaves(model.features)
        first = next((i for i, leaf in enumerate(leaves) if isinstance(leaf, DROPOUT_TYPES)), None)
        if first is not None:
            mc_model = _mc_copy(model)
            rest = nn.Sequential(*_leaves(cast(nn.Module, mc_model.features))[first:])
            return _McSampler("trunk", _TailWithHead(rest, mc_model)), first
    return _McSampler("images", _mc_copy(model)), None


# --- backends -------------------------------------------------------------------------------------


class _TorchRunner:
    def __init__(self, net: _InferenceNet, *, channels_last: bool) -> None:
        self._net = net
        self._channels_last = channels_last

    def __call__(self, x: torch.Tensor) -> _NetOutput:
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self._net(x)
        return out[0], out[1], out[2] if len(out) > 2 else None


class _OrtRunner:
    def __init__(self, session: Any, output_names: list[str]) -> None:
        self._session = session
        self._outputs = output_names

    def __call__(self, x: torch.Tensor) -> _NetOutput:
        arrays = self._session.run(self._outputs, {"images": np.ascontiguousarray(x.numpy())})
        tensors = [torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in arrays]
        return tensors[0], tensors[1], tensors[2] if len(tensors) > 2 else None


def _build_ort(net: _InferenceNet, channels: int, image_size: int, threads: int) -> _OrtRunner:
    ort: Any = importlib.import_module("onnxruntime")  # optional dependency: absent means "not this one"
    names = ["logits", "embedding"] + (["trunk"] if net.trunk is not None else [])
    example = torch.zeros(_PROBE_BATCH, channels, image_size, image_size)
    buffer = io.BytesIO()
    # The TorchScript-based exporter (dynamo=False): at these model sizes it exports in 0.05-0.3 s and
    # leaves ~140 MB less resident than the dynamo exporter (1-7 s), and needs only `onnx`, not
    # `onnxscript`. Upstream has deprecated it; when a torch upgrade removes it, this build fails, the
    # predictor falls back (logged) and tests/unit/test_infer.py says so: switch to dynamo=True then.
    torch.onnx.export(
        net,
        (example,),
        cast(Any, buffer),  # typed for paths; the TorchScript exporter writes file objects as well
        dynamo=False,
        input_names=["images"],
        output_names=names,
        dynamic_axes={name: {0: "batch"} for name in ["images", *names]},
        opset_version=_ONNX_OPSET,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # No busy-waiting between calls: the cores are shared with torch (MC passes) and other processes;
    # side by side it was no slower than spinning on this 2-core machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    return _OrtRunner(session, names)


def _softmax64(logits: torch.Tensor) -> FloatArray:
    z = logits.detach().to(torch.float64).numpy()
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float64)


def _check_positive_int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return value


class Predictor:
    """Batched inference for one trained model of a registry architecture (see the module docstring).

    ``predict`` takes an (N, channels, image_size, image_size) float tensor, normalised as in training,
    and returns a ``PredictionOutput``. ``num_threads`` sets ONNX Runtime's thread count (default:
    ``torch.get_num_threads()``); torch's own thread count is the process's and is left alone.
    """

    def __init__(
        self,
        model: nn.Module,
        architecture: str,
        *,
        class_names: Sequence[str],
        image_size: int,
        channels: int,
        mc_passes: int = 0,
        backend: Backend = "auto",
        num_threads: int | None = None,
    ) -> None:
        spec = get_spec(architecture)
        names = tuple(str(c) for c in class_names)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"class_names must name at least two distinct classes, got {names}")
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        self.image_size = _check_positive_int(image_size, "image_size", spec.min_input_size)
        self.mc_passes = _check_positive_int(mc_passes, "mc_passes", 0)
        threads = _check_positive_int(
            torch.get_num_threads() if num_threads is None else num_threads, "num_threads", 1
        )
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of: auto, {', '.join(BACKENDS)}")
        self.architecture = spec.name
        self.class_names = names
        self.channels = channels

        snapshot = copy.deepcopy(model).cpu().float().eval().requires_grad_(False)
        self._mc: _McSampler | None = None
        split: int | None = None
        if self.mc_passes > 0:
            self._mc, split = _plan_mc(snapshot, spec.classifier)
            if self._mc is None:
                logger.info("%s has no dropout: MC passes skipped, mc_probs will be None", spec.name)
        net = _InferenceNet(snapshot, snapshot.get_submodule(spec.classifier), split).eval()

        probe = torch.randn(
            _PROBE_BATCH, channels, image_size, image_size, generator=torch.Generator().manual_seed(0)
        )
        eager = _TorchRunner(net, channels_last=False)
        reference = eager(probe)
        if reference[0].shape != (_PROBE_BATCH, len(names)):
            raise ValueError(
                f"the model gives {reference[0].shape[1]} outputs but {len(names)} class names were "
                f"given ({', '.join(names)}); pass the class names the model was trained with"
            )
        self.embedding_dim = int(reference[1].shape[1])

        order: tuple[ConcreteBackend, ...] = (
            AUTO_BACKENDS.get(spec.name, ()) if backend == "auto" else (backend,)
        )
        self._runner: _TorchRunner | _OrtRunner = eager
        self.backend: ConcreteBackend = "eager"
        for candidate in order:
            if candidate == "eager":
                break
            try:
                runner = self._build(candidate, net, threads)
                _verify(runner(probe), reference)
            except Exception as exc:  # exporters and runtimes fail in many types; all mean "not this one"
                logger.warning(
                    "%s: backend %s unavailable (%s: %s); trying the next one",
                    spec.name,
                    candidate,
                    type(exc).__name__,
                    str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "",
                )
                continue
            self._runner, self.backend = runner, candidate
            break
        if self.backend == "eager" and order and order[0] != "eager":
            # A failed channels_last attempt may have converted the weights; eager reads them as well.
            logger.warning("%s: falling back to eager inference", spec.name)
        logger.info(
            "%s: predictor ready (backend %s, %d MC passes, %d classes)",
            spec.name,
            self.backend,
            self.mc_passes if self._mc else 0,
            len(names),
        )

    def _build(self, backend: ConcreteBackend, net: _InferenceNet, threads: int) -> _TorchRunner | _OrtRunner:
        if backend == "onnxruntime":
            return _build_ort(net, self.channels, self.image_size, threads)
        net.to(memory_format=torch.channels_last)
        return _TorchRunner(net, channels_last=True)

    @property
    def has_mc(self) -> bool:
        """Whether ``predict`` returns MC-dropout passes (``mc_passes > 0`` and the model has dropout)."""
        return self._mc is not None

    def predict(self, batch: torch.Tensor) -> PredictionOutput:
        """Probabilities, embeddings and (if enabled) MC passes for an (N, C, H, W) normalised batch."""
        x = self._check_batch(batch)
        n, n_classes = int(x.shape[0]), len(self.class_names)
        if n == 0:
            return PredictionOutput(
                probs=np.zeros((0, n_classes)),
                embeddings=np.zeros((0, self.embedding_dim), dtype=np.float32),
                mc_probs=np.zeros((self.mc_passes, 0, n_classes)) if self._mc else None,
                class_names=self.class_names,
            )
        logits, embedding, trunk = self._runner(x)
        mc_probs: FloatArray | None = None
        if self._mc is not None:
            with torch.inference_mode():
                mc_probs = _softmax64(self._mc.sample(x, embedding, trunk, self.mc_passes))
        return PredictionOutput(
            probs=_softmax64(logits),
            embeddings=np.ascontiguousarray(embedding.numpy(), dtype=np.float32),
            mc_probs=mc_probs,
            class_names=self.class_names,
        )

    def _check_batch(self, batch: torch.Tensor) -> torch.Tensor:
        want = (self.channels, self.image_size, self.image_size)
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or tuple(batch.shape[1:]) != want:
            shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise ValueError(
                f"expected an (N, {want[0]}, {want[1]}, {want[2]}) image tensor, got {shape}; "
                "prepare images with the model's input spec"
            )
        if not batch.is_floating_point():
            raise ValueError(f"expected a normalised float tensor, got dtype {batch.dtype}")
        return batch.detach().to(device="cpu", dtype=torch.float32)


def _verify(got: _NetOutput, reference: _NetOutput) -> None:
    diff = float(np.abs(_softmax64(got[0]) - _softmax64(reference[0])).max())
    if not diff <= PROBE_TOLERANCE:
        raise RuntimeError(f"probabilities differ from eager by {diff:.3g} (> {PROBE_TOLERANCE})")
    if not torch.allclose(got[1], reference[1], rtol=1e-3, atol=1e-4):
        raise RuntimeError("embeddings differ from eager")


# --- binary + multiclass --------------------------------------------------------------------------


def _types_given_defect(
    multiclass: PredictionOutput, defect_classes: tuple[str, ...], n: int
) -> tuple[FloatArray, FloatArray | None]:
    """The multiclass probabilities (and passes) with columns in ``defect_classes`` order."""
    if len(multiclass) != n:
        raise ValueError(f"binary and multiclass outputs cover {n} and {len(multiclass)} images")
    if sorted(multiclass.class_names) != sorted(defect_classes):
        raise ValueError(
            f"the multiclass model's classes {multiclass.class_names} are not the defect classes "
            f"{defect_classes}; use the multiclass champion trained on these defect types"
        )
    order = [multiclass.class_names.index(c) for c in defect_classes]
    mc = multiclass.mc_probs[..., order] if multiclass.mc_probs is not None else None
    return multiclass.probs[:, order], mc


def combine_predictions(
    binary: PredictionOutput,
    multiclass: PredictionOutput | None,
    *,
    label_space: LabelSpace,
    defect_threshold: float = 0.5,
) -> CombinedPrediction:
    """Combine into one distribution over ``label_space.classes`` (the good class, then the defect types).

    p(ok) = 1 - p(defect) and p(k) = p(defect) * p(k | defect).

    The call (``predicted``/``labels``) follows the binary model's decision, not the argmax of the
    combined distribution: an image is defective when p(defect) >= ``defect_threshold`` (the binary
    version's threshold tuned on validation, 0.5 untuned), and then of its most likely type. The argmax
    would call p(defect) = 0.7 spread over five types "ok". ``confidence`` is the called class's
    probability.

    ``binary`` has two columns, the good class then "defective": p(defect) is column 1. ``multiclass``
    gives p(k | defect) over the defect types (matched by name, any column order).

    Without a multiclass model (no champion yet) p(defect) is spread evenly, p(k) = p(defect) / K: with
    nothing known about the type every type is equally likely, p(ok) stays exact and the scores still
    see the whole label space (a likely defect of unknown type is rightly uncertain).

    MC passes: both with passes (equal T) are combined pass by pass; when only one side has passes, the
    other side's deterministic probabilities are used with each of them. ``bald`` is present only then.
    """
    if not (math.isfinite(defect_threshold) and 0.0 <= defect_threshold <= 1.0):
        raise ValueError(f"defect_threshold must lie in [0, 1], got {defect_threshold}")
    good_class, defects = label_space.good_class, label_space.defect_classes
    if binary.probs.ndim != 2 or binary.probs.shape[1] != 2:
        raise ValueError(
            f"binary.probs must be (N, 2) with columns ({good_class}, defective), got {binary.probs.shape}"
        )
    if binary.class_names[1] == good_class:
        raise ValueError(f"binary column 1 must be the defective class, got {binary.class_names}")
    n = len(binary)
    p_defect = binary.probs[:, 1]
    mc_defect = binary.mc_probs[..., 1] if binary.mc_probs is not None else None
    types: FloatArray
    if multiclass is None:
        types = np.full((n, len(defects)), 1.0 / len(defects), dtype=np.float64)
        mc_types: FloatArray | None = None
    else:
        types, mc_types = _types_given_defect(multiclass, defects, n)

    probs = combine_binary_multiclass(p_defect, types)
    mc_probs: FloatArray | None = None
    if mc_defect is not None and mc_types is not None:
        if mc_defect.shape[0] != mc_types.shape[0]:
            raise ValueError(
                f"binary and multiclass have {mc_defect.shape[0]} and {mc_types.shape[0]} MC passes; "
                "build both predictors with the same mc_passes"
            )
        mc_probs = combine_binary_multiclass(mc_defect, mc_types)
    elif mc_defect is not None:
        mc_probs = combine_binary_multiclass(mc_defect, types)  # (T, N) broadcasts against (N, K)
    elif mc_types is not None:
        mc_probs = combine_binary_multiclass(p_defect, mc_types)

    names = label_space.classes
    predicted = np.where(p_defect >= defect_threshold, 1 + types.argmax(axis=1), 0).astype(np.intp)
    uncertainty: dict[str, FloatArray] = {
        "entropy": entropy(probs),
        "margin": margin(probs),
        "least_confidence": least_confidence(probs),
    }
    if mc_probs is not None:
        uncertainty["bald"] = bald(mc_probs)
    return CombinedPrediction(
        class_names=names,
        probs=probs,
        mc_probs=mc_probs,
        predicted=predicted,
        labels=tuple(names[i] for i in predicted),
        confidence=np.asarray(probs[np.arange(n), predicted], dtype=np.float64),
        uncertainty=uncertainty,
    )
