"""Quality of the four architectures on the AITEX tiles: full-pool validation F1 of the defect class.

Each registry architecture (baseline_cnn, improved_cnn, efficientnet_b0, resnet18) is trained from
scratch (pretrained=False, nothing downloaded) by the project's own ``models.train.train_model``
(AdamW + cosine, class-weighted cross-entropy, flips/rotations, early stopping on validation
macro-F1, best epoch kept) on every pool tile of one strip-level split (``group_split``, 20 %
validation, the same split as bench_label_efficiency.py by default), grayscale at ``--image-size``.
Reported per architecture: defect-class F1 at 0.5 and at the best validation threshold, AUC (ranks),
macro-F1, accuracy, ECE, best epoch, seconds per epoch (training + the per-epoch batch-norm and
validation passes). Reference to compare with (datasets README, 128 px, 12 epochs): a 0.57 M CNN 0.49
F1 at a tuned threshold, resnet18 0.50; figures move by about 0.1 between seeds.

``--save-checkpoints DIR`` keeps each trained model (atomic, sha256 in ``DIR/index.json``) for
bench_gradcam.py; the default DIR is under /tmp, never the repository.

Run: ``.venv/bin/python benchmarks/bench_quality.py --threads 1`` (64 px, up to 8 epochs: 9 minutes on
the shared 2-core machine; at 128 px one epoch of the four takes about 6 minutes there, so the 128 px
variant ``--image-size 128 --epochs 3 --patience 2 --out benchmarks/results/quality_128.json
--save-checkpoints /tmp/defectloop-bench/quality-checkpoints-128`` took 17 minutes),
``--quick`` for a 1-2 minute smoke run (64 px, 1 epoch, a subsample of the ok tiles; written to /tmp,
no docs row). Epochs per architecture: ``--epochs`` and ``--epochs-for ARCH=N``. Writes
benchmarks/results/quality.json and a docs/benchmarks.md row (one per configuration).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    ARCHS,
    QUALITY_CHECKPOINTS,
    QUALITY_QUICK_CHECKPOINTS,
    RESULTS_DIR,
    THREADS_HELP,
    IntArray,
    Tiles,
    binary_metrics,
    command_line,
    console,
    decoded_dataset,
    load_tiles,
    machine_info,
    relative,
    require_dataset,
    set_threads,
    setup_logging,
    split_by_strip,
    split_summary,
    write_docs_row,
    write_json,
)
from rich.table import Table

from models.data import BINARY_CLASSES, InputSpec
from models.registry import list_architectures
from models.train import TrainConfig, save_checkpoint, train_model

NAME = "quality"
SCRIPT = "benchmarks/bench_quality.py"
README_REFERENCE = "datasets README, 128 px, 12 epochs: 0.57 M CNN 0.49, resnet18 0.50 (F1, tuned threshold)"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, 1 epoch, 400 training tiles")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list_architectures())
    p.add_argument("--image-size", type=int, default=64, help="64 fits the budget; 128: see the docstring")
    p.add_argument("--epochs", type=int, default=8, help="epoch budget per architecture")
    p.add_argument(
        "--epochs-for",
        action="append",
        default=[],
        metavar="ARCH=N",
        help="a different epoch budget for one architecture (repeatable)",
    )
    p.add_argument("--patience", type=int, default=3, help="early stopping on validation macro-F1")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--max-train", type=int, default=0, help="keep all defects and subsample ok (0 = all)")
    p.add_argument("--threads", type=int, default=2, help=THREADS_HELP)
    p.add_argument(
        "--save-checkpoints",
        type=Path,
        metavar="DIR",
        help=(
            f"where the trained models go (default {QUALITY_CHECKPOINTS}; "
            f"--quick: {QUALITY_QUICK_CHECKPOINTS})"
        ),
    )
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/quality.json)")
    p.add_argument("--no-docs", action="store_true", help="do not write the docs/benchmarks.md row")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.epochs, args.epochs_for, args.max_train = 64, 1, [], 400
        args.no_docs = True
    args.save_checkpoints = args.save_checkpoints or (
        QUALITY_QUICK_CHECKPOINTS if args.quick else QUALITY_CHECKPOINTS
    )
    return args


def epoch_budgets(args: argparse.Namespace) -> dict[str, int]:
    budgets = dict.fromkeys(args.archs, args.epochs)
    for item in args.epochs_for:
        arch, _, n = item.partition("=")
        if arch not in budgets or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"--epochs-for {item!r}: expected ARCH=N with ARCH one of {args.archs}, N >= 1")
        budgets[arch] = int(n)
    return budgets


def subsample(tiles: Tiles, train: IntArray, limit: int, seed: int) -> IntArray:
    """All defect tiles of ``train`` and a seeded random share of its ok tiles, ``limit`` in all."""
    if not limit or len(train) <= limit:
        return train
    defects = train[tiles.labels[train] == 1]
    oks = train[tiles.labels[train] == 0]
    keep = np.random.default_rng(seed).choice(oks, max(limit - len(defects), 0), replace=False)
    return np.sort(np.concatenate([defects, keep]))


def count_parameters(model: Any) -> int:
    return sum(int(p.numel()) for p in model.parameters())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    set_threads(args.threads)
    started = time.perf_counter()
    budgets = epoch_budgets(args)
    out = args.out or (Path("/tmp/defectloop-bench") if args.quick else RESULTS_DIR) / f"{NAME}.json"

    tiles = load_tiles(require_dataset())
    train_idx, val_idx = split_by_strip(tiles, seed=args.split_seed, val_fraction=args.val_fraction)
    train_idx = subsample(tiles, train_idx, args.max_train, args.seed)
    spec = InputSpec(image_size=args.image_size, channels=1)
    records = tiles.records
    train_ds = decoded_dataset(
        [records[i] for i in train_idx], tiles.labels[train_idx].tolist(), spec, description="decode train"
    ).with_augment(True)
    val_ds = decoded_dataset(
        [records[i] for i in val_idx], tiles.labels[val_idx].tolist(), spec, description="decode val"
    )
    y_val = tiles.labels[val_idx]

    result: dict[str, Any] = {
        "benchmark": NAME,
        "description": "full-pool validation F1 (defect class) per architecture, from scratch",
        "command": command_line(),
        "complete": False,
        "inputs": {
            "dataset": tiles.summary(),
            "split": {
                "method": "models.data.group_split on fabric/strip groups, stratified",
                "seed": args.split_seed,
                "val_fraction": args.val_fraction,
                **split_summary(tiles, train_idx, val_idx),
            },
            "input_spec": spec.to_dict(),
        },
        "config": {
            "trainer": "models.train.train_model (AdamW + cosine, class-weighted CE, augmentation, "
            "early stopping on val macro-F1, best epoch kept)",
            "weights": "from scratch (pretrained=False, nothing downloaded)",
            "epochs": budgets,
            "patience": args.patience,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "max_train": args.max_train or None,
            "threads": args.threads,
            "seconds_per_epoch_includes": "training pass + batch-norm recalibration + validation pass",
            "reference": README_REFERENCE,
        },
        "machine": machine_info(args.threads),
        "archs": {},
    }
    index: dict[str, Any] = {}
    for arch in args.archs:
        config = TrainConfig(
            architecture=arch,
            task="binary",
            class_names=BINARY_CLASSES,
            input_spec=spec,
            epochs=budgets[arch],
            batch_size=args.batch_size,
            lr=args.lr,
            patience=args.patience,
            seed=args.seed,
            threads=args.threads,
        )
        console.print(f"[bold]{arch}[/bold]: up to {budgets[arch]} epochs at {args.image_size} px")
        t0 = time.perf_counter()
        trained = train_model(config, train_ds, val_ds, progress=True)
        seconds = time.perf_counter() - t0
        metrics = binary_metrics(y_val, trained.val_probs[:, 1])
        evaluation = trained.val_evaluation
        epoch_seconds = [row["seconds"] for row in trained.history]
        entry = {
            **metrics,
            "macro_f1": evaluation.macro_f1,
            "accuracy": evaluation.accuracy,
            "ece": evaluation.ece,
            "confusion_matrix": [list(row) for row in evaluation.confusion],
            "best_epoch": trained.best_epoch,
            "epochs_run": len(trained.history),
            "epoch_budget": budgets[arch],
            "stopped_early": trained.stopped_early,
            "seconds_per_epoch": float(np.mean(epoch_seconds)),
            "train_seconds": seconds,
            "parameters": count_parameters(trained.model),
            "history": trained.history,
        }
        if args.save_checkpoints is not None:
            path = args.save_checkpoints / f"{arch}.pt"
            sha = save_checkpoint(
                path,
                trained.model,
                architecture=arch,
                task="binary",
                class_names=BINARY_CLASSES,
                input_spec=spec,
                extra={
                    "benchmark": NAME,
                    "split_seed": args.split_seed,
                    "val_fraction": args.val_fraction,
                    "seed": args.seed,
                    "best_epoch": trained.best_epoch,
                    "epochs_run": len(trained.history),
                },
            )
            index[arch] = {"path": path.name, "sha256": sha, **entry}
            index[arch].pop("history")
            write_json(args.save_checkpoints / "index.json", {"split_seed": args.split_seed, "archs": index})
            entry["checkpoint"] = str(path)
        result["archs"][arch] = entry
        result["wall_seconds"] = time.perf_counter() - started
        write_json(out, result)
        console.print(
            f"{arch}: F1 best {metrics['f1_best']:.3f} (thr {metrics['best_threshold']:.2f}), "
            f"F1@0.5 {metrics['f1_05']:.3f}, AUC {metrics['auc']:.3f}, macro-F1 {evaluation.macro_f1:.3f}, "
            f"best epoch {trained.best_epoch}/{len(trained.history)}, "
            f"{entry['seconds_per_epoch']:.0f} s/epoch"
        )

    result.update(complete=True, wall_seconds=time.perf_counter() - started)
    write_json(out, result)
    table = Table(title=f"full-pool validation, {args.image_size} px, from scratch")
    for column in ("arch", "F1 best thr", "F1 @0.5", "AUC", "macro-F1", "best/run epochs", "s/epoch"):
        table.add_column(column)
    for arch, e in result["archs"].items():
        table.add_row(
            arch,
            f"{e['f1_best']:.3f}",
            f"{e['f1_05']:.3f}",
            f"{e['auc']:.3f}",
            f"{e['macro_f1']:.3f}",
            f"{e['best_epoch']}/{e['epochs_run']}",
            f"{e['seconds_per_epoch']:.0f}",
        )
    console.print(table)
    if not args.no_docs:
        epochs = sorted(set(budgets.values()))
        summary = ", ".join(
            f"{arch} {e['f1_best']:.2f} (AUC {e['auc']:.2f})" for arch, e in result["archs"].items()
        )
        write_docs_row(
            f"quality: full-pool val F1 (defect, tuned thr) per architecture, from scratch, "
            f"{args.image_size} px, {'/'.join(map(str, epochs))} epochs max, 1 seed",
            f"{summary}; README reference 0.49-0.50",
            SCRIPT,
        )
    console.print(f"wrote {relative(out)} ({result['wall_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
