"""Selection strategies: hand-computed tables and hypothesis invariants."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray

from models.errors import UnknownStrategyError
from models.selection import (
    INPUTS,
    STRATEGIES,
    Selection,
    StrategySpec,
    bald,
    combine_binary_multiclass,
    entropy,
    kcenter_greedy,
    least_confidence,
    margin,
    select,
    strategy_spec,
)

HAND_PROBS = [[0.5, 0.5], [0.9, 0.1], [0.7, 0.3]]
FAST = settings(max_examples=40, deadline=None)


def _normalise_rows(raw: NDArray[np.float64]) -> NDArray[np.float64]:
    # All-zero rows become uniform so that every generated row is a distribution (one-hot rows stay one-hot).
    raw = raw + (raw.sum(axis=-1, keepdims=True) == 0)
    return np.asarray(raw / raw.sum(axis=-1, keepdims=True), dtype=np.float64)


@st.composite
def prob_tables(draw: st.DrawFn, min_n: int = 1, max_n: int = 25) -> NDArray[np.float64]:
    n = draw(st.integers(min_n, max_n))
    c = draw(st.integers(2, 6))
    raw = draw(arrays(np.float64, (n, c), elements=st.floats(0.0, 10.0)))
    return _normalise_rows(raw)


@st.composite
def pools(draw: st.DrawFn) -> dict[str, NDArray[np.float64]]:
    """Consistent probs, MC passes and embeddings for one candidate pool."""
    n = draw(st.integers(1, 20))
    c = draw(st.integers(2, 5))
    t = draw(st.integers(1, 4))
    mc = _normalise_rows(draw(arrays(np.float64, (t, n, c), elements=st.floats(0.0, 10.0))))
    emb = draw(arrays(np.float64, (n, 3), elements=st.floats(-10.0, 10.0)))
    return {"probs": mc.mean(axis=0), "mc_probs": mc, "embeddings": emb}


# ------------------------------------------------------------------------------------------------ tables
def test_hand_computed_scores_and_ranking() -> None:
    np.testing.assert_allclose(least_confidence(HAND_PROBS), [0.5, 0.1, 0.3])
    np.testing.assert_allclose(margin(HAND_PROBS), [1.0, 0.2, 0.6])  # 1 - (top1 - top2)
    expected_entropy = [
        math.log(2),
        -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)),
        -(0.7 * math.log(0.7) + 0.3 * math.log(0.3)),
    ]
    np.testing.assert_allclose(entropy(HAND_PROBS), expected_entropy)
    for name in ("least_confidence", "margin", "entropy"):
        assert select(name, 3, probs=HAND_PROBS).indices == (0, 2, 1)


def test_hand_computed_informativeness_is_normalised_by_the_score_bound() -> None:
    lc = select("least_confidence", 3, probs=HAND_PROBS)
    np.testing.assert_allclose(lc.scores, [0.5, 0.3, 0.1])
    np.testing.assert_allclose(lc.informativeness, [1.0, 0.6, 0.2])  # divided by 1 - 1/C = 0.5
    ent = select("entropy", 1, probs=HAND_PROBS)
    assert ent.indices == (0,)
    np.testing.assert_allclose(ent.informativeness, [1.0])


def test_one_hot_rows_are_least_informative_and_safe() -> None:
    probs = [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]
    np.testing.assert_allclose(entropy(probs), [0.0, math.log(2)])
    np.testing.assert_allclose(least_confidence(probs), [0.0, 0.5])
    np.testing.assert_allclose(margin(probs), [0.0, 1.0])


def test_bald_identical_passes_score_zero_and_confident_disagreement_scores_high() -> None:
    same = np.tile(np.array([[0.5, 0.5], [0.8, 0.2]]), (4, 1, 1))
    np.testing.assert_allclose(bald(same), [0.0, 0.0], atol=1e-12)
    disagree = np.array([[[0.99, 0.01]], [[0.01, 0.99]]])
    score = bald(disagree)[0]
    h = -(0.99 * math.log(0.99) + 0.01 * math.log(0.01))
    assert score == pytest.approx(math.log(2) - h)
    assert score > 0.6  # close to the maximum log 2 = 0.693
    # Uncertain but agreeing passes are aleatoric: entropy is maximal, BALD is zero.
    pool = np.concatenate([np.tile([[[0.5, 0.5]]], (2, 1, 1)), disagree], axis=1)
    assert select("bald", 1, mc_probs=pool).indices == (1,)
    assert select("entropy", 2, mc_probs=pool).scores == pytest.approx([math.log(2)] * 2)


def test_kcenter_on_a_line_picks_the_extremes_then_the_middle() -> None:
    line = np.arange(11, dtype=float)[:, None]
    assert set(kcenter_greedy(line, 2).tolist()) == {0, 10}
    assert kcenter_greedy(line, 3).tolist()[2] == 5
    sel = select("kcenter", 3, embeddings=line)
    assert set(sel.indices) == {0, 10, 5}
    assert sel.indices[2] == 5
    assert sel.scores == pytest.approx([10.0, 10.0, 5.0])


def test_kcenter_is_seeded_by_labelled_embeddings() -> None:
    line = np.arange(11, dtype=float)[:, None]
    # Labelled images at 0 and 10: the farthest unlabelled candidate is the middle.
    assert kcenter_greedy(line, 1, already_selected_embeddings=[[0.0], [10.0]]).tolist() == [5]
    sel = select("kcenter", 2, embeddings=line, labelled_embeddings=[[0.0]])
    assert sel.indices == (10, 5)
    assert sel.scores == pytest.approx([10.0, 5.0])


def test_kcenter_with_a_random_start_is_deterministic_per_seed() -> None:
    emb = np.random.default_rng(0).normal(size=(40, 4))
    first = kcenter_greedy(emb, 7, seed=3)
    assert first.tolist() == kcenter_greedy(emb, 7, seed=3).tolist()
    assert len(set(first.tolist())) == 7


def test_kcenter_handles_duplicates_without_repeating_a_pick() -> None:
    emb = np.zeros((5, 2))
    picks = kcenter_greedy(emb, 5)
    assert sorted(picks.tolist()) == [0, 1, 2, 3, 4]


def test_hybrid_takes_uncertain_candidates_then_diversifies() -> None:
    # Six uncertain candidates in two tight clusters, four confident ones far away.
    probs = np.array([[0.5, 0.5]] * 6 + [[0.99, 0.01]] * 4)
    emb = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2], [50.0], [60.0], [70.0], [80.0]])
    sel = select("hybrid", 2, probs=probs, embeddings=emb, hybrid_pool_factor=3.0)
    assert set(sel.indices) <= set(range(6))  # only the uncertain pool
    clusters = {int(emb[i, 0] > 5) for i in sel.indices}
    assert clusters == {0, 1}  # one from each cluster, not two near-duplicates
    # Plain entropy would take two near-duplicates from the first cluster.
    assert select("entropy", 2, probs=probs).indices == (0, 1)


def test_hybrid_uses_bald_when_mc_passes_are_given() -> None:
    mc = np.array([[[0.5, 0.5], [0.99, 0.01], [0.7, 0.3]], [[0.5, 0.5], [0.01, 0.99], [0.7, 0.3]]])
    sel = select("hybrid", 1, mc_probs=mc, embeddings=np.eye(3), hybrid_pool_factor=1.0)
    assert sel.indices == (1,)
    assert sel.scores[0] == pytest.approx(float(bald(mc)[1]))


def test_balanced_quotas_give_a_rare_predicted_class_its_share() -> None:
    # Class 0 is predicted for 8 very uncertain candidates, class 1 for 2 less uncertain ones.
    probs = np.array([[0.55, 0.45]] * 8 + [[0.2, 0.8]] * 2)
    plain = select("entropy", 4, probs=probs)
    assert all(i < 8 for i in plain.indices)
    balanced = select("entropy", 4, probs=probs, class_quotas="balanced")
    assert sorted(balanced.indices) == [0, 1, 8, 9]
    assert balanced.indices[:2] == (0, 1)  # still ordered by score
    # Quota capped by availability, leftovers filled by score.
    capped = select("entropy", 8, probs=probs, class_quotas={1: 0.5})
    assert {8, 9} <= set(capped.indices)
    assert len(capped) == 8


def test_quotas_apply_to_kcenter_and_hybrid() -> None:
    probs = np.array([[0.6, 0.4]] * 6 + [[0.3, 0.7]] * 2)
    emb = np.arange(8, dtype=float)[:, None] * np.array([[1.0]])
    emb[6:] = [[2.5], [3.5]]  # the class-1 candidates sit in the middle, never picked first by distance
    for name in ("kcenter", "hybrid"):
        sel = select(name, 4, probs=probs, embeddings=emb, class_quotas={1: 0.5}, hybrid_pool_factor=2.0)
        assert {6, 7} <= set(sel.indices), name


def test_combine_binary_multiclass_table() -> None:
    combined = combine_binary_multiclass([0.2, 0.9], [[0.5, 0.5], [0.1, 0.9]])
    np.testing.assert_allclose(combined, [[0.8, 0.1, 0.1], [0.1, 0.09, 0.81]])
    mc = combine_binary_multiclass(np.full((3, 2), 0.5), np.full((3, 2, 4), 0.25))
    assert mc.shape == (3, 2, 5)
    np.testing.assert_allclose(mc.sum(axis=-1), 1.0)
    # A deterministic binary head broadcasts against multiclass MC passes.
    assert combine_binary_multiclass([0.5, 0.5], np.full((3, 2, 4), 0.25)).shape == (3, 2, 5)
    # A single defect type is allowed.
    np.testing.assert_allclose(combine_binary_multiclass([0.3], [[1.0]]), [[0.7, 0.3]])


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("probs", "message"),
    [
        ([[0.5, 0.6]], "sum to 1"),
        ([[2.0, -1.0]], "negative"),
        ([[np.nan, 1.0]], "NaN"),
        ([0.5, 0.5], "2-D"),
        ([[1.0]], "at least 2 classes"),
        ([[3.0, 1.0]], "not logits"),
    ],
)
def test_invalid_probabilities_raise_clear_errors(probs: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        entropy(probs)  # type: ignore[arg-type]


def test_unknown_strategy_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid strategies: random, least_confidence, margin") as info:
        select("uncertainty", 1, probs=HAND_PROBS)
    for name in STRATEGIES:
        assert name in str(info.value)


def test_registry_names_and_directions() -> None:
    assert list(STRATEGIES) == [
        "random",
        "least_confidence",
        "margin",
        "entropy",
        "bald",
        "kcenter",
        "hybrid",
    ]
    for spec in STRATEGIES.values():
        assert spec.direction
        assert spec.required <= {"probs", "mc_probs", "embeddings"}


def test_strategy_spec_looks_names_up_and_rejects_unknown_ones() -> None:
    for name, spec in STRATEGIES.items():
        assert strategy_spec(name) is spec
    with pytest.raises(UnknownStrategyError, match="valid strategies: random, least_confidence"):
        strategy_spec("uncertainty")


def _minimal_inputs(spec: StrategySpec, pool: dict[str, NDArray[np.float64]]) -> dict[str, object]:
    """Exactly what the spec declares it needs: its required inputs and one of its alternatives."""
    names = set(spec.required) | ({min(spec.one_of)} if spec.one_of else set())
    return {name: pool[name] for name in names}


@pytest.mark.parametrize("spec", list(STRATEGIES.values()), ids=list(STRATEGIES))
def test_every_registered_strategy_is_dispatchable_with_the_inputs_it_declares(spec: StrategySpec) -> None:
    rng = np.random.default_rng(3)
    mc = _normalise_rows(rng.random((4, 9, 3)))
    pool = {"probs": mc.mean(axis=0), "mc_probs": mc, "embeddings": rng.normal(size=(9, 2))}
    assert spec.required <= set(INPUTS)
    assert spec.one_of <= set(INPUTS)
    assert spec.needs_mc_passes == ("mc_probs" in spec.required)
    assert spec.needs_embeddings == ("embeddings" in spec.required)
    sel = select(spec.name, 4, **_minimal_inputs(spec, pool))  # type: ignore[arg-type]
    assert sel.strategy == spec.name
    _check_selection(sel, 9, 4)
    # With every input given, the spec's own chooser still answers (unused inputs are ignored).
    assert len(select(spec.name, 4, **pool)) == 4
    # Leaving out what it requires names the missing input.
    for needed in spec.required:
        with pytest.raises(ValueError, match=f"needs {needed}"):
            select(spec.name, 4, **{k: v for k, v in pool.items() if k != needed})  # type: ignore[arg-type]


def test_missing_or_inconsistent_inputs_raise() -> None:
    with pytest.raises(ValueError, match="needs mc_probs"):
        select("bald", 1, probs=HAND_PROBS)
    with pytest.raises(ValueError, match="needs embeddings"):
        select("kcenter", 1, probs=HAND_PROBS)
    with pytest.raises(ValueError, match="disagree on the number of candidates"):
        select("entropy", 1, probs=HAND_PROBS, embeddings=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="class_quotas needs probs"):
        select("kcenter", 1, embeddings=np.zeros((3, 2)), class_quotas="balanced")
    with pytest.raises(ValueError, match="non-negative integer"):
        select("entropy", -1, probs=HAND_PROBS)
    with pytest.raises(ValueError, match="same model"):
        select("kcenter", 1, embeddings=np.zeros((3, 2)), labelled_embeddings=np.zeros((2, 5)))


def test_importing_selection_and_comparison_does_not_import_torch() -> None:
    code = "import sys, models.selection, models.comparison; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------- invariants
@FAST
@given(probs=prob_tables())
def test_score_bounds(probs: NDArray[np.float64]) -> None:
    c = probs.shape[1]
    for scores, upper in (
        (least_confidence(probs), 1.0 - 1.0 / c),
        (margin(probs), 1.0),
        (entropy(probs), math.log(c)),
    ):
        assert scores.shape == (probs.shape[0],)
        assert np.all(np.isfinite(scores))
        assert np.all(scores >= 0.0)
        assert np.all(scores <= upper + 1e-9)


@FAST
@given(pool=pools())
def test_bald_bounds(pool: dict[str, NDArray[np.float64]]) -> None:
    scores = bald(pool["mc_probs"])
    assert np.all(np.isfinite(scores))
    assert np.all((scores >= 0.0) & (scores <= math.log(pool["mc_probs"].shape[2]) + 1e-9))


def _check_selection(sel: Selection, n: int, k: int) -> None:
    assert len(sel.indices) == min(k, n)
    assert len(set(sel.indices)) == len(sel.indices)
    assert all(0 <= i < n for i in sel.indices)
    assert len(sel.scores) == len(sel.informativeness) == len(sel.indices)
    assert all(math.isfinite(s) for s in sel.scores)
    assert all(0.0 <= v <= 1.0 for v in sel.informativeness)
    assert all(a >= b for a, b in zip(sel.informativeness, sel.informativeness[1:], strict=False))


@FAST
@given(
    pool=pools(),
    k=st.integers(0, 25),
    strategy=st.sampled_from(sorted(STRATEGIES)),
    seed=st.integers(0, 2**32 - 1),
    quotas=st.sampled_from([None, "balanced", {0: 0.5}, {1: 0.3, 0: 0.3}]),
)
def test_selection_invariants(
    pool: dict[str, NDArray[np.float64]], k: int, strategy: str, seed: int, quotas: object
) -> None:
    n = pool["probs"].shape[0]
    kwargs = {"seed": seed, "class_quotas": quotas, "hybrid_pool_factor": 2.0, **pool}
    sel = select(strategy, k, **kwargs)  # type: ignore[arg-type]
    assert sel.strategy == strategy
    _check_selection(sel, n, k)
    # Deterministic for a given seed and inputs.
    assert select(strategy, k, **kwargs) == sel  # type: ignore[arg-type]
    if strategy not in {"kcenter", "hybrid", "random"}:
        # Score strategies return the scores in non-increasing order.
        assert all(a >= b for a, b in zip(sel.scores, sel.scores[1:], strict=False))


@FAST
@given(pool=pools(), k=st.integers(1, 20))
def test_ranked_strategies_without_quotas_return_the_top_k(
    pool: dict[str, NDArray[np.float64]], k: int
) -> None:
    probs = pool["probs"]
    for name, fn in (("least_confidence", least_confidence), ("margin", margin), ("entropy", entropy)):
        scores = fn(probs)
        sel = select(name, k, probs=probs)
        threshold = min(sel.scores)
        # Nothing left out scores higher than anything taken.
        left_out = np.delete(scores, list(sel.indices))
        assert np.all(left_out <= threshold + 1e-12)


@FAST
@given(
    emb=arrays(np.float64, st.tuples(st.integers(1, 25), st.integers(1, 4)), elements=st.floats(-100, 100)),
    k=st.integers(0, 30),
)
def test_kcenter_invariants(emb: NDArray[np.float64], k: int) -> None:
    picks = kcenter_greedy(emb, k).tolist()
    assert len(picks) == min(k, emb.shape[0])
    assert len(set(picks)) == len(picks)
    sel = select("kcenter", k, embeddings=emb)
    assert set(sel.indices) == set(picks)
    # Farthest-first distances at pick time never increase.
    assert all(a >= b - 1e-9 for a, b in zip(sel.scores, sel.scores[1:], strict=False))


def test_random_differs_between_seeds_and_is_uniform_over_candidates() -> None:
    probs = np.full((200, 2), 0.5)
    a = select("random", 10, probs=probs, seed=1)
    b = select("random", 10, probs=probs, seed=2)
    assert a.indices != b.indices
    counts = np.zeros(200)
    for seed in range(200):
        counts[list(select("random", 10, probs=probs, seed=seed).indices)] += 1
    assert counts.sum() == 2000
    assert counts.max() < 40  # ~10 expected per candidate; no candidate is systematically favoured
