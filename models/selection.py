"""Active-learning selection strategies: pure numpy, no torch.

Every score function follows baal's heuristics convention: it takes an (N, C) probability array, (T, N, C)
MC-dropout passes, or (N, D) embeddings, and returns one score per candidate where **higher = more
informative** (a label for that image is expected to teach the model more). ``select`` turns scores into a
batch. This module must stay importable without torch: workers rank the unlabelled pool without loading a
model, and the import-linter contract forbids the import.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from models.arrays import FloatArray, IntArray
from models.errors import UnknownStrategyError

__all__ = [
    "DEFAULT_STRATEGY",
    "INPUTS",
    "STRATEGIES",
    "Candidates",
    "Input",
    "Selection",
    "StrategySpec",
    "bald",
    "combine_binary_multiclass",
    "entropy",
    "kcenter_greedy",
    "least_confidence",
    "margin",
    "select",
    "strategy_spec",
]

BoolArray = NDArray[np.bool_]
ClassQuotas = Literal["balanced"] | Mapping[int, float]

# Model outputs arrive as float32 (or float16) softmax; their rows sum to 1 only to a few ulps of float32.
ROW_SUM_TOLERANCE = 1e-3
_EPS = 1e-12
# Rows of the pairwise-distance block computed at once when seeding k-center from labelled embeddings.
_DISTANCE_BLOCK_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------------------------- validation
def _as_float_array(values: ArrayLike, name: str, ndim: int) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _as_probabilities(values: ArrayLike, name: str, ndim: int, *, min_classes: int = 2) -> FloatArray:
    """Validate a probability array whose last axis is the class axis; return it renormalised."""
    array = _as_float_array(values, name, ndim)
    if array.ndim == 0 or array.shape[-1] < min_classes:
        raise ValueError(
            f"{name} needs at least {min_classes} classes on its last axis, got shape {array.shape}"
        )
    if array.size and array.min() < 0.0:
        raise ValueError(f"{name} contains negative values; pass softmax probabilities, not logits")
    sums = array.sum(axis=-1)
    bad = np.abs(sums - 1.0) > ROW_SUM_TOLERANCE
    if np.any(bad):
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} rows must sum to 1 (within {ROW_SUM_TOLERANCE}); row {where} sums to "
            f"{float(sums[where]):.6g}. Pass softmax probabilities, not logits"
        )
    # Renormalising removes the float32 slack so that the bounds below (e.g. entropy <= log C) hold.
    return array / sums[..., None] if array.size else array


def _entropy_along_last_axis(probs: FloatArray) -> FloatArray:
    # 0 * log(eps) == 0, so clipping only guards log(0) and leaves the value exact.
    return np.asarray(-(probs * np.log(np.clip(probs, _EPS, 1.0))).sum(axis=-1), dtype=np.float64)


# ---------------------------------------------------------------------------------------- score functions
def least_confidence(probs: ArrayLike) -> FloatArray:
    """Least-confidence score ``1 - max_c p(c)`` for an (N, C) probability array.

    Direction: higher = more informative (the model's top guess is less sure). Range [0, 1 - 1/C].
    """
    p = _as_probabilities(probs, "probs", 2)
    if p.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    return np.asarray(1.0 - p.max(axis=1), dtype=np.float64)


def margin(probs: ArrayLike) -> FloatArray:
    """Margin score ``1 - (p_top1 - p_top2)`` for an (N, C) probability array.

    The raw margin (gap between the two most probable classes) is *small* for informative samples, so it is
    returned as ``1 - gap``. Direction: higher = more informative (the two best classes are closer).
    Range [0, 1].
    """
    p = _as_probabilities(probs, "probs", 2)
    if p.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    top2 = np.sort(p, axis=1)[:, -2:]
    return np.asarray(np.clip(1.0 - (top2[:, 1] - top2[:, 0]), 0.0, 1.0), dtype=np.float64)


def entropy(probs: ArrayLike) -> FloatArray:
    """Predictive entropy ``-sum_c p(c) log p(c)`` (natural log) for an (N, C) probability array.

    Direction: higher = more informative (probability spread over more classes). Range [0, log C].
    """
    p = _as_probabilities(probs, "probs", 2)
    return np.clip(_entropy_along_last_axis(p), 0.0, math.log(p.shape[1]))


def bald(mc_probs: ArrayLike) -> FloatArray:
    """BALD score (mutual information between prediction and weights) for (T, N, C) MC-dropout passes.

    ``H(mean_t p_t) - mean_t H(p_t)``: high when the passes are individually confident but disagree, i.e.
    the uncertainty is in the model (epistemic), which a label can reduce. Direction: higher = more
    informative. Range [0, log C]; identical passes give 0.
    """
    p = _as_probabilities(mc_probs, "mc_probs", 3)
    if p.shape[0] == 0:
        raise ValueError("mc_probs needs at least one MC-dropout pass (T >= 1), got T = 0")
    predictive = _entropy_along_last_axis(p.mean(axis=0))
    expected = _entropy_along_last_axis(p).mean(axis=0)
    # Jensen makes the difference >= 0; clipping removes rounding noise around identical passes.
    return np.asarray(np.clip(predictive - expected, 0.0, math.log(p.shape[2])), dtype=np.float64)


def combine_binary_multiclass(p_defect: ArrayLike, p_type_given_defect: ArrayLike) -> FloatArray:
    """Combine the binary and multiclass heads into one distribution over ``[ok, *defect types]``.

    ``p(ok) = 1 - p(defect)`` and ``p(k) = p(defect) * p(k | defect)``. Works on any leading shape: (N,) with
    (N, K) gives (N, 1 + K); MC passes (T, N) with (T, N, K) give (T, N, 1 + K); a deterministic binary
    (N,) broadcasts against multiclass passes (T, N, K).
    """
    defect = np.asarray(p_defect, dtype=np.float64)
    if not (np.all(np.isfinite(defect)) and np.all((defect >= 0.0) & (defect <= 1.0))):
        raise ValueError("p_defect must be probabilities of the defective class, finite and in [0, 1]")
    raw_types = np.asarray(p_type_given_defect, dtype=np.float64)
    # A deployment may have a single defect type, whose conditional probability is then always 1.
    types = _as_probabilities(raw_types, "p_type_given_defect", max(raw_types.ndim, 1), min_classes=1)
    try:
        leading = np.broadcast_shapes(defect.shape, types.shape[:-1])
    except ValueError:
        raise ValueError(
            f"p_defect shape {defect.shape} does not match p_type_given_defect shape {types.shape} "
            "(expected (..., N) and (..., N, K))"
        ) from None
    defect = np.broadcast_to(defect, leading)
    types = np.broadcast_to(types, (*leading, types.shape[-1]))
    return np.concatenate([(1.0 - defect)[..., None], defect[..., None] * types], axis=-1)


# ---------------------------------------------------------------------------------- k-center greedy
def _min_distance_to(points: FloatArray, centres: FloatArray) -> FloatArray:
    """Euclidean distance from each point to its nearest centre, in blocks to bound memory."""
    result = np.full(points.shape[0], np.inf)
    if centres.shape[0] == 0 or points.shape[0] == 0:
        return result
    sq_points = np.einsum("nd,nd->n", points, points)
    block = max(1, _DISTANCE_BLOCK_ELEMENTS // max(1, points.shape[0]))
    for start in range(0, centres.shape[0], block):
        chunk = centres[start : start + block]
        sq = sq_points[:, None] + np.einsum("md,md->m", chunk, chunk)[None, :] - 2.0 * points @ chunk.T
        result = np.minimum(result, np.sqrt(np.maximum(sq, 0.0)).min(axis=1))
    return result


def _farthest_first(
    embeddings: FloatArray,
    k: int,
    *,
    labelled: FloatArray | None,
    choose_first: Callable[[BoolArray], int],
    predicted: IntArray | None = None,
    quotas: Mapping[int, int] | None = None,
) -> tuple[IntArray, FloatArray]:
    """Farthest-first traversal; returns the picks in order and each pick's distance when picked.

    While a class quota is unmet, only candidates of the unmet classes are eligible, so a quota is filled
    by the most distant candidates *of that class*. The first pick's distance, which is undefined without
    labelled embeddings, is reported as the coverage radius after it (the largest remaining distance).
    """
    n = embeddings.shape[0]
    k = min(k, n)
    min_dist = (
        _min_distance_to(embeddings, labelled)
        if labelled is not None and labelled.shape[0]
        else np.full(n, np.inf)
    )
    # ||x - c||^2 = ||x||^2 + ||c||^2 - 2 x.c: a mat-vec per pick instead of an (N, D) temporary.
    sq_norms = np.einsum("nd,nd->n", embeddings, embeddings)
    selected = np.zeros(n, dtype=bool)
    remaining_quota = {c: q for c, q in (quotas or {}).items() if q > 0}
    picks: list[int] = []
    distances: list[float] = []
    for _ in range(k):
        eligible: BoolArray = ~selected
        if remaining_quota and predicted is not None:
            in_quota = eligible & np.isin(predicted, list(remaining_quota))
            if in_quota.any():
                eligible = in_quota
        if np.isinf(min_dist).all():
            index = choose_first(eligible)
        else:
            index = int(np.argmax(np.where(eligible, min_dist, -np.inf)))
        picks.append(index)
        distances.append(float(min_dist[index]))
        selected[index] = True
        sq = sq_norms + sq_norms[index] - 2.0 * (embeddings @ embeddings[index])
        min_dist = np.minimum(min_dist, np.sqrt(np.maximum(sq, 0.0)))
        if math.isinf(distances[0]) and len(picks) == 1:
            rest = min_dist[~selected]
            distances[0] = float(rest.max()) if rest.size else 0.0
        if predicted is not None and remaining_quota:
            cls = int(predicted[index])
            if cls in remaining_quota:
                remaining_quota[cls] -= 1
                if remaining_quota[cls] == 0:
                    del remaining_quota[cls]
    return np.asarray(picks, dtype=np.intp), np.asarray(distances, dtype=np.float64)


def _farthest_from_centroid(embeddings: FloatArray) -> Callable[[BoolArray], int]:
    if embeddings.shape[0] == 0:
        return lambda eligible: 0
    diff = embeddings - embeddings.mean(axis=0)
    dist = np.einsum("nd,nd->n", diff, diff)

    def choose(eligible: BoolArray) -> int:
        return int(np.argmax(np.where(eligible, dist, -np.inf)))

    return choose


def kcenter_greedy(
    embeddings: ArrayLike,
    k: int,
    *,
    already_selected_embeddings: ArrayLike | None = None,
    seed: int | None = None,
) -> IntArray:
    """Pick ``min(k, N)`` indices of (N, D) ``embeddings`` by farthest-first traversal (greedy k-center).

    Each pick is the candidate farthest (Euclidean) from everything chosen so far, including the
    ``already_selected_embeddings`` (M, D) of labelled images, so the batch covers regions of embedding space
    the labelled set does not. Direction: earlier picks are more informative (farther from the covered set).
    Without labelled embeddings the first pick is the candidate farthest from the centroid (deterministic);
    with ``seed`` it is a seeded random candidate instead, as in Sener & Savarese's core-set method.
    """
    emb = _as_float_array(embeddings, "embeddings", 2)
    _check_k(k)
    labelled = _as_labelled(already_selected_embeddings, emb.shape[1])
    if seed is None:
        choose = _farthest_from_centroid(emb)
    else:
        rng = np.random.default_rng(seed)

        def choose(eligible: BoolArray) -> int:
            return int(rng.choice(np.flatnonzero(eligible)))

    indices, _ = _farthest_first(emb, k, labelled=labelled, choose_first=choose)
    return indices


def _as_labelled(values: ArrayLike | None, dim: int) -> FloatArray | None:
    if values is None:
        return None
    labelled = _as_float_array(values, "already_selected_embeddings", 2)
    if labelled.shape[0] and labelled.shape[1] != dim:
        raise ValueError(
            f"labelled embeddings have dimension {labelled.shape[1]}, candidates have {dim}; "
            "they must come from the same model"
        )
    return labelled


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")


# ---------------------------------------------------------------------------------------------- batches
@dataclass(frozen=True)
class Selection:
    """A batch to label, most informative first.

    ``indices`` index the candidate arrays given to ``select``; ``scores`` are the strategy's raw scores of
    those candidates; ``informativeness`` maps them to [0, 1] (non-increasing along the batch) for Label
    Studio, which shows ``1 - informativeness`` as the prediction score.
    """

    strategy: str
    indices: tuple[int, ...]
    scores: tuple[float, ...]
    informativeness: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.indices)


def _descending(scores: FloatArray, subset: IntArray | None = None) -> IntArray:
    """Indices ordered by score, highest first; ties keep index order so the result is deterministic."""
    if subset is None:
        return np.argsort(-scores, kind="stable").astype(np.intp)
    return subset[np.argsort(-scores[subset], kind="stable")].astype(np.intp)


def _quota_counts(
    predicted: IntArray, k: int, n_classes: int, class_quotas: ClassQuotas | None
) -> dict[int, int]:
    """Minimum number of picks per predicted class, capped by how many candidates each class has."""
    if class_quotas is None or k == 0:
        return {}
    available = np.bincount(predicted, minlength=n_classes)
    if isinstance(class_quotas, str):
        if class_quotas != "balanced":
            raise ValueError(
                f"class_quotas must be 'balanced' or a mapping class -> fraction, got {class_quotas!r}"
            )
        present = np.flatnonzero(available)
        # Equal shares over the classes the model predicts in this pool; k < #classes gives no floor.
        share = k // len(present) if len(present) else 0
        return {int(c): int(min(share, available[c])) for c in present}
    fractions = dict(class_quotas)
    for cls, fraction in fractions.items():
        if not (isinstance(cls, int | np.integer) and 0 <= cls < n_classes):
            raise ValueError(f"class_quotas key {cls!r} is not a class index in [0, {n_classes})")
        if not (0.0 <= fraction <= 1.0):
            raise ValueError(f"class_quotas fraction for class {cls} must be in [0, 1], got {fraction}")
    if sum(fractions.values()) > 1.0 + 1e-9:
        raise ValueError(f"class_quotas fractions sum to {sum(fractions.values()):.4g} > 1")
    # The small epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from flooring to 28.
    return {int(c): int(min(math.floor(f * k + 1e-9), available[c])) for c, f in fractions.items()}


def _pick_ranked_with_quotas(
    order: IntArray, predicted: IntArray | None, quotas: Mapping[int, int], k: int
) -> IntArray:
    """Fill each class quota from the top of ``order``, then the rest of the batch by ``order``."""
    if not quotas or predicted is None:
        return order[:k]
    chosen = np.zeros(order.shape[0], dtype=bool)  # indexed by candidate index
    for cls, count in quotas.items():
        members = order[predicted[order] == cls][:count]
        chosen[members] = True
    leftover = k - int(chosen.sum())
    if leftover > 0:
        rest = order[~chosen[order]][:leftover]
        chosen[rest] = True
    return np.asarray(order[chosen[order]], dtype=np.intp)


def _normalised(scores: FloatArray, bound: float) -> FloatArray:
    """Map raw scores to [0, 1] by the score's own bound, so values compare across batches."""
    if scores.size == 0:
        return scores
    if bound <= 0.0:
        return np.zeros_like(scores)
    return np.asarray(np.clip(scores / bound, 0.0, 1.0), dtype=np.float64)


# ------------------------------------------------------------------------------------------- strategies
@dataclass(frozen=True)
class Candidates:
    """One ``select`` call's inputs, validated and agreeing on N, as every strategy's ``choose`` gets them."""

    n: int
    probs: FloatArray | None
    mc_probs: FloatArray | None
    embeddings: FloatArray | None
    labelled_embeddings: ArrayLike | None
    """As given: only the strategies that use them validate them."""
    predictive: FloatArray | None
    """``probs``, else the mean of ``mc_probs``; None when neither is given."""
    predicted: IntArray | None
    n_classes: int
    class_quotas: ClassQuotas | None
    quotas: Mapping[int, int]
    seed: int
    hybrid_pool_factor: float


Choice = tuple[IntArray, FloatArray, FloatArray]
"""A strategy's batch: chosen indices most informative first, their raw scores, their informativeness."""
Chooser = Callable[[Candidates, int], Choice]


def _ranked_by(score: Callable[[Candidates], FloatArray], bound: Callable[[int], float]) -> Chooser:
    """A chooser taking the ``k`` best by ``score`` (quotas first), normalised by ``bound(n_classes)``."""

    def choose(candidates: Candidates, k: int) -> Choice:
        scores = score(candidates)
        chosen = _pick_ranked_with_quotas(_descending(scores), candidates.predicted, candidates.quotas, k)
        chosen = _descending(scores, chosen)
        return chosen, scores[chosen], _normalised(scores[chosen], bound(candidates.n_classes))

    return choose


def _unit_bound(n_classes: int) -> float:
    return 1.0


def _log_bound(n_classes: int) -> float:
    return math.log(n_classes)


def _least_confidence_bound(n_classes: int) -> float:
    return 1.0 - 1.0 / n_classes


def _predictive(candidates: Candidates) -> FloatArray:
    assert candidates.predictive is not None  # guaranteed by the spec's inputs
    return candidates.predictive


def _mc_probs(candidates: Candidates) -> FloatArray:
    assert candidates.mc_probs is not None  # guaranteed by the spec's inputs
    return candidates.mc_probs


def _embeddings(candidates: Candidates) -> tuple[FloatArray, FloatArray | None]:
    assert candidates.embeddings is not None  # guaranteed by the spec's inputs
    emb = candidates.embeddings
    return emb, _as_labelled(candidates.labelled_embeddings, emb.shape[1])


def _choose_kcenter(candidates: Candidates, k: int) -> Choice:
    emb, labelled = _embeddings(candidates)
    picks, dists = _farthest_first(
        emb,
        k,
        labelled=labelled,
        choose_first=_farthest_from_centroid(emb),
        predicted=candidates.predicted,
        quotas=candidates.quotas,
    )
    order = np.argsort(-dists, kind="stable")
    chosen, chosen_scores = picks[order], dists[order]
    # Distances have no natural scale: relative to the farthest pick of this batch.
    bound = float(chosen_scores.max()) if chosen_scores.size else 0.0
    return chosen, chosen_scores, _normalised(chosen_scores, bound)


def _choose_hybrid(candidates: Candidates, k: int) -> Choice:
    emb, labelled = _embeddings(candidates)
    pool_factor = candidates.hybrid_pool_factor
    if not (math.isfinite(pool_factor) and pool_factor >= 1.0):
        raise ValueError(f"hybrid_pool_factor must be a finite number >= 1, got {pool_factor}")
    # BALD when MC passes exist: it targets model uncertainty, which diversity then spreads out.
    if candidates.mc_probs is not None:
        uncertainty = bald(candidates.mc_probs)
    else:
        assert candidates.probs is not None  # guaranteed by the spec's inputs
        uncertainty = entropy(candidates.probs)
    predicted, n_classes = candidates.predicted, candidates.n_classes
    pool_size = min(emb.shape[0], max(k, math.ceil(pool_factor * k)))
    order = _descending(uncertainty)
    pool_quotas = (
        _quota_counts(predicted, pool_size, n_classes, candidates.class_quotas)
        if predicted is not None
        else {}
    )
    pool = np.sort(_pick_ranked_with_quotas(order, predicted, pool_quotas, pool_size))
    pool_uncertainty = uncertainty[pool]
    pool_order = np.argsort(-pool_uncertainty, kind="stable")

    def most_uncertain(eligible: BoolArray) -> int:
        return int(pool_order[eligible[pool_order]][0])

    local, _ = _farthest_first(
        emb[pool],
        k,
        labelled=labelled,
        choose_first=most_uncertain,
        predicted=predicted[pool] if predicted is not None else None,
        quotas=candidates.quotas,
    )
    chosen = _descending(uncertainty, pool[local])
    # Entropy and BALD share the bound log C.
    return chosen, uncertainty[chosen], _normalised(uncertainty[chosen], _log_bound(n_classes))


# ------------------------------------------------------------------------------------------- registry
Input = Literal["probs", "mc_probs", "embeddings"]
INPUTS: tuple[Input, ...] = ("probs", "mc_probs", "embeddings")


@dataclass(frozen=True)
class StrategySpec:
    """A strategy: the inputs it needs, which way its scores point, and the function that chooses."""

    name: str
    required: frozenset[Input]
    """Inputs that must all be given."""
    one_of: frozenset[Input]
    """At least one of these inputs must be given (empty: no such constraint)."""
    direction: str
    description: str
    choose: Chooser = field(repr=False, compare=False)
    """Picks up to ``k`` of the validated candidates (``select`` has already capped ``k`` at N)."""
    model_scored: bool = True
    """Whether the scores say something about each candidate (random's keys do not)."""

    @property
    def needs_mc_passes(self) -> bool:
        """Whether the strategy needs MC-dropout passes (workers run them only then)."""
        return "mc_probs" in self.required

    @property
    def needs_embeddings(self) -> bool:
        """Whether the strategy needs image embeddings (stored predictions alone cannot rank for it)."""
        return "embeddings" in self.required


_PROBS: frozenset[Input] = frozenset({"probs", "mc_probs"})


def _uncertainty_spec(
    name: str,
    score: Callable[[FloatArray], FloatArray],
    bound: Callable[[int], float],
    *,
    direction: str,
    description: str,
) -> StrategySpec:
    """A strategy ranking by an uncertainty score of the predictive distribution (probs or mean MC passes)."""
    return StrategySpec(
        name=name,
        required=frozenset(),
        one_of=_PROBS,
        direction=f"higher = more informative ({direction})",
        description=f"{description}; MC passes are averaged if probs are absent",
        choose=_ranked_by(lambda c: score(_predictive(c)), bound),
    )


STRATEGIES: dict[str, StrategySpec] = {
    spec.name: spec
    for spec in (
        StrategySpec(
            name="random",
            required=frozenset(),
            one_of=frozenset(INPUTS),
            direction="no direction: the score is a seeded uniform random key",
            description="uniform random sample (the control arm); any input only fixes N",
            choose=_ranked_by(lambda c: np.random.default_rng(c.seed).random(c.n), _unit_bound),
            model_scored=False,
        ),
        _uncertainty_spec(
            "least_confidence",
            least_confidence,
            _least_confidence_bound,
            direction="1 - max probability",
            description="least confidence of the top class",
        ),
        _uncertainty_spec(
            "margin",
            margin,
            _unit_bound,
            direction="1 - gap between the two most probable classes",
            description="smallest margin between the two best classes",
        ),
        _uncertainty_spec(
            "entropy",
            entropy,
            _log_bound,
            direction="predictive entropy, nats",
            description="maximum predictive entropy",
        ),
        StrategySpec(
            name="bald",
            required=frozenset({"mc_probs"}),
            one_of=frozenset(),
            direction="higher = more informative (mutual information between label and weights, nats)",
            description="BALD over MC-dropout passes",
            choose=_ranked_by(lambda c: bald(_mc_probs(c)), _log_bound),
        ),
        StrategySpec(
            name="kcenter",
            required=frozenset({"embeddings"}),
            one_of=frozenset(),
            direction="earlier = more informative (farther from everything already chosen or labelled)",
            description="k-center greedy (core-set) diversity over embeddings, seeded by labelled embeddings",
            choose=_choose_kcenter,
        ),
        StrategySpec(
            name="hybrid",
            required=frozenset({"embeddings"}),
            one_of=_PROBS,
            direction="higher = more informative (uncertainty of each pick; picks are diverse)",
            description="top pool_factor*k by BALD (if MC passes are given) or entropy, then k-center greedy "
            "among them",
            choose=_choose_hybrid,
        ),
    )
}

DEFAULT_STRATEGY = "entropy"
"""The strategy settings default to, and the one that ranks where the configured one cannot."""


def strategy_spec(name: str) -> StrategySpec:
    """The registered strategy called ``name``; an unknown name raises an error listing the valid ones."""
    spec = STRATEGIES.get(str(name))
    if spec is None:
        raise UnknownStrategyError(
            f"unknown selection strategy {name!r}; valid strategies: {', '.join(STRATEGIES)}"
        )
    return spec


# ------------------------------------------------------------------------------------------- selection
def select(
    strategy: str,
    k: int,
    *,
    probs: ArrayLike | None = None,
    mc_probs: ArrayLike | None = None,
    embeddings: ArrayLike | None = None,
    labelled_embeddings: ArrayLike | None = None,
    seed: int = 0,
    hybrid_pool_factor: float = 5.0,
    class_quotas: ClassQuotas | None = None,
) -> Selection:
    """Choose ``min(k, N)`` of N candidates to label with the named strategy (see ``STRATEGIES``).

    Inputs (any subset; those a strategy does not use are ignored, but all must agree on N):
    ``probs`` (N, C) predictive probabilities, ``mc_probs`` (T, N, C) MC-dropout passes, ``embeddings``
    (N, D), ``labelled_embeddings`` (M, D) of already-labelled images (seeds k-center and hybrid).
    ``seed`` drives ``random`` only; every strategy is deterministic for given inputs.
    ``hybrid_pool_factor``: hybrid keeps the ``ceil(factor * k)`` most uncertain candidates, then picks k of
    them by k-center greedy and orders them by uncertainty.
    ``class_quotas``: ``"balanced"`` gives each predicted class (argmax of ``probs``, else of the mean of
    ``mc_probs``) at least ``k // #predicted classes`` picks, or a mapping class index -> minimum fraction of
    k; quotas are capped by the candidates available and the rest of the batch is filled by score.
    """
    spec = strategy_spec(strategy)
    _check_k(k)
    given = {
        name
        for name, value in (("probs", probs), ("mc_probs", mc_probs), ("embeddings", embeddings))
        if value is not None
    }
    missing = spec.required - given
    if missing:
        raise ValueError(f"strategy {spec.name!r} needs {', '.join(sorted(missing))}")
    if spec.one_of and not spec.one_of & given:
        raise ValueError(f"strategy {spec.name!r} needs one of {', '.join(sorted(spec.one_of))}")

    p = _as_probabilities(probs, "probs", 2) if probs is not None else None
    mc = _as_probabilities(mc_probs, "mc_probs", 3) if mc_probs is not None else None
    if mc is not None and mc.shape[0] == 0:
        raise ValueError("mc_probs needs at least one MC-dropout pass (T >= 1), got T = 0")
    emb = _as_float_array(embeddings, "embeddings", 2) if embeddings is not None else None
    sizes = {
        name: arr.shape[1] if name == "mc_probs" else arr.shape[0]
        for name, arr in (("probs", p), ("mc_probs", mc), ("embeddings", emb))
        if arr is not None
    }
    if len(set(sizes.values())) > 1:
        raise ValueError(f"inputs disagree on the number of candidates: {sizes}")
    if p is not None and mc is not None and p.shape[1] != mc.shape[2]:
        raise ValueError(f"probs has {p.shape[1]} classes but mc_probs has {mc.shape[2]}")
    n = next(iter(sizes.values()))
    k = min(int(k), n)

    predictive = p if p is not None else (mc.mean(axis=0) if mc is not None else None)
    n_classes = predictive.shape[1] if predictive is not None else 0
    if class_quotas is not None and predictive is None:
        raise ValueError("class_quotas needs probs or mc_probs to know each candidate's predicted class")
    predicted = predictive.argmax(axis=1).astype(np.intp) if predictive is not None else None
    quotas = _quota_counts(predicted, k, n_classes, class_quotas) if predicted is not None else {}

    candidates = Candidates(
        n=n,
        probs=p,
        mc_probs=mc,
        embeddings=emb,
        labelled_embeddings=labelled_embeddings,
        predictive=predictive,
        predicted=predicted,
        n_classes=n_classes,
        class_quotas=class_quotas,
        quotas=quotas,
        seed=seed,
        hybrid_pool_factor=hybrid_pool_factor,
    )
    return _selection(spec.name, *spec.choose(candidates, k))


def _selection(
    strategy: str, indices: IntArray, scores: FloatArray, informativeness: FloatArray
) -> Selection:
    # Non-increasing informativeness along the batch, even where a score ties or rounds.
    informativeness = np.minimum.accumulate(informativeness) if informativeness.size else informativeness
    return Selection(
        strategy=strategy,
        indices=tuple(int(i) for i in indices),
        scores=tuple(float(s) for s in scores),
        informativeness=tuple(float(v) for v in informativeness),
    )
