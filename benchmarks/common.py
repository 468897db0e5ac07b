"""Helpers shared by the AITEX benchmark scripts (label efficiency, quality, Grad-CAM).

Where the data set is (``DEFECTLOOP_DATASETS_DIR``; a missing one exits with code 2 and says which
variable to set), what machine ran a benchmark, binary defect-class metrics in plain numpy (F1 at 0.5
and at the best threshold, AUC by ranks), the strip-level split, atomic JSON writing and the row each
script keeps in the table of ``docs/benchmarks.md``. Imported by the scripts as ``common`` (they run as
``python benchmarks/<script>.py``, which puts this folder first on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import logging
import math
import os
import platform
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from defectloop.errors import SettingsError
from defectloop.settings import load_settings
from models.data import ImageDataset, ImageRecord, InputSpec, group_split, scan_image_folder, task_labels
from models.labels import LabelSpace

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
DOCS_PATH = ROOT / "docs" / "benchmarks.md"
AITEX = "aitex-tiles"
# AITEX folders are ok/ and defect/; the binary task calls the second class "defective".
CLASS_MAP = {"defect": "defective"}
DEFECT_CLASSES = ("defective",)
EXIT_NO_DATA = 2
# The architectures the quality, Grad-CAM and inference benchmarks compare.
ARCHS = ("baseline_cnn", "improved_cnn", "efficientnet_b0", "resnet18")
# Where bench_quality.py leaves its trained models (a full run and a --quick one) and bench_gradcam.py
# reads them.
QUALITY_CHECKPOINTS = Path("/tmp/defectloop-bench/quality-checkpoints")
QUALITY_QUICK_CHECKPOINTS = Path("/tmp/defectloop-bench/quality-checkpoints-quick")
THREADS_HELP = (
    "torch CPU threads (default 2, the machine's cores). While other jobs share the two cores, 1 thread "
    "ran about 5x faster than 2 (a preempted thread stalls the other): the recorded runs used 1"
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# A log file (not a terminal) gets 120 columns rather than rich's 80, so tables stay readable.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
logger = logging.getLogger("benchmarks")


# --- environment ----------------------------------------------------------------------------------


def setup_logging(verbose: bool) -> None:
    """Warnings only by default: the models log a line per model built, which buries the progress."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logger.setLevel(logging.INFO)


def require_dataset(name: str = AITEX) -> Path:
    """``<DEFECTLOOP_DATASETS_DIR>/<name>``; exits with code 2 and a message when it is not there."""
    try:
        base = Path(load_settings().datasets_dir)
    except SettingsError as exc:
        console.print(f"[red]cannot read the settings: {exc}[/red]")
        raise SystemExit(EXIT_NO_DATA) from None
    root = base / name
    if not (root / "manifest.csv").is_file():
        console.print(
            f"[red]data set {name!r} not found at {root} (no manifest.csv there).[/red] Set "
            f"DEFECTLOOP_DATASETS_DIR to the folder that holds {name}/ (default ../shared/datasets, "
            "relative to the working directory), e.g. DEFECTLOOP_DATASETS_DIR=/path/to/datasets."
        )
        raise SystemExit(EXIT_NO_DATA)
    return root


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    # Inter-op threads add nothing for one model on two cores; fixing them keeps timings comparable.
    with contextlib.suppress(RuntimeError):  # already set in this process (torch allows it once)
        torch.set_num_interop_threads(1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict[str, Any]:
    """What ran the benchmark: CPU model, cores, torch threads, library versions, date, load."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = []
    import timm  # imported here: only its version is wanted

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average_at_start": load,
    }


def machine_label() -> str:
    """Short machine description for the docs table, e.g. ``AMD EPYC, 2 cores``."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


def progress_bar() -> Progress:
    """A rich progress bar on stderr (a log file gets the final state of each bar)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )


# --- data -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tiles:
    """The AITEX tiles as binary records: ``labels`` 1 = defect; ``info`` holds the manifest columns."""

    root: Path
    records: tuple[ImageRecord, ...]
    labels: IntArray
    info: tuple[dict[str, str], ...]

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(r.group for r in self.records)

    def summary(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "tiles": len(self.records),
            "defect": int(self.labels.sum()),
            "ok": int((self.labels == 0).sum()),
            "groups": len(set(self.groups)),
        }


def load_tiles(root: Path) -> Tiles:
    """Binary records of the tiles under ``root`` (groups = fabric/strip), with their manifest rows."""
    records = scan_image_folder(root, class_map=CLASS_MAP)
    kept, labels, _ = task_labels(records, "binary", LabelSpace("ok", DEFECT_CLASSES))
    with (root / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        rows = {Path(row["path"]).as_posix(): row for row in csv.DictReader(fh)}
    info = tuple(rows.get(r.path.relative_to(root).as_posix(), {}) for r in kept)
    return Tiles(root=root, records=tuple(kept), labels=np.asarray(labels, dtype=np.int64), info=info)


def split_by_strip(tiles: Tiles, *, seed: int, val_fraction: float) -> tuple[IntArray, IntArray]:
    """(pool/train indices, validation indices): whole fabric/strip groups, stratified so both sides
    hold defects (``models.data.group_split``)."""
    train, val = group_split(tiles.records, tiles.labels.tolist(), val_fraction=val_fraction, seed=seed)
    return np.asarray(train, dtype=np.int64), np.asarray(val, dtype=np.int64)


def split_summary(tiles: Tiles, train: IntArray, val: IntArray) -> dict[str, Any]:
    groups = tiles.groups

    def side(idx: IntArray) -> dict[str, int]:
        return {
            "tiles": len(idx),
            "defect": int(tiles.labels[idx].sum()),
            "groups": len({groups[i] for i in idx}),
            "defect_groups": len({groups[i] for i in idx if tiles.labels[i] == 1}),
        }

    return {"train_or_pool": side(train), "val": side(val)}


def decoded_dataset(
    records: Sequence[ImageRecord], labels: Sequence[int], spec: InputSpec, *, description: str
) -> ImageDataset:
    """An ``ImageDataset`` with every image decoded now (once per process), with a progress bar."""
    dataset = ImageDataset(records, [int(v) for v in labels], spec, augment=False, cache=True)
    with progress_bar() as bar:
        task = bar.add_task(description, total=len(dataset), info=f"{spec.image_size} px")
        for i in range(len(dataset)):
            dataset.pixels(i)
            bar.advance(task)
    return dataset


def stack_images(dataset: ImageDataset) -> torch.Tensor:
    """All images of ``dataset`` (no augmentation) as one normalised (N, C, H, W) float tensor."""
    plain = dataset.with_augment(False)
    return torch.stack([plain[i][0] for i in range(len(plain))])


# --- metrics (defect class = 1) -------------------------------------------------------------------


def roc_auc(y_true: npt.ArrayLike, score: npt.ArrayLike) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula; ties get average ranks.

    NaN when one class is absent.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    below = np.cumsum(counts) - counts  # values strictly smaller than each unique value
    average_rank = below + (counts + 1) / 2.0
    ranks = average_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def f1_at(y_true: npt.ArrayLike, score: npt.ArrayLike, threshold: float) -> float:
    """Defect-class F1 when ``score > threshold`` is called a defect (0.5 = the argmax of two classes)."""
    y = np.asarray(y_true).astype(bool)
    pred = np.asarray(score, dtype=np.float64) > threshold
    tp = int((pred & y).sum())
    denominator = int(pred.sum()) + int(y.sum())
    return 2.0 * tp / denominator if denominator else 0.0


def best_f1(y_true: npt.ArrayLike, score: npt.ArrayLike) -> tuple[float, float]:
    """(best defect-class F1 over all thresholds, that threshold): ``score >= threshold`` is a defect.

    The threshold is tuned on the same set it is scored on, so the figure is optimistic; it removes
    the calibration shift that class weights and small label sets cause, which F1 at 0.5 keeps.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0 or s.size == 0:
        return 0.0, math.nan
    values, inverse = np.unique(s, return_inverse=True)
    pos = np.bincount(inverse, weights=y.astype(np.float64), minlength=len(values))
    tot = np.bincount(inverse, minlength=len(values)).astype(np.float64)
    tp = np.cumsum(pos[::-1])[::-1]  # called defect: score >= values[i]
    called = np.cumsum(tot[::-1])[::-1]
    f1 = 2.0 * tp / (called + n_pos)
    i = int(np.argmax(f1))
    return float(f1[i]), float(values[i])


def binary_metrics(y_true: npt.ArrayLike, p_defect: npt.ArrayLike) -> dict[str, float]:
    """Defect-class F1 at 0.5 and at the best threshold, that threshold, AUC, precision/recall at 0.5."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(p_defect, dtype=np.float64)
    pred = p > 0.5
    tp = int((pred & y).sum())
    f1_best, threshold = best_f1(y, p)
    return {
        "f1_05": f1_at(y, p, 0.5),
        "f1_best": f1_best,
        "best_threshold": threshold,
        "auc": roc_auc(y, p),
        "precision_05": tp / int(pred.sum()) if pred.any() else 0.0,
        "recall_05": tp / int(y.sum()) if y.any() else 0.0,
    }


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample std (ddof=1) of the values that are not None; ``n`` says how many."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not kept:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(kept, ddof=1)) if len(kept) > 1 else 0.0
    return {"mean": float(np.mean(kept)), "std": std, "n": len(kept)}


def fmt_mean_std(stats: Mapping[str, Any], digits: int = 2) -> str:
    if stats.get("mean") is None:
        return "n/a"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


# --- output ---------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python, NaN/inf to None, tuples and paths made plain."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


# An array of numbers (or nulls) only: written on one line, so per-image scores stay readable and small.
_NUMBER = r"(?:-?\d[\d.eE+-]*|null)"
_SPACED_UP_TO = 32  # arrays up to this long keep ", " between numbers, for people reading them
_NUMBER_ARRAY = re.compile(rf"\[\s*({_NUMBER}(?:,\s*{_NUMBER})*)\s*\]")


def _one_line(match: re.Match[str]) -> str:
    numbers = re.split(r",\s*", match.group(1))
    # Long arrays (per-tile predictions) drop the space: a third of their bytes in a multi-seed result.
    return "[" + ("," if len(numbers) > _SPACED_UP_TO else ", ").join(numbers) + "]"


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically (temporary file, then rename); arrays of
    numbers go on one line each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _NUMBER_ARRAY.sub(_one_line, json.dumps(_plain(data), indent=2, allow_nan=False)) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        Path(tmp).chmod(0o644)  # mkstemp makes it private; a result file is for everyone to read
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_png(fig: Any, path: Path, *, dpi: int = 80, colors: int = 160) -> int:
    """Save a matplotlib figure as a palette PNG (small enough to commit, < 200 KB); return its bytes."""
    from PIL import Image  # matplotlib already depends on Pillow

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with Image.open(buffer) as img:
        img.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(
            tmp, format="PNG", optimize=True
        )
    tmp.chmod(0o644)
    tmp.replace(path)
    return path.stat().st_size


def write_docs_row(benchmark: str, result: str, script: str, *, docs: Path = DOCS_PATH) -> None:
    """Put this benchmark's row in the table of ``docs/benchmarks.md``.

    The row of an earlier run of the same benchmark (same ``benchmark`` and ``script`` cells, so the
    same configuration) is replaced; every other row is left as it is. A new row goes after the
    table's last row.
    """
    cells = [dt.date.today().isoformat(), machine_label(), benchmark, result, script]
    cells = [c.replace("|", "/") for c in cells]
    row = "| " + " | ".join(cells) + " |"
    lines = docs.read_text(encoding="utf-8").splitlines()

    def same(line: str) -> bool:
        parts = [part.strip() for part in line.strip().strip("|").split("|")]
        return len(parts) == len(cells) and parts[2] == cells[2] and parts[4] == cells[4]

    mine = [i for i, line in enumerate(lines) if line.startswith("|") and same(line)]
    if mine:
        lines[mine[0]] = row
        for i in reversed(mine[1:]):
            del lines[i]
    else:
        table = [i for i, line in enumerate(lines) if line.startswith("|")]
        if not table:
            raise ValueError(f"{docs} has no table to add a row to")
        lines.insert(table[-1] + 1, row)
    docs.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_recorded_docs_rows(rows: Sequence[tuple[str, str]], script: str, recorded: Path) -> None:
    """``--docs-from``: write the docs rows a benchmark made again from its recorded JSON ``recorded``."""
    for benchmark, result in rows:
        write_docs_row(benchmark, result, script)
    console.print(f"docs/benchmarks.md: {len(rows)} row(s) written from {relative(recorded)}")


def relative(path: Path) -> str:
    """``path`` relative to the repository when inside it (for JSON and messages)."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])
