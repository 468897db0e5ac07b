"""A demo round's frozen-set scores as the JSON the report reads (``DemoRound.metrics``); pure numpy.

Keys: ``macro_f1``, ``defect_recall``, ``defect_precision``, ``accuracy`` (binary ok / defective, the
call made at the model's decision threshold), ``multiclass_macro_f1`` (over every class: ok when the
binary call says so, else the multiclass model's most likely type; null without a multiclass model or
typed ground truth), ``ece`` and ``calibration`` (binary, top-class confidence in equal-width bins),
``confusion`` (``binary`` and ``multiclass``, each ``{classes, matrix}``, multiclass null as above),
``n_eval``, ``threshold`` and ``threshold_flag`` (a warning about the threshold, or null).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from models.comparison import classification_report, expected_calibration_error

__all__ = ["CALIBRATION_BINS", "DEFECTIVE", "build_metrics", "calibration_bins"]

CALIBRATION_BINS = 10
DEFECTIVE = "defective"


def calibration_bins(
    confidence: npt.ArrayLike, correct: npt.ArrayLike, n_bins: int = CALIBRATION_BINS
) -> dict[str, list[float] | list[int] | list[float | None]]:
    """Reliability diagram data: ``bin_edges`` (n_bins + 1), and per bin the mean ``confidence``, the
    ``accuracy`` (share correct) and the ``count``; an empty bin's mean and accuracy are null. Bins are
    ``(i/n, (i+1)/n]`` with 0 in the first, as ``expected_calibration_error`` counts them."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = np.asarray(confidence, dtype=np.float64)
    hits = np.asarray(correct, dtype=np.float64)
    if conf.shape != hits.shape or conf.ndim != 1:
        raise ValueError(f"confidence and correct must be 1-D of one length, got {conf.shape}, {hits.shape}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], conf, side="left")
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, conf, minlength=n_bins)
    hit_sum = np.bincount(bins, hits, minlength=n_bins)
    return {
        "bin_edges": [round(float(e), 6) for e in edges],
        "confidence": [None if c == 0 else float(s / c) for s, c in zip(conf_sum, count, strict=True)],
        "accuracy": [None if c == 0 else float(s / c) for s, c in zip(hit_sum, count, strict=True)],
        "count": [int(c) for c in count],
    }


def build_metrics(
    *,
    truth: Sequence[str],
    p_defect: npt.ArrayLike,
    threshold: float,
    classes: Sequence[str],
    type_probs: npt.ArrayLike | None = None,
    type_classes: Sequence[str] | None = None,
    threshold_flag: str | None = None,
) -> dict[str, Any]:
    """The metrics of one arm's models on the frozen set.

    ``truth``: each image's label (one of ``classes``, or "defective" when the data only says that);
    ``p_defect``: the binary model's p(defective); ``threshold``: its decision threshold (defective when
    ``p >= threshold``); ``type_probs`` (N, len(type_classes)): the multiclass model's distribution over
    the defect types it knows (None without a multiclass model).
    """
    good = classes[0]
    p = np.asarray(p_defect, dtype=np.float64)
    if p.ndim != 1 or len(p) != len(truth) or len(truth) == 0:
        raise ValueError(
            f"need one p(defect) per image and at least one image, got {p.shape} for {len(truth)}"
        )
    unknown = sorted({t for t in truth if t != DEFECTIVE and t not in classes})
    if unknown:
        raise ValueError(f"ground-truth labels {unknown} are not among the classes {list(classes)}")
    y = np.array([0 if t == good else 1 for t in truth], dtype=np.int64)
    called = (p >= threshold).astype(np.int64)
    binary_classes = [good, DEFECTIVE]
    probs = np.stack([1.0 - p, p], axis=1)
    report = classification_report(y, called, binary_classes)
    ece = expected_calibration_error(probs, y, n_bins=CALIBRATION_BINS)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y

    multiclass_f1: float | None = None
    multiclass_confusion: dict[str, Any] | None = None
    typed = all(t != DEFECTIVE for t in truth)
    if type_probs is not None and type_classes is not None and typed:
        tp = np.asarray(type_probs, dtype=np.float64)
        if tp.shape != (len(truth), len(type_classes)):
            raise ValueError(f"type_probs must be (N, {len(type_classes)}), got {tp.shape}")
        names = list(classes)
        type_index = np.array([names.index(c) for c in type_classes], dtype=np.int64)
        calls = np.where(called == 1, type_index[tp.argmax(axis=1)], 0)
        y_multi = np.array([names.index(t) for t in truth], dtype=np.int64)
        multi = classification_report(y_multi, calls, names)
        multiclass_f1 = multi.macro_f1
        multiclass_confusion = {"classes": names, "matrix": [list(row) for row in multi.confusion]}

    return {
        "macro_f1": report.macro_f1,
        "defect_recall": report.recall[1],
        "defect_precision": report.precision[1],
        "accuracy": report.accuracy,
        "multiclass_macro_f1": multiclass_f1,
        "ece": ece,
        "calibration": calibration_bins(confidence, correct),
        "confusion": {
            "binary": {"classes": binary_classes, "matrix": [list(row) for row in report.confusion]},
            "multiclass": multiclass_confusion,
        },
        "n_eval": len(truth),
        "threshold": float(threshold),
        "threshold_flag": threshold_flag,
    }
