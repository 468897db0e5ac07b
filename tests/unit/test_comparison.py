"""Evaluation, calibration, paired statistics and the promotion rule: hand tables and invariants."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray

from models.comparison import (
    Decision,
    DegenerateThresholdError,
    PromotionPolicy,
    apply_temperature,
    bootstrap_macro_f1_difference,
    classification_report,
    confusion_matrix,
    decide_promotion,
    expected_calibration_error,
    fit_temperature,
    macro_f1,
    mcnemar_exact,
    positive_f1,
    softmax,
    stored_threshold,
    threshold_flag,
    tune_threshold,
)

FAST = settings(max_examples=40, deadline=None)
# Labels, two predictions of them, the number of classes.
LabelledPredictions = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], int]
CLASSES = ("ok", "hole", "seam_puckering")


@st.composite
def labelled_predictions(
    draw: st.DrawFn,
) -> LabelledPredictions:
    c = draw(st.integers(2, 5))
    n = draw(st.integers(1, 60))
    labels = arrays(np.int64, n, elements=st.integers(0, c - 1))
    return draw(labels), draw(labels), draw(labels), c


def bootstrap_property(test: Callable[..., None]) -> Callable[..., None]:
    """A property of labelled predictions (``data``) and a ``seed``: 20 examples, as each resamples."""
    return settings(max_examples=20, deadline=None)(
        given(data=labelled_predictions(), seed=st.integers(0, 1000))(test)
    )


# ------------------------------------------------------------------------------------------------ tables
def test_confusion_matrix_and_report_against_a_hand_calculation() -> None:
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 1, 2, 2, 2, 0]
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    report = classification_report(y_true, y_pred, CLASSES)
    assert report.accuracy == pytest.approx(0.7)
    # ok: P = 3/4, R = 3/4; hole: P = 2/3, R = 2/3; seam: P = 2/3, R = 2/3.
    assert report.precision == pytest.approx((3 / 4, 2 / 3, 2 / 3))
    assert report.recall == pytest.approx((3 / 4, 2 / 3, 2 / 3))
    assert report.f1 == pytest.approx((3 / 4, 2 / 3, 2 / 3))
    assert report.macro_f1 == pytest.approx((3 / 4 + 4 / 3) / 3)
    assert report.support == (4, 3, 3)
    assert report.recall_of("hole") == pytest.approx(2 / 3)
    assert report.ece is None
    json.dumps(report.to_dict(), allow_nan=False)
    with pytest.raises(KeyError, match="unknown class 'raw_edge'"):
        report.recall_of("raw_edge")


def test_never_predicted_class_has_zero_precision() -> None:
    report = classification_report([0, 1, 1], [0, 0, 0], ("ok", "hole"))
    assert report.precision == pytest.approx((1 / 3, 0.0))
    assert report.recall == pytest.approx((1.0, 0.0))
    assert report.f1 == pytest.approx((0.5, 0.0))
    assert report.macro_f1 == pytest.approx(0.25)


def test_macro_f1_averages_only_classes_that_occur() -> None:
    # Class 2 appears in neither labels nor predictions, so it is not averaged in (scikit-learn's default).
    assert macro_f1([0, 1], [0, 1], 3) == pytest.approx(1.0)


@FAST
@given(data=labelled_predictions())
def test_metrics_match_scikit_learn(
    data: LabelledPredictions,
) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    y_true, y_pred, _, c = data
    names = tuple(f"c{i}" for i in range(c))
    report = classification_report(y_true, y_pred, names)
    assert report.macro_f1 == pytest.approx(
        metrics.f1_score(y_true, y_pred, average="macro", zero_division=0)
    )
    assert report.accuracy == pytest.approx(metrics.accuracy_score(y_true, y_pred))
    labels = list(range(c))
    assert np.array_equal(np.array(report.confusion), metrics.confusion_matrix(y_true, y_pred, labels=labels))
    np.testing.assert_allclose(
        report.recall, metrics.recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    )
    np.testing.assert_allclose(
        report.precision,
        metrics.precision_score(y_true, y_pred, labels=labels, average=None, zero_division=0),
    )


def test_ece_hand_example() -> None:
    # Bins of width 0.5: (0, 0.5] holds nothing here; (0.5, 1] holds all four.
    probs = [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]]
    y = [0, 1, 1, 1]  # correct, wrong, correct, correct
    # One bin: accuracy 3/4, mean confidence (0.9 + 0.8 + 0.7 + 0.6) / 4 = 0.75 -> ECE 0.
    assert expected_calibration_error(probs, y, n_bins=2) == pytest.approx(0.0)
    # Ten bins: (0.8, 0.9] {0.9 correct}, (0.7, 0.8] {0.8 wrong}, (0.6, 0.7] {0.7 ok}, (0.5, 0.6] {0.6 ok}.
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.6)) / 4
    assert expected_calibration_error(probs, y, n_bins=10) == pytest.approx(expected)


def test_ece_of_a_perfect_confident_model_is_zero_and_of_a_confidently_wrong_one_is_one() -> None:
    assert expected_calibration_error([[1.0, 0.0], [0.0, 1.0]], [0, 1]) == 0.0
    assert expected_calibration_error([[1.0, 0.0], [0.0, 1.0]], [1, 0]) == 1.0


def test_report_includes_ece_when_probabilities_are_given() -> None:
    report = classification_report([0, 1], [0, 1], ("ok", "hole"), probs=[[0.9, 0.1], [0.2, 0.8]])
    assert report.ece == pytest.approx((0.1 + 0.2) / 2)


def test_mcnemar_hand_table() -> None:
    # b = 1 (only A right), c = 6 (only B right), plus 5 items both right and 2 both wrong.
    a = [True] * 1 + [False] * 6 + [True] * 5 + [False] * 2
    b = [False] * 1 + [True] * 6 + [True] * 5 + [False] * 2
    result = mcnemar_exact(a, b)
    assert (result.b, result.c) == (1, 6)
    # Two-sided: 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * (1 + 7) / 128 = 0.125.
    assert result.p_value == pytest.approx(0.125)
    assert result.p_value == pytest.approx(2 * (math.comb(7, 0) + math.comb(7, 1)) / 2**7)


def test_mcnemar_edge_cases() -> None:
    assert mcnemar_exact([True, False], [True, False]).p_value == 1.0  # no discordant pairs
    assert mcnemar_exact([True], [False]).p_value == 1.0  # 2 * 1/2, capped
    assert mcnemar_exact([True] * 3 + [False] * 3, [False] * 3 + [True] * 3).p_value == 1.0  # b == c
    assert mcnemar_exact([False] * 10, [True] * 10).p_value == pytest.approx(2 / 2**10)
    big = mcnemar_exact(np.arange(40_000) % 2 == 0, np.arange(40_000) % 3 == 0)
    assert 0.0 <= big.p_value <= 1.0
    with pytest.raises(ValueError, match="same length"):
        mcnemar_exact([True], [True, False])


def test_mcnemar_matches_scipy_binomtest() -> None:
    stats = pytest.importorskip("scipy.stats")
    for b, c in [(0, 5), (3, 9), (12, 30), (50, 41), (200, 260)]:
        a = [True] * b + [False] * c
        bb = [False] * b + [True] * c
        expected = stats.binomtest(min(b, c), b + c, 0.5).pvalue
        assert mcnemar_exact(a, bb).p_value == pytest.approx(expected, rel=1e-9)


def test_temperature_is_recovered_from_overconfident_logits() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(scale=2.0, size=(4000, 4))
    p = softmax(true_logits)
    y = np.array([rng.choice(4, p=row) for row in p])
    fitted = fit_temperature(3.0 * true_logits, y)
    assert fitted == pytest.approx(3.0, rel=0.1)
    calibrated = apply_temperature(3.0 * true_logits, fitted)
    uncalibrated = softmax(3.0 * true_logits)
    assert expected_calibration_error(calibrated, y) < expected_calibration_error(uncalibrated, y)


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature([[1.0, 2.0]], 0.0)
    with pytest.raises(ValueError, match="not logits"):
        expected_calibration_error([[3.0, -1.0]], [0])
    with pytest.raises(ValueError, match="empty"):
        classification_report([], [], ("ok", "hole"))


# ------------------------------------------------------------------------------------------- invariants
@FAST
@given(
    logits=arrays(
        np.float64, st.tuples(st.integers(1, 30), st.integers(2, 5)), elements=st.integers(-40, 40)
    ),
    n_bins=st.integers(1, 20),
    data=st.data(),
)
def test_ece_in_unit_interval(logits: NDArray[np.float64], n_bins: int, data: st.DataObject) -> None:
    y = data.draw(arrays(np.int64, logits.shape[0], elements=st.integers(0, logits.shape[1] - 1)))
    ece = expected_calibration_error(softmax(logits / 4.0), y, n_bins=n_bins)
    assert 0.0 <= ece <= 1.0


@FAST
@given(
    # Quarter steps keep distinct logits distinct after division by any T in range.
    logits=arrays(
        np.float64, st.tuples(st.integers(1, 20), st.integers(2, 5)), elements=st.integers(-80, 80)
    ),
    temperature=st.floats(0.05, 20.0),
)
def test_temperature_scaling_keeps_the_argmax(logits: NDArray[np.float64], temperature: float) -> None:
    logits = logits / 4.0
    scaled = apply_temperature(logits, temperature)
    assert np.array_equal(scaled.argmax(axis=1), logits.argmax(axis=1))
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0)


@FAST
@given(
    logits=arrays(np.float64, st.tuples(st.integers(1, 40), st.integers(2, 4)), elements=st.floats(-10, 10)),
    data=st.data(),
)
def test_fitted_temperature_is_within_bounds(logits: NDArray[np.float64], data: st.DataObject) -> None:
    y = data.draw(arrays(np.int64, logits.shape[0], elements=st.integers(0, logits.shape[1] - 1)))
    t = fit_temperature(logits, y, bounds=(0.1, 10.0))
    assert 0.1 <= t <= 10.0


@FAST
@given(
    a=arrays(np.bool_, st.integers(0, 80)),
    data=st.data(),
)
def test_mcnemar_p_in_unit_interval_and_symmetric(a: NDArray[np.bool_], data: st.DataObject) -> None:
    b = data.draw(arrays(np.bool_, a.shape[0]))
    forward = mcnemar_exact(a, b)
    backward = mcnemar_exact(b, a)
    assert 0.0 <= forward.p_value <= 1.0
    assert (forward.b, forward.c) == (backward.c, backward.b)
    assert forward.p_value == backward.p_value


@bootstrap_property
def test_bootstrap_of_identical_predictors_is_zero(data: LabelledPredictions, seed: int) -> None:
    y, pred, _, c = data
    interval = bootstrap_macro_f1_difference(y, pred, pred, c, n_boot=200, seed=seed)
    assert interval == (0.0, 0.0, 0.0)


@bootstrap_property
def test_bootstrap_is_deterministic_and_antisymmetric(data: LabelledPredictions, seed: int) -> None:
    y, a, b, c = data
    forward = bootstrap_macro_f1_difference(y, a, b, c, n_boot=200, seed=seed)
    assert forward == bootstrap_macro_f1_difference(y, a, b, c, n_boot=200, seed=seed)
    assert forward.low <= forward.high
    assert forward.observed == pytest.approx(macro_f1(y, b, c) - macro_f1(y, a, c))
    backward = bootstrap_macro_f1_difference(y, b, a, c, n_boot=200, seed=seed)
    assert backward.observed == pytest.approx(-forward.observed)
    assert backward.low == pytest.approx(-forward.high)


def test_bootstrap_interval_excludes_zero_for_a_clearly_better_model() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=400)
    good = np.where(rng.random(400) < 0.9, y, (y + 1) % 3)
    poor = np.where(rng.random(400) < 0.6, y, (y + 1) % 3)
    interval = bootstrap_macro_f1_difference(y, poor, good, 3)
    assert 0.0 < interval.low < interval.observed < interval.high


# -------------------------------------------------------------------------------------------- promotion
def _noisy(y: NDArray[np.int64], accuracy: float, seed: int, n_classes: int = 3) -> NDArray[np.int64]:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(len(y)) < accuracy, y, (y + rng.integers(1, n_classes, len(y))) % n_classes)


@pytest.fixture
def y_eval() -> NDArray[np.int64]:
    return np.random.default_rng(7).integers(0, 3, size=600)


def _assert_json(decision: Decision) -> None:
    text = json.dumps(decision.numbers, allow_nan=False)
    assert json.loads(text) == decision.numbers


def test_no_champion_promotes(y_eval: NDArray[np.int64]) -> None:
    decision = decide_promotion(
        y_true=y_eval, challenger_pred=_noisy(y_eval, 0.7, 1), champion_pred=None, class_names=CLASSES
    )
    assert decision.promote
    assert "no champion yet" in decision.reason
    assert decision.numbers["champion"] is None
    _assert_json(decision)


def test_clearly_better_challenger_is_promoted(y_eval: NDArray[np.int64]) -> None:
    policy = PromotionPolicy(recall_floors={"hole": 0.5}, require_mcnemar=True)
    decision = decide_promotion(
        y_true=y_eval,
        challenger_pred=_noisy(y_eval, 0.9, 1),
        champion_pred=_noisy(y_eval, 0.7, 2),
        class_names=CLASSES,
        policy=policy,
        challenger_probs=np.full((600, 3), 1 / 3),
    )
    assert decision.promote, decision.reason
    assert decision.reason.startswith("promote: challenger macro-F1 0.")
    assert "95% CI [" in decision.reason
    assert "McNemar p=" in decision.reason
    assert "recall floors met" in decision.reason
    numbers = decision.numbers
    assert numbers["macro_f1_gain"] > 0.1
    assert numbers["bootstrap"]["low"] > 0.0
    assert numbers["mcnemar"]["p_value"] < 0.05
    assert numbers["recall_floors"]["hole"]["met"] is True
    assert numbers["challenger"]["ece"] is not None
    _assert_json(decision)


def test_tiny_gain_is_kept_with_the_gain_in_the_reason(y_eval: NDArray[np.int64]) -> None:
    champion = _noisy(y_eval, 0.8, 3)
    challenger = champion.copy()
    wrong = np.flatnonzero(challenger != y_eval)[:2]
    challenger[wrong] = y_eval[wrong]  # two more items right: a gain well below 0.01
    decision = decide_promotion(
        y_true=y_eval, challenger_pred=challenger, champion_pred=champion, class_names=CLASSES
    )
    assert not decision.promote
    gain = decision.numbers["macro_f1_gain"]
    assert 0.0 < gain < 0.01
    assert decision.reason.startswith(f"keep: macro-F1 gain {gain:+.3f} below minimum +0.010")
    _assert_json(decision)


def test_gain_without_significance_is_kept(y_eval: NDArray[np.int64]) -> None:
    champion = _noisy(y_eval, 0.8, 3)
    challenger = champion.copy()
    wrong = np.flatnonzero(challenger != y_eval)[:2]
    challenger[wrong] = y_eval[wrong]
    decision, relaxed = (
        decide_promotion(
            y_true=y_eval,
            challenger_pred=challenger,
            champion_pred=champion,
            class_names=CLASSES,
            policy=PromotionPolicy(min_macro_f1_gain=0.0, require_significance=significance),
        )
        for significance in (True, False)
    )
    low = decision.numbers["bootstrap"]["low"]
    assert decision.promote == (low > 0.0)
    assert relaxed.promote


def test_recall_floor_blocks_a_better_challenger_and_names_the_class(y_eval: NDArray[np.int64]) -> None:
    challenger = _noisy(y_eval, 0.95, 1)
    holes = np.flatnonzero(y_eval == 1)
    challenger[holes[: int(0.6 * len(holes))]] = 0  # misses most holes, still better overall
    champion = _noisy(y_eval, 0.6, 2)
    decision = decide_promotion(
        y_true=y_eval,
        challenger_pred=challenger,
        champion_pred=champion,
        class_names=CLASSES,
        policy=PromotionPolicy(recall_floors={"hole": 0.5, "raw_edge": 0.9}),
    )
    assert decision.numbers["macro_f1_gain"] > 0.01
    assert not decision.promote
    recall = decision.numbers["recall_floors"]["hole"]["recall"]
    assert recall < 0.5
    assert decision.reason.startswith(f"keep: recall of hole {recall:.2f} below floor 0.50")
    assert decision.numbers["recall_floors_skipped"] == ["raw_edge"]  # not a class of this task
    _assert_json(decision)


def test_decision_is_deterministic(y_eval: NDArray[np.int64]) -> None:
    kwargs = {
        "y_true": y_eval,
        "challenger_pred": _noisy(y_eval, 0.82, 1),
        "champion_pred": _noisy(y_eval, 0.8, 2),
        "class_names": CLASSES,
    }
    assert decide_promotion(**kwargs) == decide_promotion(**kwargs)  # type: ignore[arg-type]


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="significance"):
        PromotionPolicy(significance=1.5)
    with pytest.raises(ValueError, match="recall floor"):
        PromotionPolicy(recall_floors={"hole": 2.0})


# --- decision threshold ----------------------------------------------------------------------------------


def test_threshold_against_a_hand_table() -> None:
    # Sorted scores 0.4(+) 0.35(-) 0.3(+) 0.2(-) 0.1(-): calling the top 3 positive gives tp 2, fp 1,
    # fn 0, F1 = 4/5; every other cut is lower (top 1: 2/3, top 2: 1/2, top 4: 2/3, all: 4/7).
    choice = tune_threshold([0, 0, 1, 1, 0], [0.1, 0.2, 0.3, 0.4, 0.35])
    assert choice.threshold == pytest.approx(0.25)  # midway between 0.3 (called) and 0.2 (not)
    assert (choice.f1, choice.precision, choice.recall) == pytest.approx((0.8, 2 / 3, 1.0))
    assert choice.f1_at_default == 0.0  # nothing reaches 0.5: the untuned model never says "defect"
    assert choice.support == 2
    assert positive_f1([0, 0, 1, 1, 0], [0.1, 0.2, 0.3, 0.4, 0.35], choice.threshold) == pytest.approx(0.8)


def test_threshold_ties_go_to_the_cut_nearest_one_half() -> None:
    # Separable: any cut in (0.2, 0.8] gives F1 = 1; the cuts tried are 0.5 (between 0.8 and 0.2) only,
    # and among equal F1s the one nearest 0.5 wins.
    assert tune_threshold([0, 1], [0.2, 0.8]).threshold == pytest.approx(0.5)
    # Tied scores are one cut: both are called positive or neither.
    assert tune_threshold([0, 1, 0], [0.9, 0.9, 0.1]).threshold == pytest.approx(0.5)
    # Two scores with no float between them (found by hypothesis): the cut is the score itself.
    tiny = tune_threshold([1, 0], [5e-324, 0.0])
    assert (tiny.threshold, tiny.f1) == (5e-324, 1.0)


# Each row: labels, scores, expected (threshold, F1, images called positive, F1 of calling all positive,
# degenerate_refused). Sorted scores are read top down; "all+" is the trivial cut below the lowest score.
DEGENERATE_TABLE = [
    # 31 defects of 37 that the model cannot tell from the good images (issue 12's demo): "all+" has
    # F1 62/68 = 0.912; the one real cut leaves out the lowest score (a defect): tp 30, fp 6, fn 1, F1 60/67.
    # It is returned and flagged, not the cut calling everything defective.
    ([1] * 31 + [0] * 6, [0.6] * 30 + [0.1] + [0.6] * 6, (0.35, 60 / 67, 36, 62 / 68, True)),
    # Scores 0.9(-) 0.8(-) 0.7(+) 0.2(+), defects lower than good images: top 1, 2 give F1 0, top 3
    # tp 1 fp 2 fn 1 gives 2/5, "all+" 4/6; the best real cut (top 3) is returned and flagged.
    ([0, 0, 1, 1], [0.9, 0.8, 0.7, 0.2], (0.45, 0.4, 3, 2 / 3, True)),
    # Separable: the real cut wins and nothing is flagged.
    ([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], (0.45, 1.0, 2, 2 / 3, False)),
    # 0.9(+) 0.8(-) 0.3(-) 0.2(+): top 1 ties with "all+" at F1 2/3 (top 2: 1/2, top 3: 2/5); the real
    # cut is returned and not flagged: the scores do as well as the trivial rule.
    ([1, 0, 0, 1], [0.9, 0.8, 0.3, 0.2], (0.85, 2 / 3, 1, 2 / 3, False)),
]


@pytest.mark.parametrize(("y", "p", "expected"), DEGENERATE_TABLE)
def test_a_threshold_never_calls_every_image_defective(
    y: list[int], p: list[float], expected: tuple[float, float, int, float, bool]
) -> None:
    threshold, f1, called, f1_all, refused = expected
    choice = tune_threshold(y, p)
    assert choice.threshold == pytest.approx(threshold)
    assert choice.f1 == pytest.approx(f1)
    assert choice.called_positive == called < choice.n == len(y)
    assert sum(score >= choice.threshold for score in p) == called
    assert choice.f1_all_positive == pytest.approx(f1_all)
    assert choice.degenerate_refused is refused
    flag = threshold_flag({"threshold_tuning": choice.to_dict()})
    assert (flag is not None) is refused
    if refused:
        assert flag is not None
        assert "every image defective" in flag
        assert f"{f1_all:.3f}" in flag


def test_a_threshold_that_could_only_call_one_class_is_refused() -> None:
    # Every score tied (a model that outputs a constant): any cut calls every image one class.
    with pytest.raises(DegenerateThresholdError, match="all 4 scores are equal"):
        tune_threshold([1, 0, 1, 1], [0.7, 0.7, 0.7, 0.7])
    # No good image to tell apart: the only F1-maximal cut calls every image defective.
    with pytest.raises(DegenerateThresholdError, match="without a negative"):
        tune_threshold([1, 1, 1], [0.2, 0.9, 0.4])
    # Both are ValueErrors, like the other refusals: callers that keep 0.5 on a ValueError still do.
    assert issubclass(DegenerateThresholdError, ValueError)


def test_threshold_flag_reads_what_the_trainer_stores() -> None:
    refused = {"threshold_tuning": {"refused": "all 4 scores are equal (0.7): ...", "threshold": 0.5}}
    assert threshold_flag(refused) == "not tuned: all 4 scores are equal (0.7): ..."
    fine = {"threshold_tuning": tune_threshold([0, 1], [0.2, 0.8]).to_dict()}
    assert threshold_flag(fine) is None
    # Versions registered before the flag existed, or non-binary ones, carry no warning.
    untuned = {"threshold_tuning": {"threshold": 0.3, "f1": 0.8}}
    for metrics in (None, {}, {"threshold_tuning": "odd"}, untuned):
        assert threshold_flag(metrics) is None


def test_threshold_refuses_what_cannot_be_tuned() -> None:
    with pytest.raises(ValueError, match="without a positive"):
        tune_threshold([0, 0, 0], [0.1, 0.7, 0.2])
    with pytest.raises(ValueError, match="probabilities"):
        tune_threshold([0, 1], [0.1, 1.5])
    with pytest.raises(ValueError, match="length"):
        tune_threshold([0, 1, 1], [0.1, 0.5])


@settings(max_examples=150, deadline=None)
@given(
    y=arrays(np.int64, st.integers(1, 60), elements=st.integers(0, 1)),
    data=st.data(),
)
def test_tuned_threshold_is_never_worse_than_one_half_on_its_own_data(
    y: NDArray[np.int64], data: st.DataObject
) -> None:
    if not y.any():
        y[0] = 1
    p = data.draw(arrays(np.float64, len(y), elements=st.floats(0.0, 1.0)))
    if y.all() or len(np.unique(p)) == 1:
        # No cut calls some images positive and others negative: refused, never a degenerate threshold.
        with pytest.raises(DegenerateThresholdError):
            tune_threshold(y, p)
        return
    choice = tune_threshold(y, p)
    assert 0.0 <= choice.threshold <= 1.0
    called = p >= choice.threshold
    # Never degenerate: some validation images are called positive and some negative.
    assert 0 < called.sum() == choice.called_positive < len(y) == choice.n
    # Not worse than 0.5, unless 0.5 itself calls every image positive (the cut refused here).
    if not (p >= 0.5).all():
        assert choice.f1 >= choice.f1_at_default - 1e-12
    # The reported F1 is what the returned threshold really gives on the same data.
    assert positive_f1(y, p, choice.threshold) == pytest.approx(choice.f1)
    # And it is the best over every non-degenerate cut: no score above the lowest does better as a
    # threshold; calling everything positive is flagged exactly when it would have been better.
    lowest = p.min()
    assert all(positive_f1(y, p, float(t)) <= choice.f1 + 1e-12 for t in np.unique(p) if t > lowest)
    assert choice.f1_all_positive == pytest.approx(positive_f1(y, p, 0.0))
    assert choice.degenerate_refused == (choice.f1_all_positive > choice.f1 + 1e-12)


def test_a_stored_threshold_is_used_only_when_it_is_a_probability() -> None:
    assert stored_threshold({"decision_threshold": 0.23, "macro_f1": 0.5}) == 0.23
    assert stored_threshold({"decision_threshold": 0}) == 0.0
    for metrics in (None, {}, {"decision_threshold": 1.5}, {"decision_threshold": "0.2"},
                    {"decision_threshold": True}, {"decision_threshold": float("nan")}):  # fmt: skip
        assert stored_threshold(metrics) == 0.5
