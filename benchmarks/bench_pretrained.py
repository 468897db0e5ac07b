"""What the packaged ImageNet encoder (EfficientNet-Lite0, models.pretrained) gives on the AITEX tiles, on
this 2-core machine, with no hub and few labels: a frozen encoder at native 256 px.

1. Same fabric, supervised: a class-weighted logistic regression (L2, LBFGS) on each tile's pooled
   descriptor (global mean + max of encoder stages 3, 4 and 6; ``models.anomaly.pooled_descriptors``),
   4-fold CV by strip (``models.data.group_kfold``), the folds' validation scores pooled, defect F1 at
   the best threshold on the pooled scores (as bench_label_efficiency.py) and AUC. Seeds vary the fold
   assignment (the probe itself is deterministic).
2. New fabric, no label: ``models.anomaly`` fitted per fabric on its unlabelled tiles (defects included,
   as a camera folder holds them): the strips are split in two halves, a model fitted on each half scores
   the other half (a source is scored by a model fitted on its earlier photos). AUC per fabric; seeds vary
   the halves and the bank's subsample. Fabric 05 has no defect tile: no AUC.
3. Heat-maps: share of defect tiles whose anomaly-map maximum lies in the defect mask (0 and 8 px
   tolerance), beside a random point's expected share (mask area, dilated).
4. New fabric with a label budget: leave one fabric out; the probe is trained on the other fabrics plus
   10 % of the new fabric's tiles chosen at random, by the anomaly score (top first) or half by anomaly
   and half by the base probe's uncertainty; defect F1 (best threshold) and AUC on the new fabric's
   remaining tiles. Inputs: pooled descriptor + the tile's per-fabric anomaly percentile.

Timing: encoder feature extraction for all tiles (one pass, cached for the run) and the training of
each probe are stated. Run: ``nice -n 19 .venv/bin/python benchmarks/bench_pretrained.py --threads 1``.
``--quick``: a subsample, 128 px, one seed, no docs rows.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    RESULTS_DIR,
    THREADS_HELP,
    binary_metrics,
    command_line,
    console,
    load_tiles,
    machine_info,
    mean_std,
    relative,
    require_dataset,
    roc_auc,
    set_threads,
    setup_logging,
    write_docs_row,
    write_json,
)

from models.anomaly import (
    AnomalyConfig,
    build_encoder,
    fit_anomaly_model,
    patch_descriptors,
    pooled_descriptors,
    stage_features,
)
from models.data import ImageDataset, InputSpec, group_kfold
from models.gradcam import pointing_hit, read_mask
from models.pretrained import packaged_weights
from models.train import file_sha256

NAME = "pretrained"
SCRIPT = "benchmarks/bench_pretrained.py"
PROBE_STAGES = (3, 4, 6)
PATCH_STAGES = (2, 3)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--l2", type=float, default=1e-2)
    p.add_argument("--bank-size", type=int, default=8192)
    p.add_argument("--budget", type=float, default=0.10)
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    p.add_argument("--out", default=None)
    p.add_argument(
        "--cache",
        type=Path,
        help="npz of the encoder features: read when it exists (its tiles and size must match), else written",
    )
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.seeds, args.no_docs = 128, [0], True
    return args


def logistic(x_train: torch.Tensor, y_train: np.ndarray, x_test: torch.Tensor, l2: float) -> np.ndarray:
    """Class-weighted L2 logistic regression (standardised inputs, LBFGS); p(defect) of ``x_test``."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    y = torch.as_tensor(y_train, dtype=torch.float32)
    pos = float(y.mean())
    weights = torch.where(y == 1, 0.5 / pos, 0.5 / (1 - pos))
    w = torch.zeros(a.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], lr=1, max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (
            weights * torch.nn.functional.binary_cross_entropy_with_logits(a @ w + bias, y, reduction="none")
        ).mean()
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        return torch.sigmoid(b @ w + bias).numpy().astype(np.float64)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    set_threads(args.threads)
    started = time.perf_counter()
    out = RESULTS_DIR / f"{NAME}.json" if args.out is None else Path(args.out)
    tiles = load_tiles(require_dataset())
    labels = tiles.labels
    fabric = np.array([row.get("fabric", "") for row in tiles.info])
    groups = np.array(tiles.groups)
    n = len(labels)
    if args.quick:
        rng = np.random.default_rng(0)
        keep = np.sort(
            np.concatenate(
                [np.flatnonzero(labels == 1), rng.choice(np.flatnonzero(labels == 0), 400, replace=False)]
            )
        )
    else:
        keep = np.arange(n)
    records = [tiles.records[i] for i in keep]
    labels, fabric, groups = labels[keep], fabric[keep], groups[keep]
    n = len(labels)
    spec = InputSpec(image_size=args.image_size, channels=1)
    weights = packaged_weights("efficientnet_lite0")
    encoder = build_encoder("efficientnet_lite0", weights)
    dataset = ImageDataset(records, labels.tolist(), spec, augment=False, cache=False)

    t0 = time.perf_counter()
    if args.cache is not None and args.cache.is_file():
        cached = np.load(args.cache)
        pooled_x, patch_x = torch.as_tensor(cached["pooled"]), torch.as_tensor(cached["patches"])
        extract_seconds = float(cached["seconds"])
        console.print(f"encoder features read from {args.cache} (computed in {extract_seconds:.0f} s)")
    else:
        console.print(f"encoder features for {n} tiles at {args.image_size} px ({args.threads} thread(s))")
        pooled, patches = [], []
        batch = 32
        for i in range(0, n, batch):
            x = torch.stack([dataset[j][0] for j in range(i, min(i + batch, n))])
            feats = stage_features(encoder, x, sorted(set(PROBE_STAGES) | set(PATCH_STAGES)))
            pooled.append(pooled_descriptors({s: feats[s] for s in PROBE_STAGES}))
            patches.append(patch_descriptors({s: feats[s] for s in PATCH_STAGES}).half())
            if (i // batch) % 10 == 0:
                console.print(f"  {i + len(x)}/{n} tiles, {time.perf_counter() - t0:.0f} s")
        pooled_x = torch.cat(pooled)
        patch_x = torch.cat(patches)
        extract_seconds = time.perf_counter() - t0
        if args.cache is not None:
            args.cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(args.cache, pooled=pooled_x.numpy(), patches=patch_x.numpy(), seconds=extract_seconds)
    console.print(f"features: {extract_seconds:.0f} s ({1000 * extract_seconds / n:.0f} ms per tile)")

    result: dict[str, Any] = {
        "benchmark": NAME,
        "command": command_line(),
        "machine": machine_info(args.threads),
        "inputs": {"tiles": n, "defects": int(labels.sum()), "image_size": args.image_size},
        "config": {
            "encoder": "efficientnet_lite0, packaged ImageNet weights, frozen",
            "weights_sha256": file_sha256(weights),
            "probe_stages": PROBE_STAGES,
            "patch_stages": PATCH_STAGES,
            "l2": args.l2,
            "folds": args.folds,
            "seeds": args.seeds,
            "bank_size": args.bank_size,
            "budget": args.budget,
            "threads": args.threads,
        },
        "feature_seconds": extract_seconds,
        "feature_ms_per_tile": 1000 * extract_seconds / n,
    }

    # 1. same fabric, 4-fold CV by strip, pooled
    same: list[dict[str, Any]] = []
    for seed in args.seeds:
        folds = group_kfold(records, labels.tolist(), n_splits=args.folds, seed=seed)
        scores = np.zeros(n)
        fit_seconds = []
        for train, val in folds:
            t = time.perf_counter()
            scores[val] = logistic(pooled_x[train], labels[train], pooled_x[val], args.l2)
            fit_seconds.append(time.perf_counter() - t)
        m = binary_metrics(labels, scores)
        same.append({"seed": seed, **m, "probe_fit_seconds": fit_seconds})
        console.print(f"same fabric, fold seed {seed}: F1 {m['f1_best']:.3f} AUC {m['auc']:.3f}")
    result["same_fabric"] = {
        "runs": same,
        "f1_best": mean_std([r["f1_best"] for r in same]),
        "auc": mean_std([r["auc"] for r in same]),
    }
    write_json(out, result)

    # 2. zero-shot anomaly per fabric (cross-fit by strip halves) and 3. heat-maps
    zero: dict[str, Any] = {}
    percentile = np.zeros((len(args.seeds), n))
    hits0, hits8, chance0, chance8 = [], [], [], []
    mask_cache: dict[int, np.ndarray] = {}
    fit_seconds_all = []
    for si, seed in enumerate(args.seeds):
        for fab in sorted(set(fabric.tolist())):
            idx = np.flatnonzero(fabric == fab)
            if labels[idx].sum() == 0 and si > 0:  # no AUC to measure: one fit gives its percentiles
                percentile[si, idx] = percentile[0, idx]
                continue
            strips = sorted(set(groups[idx].tolist()))
            rng = np.random.default_rng(seed)
            rng.shuffle(strips)
            half = set(strips[: len(strips) // 2])
            side = np.array([g in half for g in groups[idx]])
            scores = np.zeros(len(idx))
            for part in (True, False):
                fit_i, score_i = idx[side == part], idx[side != part]
                t = time.perf_counter()
                model = fit_anomaly_model(
                    encoder,
                    torch.empty(0),
                    AnomalyConfig(stages=PATCH_STAGES, bank_size=args.bank_size, seed=seed),
                    descriptors=patch_x[fit_i].float(),
                    groups=groups[fit_i].tolist(),
                    source=fab,
                )
                fit_seconds_all.append(time.perf_counter() - t)
                s, maps = model.score_descriptors(patch_x[score_i].float())
                scores[side != part] = s.numpy()
                percentile[si, score_i] = model.percentile(s.numpy())
                if si == 0:
                    for j, i in enumerate(score_i):
                        rec = records[i]
                        if labels[i] != 1 or rec.mask_path is None:
                            continue
                        mask = mask_cache.setdefault(i, read_mask(rec.mask_path))
                        heat = maps[j].numpy()
                        hits0.append(pointing_hit(heat, mask, tolerance=0))
                        hits8.append(pointing_hit(heat, mask, tolerance=8))
                        chance0.append(float(mask.mean()))
                        dil = torch.nn.functional.max_pool2d(
                            torch.as_tensor(mask, dtype=torch.float32)[None, None], 17, 1, 8
                        )
                        chance8.append(float(dil.mean()))
            if labels[idx].sum() == 0:
                continue
            auc = roc_auc(labels[idx], scores)
            zero.setdefault(fab, {"aucs": [], "defects": int(labels[idx].sum()), "tiles": len(idx)})[
                "aucs"
            ].append(auc)
            console.print(f"zero-shot anomaly, fabric {fab}, seed {seed}: AUC {auc:.3f}")
    for entry in zero.values():
        entry["auc"] = mean_std(entry["aucs"])
    result["zero_shot_anomaly"] = zero
    result["anomaly_fit_seconds"] = mean_std(fit_seconds_all)
    result["anomaly_pointing"] = {
        "defect_tiles": len(hits0),
        "share_0px": float(np.mean(hits0)) if hits0 else None,
        "share_8px": float(np.mean(hits8)) if hits8 else None,
        "random_point_0px": float(np.mean(chance0)) if chance0 else None,
        "random_point_8px": float(np.mean(chance8)) if chance8 else None,
    }
    console.print(f"anomaly heat-map pointing: {result['anomaly_pointing']}")
    write_json(out, result)

    # 4. new fabric with a 10 % label budget
    new: dict[str, Any] = {}
    for fab in sorted(zero):
        idx = np.flatnonzero(fabric == fab)
        base = np.flatnonzero(fabric != fab)
        budget = round(args.budget * len(idx))
        arms: dict[str, list[dict[str, Any]]] = {
            "random": [],
            "anomaly": [],
            "anomaly+uncertainty": [],
            "no label": [],
        }
        for si, seed in enumerate(args.seeds):
            x = torch.cat([pooled_x, torch.as_tensor(percentile[si], dtype=torch.float32)[:, None]], 1)
            base_p = logistic(x[base], labels[base], x[idx], args.l2)
            rng = np.random.default_rng(seed)
            order_anomaly = idx[np.argsort(-percentile[si, idx], kind="stable")]
            half = budget // 2
            top = order_anomaly[:half]
            uncertain = [
                i for i in idx[np.argsort(np.abs(base_p - 0.5), kind="stable")] if i not in set(top.tolist())
            ]
            picks = {
                "random": rng.choice(idx, budget, replace=False),
                "anomaly": order_anomaly[:budget],
                "anomaly+uncertainty": np.concatenate(
                    [top, np.asarray(uncertain[: budget - half], dtype=np.int64)]
                ),
                "no label": np.zeros(0, dtype=np.int64),
            }
            for arm, chosen in picks.items():
                train = np.concatenate([base, chosen]).astype(np.int64)
                test = np.setdiff1d(idx, chosen)
                p = logistic(x[train], labels[train], x[test], args.l2)
                m = binary_metrics(labels[test], p)
                arms[arm].append(
                    {
                        "seed": seed,
                        "f1_best": m["f1_best"],
                        "auc": m["auc"],
                        "defects_labelled": int(labels[chosen].sum()),
                    }
                )
        new[fab] = {
            "budget": budget,
            "tiles": len(idx),
            "arms": {
                arm: {
                    "runs": runs,
                    "f1_best": mean_std([r["f1_best"] for r in runs]),
                    "auc": mean_std([r["auc"] for r in runs]),
                }
                for arm, runs in arms.items()
            },
        }
        console.print(
            f"new fabric {fab} ({budget} labels): "
            + ", ".join(f"{a} F1 {v['f1_best']['mean']:.2f}" for a, v in new[fab]["arms"].items())
        )
    result["new_fabric"] = new
    result["wall_seconds"] = time.perf_counter() - started
    result["complete"] = True
    write_json(out, result)

    if not args.no_docs:
        sf = result["same_fabric"]
        write_docs_row(
            f"pretrained encoder, same fabric: frozen EfficientNet-Lite0 (packaged ImageNet weights) at "
            f"{args.image_size} px + logistic probe, 4-fold CV by strip pooled, {len(args.seeds)} fold seeds",
            f"defect F1 (best thr) {sf['f1_best']['mean']:.2f} ± {sf['f1_best']['std']:.2f}, AUC "
            f"{sf['auc']['mean']:.3f} ± {sf['auc']['std']:.3f} (target F1 >= 0.70, AUC >= 0.95: NOT met); "
            f"encoder pass {result['feature_ms_per_tile']:.0f} ms/tile ({extract_seconds / 60:.1f} min for "
            f"{n} tiles), probe fit < {max(max(r['probe_fit_seconds']) for r in same):.0f} s per fold",
            SCRIPT,
        )
        zs = ", ".join(f"{fab} {e['auc']['mean']:.2f}" for fab, e in zero.items())
        pt = result["anomaly_pointing"]
        write_docs_row(
            "unsupervised anomaly score per fabric (models.anomaly: frozen Lite0 stages 2+3, kNN k=3, bank "
            f"{args.bank_size} patches), zero-shot AUC, fitted on one half of the fabric's strips (defects "
            "included) scoring the other half",
            f"AUC {zs} (target >= 0.80); heat-map max in the defect mask {pt['share_0px']:.2f} (0 px) / "
            f"{pt['share_8px']:.2f} (8 px) on {pt['defect_tiles']} defect tiles vs random point "
            f"{pt['random_point_0px']:.2f} / {pt['random_point_8px']:.2f}",
            SCRIPT,
        )
        nf = "; ".join(
            f"{fab}: " + ", ".join(f"{arm} {v['f1_best']['mean']:.2f}" for arm, v in e["arms"].items())
            for fab, e in new.items()
        )
        write_docs_row(
            f"new fabric (leave one out), probe + anomaly percentile, {int(args.budget * 100)}% of its tiles "
            f"labelled, defect F1 (best thr) on the rest, {len(args.seeds)} seeds",
            f"{nf} (target >= 0.60)",
            SCRIPT,
        )
    console.print(f"wrote {relative(out)} ({(time.perf_counter() - started) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
