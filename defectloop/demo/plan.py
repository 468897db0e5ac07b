"""The demo's plan as pure functions: its options, the split of the photos, the label budget per round,
the random arm's draws, where a rerun resumes, and how long a size will take (no torch, no database)."""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "ARMS",
    "DEFAULT_OPTIONS",
    "TIME_BUDGET_S",
    "DemoOptions",
    "PhotoSplit",
    "estimate_seconds",
    "label_targets",
    "next_round",
    "random_draws",
    "seed_draw",
    "split_photos",
]

ARMS = ("active", "random")
TIME_BUDGET_S = 600.0
"""What the default is sized for on a 2-core machine; a larger choice is announced with its estimate."""


@dataclass(frozen=True)
class DemoOptions:
    """Everything that decides what a demo run does; stored with the run so that a rerun resumes it as
    it was started. Defaults: sized to finish within ``TIME_BUDGET_S`` on 2 cores and to show learning."""

    rounds: int = 5
    batch: int = 20
    seed_labels: int = 30
    n_images: int = 600
    image_size: int = 64
    channels: int = 3
    epochs: int = 8
    architectures: tuple[str, ...] = ("improved_cnn",)
    dataset: str | None = None
    class_map: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    test_fraction: float = 0.25
    """Share of the photos in the frozen test set: scored for both arms every round, never in the loop."""
    compare_fraction: float = 0.15
    """Share of the photos given to the loop as its frozen evaluation set (champion vs challengers)."""
    feed_seconds: float = 15.0
    """The camera folder is fed over this long."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "architectures", tuple(self.architectures))
        object.__setattr__(self, "class_map", dict(self.class_map))
        for name in ("rounds", "seed_labels", "n_images", "epochs"):
            if getattr(self, name) < (0 if name == "rounds" else 1):
                raise ValueError(
                    f"{name} must be >= {0 if name == 'rounds' else 1}, got {getattr(self, name)}"
                )
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if not self.architectures:
            raise ValueError("give at least one architecture")
        if not (0 < self.test_fraction < 1 and 0 < self.compare_fraction < 1):
            raise ValueError("test_fraction and compare_fraction must lie in (0, 1)")
        if self.test_fraction + self.compare_fraction >= 0.9:
            raise ValueError("test_fraction + compare_fraction leave too few photos for the camera")
        if self.feed_seconds < 0:
            raise ValueError(f"feed_seconds must be >= 0, got {self.feed_seconds}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["architectures"] = list(self.architectures)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DemoOptions:
        """The options a run stored; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "architectures" in values:
            values["architectures"] = tuple(values["architectures"])
        return cls(**values)


DEFAULT_OPTIONS = DemoOptions()


@dataclass(frozen=True)
class PhotoSplit:
    """Photo keys by role: ``pool`` goes to the camera, ``compare`` is the loop's frozen evaluation set,
    ``test`` the demo's own frozen set that both arms are scored on."""

    pool: tuple[str, ...]
    compare: tuple[str, ...]
    test: tuple[str, ...]


def split_photos(
    labels: Mapping[str, str],
    groups: Mapping[str, str],
    *,
    good_class: str,
    test_fraction: float,
    compare_fraction: float,
    seed: int,
) -> PhotoSplit:
    """Deal whole groups (tiles of one photo stay together) to test, compare and pool, stratified by
    whether the group holds a defect; seeded, so the same photos always give the same split. Each of
    test and compare gets at least one group of each stratum that has three or more groups."""
    by_group: dict[str, list[str]] = {}
    for key in sorted(labels):
        by_group.setdefault(groups.get(key, key), []).append(key)
    rng = random.Random(seed)
    test: list[str] = []
    compare: list[str] = []
    pool: list[str] = []
    for has_defect in (False, True):
        stratum = sorted(
            g for g, keys in by_group.items() if any(labels[k] != good_class for k in keys) == has_defect
        )
        rng.shuffle(stratum)
        n = len(stratum)
        n_test = round(test_fraction * n)
        n_compare = round(compare_fraction * n)
        if n >= 3:
            n_test, n_compare = max(1, n_test), max(1, n_compare)
        for i, group in enumerate(stratum):
            target = test if i < n_test else compare if i < n_test + n_compare else pool
            target.extend(by_group[group])
    return PhotoSplit(pool=tuple(sorted(pool)), compare=tuple(sorted(compare)), test=tuple(sorted(test)))


def label_targets(*, seed_labels: int, batch: int, rounds: int, pool_size: int) -> list[int]:
    """Labels each arm holds after round 0 (the shared seed), 1, ..., ``rounds``: the seed, then one
    batch more per round, never more than the pool holds. Both arms get the same budget."""
    return [min(pool_size, seed_labels + r * batch) for r in range(rounds + 1)]


def _permutation(keys: Collection[str], seed: int, salt: str) -> list[str]:
    ordered = sorted(keys)
    random.Random(f"{seed}:{salt}").shuffle(ordered)
    return ordered


def seed_draw(pool: Collection[str], *, size: int, seed: int) -> list[str]:
    """Round 0's labels, shared by both arms: ``size`` photos of the pool drawn at random (seeded)."""
    return _permutation(pool, seed, "seed")[: max(0, size)]


def random_draws(pool: Collection[str], *, seed_set: Collection[str], total: int, seed: int) -> list[str]:
    """The random arm's labelled photos when it holds ``total``: the seed set, then photos drawn at random
    from the rest of the pool, in a fixed order, so round r's set contains round r-1's (a rerun draws the
    same). Never anything outside ``pool`` (the frozen sets are not in it)."""
    chosen = [key for key in sorted(seed_set) if key in pool]
    seeds = set(chosen)
    rest = [key for key in _permutation(pool, seed, "random-arm") if key not in seeds]
    return chosen + rest[: max(0, total - len(chosen))]


def next_round(recorded: Mapping[str, Collection[int]], rounds: int) -> int:
    """The round a (re)run starts at: the first one not recorded for both arms. ``rounds + 1`` when all
    are (rounds 0 ... ``rounds``): the run only has its report left to write."""
    for r in range(rounds + 1):
        if any(r not in recorded.get(arm, ()) for arm in ARMS):
            return r
    return rounds + 1


# Seconds on a loaded 2-core machine, measured with improved_cnn at 64 px (benchmarks/bench_demo.py).
_START_S = 45.0  # processes start and import torch; the first champions are loaded
_PER_PHOTO_S = 0.06  # ingest + one prediction per photo (and the frozen sets' import and scoring)
_PER_LABEL_EPOCH_S = 0.012  # training cost per labelled image per epoch at 64 px, one architecture
_PER_ROUND_S = 12.0  # the round's fixed cost: retrain request, comparison, re-scoring, saving


def estimate_seconds(options: DemoOptions) -> float:
    """A rough duration of the whole demo on a 2-core machine, to warn before a long run."""
    pool = options.n_images * (1.0 - options.test_fraction - options.compare_fraction)
    targets = label_targets(
        seed_labels=options.seed_labels, batch=options.batch, rounds=options.rounds, pool_size=int(pool)
    )
    scale = (options.image_size / 64.0) ** 2 * len(options.architectures)
    # Each round trains the active arm's architectures and the random arm's one, binary + multiclass
    # (multiclass on the defects only: about a third more).
    training = sum(t * options.epochs * _PER_LABEL_EPOCH_S * 1.33 for t in targets) * (scale + 1.0)
    rescoring = options.rounds * pool * _PER_PHOTO_S * 0.5 * (options.image_size / 64.0) ** 2
    return (
        _START_S
        + options.n_images * _PER_PHOTO_S
        + training
        + rescoring
        + (options.rounds + 1) * _PER_ROUND_S
    )


def round_up_minutes(seconds: float) -> int:
    return max(1, math.ceil(seconds / 60.0))


def sequence_text(values: Sequence[float]) -> str:
    return " -> ".join(f"{v:.3f}" for v in values)
