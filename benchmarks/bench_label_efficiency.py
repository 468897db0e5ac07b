"""Label efficiency of the active-learning strategies on the AITEX tiles (real fabric, ~1:19 defect:ok).

Measures how many labels each selection strategy needs to reach 95 % of the validation F1 (defect
class) of a model trained on the whole labelled pool, against random sampling (target: the best
strategy needs at most 40 % of the labels random needs), with learning curves and defects found.

Protocol (every number of it is in the JSON's ``config``):
- Cross-validation by strip (default, ``--folds 4``): ``models.data.group_kfold`` deals the
  fabric/strip groups into K stratified folds; each fold is the validation set once and the other
  folds are its pool, so every tile is scored exactly once. A run is one (fold, seed); seeds vary the
  seed set, the initial weights, augmentation and random picks. ``--folds 1`` is the older protocol:
  one 20 % split (``group_split``) with the seeds repeated on it.
- ``improved_cnn`` from scratch (no pretrained weights, nothing downloaded), grayscale at
  ``--image-size`` px, trained by the project's own ``models.train.fit_model`` (``train_model``'s
  recipe: AdamW + cosine stepped per epoch, class-weighted cross-entropy, the training augmentation,
  batch norm recalibrated after each epoch; a fixed number of epochs and no validation set).
- A stratified seed set (the first of ``--sizes``, with ``--seed-defects`` defects), then rounds that
  grow the labelled set to each next size (default 20, 30, 40, 60, ... 400: log-spaced, as the curves
  rise over the first hundred labels). Each round warm-starts from the previous round's weights (new
  optimiser) and trains ``--epochs-per-round`` epochs, at least ``--min-steps`` steps. The model of the
  last epoch is scored (no early stopping, so the validation set never picks weights). Round 0 is
  shared by the strategies of a run.
- Pool scoring goes through ``models.infer.Predictor`` (the system's inference path; MC-dropout with
  ``--mc-passes`` passes for BALD) and picks through ``models.selection.select``.
- Strategies: random, entropy, bald, hybrid (entropy top-5k, then k-center over embeddings). For two
  classes margin and least confidence rank exactly like entropy (all are monotone in |p - 0.5|); the
  entropy arm records how many of its picks margin and least confidence would have made too.
- Reference: the same recipe from scratch on the whole pool for ``--reference-epochs`` epochs, one per
  run. Random goes on past the budget in larger rounds (``--random-extension``, 600 ... 1300 labels)
  so that its reach is measured, not bounded (with CV every extension round runs).
- Metrics: defect-class F1 at the best threshold on validation (headline), F1 at 0.5 and AUC. Every
  row keeps the validation tiles' p(defect), so the headline curves are cross-validated: at each
  labelled-set size the K folds' validation predictions are pooled (all the data set's defects, not
  one split's few dozen) and scored together, and the reference is pooled the same way; seeds are
  averaged. Read off the pooled curves: "first reaches" (the first crossing of 95 % of the reference,
  interpolated between rounds) and "stays above" (the size from which every later point is above: a
  noisy curve can cross once by chance). A strategy's curve ends at the budget, so its "stays above"
  at the budget rests on that last point alone; random's goes on to 1300. Per-run figures (each run
  against its own fold's reference) are reported beside them.

Run (from the repository root): ``.venv/bin/python benchmarks/bench_label_efficiency.py`` (about 60
minutes a seed on 2 cores), ``--seeds 1 --out OTHER.json`` for another seed, then ``--merge A.json
B.json`` to summarise the seeds together (no training); ``--quick`` for a 4-minute smoke run (written
to /tmp, no docs row), ``--probe-sizes 48 64 96`` to train only the full-pool reference at several
sizes. Writes benchmarks/results/label_efficiency.json, label_efficiency.png and a row of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from common import (
    RESULTS_DIR,
    THREADS_HELP,
    FloatArray,
    IntArray,
    binary_metrics,
    command_line,
    console,
    decoded_dataset,
    fmt_mean_std,
    load_tiles,
    machine_info,
    mean_std,
    progress_bar,
    relative,
    require_dataset,
    save_png,
    set_threads,
    setup_logging,
    split_by_strip,
    split_summary,
    stack_images,
    write_docs_row,
    write_json,
)
from rich.progress import TaskID
from rich.table import Table
from torch import nn

from models.data import BINARY_CLASSES, ImageDataset, InputSpec, group_kfold
from models.infer import Predictor
from models.selection import select, strategy_spec
from models.train import FitResult, TrainConfig, build_model, fit_model

NAME = "label_efficiency"
SCRIPT = "benchmarks/bench_label_efficiency.py"
ARCH = "improved_cnn"
STRATEGIES = ("random", "entropy", "bald", "hybrid")
METRICS = ("f1_best", "f1_05", "auc")
HEADLINE = "f1_best"
REACH = 0.95
# Log-spaced: the curves rise fastest over the first hundred labels, where 40-label steps are too coarse.
DEFAULT_SIZES = (20, 30, 40, 60, 80, 110, 150, 200, 260, 330, 400)
TARGET_RATIO = 0.40
PREDICT_BATCH = 256
VAL_P_KEY = "val_p_per_mille"  # p(defect) of the validation tiles, as stored in a finished result
# Recorded in the recipe: results of the earlier private loop (cosine stepped per batch) do not merge
# with results of this one.
TRAINER = "models.train.fit_model"


@dataclass(frozen=True)
class Recipe:
    """How every model of the benchmark is trained and scored."""

    image_size: int
    epochs_per_round: int
    min_steps: int
    reference_epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    mc_passes: int
    hybrid_pool_factor: float
    trainer: str = TRAINER


@dataclass(frozen=True)
class Schedule:
    """Which labels arrive when: the labelled-set size after each round, the first being the seed set."""

    sizes: tuple[int, ...]
    seed_defects: int
    random_extension: tuple[int, ...]
    max_candidates: int | None  # unlabelled images scored per round (a seeded random subset); None = all

    def __post_init__(self) -> None:
        if len(self.sizes) < 2 or any(b <= a for a, b in zip(self.sizes, self.sizes[1:], strict=False)):
            raise SystemExit(f"--sizes must be at least two increasing sizes, got {list(self.sizes)}")
        if not 0 < self.seed_defects < self.sizes[0]:
            raise SystemExit(f"--seed-defects must lie in 1..{self.sizes[0] - 1}, got {self.seed_defects}")

    @classmethod
    def from_config(cls, sched: dict[str, Any]) -> Schedule:
        """The schedule as a result's ``config["schedule"]`` records it."""
        return cls(
            sizes=tuple(sched["sizes"]),
            seed_defects=sched["seed_defects"],
            random_extension=tuple(sched["random_extension"]),
            max_candidates=sched["max_candidates"],
        )

    @property
    def seed_labels(self) -> int:
        return self.sizes[0]

    @property
    def budget(self) -> int:
        return self.sizes[-1]


@dataclass
class Bench:
    """The decoded tiles (once per process) and the split; models and rounds index into it."""

    images: torch.Tensor  # (N, 1, H, W) normalised, no augmentation
    augmented: ImageDataset  # the same tiles with training augmentation
    labels: IntArray
    pool: IntArray
    val: IntArray
    recipe: Recipe
    threads: int
    fold: int = 0


# --- training -------------------------------------------------------------------------------------


def train_config(bench: Bench, *, epochs: int, seed: int) -> TrainConfig:
    recipe = bench.recipe
    return TrainConfig(
        architecture=ARCH,
        task="binary",
        class_names=BINARY_CLASSES,
        input_spec=InputSpec(image_size=recipe.image_size, channels=1),
        epochs=epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        seed=seed,
        threads=bench.threads,
    )


def new_model(seed: int, bench: Bench) -> nn.Module:
    return build_model(train_config(bench, epochs=1, seed=seed))


def fit(
    model: nn.Module,
    bench: Bench,
    indices: IntArray,
    *,
    epochs: int,
    min_steps: int,
    seed: int,
    after_epoch: Callable[[int], None] | None = None,
) -> FitResult:
    """Train ``model`` in place on the tiles ``indices`` (warm: whatever weights it has)."""
    return fit_model(
        model,
        train_config(bench, epochs=epochs, seed=seed),
        bench.augmented.subset(indices.tolist()),
        min_steps=min_steps,
        after_epoch=after_epoch,
    )


def predictor(model: nn.Module, bench: Bench, mc_passes: int = 0) -> Predictor:
    return Predictor(
        model,
        ARCH,
        class_names=BINARY_CLASSES,
        image_size=bench.recipe.image_size,
        channels=1,
        mc_passes=mc_passes,
        backend="channels_last",
        num_threads=bench.threads,
    )


def predict(
    pred: Predictor, bench: Bench, indices: IntArray
) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """(probs, embeddings, mc_probs or None) for the tiles ``indices``, in batches."""
    probs, embeddings, mc = [], [], []
    for start in range(0, len(indices), PREDICT_BATCH):
        chunk = torch.as_tensor(indices[start : start + PREDICT_BATCH])
        out = pred.predict(bench.images[chunk])
        probs.append(out.probs)
        embeddings.append(out.embeddings)
        if out.mc_probs is not None:
            mc.append(out.mc_probs)
    return (
        np.concatenate(probs),
        np.concatenate(embeddings),
        np.concatenate(mc, axis=1) if mc else None,
    )


def evaluate(model: nn.Module, bench: Bench) -> dict[str, Any]:
    """Validation metrics, with the defect probability of every validation tile (``val_p``, in
    ``bench.val`` order, 4 decimals) so that cross-validation can pool the folds' predictions."""
    probs, _, _ = predict(predictor(model, bench), bench, bench.val)
    p_defect = probs[:, 1]
    return {
        **binary_metrics(bench.labels[bench.val], p_defect),
        "val_p": [round(float(v), 4) for v in p_defect],
    }


# --- selection ------------------------------------------------------------------------------------


def seed_set(bench: Bench, schedule: Schedule, rng: np.random.Generator) -> IntArray:
    """A stratified first batch: ``seed_defects`` defect tiles and the rest ok, drawn from the pool."""
    pool_labels = bench.labels[bench.pool]
    defects = rng.choice(bench.pool[pool_labels == 1], schedule.seed_defects, replace=False)
    oks = rng.choice(
        bench.pool[pool_labels == 0], schedule.seed_labels - schedule.seed_defects, replace=False
    )
    return np.sort(np.concatenate([defects, oks]))


def choose(
    strategy: str,
    model: nn.Module,
    bench: Bench,
    labelled: IntArray,
    k: int,
    schedule: Schedule,
    rng: np.random.Generator,
) -> tuple[IntArray, dict[str, Any]]:
    """The next ``k`` pool tiles to label by ``strategy``, scored by the current model."""
    spec = strategy_spec(strategy)
    unlabelled = np.setdiff1d(bench.pool, labelled)
    info: dict[str, Any] = {}
    if not spec.model_scored:  # random: no model to run, the inputs only fix N
        picks = select(spec.name, k, probs=np.full((len(unlabelled), 2), 0.5), seed=int(rng.integers(2**31)))
        return unlabelled[list(picks.indices)], info
    candidates = unlabelled
    if schedule.max_candidates is not None and len(unlabelled) > schedule.max_candidates:
        candidates = np.sort(rng.choice(unlabelled, schedule.max_candidates, replace=False))
    info["candidates"] = len(candidates)
    mc_passes = bench.recipe.mc_passes if spec.needs_mc_passes else 0
    torch.manual_seed(int(rng.integers(2**31)))  # MC-dropout masks
    pred = predictor(model, bench, mc_passes)
    probs, embeddings, mc = predict(pred, bench, candidates)
    # mc is None unless the spec needs MC passes, so hybrid ranks by entropy here, as it always has.
    labelled_embeddings = predict(pred, bench, labelled)[1] if spec.needs_embeddings else None
    chosen = select(
        spec.name,
        k,
        probs=probs,
        mc_probs=mc,
        embeddings=embeddings,
        labelled_embeddings=labelled_embeddings,
        hybrid_pool_factor=bench.recipe.hybrid_pool_factor,
    )
    if spec.name == "entropy":  # how much the other one-pass scores would have picked the same tiles
        same = set(chosen.indices)
        for other in ("margin", "least_confidence"):
            info[f"overlap_with_{other}"] = len(same & set(select(other, k, probs=probs).indices)) / max(k, 1)
    return candidates[list(chosen.indices)], info


# --- arms -----------------------------------------------------------------------------------------


def train_round(
    model: nn.Module, bench: Bench, labelled: IntArray, picked: IntArray, *, seed: int, **extra: Any
) -> dict[str, Any]:
    """Train ``model`` in place on ``labelled`` for a round (``epochs_per_round``, at least ``min_steps``
    steps) and score it: the round's row of the learning curve."""
    recipe = bench.recipe
    trained = fit(
        model, bench, labelled, epochs=recipe.epochs_per_round, min_steps=recipe.min_steps, seed=seed
    )
    return {
        "labels": len(labelled),
        "defects_found": int(bench.labels[labelled].sum()),
        **evaluate(model, bench),
        "picked_defects": int(bench.labels[picked].sum()),
        "train_seconds": trained.seconds,
        "train_epochs": trained.epochs,
        **extra,
    }


def run_arm(
    strategy: str,
    seed: int,
    bench: Bench,
    schedule: Schedule,
    start: tuple[nn.Module, IntArray, dict[str, Any]],
    bar_step: Callable[[str], None],
    reach_target: float | None,
) -> list[dict[str, Any]]:
    """One strategy's learning curve for one run, from the shared round 0 (model, labels, row).

    Random goes on past the budget (``random_extension``) until its headline reaches ``reach_target``;
    with ``reach_target=None`` it runs every extension round (cross-validation judges the reach on the
    pooled curve, which needs every fold at every size)."""
    model = copy.deepcopy(start[0])
    labelled = start[1]
    rows = [dict(start[2])]
    rng = np.random.default_rng([seed, STRATEGIES.index(strategy) if strategy in STRATEGIES else 99])
    sizes = list(schedule.sizes)[1:]
    extension = list(schedule.random_extension) if strategy == "random" else []
    for r, size in enumerate(sizes + extension, start=1):
        if r > len(sizes):  # random beyond the budget: only until it reaches the bar
            if reach_target is not None and labels_to_reach(rows, HEADLINE, reach_target) is not None:
                break
            size = min(size, len(bench.pool))
            if size <= len(labelled):
                break
        t0 = time.perf_counter()
        picked, info = choose(strategy, model, bench, labelled, size - len(labelled), schedule, rng)
        select_seconds = time.perf_counter() - t0
        labelled = np.sort(np.concatenate([labelled, picked]))
        row = train_round(
            model,
            bench,
            labelled,
            picked,
            seed=seed * 1000 + r,
            select_seconds=select_seconds,
            extension=r > len(sizes),
            **info,
        )
        rows.append(row)
        bar_step(f"{strategy} s{seed} {len(labelled)} labels: F1 {row[HEADLINE]:.2f}")
    return rows


def first_round(seed: int, bench: Bench, schedule: Schedule) -> tuple[nn.Module, IntArray, dict[str, Any]]:
    """Round 0, the same for every strategy of a seed: the seed set and a model trained on it."""
    labelled = seed_set(bench, schedule, np.random.default_rng([seed, 12345]))
    model = new_model(seed, bench)
    return model, labelled, train_round(model, bench, labelled, labelled, seed=seed * 1000, extension=False)


def run_reference(seed: int, bench: Bench, bar_step: Callable[[str], None]) -> dict[str, Any]:
    """The full-pool model: same recipe, from scratch, every pool label, last epoch scored."""
    model = new_model(seed, bench)
    history: list[dict[str, float]] = []

    val_p: list[float] = []

    def after_epoch(epoch: int) -> None:
        metrics = evaluate(model, bench)
        val_p[:] = metrics.pop("val_p")  # kept for the last epoch only
        history.append({"epoch": epoch, **metrics})
        bar_step(f"reference f{bench.fold} s{seed} epoch {epoch}: F1 {history[-1][HEADLINE]:.2f}")

    trained = fit(
        model,
        bench,
        bench.pool,
        epochs=bench.recipe.reference_epochs,
        min_steps=0,
        seed=seed * 1000 + 999,
        after_epoch=after_epoch,
    )
    final = history[-1]
    return {
        "seed": seed,
        "fold": bench.fold,
        "labels": len(bench.pool),
        **{k: v for k, v in final.items() if k != "epoch"},
        "val_p": val_p,
        "seconds": trained.seconds,
        "seconds_per_epoch": trained.seconds / trained.epochs,
        "history": history,
    }


# --- summary --------------------------------------------------------------------------------------


def labels_to_reach(rows: Sequence[dict[str, Any]], metric: str, target: float) -> float | None:
    """Labels at the first crossing of ``target``, linearly interpolated from the round before."""
    for i, row in enumerate(rows):
        value = row[metric]
        if value is not None and value >= target:
            if i == 0:
                return float(row["labels"])
            before = rows[i - 1]
            f0, f1 = before[metric], value
            frac = 1.0 if f1 == f0 else (target - f0) / (f1 - f0)
            return float(before["labels"] + frac * (row["labels"] - before["labels"]))
    return None


def labels_to_stay(rows: Sequence[dict[str, Any]], metric: str, target: float) -> float | None:
    """The first labelled-set size from which every later round scored stays at or above ``target``
    (a check on first crossings, which a noisy curve can make by chance)."""
    for i, row in enumerate(rows):
        if all(r[metric] is not None and r[metric] >= target for r in rows[i:]):
            return float(row["labels"])
    return None


def mean_curve(per_seed: dict[int, list[dict[str, Any]]], sizes: Sequence[int]) -> list[dict[str, Any]]:
    curve = []
    for size in sizes:
        at = [r for rows in per_seed.values() for r in rows if r["labels"] == size]
        if len(at) != len(per_seed):
            continue
        point: dict[str, Any] = {"labels": size}
        for key in (*METRICS, "defects_found"):
            stats = mean_std([r[key] for r in at])
            point[key] = stats["mean"]
            point[f"{key}_std"] = stats["std"]
        curve.append(point)
    return curve


def summarise(
    arms: dict[str, dict[int, list[dict[str, Any]]]],
    f1_full: dict[str, dict[str, Any]],
    schedule: Schedule,
    run_full: dict[int, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Per-run reach and ratios. Each run's bar is 95 % of ``run_full[run]`` where given (a fold's own
    full-pool model: folds differ in difficulty), else of the mean full-pool value."""
    sizes = list(schedule.sizes)
    per_strategy: dict[str, Any] = {}
    for strategy, per_seed in arms.items():
        entry: dict[str, Any] = {"reach": {}, "at_budget": {}}
        for metric in METRICS:
            mean_target = REACH * f1_full[metric]["mean"]
            targets = {
                run: REACH * run_full[run][metric] if run_full is not None else mean_target
                for run in per_seed
            }
            reach = {seed: labels_to_reach(rows, metric, targets[seed]) for seed, rows in per_seed.items()}
            last = {seed: rows[-1]["labels"] for seed, rows in per_seed.items()}
            target = mean_target
            entry["reach"][metric] = {
                "target": target,
                "per_seed": reach,
                "not_reached_after": {s: last[s] for s, v in reach.items() if v is None},
                "stats": mean_std(list(reach.values())),
                "all_seeds_reached": all(v is not None for v in reach.values()),
                "mean_curve": labels_to_reach(mean_curve(per_seed, sizes), metric, target),
                "sustained_per_seed": {
                    s: labels_to_stay(rows, metric, targets[s]) for s, rows in per_seed.items()
                },
            }
            entry["reach"][metric]["sustained_stats"] = mean_std(
                list(entry["reach"][metric]["sustained_per_seed"].values())
            )
        for key in (*METRICS, "defects_found"):
            values = [
                next((r[key] for r in rows if r["labels"] == schedule.budget), None)
                for rows in per_seed.values()
            ]
            entry["at_budget"][key] = mean_std(values)
        entry["curve"] = mean_curve(per_seed, sizes)
        per_strategy[strategy] = entry

    random_defects = per_strategy["random"]["at_budget"]["defects_found"]["mean"]
    for entry in per_strategy.values():
        found = entry["at_budget"]["defects_found"]["mean"]
        entry["defects_vs_random_at_budget"] = found / random_defects if random_defects and found else None

    ratios: dict[str, Any] = {}
    for metric in METRICS:
        random_reach = per_strategy["random"]["reach"][metric]
        candidates = [s for s in per_strategy if s != "random"]
        # Best: reached on the most seeds, then the fewest labels on average.
        candidates.sort(
            key=lambda s: (
                -per_strategy[s]["reach"][metric]["stats"]["n"],
                per_strategy[s]["reach"][metric]["stats"]["mean"] or math.inf,
            )
        )
        best = candidates[0] if candidates else None
        result: dict[str, Any] = {"best_strategy": best, "target_ratio": TARGET_RATIO}
        if best is not None:
            best_reach = per_strategy[best]["reach"][metric]
            if best_reach["all_seeds_reached"] and random_reach["all_seeds_reached"]:
                ratio = best_reach["stats"]["mean"] / random_reach["stats"]["mean"]
                seed_ratios = {
                    s: best_reach["per_seed"][s] / random_reach["per_seed"][s] for s in best_reach["per_seed"]
                }
                result.update(
                    ratio=ratio,
                    per_seed=seed_ratios,
                    per_seed_stats=mean_std(list(seed_ratios.values())),
                    target_met=ratio <= TARGET_RATIO,
                    status="measured",
                )
            elif best_reach["all_seeds_reached"] and random_reach["stats"]["n"] == 0:
                # Random got there on no seed: its labels exceed the last size it was scored at.
                bound = best_reach["stats"]["mean"] / float(
                    np.mean([rows[-1]["labels"] for rows in arms["random"].values()])
                )
                result.update(
                    ratio_upper_bound=bound, target_met=bound <= TARGET_RATIO or None, status="bound"
                )
            elif best_reach["all_seeds_reached"]:
                n, total = random_reach["stats"]["n"], len(random_reach["per_seed"])
                result.update(
                    status=f"random reached the bar on {n}/{total} seeds only: no ratio", target_met=None
                )
            else:
                result.update(status="best strategy did not reach the bar on every seed", target_met=False)
        result["sustained"] = sustained_ratio(per_strategy, metric)
        ratios[metric] = result
    return {"strategies": per_strategy, "ratios": ratios, "headline_metric": HEADLINE}


def sustained_ratio(per_strategy: dict[str, Any], metric: str) -> dict[str, Any]:
    """The same ratio on the sustained reach (the size from which a curve stays at or above the bar)."""
    random_stay = per_strategy["random"]["reach"][metric]["sustained_stats"]
    n_seeds = len(per_strategy["random"]["reach"][metric]["per_seed"])
    complete = [
        s
        for s in per_strategy
        if s != "random" and per_strategy[s]["reach"][metric]["sustained_stats"]["n"] == n_seeds
    ]
    if random_stay["n"] != n_seeds or not complete:
        return {"status": "not every seed stays above the bar within the budget", "target_met": False}
    best = min(complete, key=lambda s: per_strategy[s]["reach"][metric]["sustained_stats"]["mean"])
    ratio = per_strategy[best]["reach"][metric]["sustained_stats"]["mean"] / random_stay["mean"]
    return {"best_strategy": best, "ratio": ratio, "target_met": ratio <= TARGET_RATIO, "status": "measured"}


def pooled_summary(
    result: dict[str, Any], arms: dict[str, dict[int, list[dict[str, Any]]]]
) -> dict[str, Any]:
    """Cross-validated curves: at each labelled-set size, the validation predictions of the K folds'
    models pooled (every tile is validation exactly once, so all the dataset's defects are scored
    instead of one split's few dozen), metrics on the pool, then averaged over seeds. The full-pool
    reference is pooled the same way. Reach and ratios are read off these curves."""
    runs = result["runs"]
    folds = result["config"]["folds"]
    references = {r["run"]: r for r in result["reference"]["per_run"]}
    labels = {r["run"]: r["val_labels"] for r in runs}

    def pool(probs: dict[int, Sequence[int]]) -> dict[str, float]:
        """Metrics over the runs' validation tiles together (``probs``: run -> p(defect) in thousandths)."""
        y = np.concatenate([labels[i] for i in probs])
        return binary_metrics(y, np.concatenate([probs[i] for i in probs]) / 1000.0)

    full_per_seed: list[dict[str, float]] = []
    curves_per_seed: dict[str, list[list[dict[str, Any]]]] = {s: [] for s in arms}
    complete_seeds = []
    for seed in sorted({r["seed"] for r in runs}):
        ids = [r["run"] for r in runs if r["seed"] == seed]
        if len(ids) != folds or any(i not in references or i not in arms[s] for s in arms for i in ids):
            continue  # an unfinished seed (a run stopped early): left out of the pooled figures
        complete_seeds.append(seed)
        full_per_seed.append(pool({i: references[i][VAL_P_KEY] for i in ids}))
        for strategy, per_run in arms.items():
            by_size = {i: {row["labels"]: row for row in per_run[i]} for i in ids}
            common = sorted(set.intersection(*(set(b) for b in by_size.values())))
            curve = []
            for size in common:
                point: dict[str, Any] = {"labels": size}
                point.update(pool({i: b[size][VAL_P_KEY] for i, b in by_size.items()}))
                point["defects_found"] = float(np.mean([b[size]["defects_found"] for b in by_size.values()]))
                curve.append(point)
            curves_per_seed[strategy].append(curve)
    if not complete_seeds:
        return {"status": "no seed finished every fold"}

    def average(points: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
        sizes = sorted(set.intersection(*({p["labels"] for p in c} for c in points)))
        out = []
        for size in sizes:
            at = [next(p for p in c if p["labels"] == size) for c in points]
            out.append(
                {
                    "labels": size,
                    **{k: float(np.mean([p[k] for p in at])) for k in (*METRICS, "defects_found")},
                }
            )
        return out

    full = {m: float(np.mean([f[m] for f in full_per_seed])) for m in METRICS}
    curves = {s: average(c) for s, c in curves_per_seed.items()}
    reach = {
        s: {
            m: {
                "first": labels_to_reach(curve, m, REACH * full[m]),
                "sustained": labels_to_stay(curve, m, REACH * full[m]),
            }
            for m in METRICS
        }
        for s, curve in curves.items()
    }
    ratios: dict[str, Any] = {}
    for metric in METRICS:
        ratios[metric] = {}
        for kind in ("first", "sustained"):
            random_reach = reach["random"][metric][kind]
            others = {
                s: reach[s][metric][kind]
                for s in curves
                if s != "random" and reach[s][metric][kind] is not None
            }
            if not others:
                ratios[metric][kind] = {"status": "no strategy reached the bar", "target_met": False}
                continue
            best = min(others, key=lambda s: others[s] or math.inf)
            labels_best = float(others[best] or math.inf)
            if random_reach is None:
                bound = labels_best / max(p["labels"] for p in curves["random"])
                ratios[metric][kind] = {
                    "best_strategy": best,
                    "labels": others[best],
                    "ratio_upper_bound": bound,
                    "target_met": bound <= TARGET_RATIO,
                    "status": "bound (random did not reach the bar)",
                }
                continue
            ratio = labels_best / random_reach
            ratios[metric][kind] = {
                "best_strategy": best,
                "labels": others[best],
                "random_labels": random_reach,
                "ratio": ratio,
                "target_met": ratio <= TARGET_RATIO,
                "status": "measured",
            }
    return {
        "status": "measured",
        "seeds": complete_seeds,
        "folds": folds,
        "full": full,
        "curves": curves,
        "reach": reach,
        "ratios": ratios,
    }


# --- plot -----------------------------------------------------------------------------------------

_COLOURS = {"random": "#555555", "entropy": "#1f77b4", "bald": "#d62728", "hybrid": "#2ca02c"}


def plot(
    curves: dict[str, list[dict[str, Any]]],
    full: dict[str, float],
    budget: int,
    pool_defects: float,
    path: Path,
    title: str,
) -> None:
    """Learning curves (a ``<key>_std`` in the points draws a band), the full-pool value and its bar."""
    panels = (
        ("f1_best", "defect F1, best threshold"),
        ("f1_05", "defect F1, threshold 0.5"),
        ("auc", "AUC"),
        ("defects_found", "defects among the labels"),
    )
    fig, axes = plt.subplots(2, 2, figsize=(10.5, 7.5))
    for ax, (key, label) in zip(axes.flat, panels, strict=True):
        for strategy, curve in curves.items():
            xs = np.array([p["labels"] for p in curve])
            ys = np.array([p[key] for p in curve], dtype=float)
            colour = _COLOURS.get(strategy)
            ax.plot(xs, ys, marker="o", ms=3, label=strategy, color=colour)
            if curve and f"{key}_std" in curve[0]:
                sd = np.array([p[f"{key}_std"] for p in curve], dtype=float)
                ax.fill_between(xs, ys - sd, ys + sd, alpha=0.15, color=colour)
        if key in full:
            ax.axhline(full[key], color="black", lw=1, label="full pool")
            ax.axhline(REACH * full[key], color="black", lw=1, ls="--", label="95 % of full pool")
        if key == "defects_found":
            ax.axhline(pool_defects, color="black", lw=1, ls=":", label="defects in the pool")
        ax.axvline(budget, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("labels")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8, loc="lower right")
    axes.flat[3].legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 1 seed, 20->120 labels, 2 reference epochs"
    )
    p.add_argument(
        "--folds",
        type=int,
        default=4,
        help="cross-validation by strip: K folds, each the validation set once, predictions pooled "
        "(default 4; 1 = one split of --val-fraction, seeds repeated on it)",
    )
    p.add_argument("--seeds", type=int, nargs="+", help="seeds per fold (default 0; with --folds 1: 0 1 2)")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(DEFAULT_SIZES),
        help="labelled-set size after each round; the first is the stratified seed set, the last the budget",
    )
    p.add_argument("--seed-defects", type=int, default=3, help="defect tiles in the seed set")
    p.add_argument("--random-extension", type=int, nargs="*", default=[600, 800, 1000, 1300])
    p.add_argument(
        "--max-candidates", type=int, default=0, help="unlabelled tiles scored per round (0 = all)"
    )
    p.add_argument("--epochs-per-round", type=int, default=3)
    p.add_argument("--min-steps", type=int, default=24)
    p.add_argument("--reference-epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--mc-passes", type=int, default=8)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=2, help=THREADS_HELP)
    p.add_argument(
        "--probe-sizes", type=int, nargs="+", help="only train full-pool references at these sizes"
    )
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<name>.json)")
    p.add_argument(
        "--from-json",
        type=Path,
        metavar="PATH",
        help="no training: recompute summary, plot and docs row from an earlier run's JSON",
    )
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="PATH",
        help="no training: one result from runs of the same protocol with other seeds (e.g. two "
        "machines or two sessions), summarised together into --out",
    )
    p.add_argument("--no-docs", action="store_true", help="do not write the docs/benchmarks.md row")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.folds < 1:
        p.error("--folds must be at least 1")
    if min(args.epochs_per_round, args.reference_epochs) < 1:
        p.error("--epochs-per-round and --reference-epochs must be at least 1")
    if args.seeds is None:
        args.seeds = [0] if args.folds > 1 else [0, 1, 2]
    if args.quick:
        args.seeds = args.seeds[:1]
        args.folds = min(args.folds, 2)
        args.sizes, args.random_extension = [20, 40, 80, 120], []
        args.reference_epochs, args.epochs_per_round, args.min_steps = 2, 1, 6
        args.max_candidates, args.mc_passes = 400, 4
        args.no_docs = True
    return args


def load_benches(args: argparse.Namespace, image_size: int) -> tuple[list[Bench], dict[str, Any]]:
    """One bench per fold (``--folds 1``: the single split), sharing the decoded tiles."""
    root = require_dataset()
    tiles = load_tiles(root)
    spec = InputSpec(image_size=image_size, channels=1)
    dataset = decoded_dataset(tiles.records, tiles.labels.tolist(), spec, description="decode tiles")
    if args.folds > 1:
        splits = [
            (np.asarray(train, dtype=np.int64), np.asarray(val, dtype=np.int64))
            for train, val in group_kfold(
                tiles.records, tiles.labels.tolist(), n_splits=args.folds, seed=args.split_seed
            )
        ]
    else:
        splits = [split_by_strip(tiles, seed=args.split_seed, val_fraction=args.val_fraction)]
    recipe = Recipe(
        image_size=image_size,
        epochs_per_round=args.epochs_per_round,
        min_steps=args.min_steps,
        reference_epochs=args.reference_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        mc_passes=args.mc_passes,
        hybrid_pool_factor=5.0,
    )
    images, augmented = stack_images(dataset), dataset.with_augment(True)
    benches = [
        Bench(
            images=images,
            augmented=augmented,
            labels=tiles.labels,
            pool=pool,
            val=val,
            recipe=recipe,
            threads=args.threads,
            fold=fold,
        )
        for fold, (pool, val) in enumerate(splits)
    ]
    per_fold = [split_summary(tiles, pool, val) for pool, val in splits]
    if args.folds > 1:
        split: dict[str, Any] = {
            "method": f"models.data.group_kfold on fabric/strip groups, {args.folds} folds stratified; "
            "each tile is validation once; the same folds for all strategies and seeds",
            "seed": args.split_seed,
            "folds": args.folds,
            "per_fold": per_fold,
        }
    else:
        split = {
            "method": "models.data.group_split on fabric/strip groups, stratified; one split for all "
            "strategies and seeds",
            "seed": args.split_seed,
            "val_fraction": args.val_fraction,
            **per_fold[0],
        }
    inputs = {"dataset": tiles.summary(), "split": split, "input_spec": spec.to_dict()}
    return benches, inputs


def probe_sizes(args: argparse.Namespace, started: float) -> None:
    out = args.out or RESULTS_DIR / f"{NAME}_sizes.json"
    results: dict[str, Any] = {"benchmark": f"{NAME}_sizes", "command": command_line(), "sizes": {}}
    for size in args.probe_sizes:
        benches, inputs = load_benches(args, size)
        bench = benches[0]
        with progress_bar() as bar:
            task = bar.add_task(
                f"reference {size} px", total=len(args.seeds) * args.reference_epochs, info=""
            )

            def step(info: str, task: TaskID = task) -> None:
                bar.update(task, advance=1, info=info)

            refs = [run_reference(seed, bench, step) for seed in args.seeds]
        results["sizes"][str(size)] = {
            "per_seed": refs,
            **{m: mean_std([r[m] for r in refs]) for m in METRICS},
            "seconds_per_epoch": mean_std([r["seconds_per_epoch"] for r in refs]),
        }
        console.print(
            f"{size} px: F1 best {fmt_mean_std(results['sizes'][str(size)]['f1_best'])}, "
            f"F1@0.5 {fmt_mean_std(results['sizes'][str(size)]['f1_05'])}, "
            f"AUC {fmt_mean_std(results['sizes'][str(size)]['auc'])}, "
            f"{results['sizes'][str(size)]['seconds_per_epoch']['mean']:.1f} s/epoch"
        )
        results["inputs"] = {k: v for k, v in inputs.items() if k != "input_spec"}
        results["config"] = {
            "architecture": ARCH,
            "weights": "from scratch",
            "recipe": {**asdict(bench.recipe), "image_size": list(args.probe_sizes)},
            "seeds": args.seeds,
        }
        results["machine"] = machine_info(args.threads)
        results["wall_seconds"] = time.perf_counter() - started
        write_json(out, results)
    console.print(f"wrote {relative(out)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    set_threads(args.threads)
    started = time.perf_counter()
    if args.from_json:
        return refinish(args.from_json, no_docs=args.no_docs)
    if args.merge:
        return merge(args.merge, args.out or RESULTS_DIR / f"{NAME}.json", no_docs=args.no_docs)
    if args.probe_sizes:
        probe_sizes(args, started)
        return 0
    if "random" not in args.strategies:
        args.strategies = ["random", *args.strategies]
    default_out = Path("/tmp/defectloop-bench") if args.quick else RESULTS_DIR
    out = args.out or default_out / f"{NAME}.json"
    benches, inputs = load_benches(args, args.image_size)
    cv = args.folds > 1
    schedule = Schedule(
        sizes=tuple(args.sizes),
        seed_defects=args.seed_defects,
        random_extension=tuple(args.random_extension),
        max_candidates=args.max_candidates or None,
    )
    runs = [
        {"run": i, "fold": b.fold, "seed": s}
        for i, (b, s) in enumerate((b, s) for b in benches for s in args.seeds)
    ]
    machine = machine_info(args.threads)
    config = {
        "architecture": ARCH,
        "weights": "from scratch (pretrained=False, nothing downloaded)",
        "recipe": asdict(benches[0].recipe),
        "schedule": asdict(schedule),
        "strategies": args.strategies,
        "folds": args.folds,
        "seeds": args.seeds,
        "headline_metric": HEADLINE,
        "reach_fraction": REACH,
        "notes": [
            "training: models.train.fit_model (train_model's AdamW, cosine schedule stepped per epoch, "
            "class-weighted loss and augmentation; fixed epochs, no validation set)",
            "warm start: each round continues from the previous round's weights with a new AdamW and "
            "cosine schedule; round 0 (seed set) is trained once per run and shared by all strategies",
            "the last epoch's model is scored; validation is never used to select weights",
            "f1_best uses the threshold that maximises F1 on the validation set itself (optimistic; "
            "less so when the folds' predictions are pooled)",
            "margin and least_confidence rank binary probabilities exactly like entropy; the entropy "
            "arm records the overlap of their picks",
            "pool scoring via models.infer.Predictor (channels_last backend; MC-dropout for BALD)",
            (
                "cross-validation: each fold's runs train on the other folds' tiles and score their own; "
                "the headline curves pool the K folds' validation predictions at each labelled-set size; "
                "random runs every random_extension round"
                if cv
                else "random arm continues past the budget with rounds at random_extension sizes only "
                "until its headline F1 reaches 95% of F1_full"
            ),
        ],
    }
    result: dict[str, Any] = {
        "benchmark": NAME,
        "description": "labels each strategy needs to reach 95% of the full-pool validation F1 "
        "(defect class) vs random",
        "command": command_line(),
        "complete": False,
        "inputs": inputs,
        "config": config,
        "machine": machine,
        "runs": [
            {**run, "val_labels": benches[run["fold"]].labels[benches[run["fold"]].val].tolist()}
            for run in runs
        ],
    }
    sizes = list(schedule.sizes)
    total = len(runs) * (args.reference_epochs + len(args.strategies) * (len(sizes) - 1) + 1)
    arms: dict[str, dict[int, list[dict[str, Any]]]] = {s: {} for s in args.strategies}
    references: dict[int, dict[str, Any]] = {}
    result["reference"] = {"per_run": []}
    with progress_bar() as bar:
        task = bar.add_task(NAME, total=total, info="")

        def step(info: str) -> None:
            bar.update(task, advance=1, info=info)

        def reference(run: dict[str, Any]) -> dict[str, Any]:
            ref = run_reference(run["seed"], benches[run["fold"]], step)
            references[run["run"]] = {**ref, "run": run["run"]}
            result["reference"]["per_run"] = list(references.values())
            write_json(out, result)
            return ref

        target: float | None = None
        if not cv:  # one split: random's extension stops at the mean reference's bar
            for run in runs:
                reference(run)
            target = REACH * float(np.mean([r[HEADLINE] for r in references.values()]))
        for run in runs:
            i, fold, seed = run["run"], run["fold"], run["seed"]
            bench = benches[fold]
            ref = references[i] if i in references else reference(run)
            console.print(
                f"fold {fold} seed {seed}: full pool ({len(bench.pool)} labels) "
                f"F1 best {ref['f1_best']:.3f}, F1@0.5 {ref['f1_05']:.3f}, AUC {ref['auc']:.3f}"
            )
            start = first_round(seed, bench, schedule)
            step(f"round 0 f{fold} s{seed}: F1 {start[2][HEADLINE]:.2f}")
            for strategy in args.strategies:
                arms[strategy][i] = run_arm(strategy, seed, bench, schedule, start, step, target)
                last = arms[strategy][i][-1]
                console.print(
                    f"fold {fold} seed {seed} {strategy:8s}: {last['labels']} labels, "
                    f"{last['defects_found']} defects, F1 best {last['f1_best']:.3f}, "
                    f"F1@0.5 {last['f1_05']:.3f}, AUC {last['auc']:.3f}"
                )
                result["arms"] = arms
                result["wall_seconds"] = time.perf_counter() - started
                write_json(out, result)

    result["wall_seconds"] = time.perf_counter() - started
    finish(result, arms, schedule, out, no_docs=args.no_docs)
    return 0


def finish(
    result: dict[str, Any],
    arms: dict[str, dict[int, list[dict[str, Any]]]],
    schedule: Schedule,
    out: Path,
    *,
    no_docs: bool,
) -> None:
    """Summary, plot, JSON, table and docs row from the measured curves (of the runs that finished
    every strategy: a stopped run's JSON can still be summarised)."""
    # p(defect) of the validation tiles is stored in thousandths (with write_json's compact long arrays,
    # the JSON of three seeds stays under 2 MB); the pooled figures are computed from what is stored, so a
    # re-summary gives the same numbers.
    for rows in [*(rows for per in arms.values() for rows in per.values()), result["reference"]["per_run"]]:
        for row in rows:
            if "val_p" in row:
                row[VAL_P_KEY] = [round(float(v) * 1000) for v in row.pop("val_p")]
    references = {r["run"]: r for r in result["reference"]["per_run"]}
    done = sorted(set(references).intersection(*(set(per) for per in arms.values())))
    if not done:
        raise SystemExit("no run finished every strategy: nothing to summarise")
    arms = {s: {i: per[i] for i in done} for s, per in arms.items()}
    f1_full = {m: mean_std([references[i][m] for i in done]) for m in METRICS}
    result["reference"]["f1_full"] = f1_full
    config, inputs = result["config"], result["inputs"]
    cv = config.get("folds", 1) > 1
    run_full = {i: {m: references[i][m] for m in METRICS} for i in done} if cv else None
    summary = summarise(arms, f1_full, schedule, run_full)
    if cv:
        summary["pooled"] = pooled_summary(result, arms)
    result.update(summary=summary, complete=len(done) == len(result["runs"]), runs_summarised=done)
    size = inputs["input_spec"]["image_size"]
    split = inputs["split"]
    if cv and summary["pooled"]["status"] == "measured":
        pooled = summary["pooled"]
        curves, full = pooled["curves"], pooled["full"]
        pool_defects = float(np.mean([f["train_or_pool"]["defect"] for f in split["per_fold"]]))
        title = (
            f"{ARCH} from scratch, {size} px, AITEX tiles, {config['folds']}-fold CV by strip "
            f"(pool ~{pool_defects:.0f} defects per fold): validation predictions of the folds pooled, "
            f"{len(pooled['seeds'])} seed(s)"
        )
    else:
        curves = {
            s: mean_curve(per, sorted({r["labels"] for rows in per.values() for r in rows}))
            for s, per in arms.items()
        }
        full = {m: f1_full[m]["mean"] for m in METRICS}
        pool_defects = float(split["train_or_pool"]["defect"]) if "train_or_pool" in split else math.nan
        pool_tiles = split.get("train_or_pool", {}).get("tiles")
        title = (
            f"{ARCH} from scratch, {size} px, AITEX tiles (pool {pool_tiles}, "
            f"{pool_defects:.0f} defects); mean ± std over {len(done)} run(s)"
        )
    plot_path = out.with_suffix(".png")
    plot(curves, full, schedule.budget, pool_defects, plot_path, title)
    result["plot"] = relative(plot_path)
    write_json(out, result)
    headline = report(summary, f1_full, len(done), schedule.budget)
    if not no_docs:
        seeds = len({run["seed"] for run in result["runs"] if run["run"] in done})
        protocol = (
            f"{config['folds']}-fold CV by strip x {seeds} seed(s), pooled" if cv else f"{len(done)} seeds"
        )
        write_docs_row(
            f"label efficiency: AL strategies vs random, {ARCH} from scratch {size} px, "
            f"{protocol}, {schedule.seed_labels}->{schedule.budget} labels",
            headline,
            SCRIPT,
        )
    console.print(f"wrote {relative(out)} and {relative(plot_path)} ({result['wall_seconds'] / 60:.1f} min)")


def refinish(path: Path, *, no_docs: bool) -> int:
    """Recompute summary, plot and docs row from a results JSON (no training)."""
    result = json.loads(path.read_text(encoding="utf-8"))
    if "arms" not in result or "reference" not in result:
        raise SystemExit(f"{path} holds no finished arms to summarise")
    if "per_run" not in result["reference"]:  # written before runs had ids: one split, keyed by seed
        result["reference"]["per_run"] = [{**r, "run": r["seed"]} for r in result["reference"]["per_seed"]]
        result["config"].setdefault("folds", 1)
        result.setdefault(
            "runs",
            [{"run": r["seed"], "fold": 0, "seed": r["seed"]} for r in result["reference"]["per_seed"]],
        )
    arms = {s: {int(run): rows for run, rows in per.items()} for s, per in result["arms"].items()}
    schedule = Schedule.from_config(result["config"]["schedule"])
    result["summarised_by"] = command_line()
    finish(result, arms, schedule, path, no_docs=no_docs)
    return 0


# What must agree for two results to be one measurement (everything but the seeds).
_SAME_PROTOCOL = (
    "architecture",
    "recipe",
    "schedule",
    "strategies",
    "folds",
    "headline_metric",
    "reach_fraction",
)


def merge(paths: Sequence[Path], out: Path, *, no_docs: bool) -> int:
    """Merge results of one protocol measured with different seeds into ``out`` and summarise them."""
    parts = [json.loads(Path(path).read_text(encoding="utf-8")) for path in paths]
    first = parts[0]
    for path, part in zip(paths, parts, strict=True):
        if "runs" not in part or "arms" not in part:
            raise SystemExit(f"{path} is not a result of this benchmark with run ids (re-run it)")
        differs = [k for k in _SAME_PROTOCOL if part["config"].get(k) != first["config"].get(k)]
        if differs or part["inputs"]["split"] != first["inputs"]["split"]:
            raise SystemExit(f"{path} measured another protocol ({', '.join(differs) or 'split'} differ)")
    seen = [(run["fold"], run["seed"]) for part in parts for run in part["runs"]]
    if len(seen) != len(set(seen)):
        raise SystemExit("the results share a (fold, seed) run: merge results of different seeds")
    merged = {k: v for k, v in first.items() if k not in ("runs", "arms", "reference", "summary")}
    merged.update(runs=[], arms={s: {} for s in first["arms"]}, reference={"per_run": []})
    merged["config"] = {**first["config"], "seeds": sorted({seed for _, seed in seen})}
    merged["merged_from"] = [
        entry
        for path, part in zip(paths, parts, strict=True)
        for entry in part.get("merged_from") or [{"path": relative(Path(path)), "command": part["command"]}]
    ]
    merged["command"] = command_line()
    merged["wall_seconds"] = sum(part.get("wall_seconds", 0.0) for part in parts)
    for part in parts:
        offset = len(merged["runs"])
        for run in part["runs"]:
            merged["runs"].append({**run, "run": run["run"] + offset})
        for ref in part["reference"]["per_run"]:
            merged["reference"]["per_run"].append({**ref, "run": ref["run"] + offset})
        for strategy, per_run in part["arms"].items():
            for run_id, rows in per_run.items():
                merged["arms"][strategy][int(run_id) + offset] = rows
    schedule = Schedule.from_config(merged["config"]["schedule"])
    finish(merged, merged["arms"], schedule, out, no_docs=no_docs)
    return 0


def report(summary: dict[str, Any], f1_full: dict[str, dict[str, Any]], n_seeds: int, budget: int) -> str:
    """Print the table; return the one-line headline for the docs."""
    table = Table(title=f"labels to reach 95% of full-pool value (mean ± std over {n_seeds} runs)")
    table.add_column("strategy")
    for metric in METRICS:
        table.add_column(f"to 95% {metric}")
    table.add_column(f"stays >= 95% {HEADLINE}")
    table.add_column(f"F1 best @{budget}")
    table.add_column(f"defects @{budget}")
    for strategy, entry in summary["strategies"].items():
        cells = []
        for metric in METRICS:
            reach = entry["reach"][metric]
            n, total = reach["stats"]["n"], len(reach["per_seed"])
            text = fmt_mean_std(reach["stats"], 0) if n else "not reached"
            cells.append(text + ("" if n == total else f" ({n}/{total} seeds)"))
        stay = entry["reach"][HEADLINE]["sustained_stats"]
        cells.append(
            (fmt_mean_std(stay, 0) if stay["n"] else "never")
            + ("" if stay["n"] == n_seeds else f" ({stay['n']}/{n_seeds} seeds)")
        )
        cells.append(fmt_mean_std(entry["at_budget"]["f1_best"]))
        cells.append(fmt_mean_std(entry["at_budget"]["defects_found"], 1))
        table.add_row(strategy, *cells)
    console.print(table)
    strategies = summary["strategies"]
    seed_labels = min(r["labels"] for e in strategies.values() for r in e["curve"][:1])
    parts = []
    for metric, label in ((HEADLINE, f"F1_full {f1_full[HEADLINE]['mean']:.2f} (best thr)"), ("auc", "AUC")):
        ratio = summary["ratios"][metric]
        best = ratio.get("best_strategy")
        if ratio.get("status") == "measured":
            reach = strategies[best]["reach"][metric]
            floor = sum(v == seed_labels for v in reach["per_seed"].values())
            note = f", {floor} seed(s) at the {seed_labels}-label seed set" if floor else ""
            random_stats = fmt_mean_std(strategies["random"]["reach"][metric]["stats"], 0)
            verdict = "met" if ratio["target_met"] else "NOT met"
            parts.append(
                f"{label}: first reaches 95% with {best} {fmt_mean_std(reach['stats'], 0)} labels vs random "
                f"{random_stats}, ratio {ratio['ratio']:.2f} (target <= {TARGET_RATIO:.2f}: {verdict}{note})"
            )
        elif ratio.get("status") == "bound":
            parts.append(f"{label}: {best}/random < {ratio['ratio_upper_bound']:.2f} (random not reached)")
        else:
            parts.append(f"{label}: no strategy reached 95% on every seed (target NOT met)")
    stay = summary["ratios"][HEADLINE]["sustained"]
    if stay.get("status") == "measured":
        best_stay = strategies[stay["best_strategy"]]["reach"][HEADLINE]["sustained_stats"]
        random_stay = strategies["random"]["reach"][HEADLINE]["sustained_stats"]
        parts.append(
            f"from where F1 stays above the bar: {stay['best_strategy']} {fmt_mean_std(best_stay, 0)} vs "
            f"random {fmt_mean_std(random_stay, 0)}, ratio {stay['ratio']:.2f} "
            f"({'met' if stay['target_met'] else 'NOT met'})"
        )
    else:
        parts.append(f"sustained F1 reach: {stay['status']}")
    text = "; ".join(parts)
    most = max(
        (s for s in summary["strategies"] if s != "random"),
        key=lambda s: summary["strategies"][s]["at_budget"]["defects_found"]["mean"] or 0.0,
        default=None,
    )
    if most is not None and summary["strategies"][most]["defects_vs_random_at_budget"]:
        factor = summary["strategies"][most]["defects_vs_random_at_budget"]
        text += f"; defects labelled at {budget}: {most} {factor:.1f}x random"
    pooled = summary.get("pooled")
    if pooled is not None and pooled.get("status") == "measured":
        text = f"{report_pooled(pooled)}; per fold, each against its own bar: {text}"
    console.print(text)
    return text


def report_pooled(pooled: dict[str, Any]) -> str:
    """Print the cross-validated (pooled) table; return its part of the headline."""
    full = pooled["full"]
    table = Table(
        title=f"{pooled['folds']}-fold CV, validation predictions pooled: labels to reach 95% of the "
        f"full-pool value (F1 best {full['f1_best']:.3f}, F1@0.5 {full['f1_05']:.3f}, AUC {full['auc']:.3f})"
    )
    table.add_column("strategy")
    for metric in METRICS:
        table.add_column(f"{metric}: first / stays")
    for strategy, reach in pooled["reach"].items():

        def cell(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"

        table.add_row(
            strategy, *(f"{cell(reach[m]['first'])} / {cell(reach[m]['sustained'])}" for m in METRICS)
        )
    console.print(table)
    parts = []
    for metric, label in ((HEADLINE, f"F1 (best thr; full pool {full[HEADLINE]:.2f})"), ("auc", "AUC")):
        for kind, words in (("first", "first reaches"), ("sustained", "stays above")):
            r = pooled["ratios"][metric][kind]
            if r["status"] == "measured":
                verdict = "met" if r["target_met"] else "NOT met"
                parts.append(
                    f"{label} {words} 95%: {r['best_strategy']} {r['labels']:.0f} vs random "
                    f"{r['random_labels']:.0f} labels, ratio {r['ratio']:.2f} ({verdict})"
                )
            elif "ratio_upper_bound" in r:
                parts.append(
                    f"{label} {words} 95%: {r['best_strategy']} {r['labels']:.0f} labels, random never: "
                    f"ratio < {r['ratio_upper_bound']:.2f}"
                )
            else:
                parts.append(f"{label} {words} 95%: {r['status']}")
    return f"CV pooled ({pooled['folds']} folds): " + "; ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
