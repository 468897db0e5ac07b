"""Grad-CAM faithfulness per architecture on the AITEX validation defect tiles (pointing game).

For every validation tile labelled defect, the Grad-CAM heat-map of the defect class
(``models.gradcam.explain``, target class = defect) is compared with the tile's defect mask
(``aitex-tiles/masks``, shrunk to the model's input size: a cell is defect when any of its pixels is).
Pointing share = the share of tiles whose heat-map maximum falls inside the mask
(``models.gradcam.pointing_share``), exactly and within a tolerance of a few input pixels. Baselines:
a uniformly random point (its expected share is the mean mask area fraction, dilated by the
tolerance) and the tile centre. Also: the share of heat-map mass inside the mask ("energy") against
the mask's area fraction, the share among tiles the model detects (p(defect) > 0.5) and among those
it misses, per defect type, and seconds per explained image.

Models: the checkpoints bench_quality.py wrote (``--checkpoints DIR``, verified by their sha256 in
``DIR/index.json``), which also fix the split; an architecture without a checkpoint is retrained
briefly here (``--retrain-epochs``) and marked so in the JSON.

Run: ``.venv/bin/python benchmarks/bench_gradcam.py`` after ``bench_quality.py`` (under a minute; for
the 128 px models add ``--checkpoints /tmp/defectloop-bench/quality-checkpoints-128 --out
benchmarks/results/gradcam_128.json``),
``--quick`` for a smoke run on the quick quality checkpoints (or a 1-epoch retrain; /tmp, no docs row).
Writes benchmarks/results/gradcam.json, a docs row, and benchmarks/results/gradcam_gallery.png (AITEX tiles
 under their heat-maps: for looking at, never committed, see .gitignore).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
import torch
from common import (
    ARCHS,
    QUALITY_CHECKPOINTS,
    QUALITY_QUICK_CHECKPOINTS,
    RESULTS_DIR,
    THREADS_HELP,
    IntArray,
    Tiles,
    command_line,
    console,
    decoded_dataset,
    load_tiles,
    machine_info,
    relative,
    require_dataset,
    save_png,
    set_threads,
    setup_logging,
    split_by_strip,
    stack_images,
    write_docs_row,
    write_json,
)
from PIL import Image
from rich.table import Table
from torch import nn

from models.data import BINARY_CLASSES, ImageDataset, InputSpec
from models.gradcam import explain, overlay_image, pointing_hit, pointing_share, read_mask
from models.registry import get_spec
from models.train import TrainConfig, load_checkpoint, predict_dataset, train_model

NAME = "gradcam"
SCRIPT = "benchmarks/bench_gradcam.py"
BoolArray = npt.NDArray[np.bool_]


@dataclass
class Model:
    arch: str
    model: nn.Module
    spec: InputSpec
    split_seed: int
    val_fraction: float
    source: str


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="smoke run on the quick quality checkpoints")
    p.add_argument(
        "--checkpoints",
        type=Path,
        help=f"bench_quality.py's checkpoint folder (default {QUALITY_CHECKPOINTS})",
    )
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--tolerances", type=int, nargs="+", default=[0, 4, 8], help="pixels at the model input")
    p.add_argument("--retrain-epochs", type=int, default=3, help="for an architecture without a checkpoint")
    p.add_argument("--image-size", type=int, default=64, help="input size when retraining")
    p.add_argument("--split-seed", type=int, default=0, help="split when retraining")
    p.add_argument("--val-fraction", type=float, default=0.2, help="split when retraining")
    p.add_argument("--batch-size", type=int, default=16, help="images per Grad-CAM call")
    p.add_argument("--gallery-tiles", type=int, default=6)
    p.add_argument("--threads", type=int, default=2, help=THREADS_HELP)
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/gradcam.json)")
    p.add_argument("--no-docs", action="store_true", help="do not write the docs/benchmarks.md row")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.checkpoints = args.checkpoints or QUALITY_QUICK_CHECKPOINTS
        args.retrain_epochs, args.image_size = 1, 64
        args.no_docs = True
    args.checkpoints = args.checkpoints or QUALITY_CHECKPOINTS
    return args


# --- models ---------------------------------------------------------------------------------------


def load_models(args: argparse.Namespace, tiles: Tiles) -> list[Model]:
    index_path = args.checkpoints / "index.json"
    index: dict[str, Any] = {}
    if index_path.is_file():
        index = json.loads(index_path.read_text(encoding="utf-8")).get("archs", {})
    else:
        console.print(f"[yellow]no {index_path}: every architecture is retrained briefly[/yellow]")
    models = []
    for arch in args.archs:
        entry = index.get(arch)
        if entry is not None and (args.checkpoints / entry["path"]).is_file():
            loaded = load_checkpoint(args.checkpoints / entry["path"], expected_sha256=entry["sha256"])
            extra = loaded.extra
            models.append(
                Model(
                    arch,
                    loaded.model,
                    loaded.input_spec,
                    int(extra.get("split_seed", args.split_seed)),
                    float(extra.get("val_fraction", args.val_fraction)),
                    f"checkpoint {args.checkpoints / entry['path']} (sha256 {loaded.sha256[:12]}, "
                    f"best epoch {extra.get('best_epoch')} of {extra.get('epochs_run')})",
                )
            )
        else:
            models.append(retrain(arch, args, tiles))
    return models


def retrain(arch: str, args: argparse.Namespace, tiles: Tiles) -> Model:
    """A brief training run for an architecture that has no checkpoint (quality bench not run)."""
    console.print(f"[yellow]{arch}: no checkpoint, retraining {args.retrain_epochs} epoch(s)[/yellow]")
    spec = InputSpec(image_size=args.image_size, channels=1)
    train, val = split_by_strip(tiles, seed=args.split_seed, val_fraction=args.val_fraction)
    if args.quick:  # all defects and a few hundred ok tiles
        rng = np.random.default_rng(0)
        oks = train[tiles.labels[train] == 0]
        train = np.sort(
            np.concatenate([train[tiles.labels[train] == 1], rng.choice(oks, 300, replace=False)])
        )
    train_ds = decoded_dataset(
        [tiles.records[i] for i in train], tiles.labels[train].tolist(), spec, description="decode train"
    ).with_augment(True)
    val_ds = decoded_dataset(
        [tiles.records[i] for i in val], tiles.labels[val].tolist(), spec, description="decode val"
    )
    config = TrainConfig(
        architecture=arch,
        task="binary",
        class_names=BINARY_CLASSES,
        input_spec=spec,
        epochs=args.retrain_epochs,
        patience=args.retrain_epochs,
        threads=args.threads,
    )
    trained = train_model(config, train_ds, val_ds, progress=True)
    return Model(
        arch,
        trained.model,
        spec,
        args.split_seed,
        args.val_fraction,
        f"retrained here for {args.retrain_epochs} epoch(s) (no checkpoint)",
    )


# --- masks and baselines --------------------------------------------------------------------------


def shrink_mask(mask: BoolArray, size: int) -> BoolArray:
    """The mask at the model's input size; a cell is defect when any pixel under it is (box filter)."""
    if mask.shape == (size, size):
        return mask
    small = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BOX)
    return np.asarray(small) > 0


def dilate(mask: BoolArray, radius: int) -> BoolArray:
    """Pixels within ``radius`` (Euclidean, as ``pointing_hit``'s tolerance disc) of a mask pixel."""
    if radius <= 0:
        return mask
    h, w = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                out |= padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
    return out


def centre_hit(mask: BoolArray, tolerance: int) -> bool:
    h, w = mask.shape
    return bool(dilate(mask, tolerance)[h // 2, w // 2])


def feature_map_size(m: Model, images: torch.Tensor) -> list[int]:
    """Height and width of the layer Grad-CAM weighs: the heat-map's real resolution."""
    layer = get_spec(m.arch).gradcam_target(m.model)
    shapes: list[list[int]] = []

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        shapes.append([int(v) for v in output.shape[-2:]])

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            m.model.eval()(images[:1])
    finally:
        handle.remove()
    return shapes[0]


def argmax_point(heat: npt.NDArray[np.float32]) -> tuple[int, int]:
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(row), int(col)


# --- measurement ----------------------------------------------------------------------------------


def measure(
    m: Model, tiles: Tiles, datasets: dict[tuple[int, int, float], tuple[ImageDataset, IntArray]], args: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pointing figures for one model, and the arrays the gallery needs."""
    key = (m.spec.image_size, m.split_seed, m.val_fraction)
    if key not in datasets:
        _, val = split_by_strip(tiles, seed=m.split_seed, val_fraction=m.val_fraction)
        defect_val = val[(tiles.labels[val] == 1)]
        missing = [i for i in defect_val if tiles.records[i].mask_path is None]
        if missing:
            raise SystemExit(f"{len(missing)} defect tile(s) have no mask under {tiles.root / 'masks'}")
        ds = decoded_dataset(
            [tiles.records[i] for i in defect_val],
            [1] * len(defect_val),
            m.spec,
            description=f"decode val defects {m.spec.image_size} px",
        )
        datasets[key] = (ds, defect_val)
    ds, defect_val = datasets[key]
    images = stack_images(ds)
    masks = [shrink_mask(read_mask(tiles.records[i].mask_path), m.spec.image_size) for i in defect_val]
    p_defect = predict_dataset(m.model, ds)[:, 1]
    t0 = time.perf_counter()
    heat = np.concatenate(
        [
            explain(
                m.model, m.arch, images[s : s + args.batch_size], [1] * len(images[s : s + args.batch_size])
            )
            for s in range(0, len(images), args.batch_size)
        ]
    )
    seconds = time.perf_counter() - t0
    detected = p_defect > 0.5
    per_tol: dict[str, Any] = {}
    for tol in args.tolerances:
        hits = np.array([pointing_hit(h, mk, tolerance=tol) for h, mk in zip(heat, masks, strict=True)])
        share = pointing_share(list(heat), masks, tolerance=tol)
        per_tol[str(tol)] = {
            "pointing_share": share,
            "hits": int(hits.sum()),
            "random_point_share": float(np.mean([dilate(mk, tol).mean() for mk in masks])),
            "centre_share": float(np.mean([centre_hit(mk, tol) for mk in masks])),
            "share_detected": float(hits[detected].mean()) if detected.any() else None,
            "share_missed": float(hits[~detected].mean()) if (~detected).any() else None,
        }
    hits0 = [pointing_hit(h, mk) for h, mk in zip(heat, masks, strict=True)]
    by_type: dict[str, list[bool]] = defaultdict(list)
    for i, hit in zip(defect_val, hits0, strict=True):
        by_type[tiles.info[i].get("defect_name") or "unknown"].append(hit)
    energy = [
        float((h * mk).sum() / h.sum()) if h.sum() > 0 else 0.0 for h, mk in zip(heat, masks, strict=True)
    ]
    flat = int(sum(float(h.max()) == float(h.min()) for h in heat))
    result = {
        "source": m.source,
        "input_size": m.spec.image_size,
        "heatmap_resolution": feature_map_size(m, images),
        "tiles": len(defect_val),
        "detected_at_05": int(detected.sum()),
        "tolerances": per_tol,
        "heat_mass_in_mask": float(np.mean(energy)),
        "mask_area_fraction": float(np.mean([mk.mean() for mk in masks])),
        "flat_heatmaps": flat,
        "by_defect_type": {k: {"tiles": len(v), "hits": int(sum(v))} for k, v in sorted(by_type.items())},
        "seconds_per_image": seconds / max(len(defect_val), 1),
    }
    arrays = {
        "pixels": np.stack([ds.pixels(i)[:, :, 0] for i in range(len(ds))]),
        "heat": heat,
        "masks": masks,
        "p_defect": p_defect,
        "hits": hits0,
        "defect_px": [int(tiles.info[i].get("defect_px") or 0) for i in defect_val],
        "names": [tiles.records[i].path.name for i in defect_val],
    }
    return result, arrays


def gallery(arrays: dict[str, dict[str, Any]], n_tiles: int, path: Path) -> list[str]:
    """Rows: the tile with its mask contour, then one Grad-CAM overlay per architecture (X = maximum,
    green on the defect, red off it; no X: a flat map). Columns: tiles spread over defect sizes,
    largest first."""
    archs = list(arrays)
    first = arrays[archs[0]]
    order = np.argsort(-np.asarray(first["defect_px"]), kind="stable")
    picks = [int(order[round(j)]) for j in np.linspace(0, len(order) - 1, min(n_tiles, len(order)))]
    fig, axes = plt.subplots(len(archs) + 1, len(picks), figsize=(1.35 * len(picks), 1.45 * (len(archs) + 1)))
    axes = np.atleast_2d(axes)
    for col, i in enumerate(picks):
        ax = axes[0, col]
        ax.imshow(first["pixels"][i], cmap="gray", vmin=0, vmax=255)
        ax.contour(first["masks"][i], levels=[0.5], colors="yellow", linewidths=0.6)
        ax.set_title(f"{first['defect_px'][i]} px", fontsize=6)
        for row, arch in enumerate(archs, start=1):
            a = arrays[arch]
            ax = axes[row, col]
            ax.imshow(overlay_image(a["pixels"][i], a["heat"][i], alpha=0.45))
            ax.contour(a["masks"][i], levels=[0.5], colors="white", linewidths=0.5)
            if float(a["heat"][i].max()) > float(a["heat"][i].min()):  # a flat map points nowhere
                r, c = argmax_point(a["heat"][i])
                # A filled X with a white edge: the maximum sits on the map's hottest (red) spot.
                colour = "lime" if a["hits"][i] else "red"
                ax.plot(c, r, marker="X", ms=7, mfc=colour, mec="white", mew=0.8, linestyle="none")
            ax.set_title(f"p={a['p_defect'][i]:.2f}", fontsize=6)
            if col == 0:
                ax.set_ylabel(arch, fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("tile + mask", fontsize=6)
    fig.tight_layout(pad=0.3)
    save_png(fig, path, dpi=80, colors=128)
    plt.close(fig)
    return [first["names"][i] for i in picks]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    set_threads(args.threads)
    started = time.perf_counter()
    base = Path("/tmp/defectloop-bench") if args.quick else RESULTS_DIR
    out = args.out or base / f"{NAME}.json"
    gallery_path = out.with_name(f"{out.stem}_gallery.png")
    tiles = load_tiles(require_dataset())
    models = load_models(args, tiles)
    datasets: dict[tuple[int, int, float], tuple[ImageDataset, IntArray]] = {}
    result: dict[str, Any] = {
        "benchmark": NAME,
        "description": "Grad-CAM pointing share on validation defect tiles per architecture vs random point",
        "command": command_line(),
        "config": {
            "target_class": "defective (1)",
            "tolerances_px_at_input": args.tolerances,
            "mask_resize": "box filter to the input size; a cell is defect if any pixel under it is",
            "random_point_baseline": "mean over tiles of the (tolerance-dilated) mask area fraction",
            "weights": "from scratch (pretrained=False, nothing downloaded)",
        },
        "machine": machine_info(args.threads),
        "archs": {},
    }
    arrays: dict[str, dict[str, Any]] = {}
    for m in models:
        console.print(f"[bold]{m.arch}[/bold]: {m.source}")
        result["archs"][m.arch], arrays[m.arch] = measure(m, tiles, datasets, args)
        figures = result["archs"][m.arch]["tolerances"]
        console.print(
            f"{m.arch}: pointing share "
            + ", ".join(
                f"tol {t}: {v['pointing_share']:.2f} (random {v['random_point_share']:.2f})"
                for t, v in figures.items()
            )
        )
    result["inputs"] = {
        "dataset": tiles.summary(),
        "val_defect_tiles": {f"{k[0]}px/split{k[1]}": len(v[1]) for k, v in datasets.items()},
    }
    same_tiles = len({len(a["names"]) for a in arrays.values()}) == 1 and len(datasets) == 1
    if arrays and same_tiles:
        result["gallery"] = {
            "path": relative(gallery_path),
            "tiles": gallery(arrays, args.gallery_tiles, gallery_path),
            "bytes": gallery_path.stat().st_size,
        }
    result["wall_seconds"] = time.perf_counter() - started
    write_json(out, result)

    table = Table(title="Grad-CAM pointing share, validation defect tiles (target class: defect)")
    table.add_column("arch")
    table.add_column("map")
    for tol in args.tolerances:
        table.add_column(f"tol {tol} px")
        table.add_column(f"random {tol}")
    table.add_column("heat in mask")
    table.add_column("mask area")
    table.add_column("detected")
    for arch, e in result["archs"].items():
        cells = []
        for tol in args.tolerances:
            v = e["tolerances"][str(tol)]
            cells += [f"{v['pointing_share']:.2f}", f"{v['random_point_share']:.3f}"]
        table.add_row(
            arch,
            "x".join(map(str, e["heatmap_resolution"])),
            *cells,
            f"{e['heat_mass_in_mask']:.3f}",
            f"{e['mask_area_fraction']:.3f}",
            f"{e['detected_at_05']}/{e['tiles']}",
        )
    console.print(table)
    if not args.no_docs and result["archs"]:
        t0, t_last = str(args.tolerances[0]), str(args.tolerances[-1])
        first = next(iter(result["archs"].values()))
        shares = ", ".join(
            f"{arch} {e['tolerances'][t0]['pointing_share']:.2f}/"
            f"{e['tolerances'][t_last]['pointing_share']:.2f}"
            for arch, e in result["archs"].items()
        )
        write_docs_row(
            f"Grad-CAM pointing share on {first['tiles']} val defect tiles, {first['input_size']} px, "
            f"tolerance {t0}/{t_last} px",
            f"{shares}; random point {first['tolerances'][t0]['random_point_share']:.2f}/"
            f"{first['tolerances'][t_last]['random_point_share']:.2f}",
            SCRIPT,
        )
    console.print(f"wrote {relative(out)} ({result['wall_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
