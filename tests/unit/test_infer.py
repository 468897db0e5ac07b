"""Inference: shapes and dtypes per architecture, optimised backends equal to eager, MC-dropout passes
(same samples as naive full passes), the caller's model left alone, and the binary + multiclass
combination. Models are built with pretrained=False; nothing downloads."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from models.infer import (
    AUTO_BACKENDS,
    BACKENDS,
    PredictionOutput,
    Predictor,
    combine_predictions,
    iter_batches,
)
from models.labels import LabelSpace
from models.registry import ARCHITECTURES, create_model, embedding_dim, enable_mc_dropout

# models.infer uses torch's TorchScript-based ONNX exporter on purpose (see _build_ort); its
# deprecation notice is known.
pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
]

ARCH_NAMES = sorted(ARCHITECTURES)
SIZE = 48
CLASSES = ("ok", "hole", "raw_edge")
DEFECTS = ("hole", "seam_puckering", "uncut_thread")
LABELS = LabelSpace("ok", DEFECTS)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # The models here are tiny; with shared, busy cores two OpenMP threads spend more time waiting for
    # each other than computing (10x slower). One thread keeps the module fast and its timing steady.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(arch: str, channels: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(arch, num_classes=len(CLASSES), in_chans=channels)


def _images(channels: int, n: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _predictor(model: nn.Module, arch: str, channels: int = 3, **kwargs: Any) -> Predictor:
    return Predictor(model, arch, class_names=CLASSES, image_size=SIZE, channels=channels, **kwargs)


def _eager_probs(model: nn.Module, x: torch.Tensor) -> np.ndarray[Any, np.dtype[np.float64]]:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(x).double(), dim=1).numpy()
    model.train(was_training)
    return probs


@pytest.fixture(scope="module")
def auto_predictors() -> dict[str, tuple[nn.Module, Predictor]]:
    """One model per architecture and its auto-backend predictor with MC passes, built once."""
    out = {}
    for arch in ARCH_NAMES:
        model = _model(arch)
        out[arch] = (model, _predictor(model, arch, mc_passes=4))
    return out


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_outputs_have_documented_shapes_and_dtypes(
    arch: str, auto_predictors: dict[str, tuple[nn.Module, Predictor]]
) -> None:
    model, predictor = auto_predictors[arch]
    out = predictor.predict(_images(3))
    assert out.probs.shape == (5, len(CLASSES))
    assert out.probs.dtype == np.float64
    np.testing.assert_allclose(out.probs.sum(axis=1), 1.0, atol=1e-12)
    assert out.embeddings.shape == (5, embedding_dim(model)) == (5, predictor.embedding_dim)
    assert out.embeddings.dtype == np.float32
    assert np.isfinite(out.embeddings).all()
    assert out.class_names == CLASSES
    assert len(out) == 5
    if ARCHITECTURES[arch].has_dropout:
        assert out.mc_probs is not None
        assert out.mc_probs.shape == (4, 5, len(CLASSES))
        assert out.mc_probs.dtype == np.float64
        np.testing.assert_allclose(out.mc_probs.sum(axis=2), 1.0, atol=1e-12)
    else:
        assert out.mc_probs is None  # documented: no dropout, no MC passes (baseline_cnn)
        assert not predictor.has_mc


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_grayscale_single_image_and_empty_batches(arch: str) -> None:
    predictor = _predictor(_model(arch, channels=1), arch, channels=1, backend="eager", mc_passes=2)
    one = predictor.predict(_images(1, n=1))
    assert one.probs.shape == (1, len(CLASSES))
    empty = predictor.predict(_images(1, n=0))
    assert empty.probs.shape == (0, len(CLASSES))
    assert empty.embeddings.shape == (0, predictor.embedding_dim)
    if predictor.has_mc:
        assert empty.mc_probs is not None
        assert empty.mc_probs.shape == (2, 0, len(CLASSES))


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_auto_backend_matches_eager(
    arch: str, auto_predictors: dict[str, tuple[nn.Module, Predictor]]
) -> None:
    model, predictor = auto_predictors[arch]
    assert predictor.backend in BACKENDS
    if AUTO_BACKENDS.get(arch):
        # The optimised path must have built here (onnxruntime is installed in the dev environment).
        assert predictor.backend == AUTO_BACKENDS[arch][0]
    x = _images(3, n=7, seed=3)
    np.testing.assert_allclose(predictor.predict(x).probs, _eager_probs(model, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["improved_cnn", "resnet18"])
def test_channels_last_backend_matches_eager(arch: str) -> None:
    model = _model(arch, channels=1)
    predictor = _predictor(model, arch, channels=1, backend="channels_last")
    assert predictor.backend == "channels_last"
    x = _images(1)
    np.testing.assert_allclose(predictor.predict(x).probs, _eager_probs(model, x), atol=1e-5, rtol=0)


def test_embeddings_are_the_penultimate_features(
    auto_predictors: dict[str, tuple[nn.Module, Predictor]],
) -> None:
    model, predictor = auto_predictors["resnet18"]
    x = _images(3)
    with torch.no_grad():
        model.eval()
        expected = model.forward_head(model.forward_features(x), pre_logits=True).numpy()  # type: ignore[operator]
    np.testing.assert_allclose(predictor.predict(x).embeddings, expected, rtol=1e-4, atol=1e-4)


def _assert_mc_passes_are_naive_passes(
    model: nn.Module, predictor: Predictor, x: torch.Tensor, *, passes: int, seed: int
) -> np.ndarray:
    """The predictor's MC-dropout probabilities of ``x`` equal ``passes`` naive full passes of ``model``
    with its dropout on, drawn from the same ``seed``; returns them."""
    naive = copy.deepcopy(model)
    assert enable_mc_dropout(naive) > 0
    torch.manual_seed(seed)
    got = predictor.predict(x).mc_probs
    torch.manual_seed(seed)
    with torch.no_grad():
        expected = np.stack([torch.softmax(naive(x).double(), dim=1).numpy() for _ in range(passes)])
    assert got is not None
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    return got


@pytest.mark.parametrize("arch", ["improved_cnn", "efficientnet_b0", "resnet18"])
def test_mc_passes_are_the_same_samples_as_naive_full_passes(
    arch: str, auto_predictors: dict[str, tuple[nn.Module, Predictor]]
) -> None:
    # The predictor runs only the layers from the first dropout on T times; dropout draws from torch's
    # RNG in the same order as a full pass, so with the same seed the passes are identical.
    model, predictor = auto_predictors[arch]
    got = _assert_mc_passes_are_naive_passes(model, predictor, _images(3, n=6), passes=4, seed=123)
    # ... and the passes differ from one another (dropout samples).
    assert np.abs(got - got[0]).max() > 1e-6


def test_improved_cnn_mc_passes_differ_per_call() -> None:
    model = _model("improved_cnn", channels=1)
    predictor = _predictor(model, "improved_cnn", channels=1, backend="eager", mc_passes=3)
    x = _images(1)
    first, second = predictor.predict(x), predictor.predict(x)
    assert first.mc_probs is not None
    assert second.mc_probs is not None
    assert not np.allclose(first.mc_probs, second.mc_probs)
    np.testing.assert_array_equal(first.probs, second.probs)  # the deterministic pass is deterministic


def test_baseline_cnn_has_no_mc_passes(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="models.infer"):
        predictor = _predictor(_model("baseline_cnn"), "baseline_cnn", backend="eager", mc_passes=5)
    assert not predictor.has_mc
    assert predictor.predict(_images(3)).mc_probs is None
    assert "no dropout" in caplog.text


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_leaves_the_callers_model_alone(backend: str) -> None:
    model = _model("improved_cnn")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    predictor = _predictor(model, "improved_cnn", backend=backend, mc_passes=2)
    predictor.predict(_images(3))
    assert model.training
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.is_contiguous() for p in model.parameters())  # no channels_last conversion leaked
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    # Training the caller's model afterwards does not change the predictor (it holds a snapshot).
    x = _images(3)
    snapshot = predictor.predict(x).probs
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    np.testing.assert_array_equal(predictor.predict(x).probs, snapshot)


def test_failed_backend_falls_back_to_eager(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr("models.infer._build_ort", broken)
    model = _model("baseline_cnn")
    with caplog.at_level(logging.WARNING, logger="models.infer"):
        predictor = _predictor(model, "baseline_cnn", backend="onnxruntime")
    assert predictor.backend == "eager"
    assert "exporter exploded" in caplog.text
    x = _images(3)
    np.testing.assert_allclose(predictor.predict(x).probs, _eager_probs(model, x), atol=1e-12)


def test_bad_inputs_are_rejected_with_a_message() -> None:
    predictor = _predictor(_model("baseline_cnn"), "baseline_cnn", backend="eager")
    with pytest.raises(ValueError, match=r"\(N, 3, 48, 48\)"):
        predictor.predict(torch.zeros(2, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match="float"):
        predictor.predict(torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8))
    with pytest.raises(ValueError, match="class names"):
        Predictor(_model("baseline_cnn"), "baseline_cnn", class_names=["a", "b"], image_size=SIZE, channels=3)
    with pytest.raises(ValueError, match="backend"):
        _predictor(_model("baseline_cnn"), "baseline_cnn", backend="tensorrt")
    with pytest.raises(ValueError, match="mc_passes"):
        _predictor(_model("baseline_cnn"), "baseline_cnn", mc_passes=-1)


def test_iter_batches() -> None:
    assert list(iter_batches(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(iter_batches([], 4)) == []
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_batches([1], 0))


# --- combine_predictions --------------------------------------------------------------------------


def _output(probs: Any, names: tuple[str, ...], mc: Any = None) -> PredictionOutput:
    p = np.asarray(probs, dtype=np.float64)
    return PredictionOutput(
        probs=p,
        embeddings=np.zeros((p.shape[0], 4), dtype=np.float32),
        mc_probs=None if mc is None else np.asarray(mc, dtype=np.float64),
        class_names=names,
    )


BINARY = ("ok", "defective")


def test_combine_hand_computed_example() -> None:
    binary = _output([[0.2, 0.8]], BINARY)
    multi = _output([[0.5, 0.25, 0.25]], DEFECTS)
    combined = combine_predictions(binary, multi, label_space=LABELS)
    assert combined.class_names == ("ok", *DEFECTS)
    np.testing.assert_allclose(combined.probs, [[0.2, 0.4, 0.2, 0.2]], atol=1e-12)
    assert combined.labels == ("hole",)
    assert combined.predicted.tolist() == [1]
    np.testing.assert_allclose(combined.confidence, [0.4])
    assert set(combined.uncertainty) == {"entropy", "margin", "least_confidence"}
    np.testing.assert_allclose(combined.uncertainty["least_confidence"], [0.6])
    np.testing.assert_allclose(combined.uncertainty["margin"], [0.8])  # 1 - (0.4 - 0.2)
    expected_entropy = -(0.2 * np.log(0.2) * 3 + 0.4 * np.log(0.4))
    np.testing.assert_allclose(combined.uncertainty["entropy"], [expected_entropy])
    assert combined.mc_probs is None


def test_the_call_follows_the_binary_decision_at_its_threshold() -> None:
    # p(defect) 0.6 over three types: the combined argmax would say "ok" (0.4 > 0.3), but the binary
    # model calls it defective, so the call is its most likely type.
    binary = _output([[0.4, 0.6], [0.75, 0.25], [0.9, 0.1]], BINARY)
    multi = _output([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3]], DEFECTS)
    at_half = combine_predictions(binary, multi, label_space=LABELS)
    assert at_half.labels == ("hole", "ok", "ok")
    np.testing.assert_allclose(at_half.confidence, [0.3, 0.75, 0.9])
    # A version tuned to a threshold of 0.2 (a rare-defect line) calls the second image defective too.
    tuned = combine_predictions(binary, multi, label_space=LABELS, defect_threshold=0.2)
    assert tuned.labels == ("hole", DEFECTS[2], "ok")
    np.testing.assert_allclose(tuned.confidence, [0.3, 0.25 * 0.6, 0.9])
    np.testing.assert_allclose(tuned.probs, at_half.probs)  # the distribution itself does not move
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="defect_threshold"):
            combine_predictions(binary, multi, label_space=LABELS, defect_threshold=bad)


def test_combine_matches_multiclass_columns_by_name() -> None:
    binary = _output([[0.2, 0.8]], BINARY)
    multi = _output([[0.25, 0.5, 0.25]], ("uncut_thread", "hole", "seam_puckering"))
    combined = combine_predictions(binary, multi, label_space=LABELS)
    np.testing.assert_allclose(combined.probs, [[0.2, 0.4, 0.2, 0.2]], atol=1e-12)


def test_combine_without_a_multiclass_model_spreads_p_defect_evenly() -> None:
    binary = _output([[0.7, 0.3], [0.1, 0.9]], BINARY)
    combined = combine_predictions(binary, None, label_space=LABELS)
    np.testing.assert_allclose(combined.probs, [[0.7, 0.1, 0.1, 0.1], [0.1, 0.3, 0.3, 0.3]], atol=1e-12)
    np.testing.assert_allclose(combined.probs.sum(axis=1), 1.0)
    assert combined.labels[0] == "ok"


def test_combine_mc_passes() -> None:
    rng = np.random.default_rng(0)
    t, n, k = 5, 4, len(DEFECTS)
    b_mc = rng.dirichlet([1, 1], size=(t, n))
    m_mc = rng.dirichlet([1] * k, size=(t, n))
    binary = _output(b_mc.mean(0), BINARY, b_mc)
    multi = _output(m_mc.mean(0), DEFECTS, m_mc)

    both = combine_predictions(binary, multi, label_space=LABELS)
    assert both.mc_probs is not None
    assert both.mc_probs.shape == (t, n, 1 + k)
    np.testing.assert_allclose(both.mc_probs[:, :, 0], 1 - b_mc[:, :, 1])
    np.testing.assert_allclose(both.mc_probs[:, :, 1:], b_mc[:, :, 1:2] * m_mc)
    assert set(both.uncertainty) == {"entropy", "margin", "least_confidence", "bald"}
    for scores in both.uncertainty.values():
        assert scores.shape == (n,)
        assert np.isfinite(scores).all()
    assert (both.uncertainty["bald"] >= 0).all()

    binary_only = combine_predictions(binary, _output(m_mc.mean(0), DEFECTS), label_space=LABELS)
    assert binary_only.mc_probs is not None
    np.testing.assert_allclose(binary_only.mc_probs[:, :, 1:], b_mc[:, :, 1:2] * m_mc.mean(0)[None])

    no_multiclass = combine_predictions(binary, None, label_space=LABELS)
    assert no_multiclass.mc_probs is not None
    assert "bald" in no_multiclass.uncertainty

    multi_only = combine_predictions(_output(b_mc.mean(0), BINARY), multi, label_space=LABELS)
    assert multi_only.mc_probs is not None
    assert multi_only.mc_probs.shape == (t, n, 1 + k)

    with pytest.raises(ValueError, match="MC passes"):
        combine_predictions(binary, _output(m_mc.mean(0), DEFECTS, m_mc[:3]), label_space=LABELS)


def test_combine_rejects_mismatched_inputs() -> None:
    binary = _output([[0.2, 0.8]], BINARY)
    with pytest.raises(ValueError, match="defect classes"):
        combine_predictions(
            binary, _output([[0.5, 0.5]], ("hole", "other")), label_space=LabelSpace("ok", ("hole", "x"))
        )
    with pytest.raises(ValueError, match="cover"):
        combine_predictions(binary, _output([[1.0, 0.0, 0.0]] * 2, DEFECTS), label_space=LABELS)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        combine_predictions(_output([[0.2, 0.3, 0.5]], ("a", "b", "c")), None, label_space=LABELS)
    with pytest.raises(ValueError, match="must not be one of defect_classes"):
        combine_predictions(binary, None, label_space=LabelSpace("ok", ("ok", "hole")))


def test_end_to_end_predictors_combine() -> None:
    torch.manual_seed(0)
    binary_model = create_model("resnet18", num_classes=2, in_chans=1)
    multi_model = create_model("improved_cnn", num_classes=len(DEFECTS), in_chans=1)
    kwargs: dict[str, Any] = {"image_size": SIZE, "channels": 1, "mc_passes": 3, "backend": "eager"}
    binary = Predictor(binary_model, "resnet18", class_names=BINARY, **kwargs)
    multi = Predictor(multi_model, "improved_cnn", class_names=DEFECTS, **kwargs)
    x = _images(1, n=4)
    combined = combine_predictions(binary.predict(x), multi.predict(x), label_space=LABELS)
    assert combined.probs.shape == (4, 4)
    assert combined.mc_probs is not None
    np.testing.assert_allclose(combined.probs.sum(axis=1), 1.0, atol=1e-12)
    assert all(np.isfinite(v).all() for v in combined.uncertainty.values())


def test_mc_passes_through_the_whole_model_when_dropout_sits_in_the_backbone() -> None:
    # A model whose dropout is neither in the classifier nor in a CNN's feature sequence: the predictor
    # then runs T full passes; still the same samples as the naive way.
    model = _model("resnet18", channels=1)
    layer4 = model.get_submodule("layer4")
    assert isinstance(layer4, nn.Sequential)
    layer4.append(nn.Dropout2d(0.5))
    predictor = _predictor(model, "resnet18", channels=1, backend="eager", mc_passes=3)
    _assert_mc_passes_are_naive_passes(model, predictor, _images(1, n=3), passes=3, seed=5)
