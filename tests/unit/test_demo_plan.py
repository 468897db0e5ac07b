"""The demo's pure parts: budget, split, random draws, resume point, metrics, the estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defectloop.demo.metrics import build_metrics, calibration_bins
from defectloop.demo.plan import (
    DEFAULT_OPTIONS,
    TIME_BUDGET_S,
    DemoOptions,
    estimate_seconds,
    label_targets,
    next_round,
    random_draws,
    seed_draw,
    split_photos,
)
from defectloop.demo.run import child_environment, demo_settings, verdict
from defectloop.settings import load_settings
from models.comparison import expected_calibration_error

CLASSES = ("ok", "hole", "seam_puckering", "uncut_thread", "raw_edge", "broken_stitch")


def _photos(n: int, defect_every: int = 3) -> dict[str, str]:
    return {f"p{i:04d}": ("hole" if i % defect_every == 0 else "ok") for i in range(n)}


# --- budget ----------------------------------------------------------------------------------------


def test_label_targets_grow_by_one_batch_per_round_and_stop_at_the_pool() -> None:
    assert label_targets(seed_labels=30, batch=20, rounds=5, pool_size=360) == [30, 50, 70, 90, 110, 130]
    assert label_targets(seed_labels=30, batch=20, rounds=3, pool_size=60) == [30, 50, 60, 60]
    assert label_targets(seed_labels=10, batch=5, rounds=0, pool_size=100) == [10]


# --- the split and the draws -------------------------------------------------------------------------


def test_split_is_disjoint_complete_seeded_and_keeps_groups_together() -> None:
    labels = _photos(300)
    groups = {key: f"g{int(key[1:]) // 3}" for key in labels}  # three tiles per photo
    split = split_photos(labels, groups, good_class="ok", test_fraction=0.25, compare_fraction=0.15, seed=1)
    parts = [set(split.pool), set(split.compare), set(split.test)]
    assert sum(len(p) for p in parts) == len(labels)
    assert set().union(*parts) == set(labels)
    for a in range(3):
        for b in range(a + 1, 3):
            assert not parts[a] & parts[b]
    for part in parts:  # a group never straddles two roles
        assert not {groups[k] for k in part} & {groups[k] for p in parts if p is not part for k in p}
    assert 0.2 < len(split.test) / len(labels) < 0.3
    assert any(labels[k] != "ok" for k in split.test)
    assert any(labels[k] != "ok" for k in split.compare)
    again = split_photos(labels, groups, good_class="ok", test_fraction=0.25, compare_fraction=0.15, seed=1)
    assert again == split


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(min_value=10, max_value=200),
    seed_size=st.integers(min_value=1, max_value=40),
    total=st.integers(min_value=0, max_value=250),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_random_draws_stay_in_the_pool_without_repeats_and_grow(
    n: int, seed_size: int, total: int, seed: int
) -> None:
    labels = _photos(n)
    split = split_photos(labels, {}, good_class="ok", test_fraction=0.25, compare_fraction=0.15, seed=seed)
    seeds = seed_draw(split.pool, size=seed_size, seed=seed)
    drawn = random_draws(split.pool, seed_set=seeds, total=total, seed=seed)
    assert len(drawn) == len(set(drawn)) == min(max(total, len(seeds)), len(split.pool))
    assert set(drawn) <= set(split.pool)
    assert not set(drawn) & (set(split.test) | set(split.compare)), "never a frozen photo"
    assert set(seeds) <= set(drawn), "the seed labels are shared by both arms"
    smaller = random_draws(split.pool, seed_set=seeds, total=max(0, total - 7), seed=seed)
    assert set(smaller) <= set(drawn), "round r's labels contain round r-1's"


def test_seed_draw_is_random_but_repeatable() -> None:
    pool = [f"p{i}" for i in range(100)]
    assert seed_draw(pool, size=10, seed=3) == seed_draw(list(reversed(pool)), size=10, seed=3)
    assert seed_draw(pool, size=10, seed=3) != seed_draw(pool, size=10, seed=4)
    assert seed_draw(pool, size=10, seed=3) != pool[:10]


# --- resume --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        ({}, 0),
        ({"active": {0}, "random": set()}, 0),  # stopped between the two arms' rows: the round again
        ({"active": {0, 1}, "random": {0, 1}}, 2),
        ({"active": {0, 1, 2}, "random": {0, 1}}, 2),
        ({"active": {0, 1, 2, 3}, "random": {0, 1, 2, 3}}, 4),  # all done: only the report is left
    ],
)
def test_next_round_is_the_first_not_recorded_for_both_arms(
    recorded: dict[str, set[int]], expected: int
) -> None:
    assert next_round(recorded, rounds=3) == expected


def test_options_round_trip_through_the_runs_json() -> None:
    options = DemoOptions(
        rounds=2, batch=5, architectures=("baseline_cnn",), class_map={"defect": "defective"}
    )
    assert DemoOptions.from_dict({**options.to_dict(), "from_a_newer_version": 1}) == options
    with pytest.raises(ValueError, match="batch"):
        DemoOptions(batch=0)


# --- metrics -------------------------------------------------------------------------------------


def test_calibration_bins_count_every_image_and_match_the_ece() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200)
    y = (rng.uniform(0, 1, 200) < p).astype(int)
    probs = np.stack([1 - p, p], axis=1)
    bins = calibration_bins(probs.max(axis=1), probs.argmax(axis=1) == y)
    assert len(bins["bin_edges"]) == 11
    assert sum(bins["count"]) == 200
    n = sum(bins["count"])
    ece = sum(
        c / n * abs(a - m)
        for c, a, m in zip(bins["count"], bins["accuracy"], bins["confidence"], strict=True)
        if c  # type: ignore[operator]
    )
    assert ece == pytest.approx(expected_calibration_error(probs, y, n_bins=10))
    assert bins["count"][:5] == [0] * 5, "a binary top-class confidence is at least 0.5"
    assert bins["confidence"][0] is None
    assert bins["accuracy"][0] is None


def test_metrics_follow_the_contract() -> None:
    truth = ["ok", "ok", "hole", "raw_edge", "ok", "hole"]
    p_defect = [0.1, 0.7, 0.9, 0.6, 0.2, 0.3]
    type_classes = CLASSES[1:]
    type_probs = np.full((6, 5), 0.1)
    type_probs[:, 0] = 0.6  # always "hole"
    metrics = build_metrics(
        truth=truth,
        p_defect=p_defect,
        threshold=0.5,
        classes=CLASSES,
        type_probs=type_probs,
        type_classes=type_classes,
        threshold_flag="no better than calling every image defective on validation",
    )
    assert set(metrics) == {
        "macro_f1",
        "defect_recall",
        "defect_precision",
        "accuracy",
        "multiclass_macro_f1",
        "ece",
        "calibration",
        "confusion",
        "n_eval",
        "threshold",
        "threshold_flag",
    }
    assert metrics["n_eval"] == 6
    assert metrics["threshold"] == 0.5
    assert metrics["defect_recall"] == pytest.approx(2 / 3)  # 0.9 and 0.6 called, 0.3 missed
    assert metrics["defect_precision"] == pytest.approx(2 / 3)  # 0.7 is an ok called defective
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["confusion"]["binary"] == {"classes": ["ok", "defective"], "matrix": [[2, 1], [1, 2]]}
    multi = metrics["confusion"]["multiclass"]
    assert multi["classes"] == list(CLASSES)
    assert sum(map(sum, multi["matrix"])) == 6
    assert multi["matrix"][CLASSES.index("raw_edge")][CLASSES.index("hole")] == 1  # typed as a hole
    assert 0 <= metrics["multiclass_macro_f1"] <= 1
    assert 0 <= metrics["ece"] <= 1
    assert metrics["threshold_flag"].startswith("no better")
    assert set(metrics["calibration"]) == {"bin_edges", "confidence", "accuracy", "count"}


def test_metrics_without_a_multiclass_model_or_typed_truth_leave_multiclass_null() -> None:
    plain = build_metrics(truth=["ok", "hole"], p_defect=[0.2, 0.8], threshold=0.5, classes=CLASSES)
    assert plain["multiclass_macro_f1"] is None
    assert plain["confusion"]["multiclass"] is None
    assert plain["macro_f1"] == 1.0
    untyped = build_metrics(
        truth=["ok", "defective"],
        p_defect=[0.2, 0.8],
        threshold=0.5,
        classes=("ok", "defect"),
        type_probs=np.ones((2, 1)),
        type_classes=("defect",),
    )
    assert untyped["multiclass_macro_f1"] is None
    with pytest.raises(ValueError, match="not among the classes"):
        build_metrics(truth=["ok", "stain"], p_defect=[0.2, 0.8], threshold=0.5, classes=CLASSES)


# --- the default and its estimate ------------------------------------------------------------------


def test_the_default_fits_the_time_budget_and_a_bigger_size_is_announced() -> None:
    assert estimate_seconds(DEFAULT_OPTIONS) <= TIME_BUDGET_S
    assert estimate_seconds(DemoOptions(n_images=3000, image_size=128, rounds=10)) > TIME_BUDGET_S
    assert math.isfinite(estimate_seconds(DemoOptions(rounds=0)))


def test_children_get_the_demos_settings_and_no_secret() -> None:
    base = load_settings({"DEFECTLOOP_DATA_DIR": "/tmp/x", "DEFECTLOOP_WEBHOOK_SECRET": "s3cret"})
    settings = demo_settings(base, DemoOptions(image_size=48, epochs=3, architectures=("baseline_cnn",)))
    assert settings.auto_promote
    assert settings.retrain_min_new_labels == 0
    assert settings.retrain_interval_s == 0
    env = child_environment(settings, {"PATH": "/bin"})
    assert env["DEFECTLOOP_IMAGE_SIZE"] == "48"
    assert env["DEFECTLOOP_TRAIN_EPOCHS"] == "3"
    assert env["DEFECTLOOP_RETRAIN_ARCHITECTURES"] == "baseline_cnn"
    assert env["DEFECTLOOP_AUTO_PROMOTE"] == "true"
    assert env["PATH"] == "/bin"
    assert "s3cret" not in "".join(env.values())
    assert load_settings(env).evaluation_fraction == settings.evaluation_fraction


def test_verdict_compares_the_arms_at_equal_labels() -> None:
    line = verdict((5, 130, 81, 0.908), (5, 130, 52, 0.848))
    assert line.startswith("active learning paid")
    assert "130 vs 130 labels" in line
    assert "81 vs 52" in line
    assert verdict((5, 130, 81, 0.80), (5, 130, 52, 0.85)).startswith("active learning did not pay")
    assert verdict(None, (0, 30, 9, 0.5)) == "no round recorded for both arms yet"
