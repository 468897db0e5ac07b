"""Evaluation metrics, calibration, paired statistics and the champion/challenger promotion rule.

Pure numpy and the standard library (no torch, no scipy): the promotion decision is a deterministic function
of the predictions on the frozen evaluation set, a policy and a seed, so it can be re-run and audited.
Macro-F1 follows scikit-learn's ``f1_score(average="macro", zero_division=0)``: the mean F1 over the classes
that occur in the true or the predicted labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from models.arrays import FloatArray

__all__ = [
    "THRESHOLD_KEY",
    "BootstrapInterval",
    "Decision",
    "DegenerateThresholdError",
    "Evaluation",
    "McNemarResult",
    "PromotionPolicy",
    "ThresholdChoice",
    "apply_temperature",
    "bootstrap_macro_f1_difference",
    "classification_report",
    "confusion_matrix",
    "decide_promotion",
    "expected_calibration_error",
    "fit_temperature",
    "macro_f1",
    "mcnemar_exact",
    "positive_f1",
    "softmax",
    "stored_threshold",
    "threshold_flag",
    "tune_threshold",
]

IntArray = NDArray[np.int64]

ROW_SUM_TOLERANCE = 1e-3
# Bootstrap resamples are counted in blocks of about this many (resample, item) pairs to bound memory.
_BOOTSTRAP_BLOCK_ELEMENTS = 2_000_000


# --------------------------------------------------------------------------------------------- validation
def _as_labels(values: ArrayLike, name: str, n_classes: int | None = None) -> IntArray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    labels = array.astype(np.int64)
    if n_classes is not None and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"{name} holds a class index outside [0, {n_classes})")
    return labels


def _same_length(**arrays: NDArray[Any]) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"paired inputs must have the same length, got {lengths}")
    return next(iter(lengths.values()))


def _as_probabilities(values: ArrayLike, name: str = "probs") -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"{name} must be an (N, C) array with C >= 2, got shape {array.shape}")
    if not np.all(np.isfinite(array)) or (array.size and array.min() < 0.0):
        raise ValueError(f"{name} must be finite and non-negative; pass probabilities, not logits")
    if np.any(np.abs(array.sum(axis=1) - 1.0) > ROW_SUM_TOLERANCE):
        raise ValueError(f"{name} rows must sum to 1 (within {ROW_SUM_TOLERANCE}); pass softmax outputs")
    return array


def _as_logits(values: ArrayLike) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"logits must be an (N, C) array with C >= 2, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("logits contain NaN or infinite values")
    return array


# ------------------------------------------------------------------------------------------------ metrics
def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> IntArray:
    """(n_classes, n_classes) counts; rows are true classes, columns predicted classes."""
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    t = _as_labels(y_true, "y_true", n_classes)
    p = _as_labels(y_pred, "y_pred", n_classes)
    _same_length(y_true=t, y_pred=p)
    counts = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)


def _macro_f1_from_confusions(confusions: IntArray) -> FloatArray:
    """Macro-F1 of a stack (..., C, C) of confusion matrices, scikit-learn's semantics (see module doc)."""
    tp = np.diagonal(confusions, axis1=-2, axis2=-1)
    true_count = confusions.sum(axis=-1)
    pred_count = confusions.sum(axis=-2)
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (#true + #predicted); 0 where the class never occurs.
    denominator = true_count + pred_count
    f1 = np.divide(2.0 * tp, denominator, out=np.zeros(tp.shape), where=denominator > 0)
    present = denominator > 0
    n_present = present.sum(axis=-1)
    return np.asarray(
        np.divide(f1.sum(axis=-1), n_present, out=np.zeros(n_present.shape), where=n_present > 0),
        dtype=np.float64,
    )


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``."""
    return float(_macro_f1_from_confusions(confusion_matrix(y_true, y_pred, n_classes)))


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one model on one evaluation set; per-class tuples follow ``class_names``."""

    class_names: tuple[str, ...]
    n: int
    accuracy: float
    macro_f1: float
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]
    confusion: tuple[tuple[int, ...], ...]
    ece: float | None = None
    """Expected calibration error, when probabilities were given."""

    def recall_of(self, class_name: str) -> float:
        return self.recall[self._index(class_name)]

    def _index(self, class_name: str) -> int:
        try:
            return self.class_names.index(class_name)
        except ValueError:
            raise KeyError(f"unknown class {class_name!r}; classes: {', '.join(self.class_names)}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain floats, ints, lists and dicts."""
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "ece": self.ece,
            "per_class": {
                name: {
                    "precision": self.precision[i],
                    "recall": self.recall[i],
                    "f1": self.f1[i],
                    "support": self.support[i],
                }
                for i, name in enumerate(self.class_names)
            },
            "class_names": list(self.class_names),
            "confusion_matrix": [list(row) for row in self.confusion],
        }


def classification_report(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    class_names: Sequence[str],
    *,
    probs: ArrayLike | None = None,
    n_bins: int = 15,
) -> Evaluation:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Undefined precision (class never predicted) or recall (class absent) is 0, as scikit-learn's
    ``zero_division=0``. With ``probs`` (N, C) the expected calibration error is included.
    """
    names = tuple(class_names)
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"class_names must be non-empty and unique, got {names}")
    cm = confusion_matrix(y_true, y_pred, len(names))
    n = int(cm.sum())
    if n == 0:
        raise ValueError("cannot evaluate on an empty set")
    tp = np.diagonal(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2.0 * tp, support + predicted, out=np.zeros_like(tp), where=(support + predicted) > 0)
    ece = None
    if probs is not None:
        ece = expected_calibration_error(probs, y_true, n_bins=n_bins)
    return Evaluation(
        class_names=names,
        n=n,
        accuracy=float(tp.sum() / n),
        macro_f1=float(_macro_f1_from_confusions(cm)),
        precision=tuple(float(v) for v in precision),
        recall=tuple(float(v) for v in recall),
        f1=tuple(float(v) for v in f1),
        support=tuple(int(v) for v in support),
        confusion=tuple(tuple(int(v) for v in row) for row in cm),
        ece=ece,
    )


def expected_calibration_error(probs: ArrayLike, y_true: ArrayLike, n_bins: int = 15) -> float:
    """ECE: sum over equal-width confidence bins of ``|bin| / N * |accuracy(bin) - mean confidence(bin)|``.

    Confidence is the top-class probability; bins are ``(i/n_bins, (i+1)/n_bins]`` (0 falls in the first).
    In [0, 1]; 0 means perfectly calibrated.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p = _as_probabilities(probs)
    y = _as_labels(y_true, "y_true", p.shape[1])
    n = _same_length(probs=p, y_true=y)
    if n == 0:
        raise ValueError("cannot compute a calibration error on an empty set")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    bins = np.searchsorted(inner_edges, confidence, side="left")
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    gap = np.abs(np.bincount(bins, correct, n_bins) - np.bincount(bins, confidence, n_bins))
    # Sum of per-bin |sum(correct) - sum(confidence)| / N == sum of |bin|/N * |acc - conf|.
    return float(min(1.0, max(0.0, gap[count > 0].sum() / n)))


# -------------------------------------------------------------------------------------------- calibration
def softmax(logits: ArrayLike) -> FloatArray:
    """Row-wise softmax of (N, C) logits, stable for large magnitudes."""
    z = _as_logits(logits)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)


def apply_temperature(logits: ArrayLike, temperature: float) -> FloatArray:
    """Calibrated probabilities ``softmax(logits / T)``; T > 1 softens, T < 1 sharpens; argmax unchanged."""
    if not (math.isfinite(temperature) and temperature > 0.0):
        raise ValueError(f"temperature must be a finite positive number, got {temperature}")
    return softmax(_as_logits(logits) / temperature)


def _nll(z: FloatArray, y: IntArray, temperature: float) -> float:
    scaled = z / temperature
    top = scaled.max(axis=1)
    log_norm = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
    return float(np.mean(log_norm - scaled[np.arange(len(y)), y]))


def fit_temperature(
    logits: ArrayLike,
    y_true: ArrayLike,
    *,
    bounds: tuple[float, float] = (0.05, 20.0),
    tolerance: float = 1e-5,
) -> float:
    """Temperature T minimising the mean negative log-likelihood of ``softmax(logits / T)`` on held-out data.

    The NLL is convex in 1/T, hence unimodal in log T, so a golden-section search on log T within ``bounds``
    finds the minimum (to ``tolerance`` in log T). Perfectly separable logits push T to the lower bound.
    """
    low, high = bounds
    if not (0.0 < low < high and math.isfinite(high)):
        raise ValueError(f"bounds must satisfy 0 < low < high < inf, got {bounds}")
    z = _as_logits(logits)
    y = _as_labels(y_true, "y_true", z.shape[1])
    if _same_length(logits=z, y_true=y) == 0:
        raise ValueError("cannot fit a temperature on an empty set")
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = math.log(low), math.log(high)
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = _nll(z, y, math.exp(c)), _nll(z, y, math.exp(d))
    while b - a > tolerance:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = _nll(z, y, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = _nll(z, y, math.exp(d))
    return math.exp((a + b) / 2.0)


# ------------------------------------------------------------------------------------ decision threshold
DEFAULT_THRESHOLD = 0.5


class DegenerateThresholdError(ValueError):
    """No cut on the validation scores calls some images positive and others negative (every score tied,
    or no negative example): a tuned threshold would call every image one class, so none is returned."""


@dataclass(frozen=True)
class ThresholdChoice:
    """The cut on p(positive) that maximises the positive class's F1 on held-out data.

    A score ``p >= threshold`` is called positive. ``f1``/``precision``/``recall`` are at that cut,
    ``f1_at_default`` at 0.5, for comparison; ``support`` counts the positives it was tuned on (few
    positives make a noisy cut: read it with that number).

    The cut is never degenerate: it calls at least one of the ``n`` tuning images negative
    (``called_positive`` < ``n``). ``degenerate_refused`` says that calling every image positive would have
    scored a higher F1 (``f1_all_positive``, the F1 of that trivial rule) and was refused: the scores then
    separate the classes no better than "everything defective" does, which a report should say.
    """

    threshold: float
    f1: float
    precision: float
    recall: float
    f1_at_default: float
    support: int
    n: int = 0
    called_positive: int = 0
    f1_all_positive: float = 0.0
    degenerate_refused: bool = False

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            "threshold": self.threshold,
            "f1": self.f1,
            "precision": self.precision,
            "recall": self.recall,
            "f1_at_default": self.f1_at_default,
            "support": self.support,
            "n": self.n,
            "called_positive": self.called_positive,
            "f1_all_positive": self.f1_all_positive,
            "degenerate_refused": self.degenerate_refused,
        }


THRESHOLD_KEY = "decision_threshold"  # where a binary version's tuned threshold lives in its metrics


def stored_threshold(metrics: Mapping[str, Any] | None) -> float:
    """A binary model version's decision threshold from its registry metrics (0.5 when none was tuned,
    e.g. a version registered before thresholds were, or whose validation held no defect)."""
    value = (metrics or {}).get(THRESHOLD_KEY)
    if isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    return DEFAULT_THRESHOLD


def _f1_counts(tp: FloatArray, fp: FloatArray, fn: FloatArray) -> FloatArray:
    denominator = 2.0 * tp + fp + fn
    return np.divide(2.0 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def positive_f1(y_true: ArrayLike, p_positive: ArrayLike, threshold: float) -> float:
    """F1 of the positive class (label 1) when ``p >= threshold`` is called positive."""
    y = _as_labels(y_true, "y_true", 2)
    p = np.asarray(p_positive, dtype=np.float64)
    _same_length(y_true=y, p_positive=p)
    predicted = p >= threshold
    tp = float(np.sum(predicted & (y == 1)))
    fp = float(np.sum(predicted & (y == 0)))
    fn = float(np.sum(~predicted & (y == 1)))
    return float(_f1_counts(np.array([tp]), np.array([fp]), np.array([fn]))[0])


def tune_threshold(y_true: ArrayLike, p_positive: ArrayLike) -> ThresholdChoice:
    """The threshold that maximises the positive class's F1 on (``y_true``, ``p_positive``), among the cuts
    that call at least one image negative.

    Only the scores' order matters, so every cut between two distinct scores is tried; the threshold
    returned lies midway between the lowest score called positive and the next lower score, so a new image
    scored like a validation one gets the same call. Of equal F1s the cut nearest 0.5 wins.

    The cut below the lowest score, which calls every image positive, is never returned: with many
    defects in a small validation split its F1 is high (31 defects of 37: 0.91) for a model that learned
    nothing. When it would have won, the best other cut is returned with ``degenerate_refused=True``.
    Raises ``DegenerateThresholdError`` (a ``ValueError``) when no cut separates anything (every score
    tied, or no negative example) and ``ValueError`` without a positive or with a probability outside
    [0, 1]: nothing can be tuned then, keep 0.5.
    """
    y = _as_labels(y_true, "y_true", 2)
    p = np.asarray(p_positive, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_positive must be 1-D, got shape {p.shape}")
    _same_length(y_true=y, p_positive=p)
    if not np.all(np.isfinite(p)) or (p.size and (p.min() < 0.0 or p.max() > 1.0)):
        raise ValueError("p_positive must be finite probabilities in [0, 1]")
    positives = int(np.sum(y == 1))
    if positives == 0:
        raise ValueError("cannot tune a threshold without a positive example; keep 0.5")
    n = len(y)
    if positives == n:
        raise DegenerateThresholdError(
            "cannot tune a threshold without a negative example (it would call every image positive); "
            "keep 0.5"
        )
    order = np.argsort(-p, kind="stable")
    scores, hits = p[order], (y[order] == 1).astype(np.float64)
    # The cut after position i calls scores[: i + 1] positive; only cuts between distinct scores count.
    last_of_run = np.append(scores[1:] < scores[:-1], True)
    tp = np.cumsum(hits)[last_of_run]
    called = (np.nonzero(last_of_run)[0] + 1).astype(np.float64)
    f1 = _f1_counts(tp, called - tp, positives - tp)
    lowest = scores[last_of_run]
    below = lowest[1:]
    middle = (lowest[:-1] + below) / 2.0
    # Midway, unless the two scores are too close for a float between them (5e-324 and 0): then the score.
    cuts = np.where(middle > below, middle, lowest[:-1])
    # The last cut calls every image positive: it is the trivial rule, reported but never chosen.
    f1_all_positive = float(f1[-1])
    f1 = f1[:-1]
    if f1.size == 0:
        raise DegenerateThresholdError(
            f"all {n} scores are equal ({scores[0]:.6g}): no threshold calls some images positive and others "
            "negative; keep 0.5"
        )
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    i = int(best[np.argmin(np.abs(cuts[best] - DEFAULT_THRESHOLD))])
    threshold = float(cuts[i])
    return ThresholdChoice(
        threshold=threshold,
        f1=float(f1[i]),
        precision=float(tp[i] / called[i]),
        recall=float(tp[i] / positives),
        f1_at_default=positive_f1(y, p, DEFAULT_THRESHOLD),
        support=positives,
        n=n,
        called_positive=int(called[i]),
        f1_all_positive=f1_all_positive,
        degenerate_refused=bool(f1_all_positive > float(f1[i]) + 1e-12),
    )


def threshold_flag(metrics: Mapping[str, Any] | None) -> str | None:
    """A short warning about a binary version's decision threshold, for tables and reports, or None.

    Reads the ``threshold_tuning`` entry the trainer stores with a version: a refused tuning (no cut
    separated the validation images; the version calls at 0.5) or a refused degenerate cut (calling
    every validation image defective would have scored higher than any real cut).
    """
    tuning = (metrics or {}).get("threshold_tuning")
    if not isinstance(tuning, Mapping):
        return None
    refused = tuning.get("refused")
    if isinstance(refused, str) and refused:
        return f"not tuned: {refused}"
    if tuning.get("degenerate_refused") is True:
        f1 = tuning.get("f1")
        trivial = tuning.get("f1_all_positive")
        numbers = ""
        if isinstance(f1, int | float) and isinstance(trivial, int | float):
            numbers = f" (defect F1 {float(f1):.3f} vs {float(trivial):.3f} calling every image defective)"
        return f"no better than calling every image defective on validation{numbers}"
    return None


# ------------------------------------------------------------------------------------- paired statistics
@dataclass(frozen=True)
class McNemarResult:
    """Discordant pairs: ``b`` = only model A right, ``c`` = only model B right; two-sided exact p-value."""

    b: int
    c: int
    p_value: float


def _binomial_two_sided_p(b: int, c: int) -> float:
    """Exact two-sided p of ``min(b, c)`` under Binomial(b + c, 1/2), with integer arithmetic throughout."""
    n = b + c
    if n == 0:
        return 1.0
    tail = 0
    term = 1  # comb(n, 0); each next term is comb(n, i + 1) = comb(n, i) * (n - i) / (i + 1), exactly
    for i in range(min(b, c) + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    # Python's int / int is correctly rounded even for huge operands, so no overflow or precision loss.
    return min(1.0, float(2 * tail / 2**n))


def mcnemar_exact(correct_a: ArrayLike, correct_b: ArrayLike) -> McNemarResult:
    """Exact McNemar test on paired per-item correctness of models A and B on the same items.

    Only discordant items count: under H0 (equal error rates) each is equally likely to favour A or B, so
    ``min(b, c)`` is tested against Binomial(b + c, 1/2), two-sided. p = 1 when there are no discordant items.
    Symmetric: swapping A and B swaps b and c and leaves p unchanged.
    """
    a = np.asarray(correct_a)
    bb = np.asarray(correct_b)
    for name, arr in (("correct_a", a), ("correct_b", bb)):
        if arr.ndim != 1 or (arr.size and (arr.dtype.kind not in "biu" or not np.isin(arr, (0, 1)).all())):
            raise ValueError(f"{name} must be a 1-D array of booleans (or 0/1), one per evaluation item")
    _same_length(correct_a=a, correct_b=bb)
    a, bb = a.astype(bool), bb.astype(bool)
    b = int(np.sum(a & ~bb))
    c = int(np.sum(~a & bb))
    return McNemarResult(b=b, c=c, p_value=_binomial_two_sided_p(b, c))


class BootstrapInterval(NamedTuple):
    """Percentile interval of ``macro-F1(pred_b) - macro-F1(pred_a)`` and the observed difference."""

    low: float
    high: float
    observed: float


def bootstrap_macro_f1_difference(
    y_true: ArrayLike,
    pred_a: ArrayLike,
    pred_b: ArrayLike,
    n_classes: int,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapInterval:
    """Paired percentile bootstrap of the macro-F1 difference B - A (positive: B is better).

    Each resample draws the same items (with replacement) for both models, so the interval reflects the
    difference between the models rather than the difficulty of the items. Deterministic for a given seed.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    y = _as_labels(y_true, "y_true", n_classes)
    a = _as_labels(pred_a, "pred_a", n_classes)
    b = _as_labels(pred_b, "pred_b", n_classes)
    n = _same_length(y_true=y, pred_a=a, pred_b=b)
    if n == 0:
        raise ValueError("cannot bootstrap on an empty set")
    observed = macro_f1(y, b, n_classes) - macro_f1(y, a, n_classes)
    rng = np.random.default_rng(seed)
    cells = n_classes * n_classes
    code_a = y * n_classes + a
    code_b = y * n_classes + b
    block = max(1, _BOOTSTRAP_BLOCK_ELEMENTS // n)
    differences = np.empty(n_boot)
    for start in range(0, n_boot, block):
        size = min(block, n_boot - start)
        idx = rng.integers(0, n, size=(size, n))
        offset = (np.arange(size) * cells)[:, None]
        shape = (size, n_classes, n_classes)
        cm_a = np.bincount((offset + code_a[idx]).ravel(), minlength=size * cells).reshape(shape)
        cm_b = np.bincount((offset + code_b[idx]).ravel(), minlength=size * cells).reshape(shape)
        differences[start : start + size] = _macro_f1_from_confusions(cm_b) - _macro_f1_from_confusions(cm_a)
    low, high = np.quantile(differences, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapInterval(low=float(low), high=float(high), observed=float(observed))


# -------------------------------------------------------------------------------------------- promotion
@dataclass(frozen=True)
class PromotionPolicy:
    """When a challenger replaces the champion.

    - ``min_macro_f1_gain``: challenger macro-F1 minus champion macro-F1 must be at least this.
    - ``require_significance``: the lower end of the (1 - ``significance``) paired bootstrap interval of that
      gain must be above 0.
    - ``require_mcnemar``: additionally, the exact McNemar test on paired correctness must reject equal
      error rates at ``significance`` *in the challenger's favour* (it is right on more discordant items).
      Off by default: accuracy can stay flat while macro-F1 rises on a rare defect class.
    - ``recall_floors``: class name -> minimum recall of the challenger. Floors for classes this task does
      not have, or that have no support in the evaluation set, are skipped and listed in the numbers.
    - ``n_boot``, ``seed``: the bootstrap; the decision is deterministic for a given seed.
    """

    min_macro_f1_gain: float = 0.01
    significance: float = 0.05
    recall_floors: Mapping[str, float] = field(default_factory=dict)
    require_significance: bool = True
    require_mcnemar: bool = False
    n_boot: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if not math.isfinite(self.min_macro_f1_gain):
            raise ValueError(f"min_macro_f1_gain must be finite, got {self.min_macro_f1_gain}")
        if not 0.0 < self.significance < 1.0:
            raise ValueError(f"significance must be in (0, 1), got {self.significance}")
        for name, floor in self.recall_floors.items():
            if not 0.0 <= floor <= 1.0:
                raise ValueError(f"recall floor for {name!r} must be in [0, 1], got {floor}")
        if self.n_boot < 1:
            raise ValueError(f"n_boot must be >= 1, got {self.n_boot}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_macro_f1_gain": float(self.min_macro_f1_gain),
            "significance": float(self.significance),
            "recall_floors": {str(k): float(v) for k, v in self.recall_floors.items()},
            "require_significance": self.require_significance,
            "require_mcnemar": self.require_mcnemar,
            "n_boot": int(self.n_boot),
            "seed": int(self.seed),
        }


@dataclass(frozen=True)
class Decision:
    """Outcome of the champion/challenger rule. ``numbers`` is JSON-serialisable (for the promotions row)."""

    promote: bool
    reason: str
    numbers: dict[str, Any]


def _check_floors(
    evaluation: Evaluation, policy: PromotionPolicy
) -> tuple[list[str], dict[str, Any], list[str]]:
    """Return (failure messages, per-class floor numbers, skipped class names)."""
    failures: list[str] = []
    table: dict[str, Any] = {}
    skipped: list[str] = []
    for name, floor in sorted(policy.recall_floors.items()):
        if name not in evaluation.class_names or evaluation.support[evaluation.class_names.index(name)] == 0:
            skipped.append(name)
            continue
        recall = evaluation.recall_of(name)
        met = recall >= floor
        table[name] = {"floor": float(floor), "recall": recall, "met": met}
        if not met:
            failures.append(f"recall of {name} {recall:.2f} below floor {floor:.2f}")
    return failures, table, skipped


def decide_promotion(
    *,
    y_true: ArrayLike,
    challenger_pred: ArrayLike,
    champion_pred: ArrayLike | None,
    class_names: Sequence[str],
    policy: PromotionPolicy | None = None,
    challenger_probs: ArrayLike | None = None,
    champion_probs: ArrayLike | None = None,
) -> Decision:
    """Promote the challenger or keep the champion, from predictions of both on the same evaluation set.

    ``champion_pred=None`` means there is no champion yet: the challenger is promoted (recall floors are still
    reported, but a first model is better than none). Otherwise every rule of ``policy`` must hold; a
    ``keep`` reason names each rule that failed, followed by the comparison numbers. Pure and deterministic.
    """
    policy = policy or PromotionPolicy()
    names = tuple(class_names)
    n_classes = len(names)
    y = _as_labels(y_true, "y_true", n_classes)
    challenger_labels = _as_labels(challenger_pred, "challenger_pred", n_classes)
    _same_length(y_true=y, challenger_pred=challenger_labels)
    challenger = classification_report(y, challenger_labels, names, probs=challenger_probs)
    floor_failures, floors, skipped = _check_floors(challenger, policy)
    numbers: dict[str, Any] = {
        "n_eval": len(y),
        "challenger": challenger.to_dict(),
        "champion": None,
        "recall_floors": floors,
        "recall_floors_skipped": skipped,
        "policy": policy.to_dict(),
    }
    floors_text = "recall floors met" if floors else "no recall floors"
    if floor_failures:
        floors_text = "; ".join(floor_failures)

    if champion_pred is None:
        if floor_failures:
            floors_text = f"promoted although {floors_text}"
        reason = f"promote: no champion yet; challenger macro-F1 {challenger.macro_f1:.3f}; {floors_text}"
        return Decision(promote=True, reason=reason, numbers=numbers)

    champion_labels = _as_labels(champion_pred, "champion_pred", n_classes)
    _same_length(y_true=y, champion_pred=champion_labels)
    champion = classification_report(y, champion_labels, names, probs=champion_probs)
    interval = bootstrap_macro_f1_difference(
        y,
        champion_labels,
        challenger_labels,
        n_classes,
        n_boot=policy.n_boot,
        seed=policy.seed,
        alpha=policy.significance,
    )
    mcnemar = mcnemar_exact(champion_labels == y, challenger_labels == y)
    gain = challenger.macro_f1 - champion.macro_f1
    confidence = f"{100.0 * (1.0 - policy.significance):g}%"
    numbers.update(
        champion=champion.to_dict(),
        macro_f1_gain=gain,
        bootstrap={
            "low": interval.low,
            "high": interval.high,
            "observed": interval.observed,
            "confidence": 1.0 - policy.significance,
            "n_boot": policy.n_boot,
            "seed": policy.seed,
        },
        # b: only the champion right; c: only the challenger right.
        mcnemar={
            "champion_only_correct": mcnemar.b,
            "challenger_only_correct": mcnemar.c,
            "p_value": mcnemar.p_value,
        },
    )

    failures: list[str] = []
    # A small tolerance so that a gain printed as exactly the minimum is not rejected for a rounding ulp.
    if gain < policy.min_macro_f1_gain - 1e-12:
        failures.append(f"macro-F1 gain {gain:+.3f} below minimum {policy.min_macro_f1_gain:+.3f}")
    if policy.require_significance and not interval.low > 0.0:
        failures.append(f"macro-F1 gain not significant ({confidence} CI includes 0)")
    if policy.require_mcnemar and not (mcnemar.p_value < policy.significance and mcnemar.c > mcnemar.b):
        failures.append(
            f"challenger not significantly more often right at level {policy.significance:g} "
            f"(right where the champion is wrong on {mcnemar.c} items, the reverse on {mcnemar.b})"
        )
    failures.extend(floor_failures)

    summary = (
        f"challenger macro-F1 {challenger.macro_f1:.3f} vs champion {champion.macro_f1:.3f} "
        f"({gain:+.3f}, {confidence} CI [{interval.low:.3f}, {interval.high:.3f}]); "
        f"McNemar p={mcnemar.p_value:.3g}"
    )
    if failures:
        return Decision(promote=False, reason=f"keep: {'; '.join(failures)}; {summary}", numbers=numbers)
    return Decision(promote=True, reason=f"promote: {summary}; {floors_text}", numbers=numbers)
