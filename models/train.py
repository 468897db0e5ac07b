"""Training of one classifier (binary ok/defective or multiclass defect type) and its checkpoints.

``train_model`` runs AdamW with a cosine schedule on class-weighted cross-entropy (or a weighted
sampler), stops early on validation macro-F1 and returns the best epoch's weights. ``fit_model`` runs
the same epochs on a model the caller holds (e.g. warm from the previous round of active learning), for
a fixed number of epochs with no validation set, and keeps the last epoch's weights. A run is seeded and
repeatable: same config and data, same final weights. Checkpoints are written atomically with their
sha256 returned for the registry; ``load_checkpoint`` refuses a file whose hash differs and reads it
with ``weights_only=True``, so a checkpoint can never run pickled code.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from torch import nn
from torch.utils.data import DataLoader, Sampler, Subset, WeightedRandomSampler

from models.comparison import Evaluation, classification_report, macro_f1
from models.data import BINARY_CLASSES, TASKS, ImageDataset, InputSpec, Task, class_weights
from models.errors import CheckpointIntegrityError, ModelError
from models.registry import create_model, get_spec

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_FORMAT",
    "FitResult",
    "LoadedCheckpoint",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "file_sha256",
    "fit_model",
    "load_checkpoint",
    "predict_dataset",
    "save_checkpoint",
    "train_model",
]

CHECKPOINT_FORMAT = 1
Balance = Literal["loss", "sampler"]
_HASH_CHUNK = 1 << 20
_PRECISE_BN_IMAGES = 1024  # enough for stable statistics; bounds the extra pass on large sets


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; ``to_dict`` is recorded as the version's hyper-parameters.

    ``weights``: a local pretrained file for ``create_model`` (timm models). ``warm_start``: a checkpoint
    of an earlier version of the same architecture and input spec; all its weights are reused, the head
    too when ``class_names`` match (else the head starts fresh). ``warm_start_sha256``, when given,
    is verified before the file is read (pass the registry's hash). ``threads`` caps torch's CPU threads
    for the run (None leaves the process setting).
    """

    architecture: str
    task: Task
    class_names: tuple[str, ...]
    input_spec: InputSpec
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 4
    seed: int = 0
    balance: Balance = "loss"
    pretrained: bool = False
    weights: Path | None = None
    warm_start: Path | None = None
    warm_start_sha256: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        get_spec(self.architecture)  # UnknownArchitectureError naming the valid ones
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; tasks: {', '.join(TASKS)}")
        if len(self.class_names) < 2 or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names must be >= 2 unique names, got {self.class_names}")
        if self.task == "binary" and self.class_names != BINARY_CLASSES:
            raise ValueError(f"the binary task's class_names are {BINARY_CLASSES}, got {self.class_names}")
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.balance not in ("loss", "sampler"):
            raise ValueError(f"balance must be 'loss' or 'sampler', got {self.balance!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")
        for name in ("weights", "warm_start"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain types, paths as strings, the input spec as its dict."""
        return {
            "architecture": self.architecture,
            "task": self.task,
            "class_names": list(self.class_names),
            "input_spec": self.input_spec.to_dict(),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "patience": self.patience,
            "seed": self.seed,
            "balance": self.balance,
            "pretrained": self.pretrained,
            "weights": None if self.weights is None else str(self.weights),
            "warm_start": None if self.warm_start is None else str(self.warm_start),
            "warm_start_sha256": self.warm_start_sha256,
            "threads": self.threads,
        }


@dataclass(frozen=True, eq=False)
class TrainResult:
    """The best epoch's model (eval mode), how training went and how the model does on validation."""

    model: nn.Module
    best_epoch: int
    history: list[dict[str, float]]
    val_evaluation: Evaluation
    val_probs: npt.NDArray[np.float32]
    config: TrainConfig
    stopped_early: bool = False


@dataclass(frozen=True)
class FitResult:
    """How a ``fit_model`` run went: epochs and optimiser steps run, mean training loss per epoch."""

    epochs: int
    steps: int
    train_loss: list[float]
    seconds: float


@dataclass(frozen=True, eq=False)
class LoadedCheckpoint:
    """A verified checkpoint: the model (eval mode, CPU) and what it was trained for."""

    model: nn.Module
    architecture: str
    task: Task
    class_names: tuple[str, ...]
    input_spec: InputSpec
    extra: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    path: Path | None = None


# --- checkpoints ----------------------------------------------------------------------------------


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    # torch.load(weights_only=True) accepts only these types; refuse at save time, not at load time.
    if isinstance(value, (*_PLAIN, torch.Tensor)):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise ValueError(f"{where} has a key {k!r} of type {type(k).__name__}; use str keys")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise ValueError(
        f"{where} is a {type(value).__name__}; a checkpoint's extra may hold only str, int, float, bool, "
        "None, tensors, lists and dicts (it is read back with weights_only=True)"
    )


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    architecture: str,
    task: Task,
    class_names: Sequence[str],
    input_spec: InputSpec,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Write ``model``'s weights and metadata to ``path`` atomically; return the file's sha256 (hex).

    The bytes go to a temporary file in the same folder, are fsynced and then renamed over ``path``
    (``os.replace``), so a reader sees either the old file or the complete new one, never a part.
    """
    get_spec(architecture)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    extra_dict = dict(extra or {})
    _check_plain(extra_dict, "extra")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "architecture": architecture,
        "task": task,
        "class_names": list(class_names),
        "input_spec": input_spec.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "extra": extra_dict,
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    # os.open with 0o666 lets the umask decide the mode (mkstemp would leave 0o600, unreadable to a
    # worker running as another user); O_EXCL refuses to write through a planted file or link.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        digest = file_sha256(tmp)
        tmp.replace(target)  # os.replace: atomic within one file system
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    logger.info("checkpoint written: %s (sha256 %s)", target, digest)
    return digest


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (no-op where a directory cannot be opened)."""
    # Makes the rename itself durable on POSIX; Windows cannot open a directory, and needs no such step.
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _read_verified(path: Path, expected_sha256: str) -> tuple[bytes, str]:
    """The file's bytes, read once, after checking their sha256: hash and load see the same bytes."""
    if not path.is_file():
        raise CheckpointIntegrityError(
            f"checkpoint {path} does not exist or is not a file; restore it from a backup or retrain"
        )
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    expected = expected_sha256.strip().lower()
    if actual != expected:
        raise CheckpointIntegrityError(
            f"checkpoint {path} has sha256 {actual}, the registry expects {expected_sha256}; "
            "the file was changed or corrupted: retrain or restore it"
        )
    return data, actual


def _unpack(data: bytes, path: Path) -> dict[str, Any]:
    try:
        obj: Any = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for bad bytes; all mean "unreadable"
        raise ModelError(
            f"checkpoint {path} cannot be read with weights_only=True ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); it is not a defectloop "
            "checkpoint: retrain or restore it"
        ) from exc
    required = ("format", "architecture", "task", "class_names", "input_spec", "state_dict")
    if not isinstance(obj, dict) or any(k not in obj for k in required):
        raise ModelError(
            f"checkpoint {path} is not a defectloop checkpoint (expected keys: {', '.join(required)})"
        )
    if obj["format"] != CHECKPOINT_FORMAT:
        raise ModelError(
            f"checkpoint {path} has format {obj['format']!r}; this version reads format {CHECKPOINT_FORMAT}"
        )
    return obj


def load_checkpoint(path: str | os.PathLike[str], *, expected_sha256: str) -> LoadedCheckpoint:
    """Verify ``path`` against ``expected_sha256``, then build its model and load the weights strictly.

    ``CheckpointIntegrityError`` for a missing file or a hash mismatch (nothing is unpickled then);
    ``ModelError`` for a file that is not a readable checkpoint or whose weights do not fit.
    """
    file = Path(path)
    data, digest = _read_verified(file, expected_sha256)
    obj = _unpack(data, file)
    try:
        architecture = str(obj["architecture"])
        task = str(obj["task"])
        class_names = tuple(str(c) for c in obj["class_names"])
        spec = InputSpec.from_dict(obj["input_spec"])
        model = create_model(
            architecture, num_classes=len(class_names), in_chans=spec.channels, pretrained=False
        )
        model.load_state_dict(obj["state_dict"], strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"checkpoint {file} does not build a model: {exc}") from exc
    if task not in TASKS:
        raise ModelError(f"checkpoint {file} has an unknown task {task!r}")
    model.eval()
    extra = obj.get("extra") or {}
    return LoadedCheckpoint(
        model=model,
        architecture=architecture,
        task=task,
        class_names=class_names,
        input_spec=spec,
        extra=dict(extra),
        sha256=digest,
        path=file,
    )


# --- model building -------------------------------------------------------------------------------


def _warm_start(model: nn.Module, config: TrainConfig, path: Path) -> None:
    if config.warm_start_sha256 is not None:
        data, _ = _read_verified(path, config.warm_start_sha256)
    elif path.is_file():
        logger.warning("warm start from %s without an expected sha256: its integrity is not checked", path)
        data = path.read_bytes()
    else:
        raise ModelError(f"warm-start checkpoint {path} does not exist; train from scratch or fix the path")
    obj = _unpack(data, path)
    spec = InputSpec.from_dict(obj["input_spec"])
    if obj["architecture"] != config.architecture:
        raise ModelError(
            f"warm start from {path}: it is a {obj['architecture']!r} checkpoint, this run trains "
            f"{config.architecture!r}; warm-start only from the same architecture"
        )
    if spec != config.input_spec:
        raise ModelError(
            f"warm start from {path}: its input spec {spec.to_dict()} differs from this run's "
            f"{config.input_spec.to_dict()}; warm-start only from the same input spec"
        )
    state: dict[str, torch.Tensor] = dict(obj["state_dict"])
    note = "with its head"
    if tuple(obj["class_names"]) != config.class_names:
        head = get_spec(config.architecture).classifier + "."
        state = {k: v for k, v in state.items() if not k.startswith(head)}
        note = f"head re-initialised ({list(obj['class_names'])} -> {list(config.class_names)})"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # mis-shaped tensors
        raise ModelError(
            f"warm start from {path}: weights do not fit {config.architecture!r}: {exc}"
        ) from exc
    head = get_spec(config.architecture).classifier + "."
    if unexpected or any(not k.startswith(head) for k in missing):
        raise ModelError(
            f"warm start from {path}: weights do not fit {config.architecture!r} "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    logger.info("%s: warm start from %s, %s", config.architecture, path, note)


def build_model(config: TrainConfig) -> nn.Module:
    """The model a run starts from: seeded initialisation, then weights file or warm start if any.

    Seeds torch's global RNG with ``config.seed`` (the initial weights depend on it).
    """
    torch.manual_seed(config.seed)
    warm = config.warm_start is not None
    if warm and (config.pretrained or config.weights is not None):
        logger.info(
            "warm start from %s: pretrained weights are not loaded (it replaces them)", config.warm_start
        )
    model = create_model(
        config.architecture,
        num_classes=len(config.class_names),
        in_chans=config.input_spec.channels,
        pretrained=config.pretrained and not warm,
        weights=None if warm else config.weights,
    )
    if config.warm_start is not None:
        _warm_start(model, config, config.warm_start)
    return model


# --- training -------------------------------------------------------------------------------------


@contextmanager
def _repeatable(seed: int, threads: int | None) -> Iterator[None]:
    """Deterministic kernels, fixed threads and a seeded RNG for the run; the caller's state comes back."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    old_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.use_deterministic_algorithms(True, warn_only=True)
        if threads is not None:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
            torch.set_num_threads(old_threads)


def _progress_bar(enabled: bool) -> Progress:
    """One bar per epoch (batches done, elapsed, running loss, then validation figures; * marks a new
    best), on stderr: it fits 80 columns, as a log file or CI console has."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
        console=Console(stderr=True),
        disable=not enabled,
    )


def _check_dataset(dataset: ImageDataset, config: TrainConfig, name: str) -> tuple[int, ...]:
    if len(dataset) == 0:
        raise ValueError(f"the {name} set is empty")
    if dataset.labels is None:
        raise ValueError(f"the {name} set has no labels")
    if dataset.spec != config.input_spec:
        raise ValueError(
            f"the {name} set prepares images as {dataset.spec.to_dict()}, the config says "
            f"{config.input_spec.to_dict()}"
        )
    bad = sorted({y for y in dataset.labels if not 0 <= y < len(config.class_names)})
    if bad:
        raise ValueError(f"the {name} set has label indices {bad} outside 0..{len(config.class_names) - 1}")
    return dataset.labels


def _loader(
    train: ImageDataset, labels: Sequence[int], config: TrainConfig, generator: torch.Generator
) -> DataLoader[tuple[torch.Tensor, int]]:
    sampler: Sampler[int] | None = None
    if config.balance == "sampler":
        per_class = class_weights(labels, len(config.class_names)).double()
        weights = per_class[torch.as_tensor(labels)].tolist()
        sampler = WeightedRandomSampler(
            weights, num_samples=len(labels), replacement=True, generator=generator
        )
    # A last batch of one breaks batch norm on a 1x1 map (the timm models at small sizes): drop it.
    drop_last = len(labels) > config.batch_size and len(labels) % config.batch_size == 1
    return DataLoader(
        train,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=0,  # workers would each need their own seeded RNG; decoding is cached anyway
        drop_last=drop_last,
    )


def _optimisation(
    model: nn.Module, config: TrainConfig, labels: Sequence[int], epochs: int
) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Loss (class-weighted unless the sampler balances), AdamW and a cosine schedule stepped per epoch."""
    weight = class_weights(labels, len(config.class_names)) if config.balance == "loss" else None
    criterion = nn.CrossEntropyLoss(weight=weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return criterion, optimizer, scheduler


def _train_epoch(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, int]],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    on_batch: Callable[[float], None] | None = None,
) -> float:
    """One pass over ``loader`` in training mode; the mean loss (``on_batch`` gets the running mean)."""
    model.train()
    total, seen = 0.0, 0
    for images, targets in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(images), targets)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(targets)
        seen += len(targets)
        if on_batch is not None:
            on_batch(total / seen)
    return total / max(seen, 1)


def _recalibrate_batch_norm(model: nn.Module, dataset: ImageDataset, batch_size: int, seed: int) -> None:
    """Replace batch norm's running statistics by exact averages over (up to) _PRECISE_BN_IMAGES
    training images, without augmentation and with dropout off, as at evaluation.

    Running averages with momentum 0.1 need ~50 batches to forget their initial (0, 1); a round of
    active learning with 100 labels has 3-4 batches an epoch, and the eval-mode model would predict
    one class for epochs. Costs one forward pass (no backward) over the images used.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    plain = dataset.with_augment(False)
    indices = torch.randperm(len(plain), generator=torch.Generator().manual_seed(seed))[:_PRECISE_BN_IMAGES]
    loader: DataLoader[tuple[torch.Tensor, int]] = DataLoader(
        Subset(plain, indices.tolist()), batch_size=batch_size, shuffle=False, num_workers=0
    )
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    try:
        with torch.no_grad():
            for images, _ in loader:
                model(images)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


def _evaluate(
    model: nn.Module, dataset: ImageDataset, batch_size: int
) -> tuple[npt.NDArray[np.float32], float]:
    """Validation probabilities and mean (unweighted) cross-entropy."""
    logits = _predict_logits(model, dataset, batch_size)
    targets = torch.as_tensor(dataset.labels)
    loss = float(nn.functional.cross_entropy(logits, targets))
    return torch.softmax(logits, dim=1).numpy().astype(np.float32), loss


def _predict_logits(model: nn.Module, dataset: ImageDataset, batch_size: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    plain = dataset.with_augment(False) if dataset.augment else dataset
    loader: DataLoader[tuple[torch.Tensor, int]] = DataLoader(
        plain, batch_size=batch_size, shuffle=False, num_workers=0
    )
    outputs: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for images, _ in loader:
                outputs.append(model(images).float())
    finally:
        model.train(was_training)
    return torch.cat(outputs)


def predict_dataset(
    model: nn.Module, dataset: ImageDataset, *, batch_size: int = 64
) -> npt.NDArray[np.float32]:
    """(N, C) softmax probabilities over ``dataset`` in order, without augmentation, in eval mode."""
    if len(dataset) == 0:
        return np.zeros((0, int(getattr(model, "num_classes", 0))), dtype=np.float32)
    return torch.softmax(_predict_logits(model, dataset, batch_size), dim=1).numpy().astype(np.float32)


def train_model(
    config: TrainConfig, train: ImageDataset, val: ImageDataset, *, progress: bool = True
) -> TrainResult:
    """Train per ``config`` on ``train``, early-stopping on ``val`` macro-F1; return the best epoch's model.

    The best epoch has the highest validation macro-F1, ties broken by the lower validation loss.
    Training stops after ``patience`` epochs without a better one. Same config and data, same weights.
    """
    train_labels = _check_dataset(train, config, "training")
    val_labels = _check_dataset(val, config, "validation")
    n_classes = len(config.class_names)
    absent = [config.class_names[c] for c in range(n_classes) if c not in set(train_labels)]
    if absent:
        logger.warning("training set has no %s images: the model cannot learn those classes", absent)

    started = time.perf_counter()
    with _repeatable(config.seed, config.threads):
        model = build_model(config)
        generator = torch.Generator().manual_seed(config.seed)
        loader = _loader(train, train_labels, config, generator)
        criterion, optimizer, scheduler = _optimisation(model, config, train_labels, config.epochs)

        history: list[dict[str, float]] = []
        best: tuple[float, float] | None = None  # (macro-F1, val loss)
        best_epoch = 0
        best_state: dict[str, torch.Tensor] = {}
        best_probs: npt.NDArray[np.float32] = np.zeros((0, n_classes), dtype=np.float32)
        stale = 0
        stopped_early = False
        with _progress_bar(progress) as bar:
            for epoch in range(1, config.epochs + 1):
                t0 = time.perf_counter()
                bar_task = bar.add_task(
                    f"epoch {epoch}/{config.epochs}",
                    total=len(loader),
                    stats="",
                )

                def show_loss(mean: float, task: TaskID = bar_task) -> None:
                    bar.update(task, advance=1, stats=f"loss {mean:.4f}")

                train_loss = _train_epoch(model, loader, criterion, optimizer, show_loss)
                scheduler.step()
                _recalibrate_batch_norm(model, train, max(64, config.batch_size), config.seed + epoch)
                probs, val_loss = _evaluate(model, val, max(64, config.batch_size))
                f1 = macro_f1(val_labels, probs.argmax(axis=1), n_classes)
                row = {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_macro_f1": f1,
                    "seconds": time.perf_counter() - t0,
                }
                history.append(row)
                improved = best is None or f1 > best[0] or (f1 == best[0] and val_loss < best[1])
                if improved:
                    best, best_epoch, best_probs, stale = (f1, val_loss), epoch, probs, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    stale += 1
                bar.update(
                    bar_task,
                    stats=f"loss {row['train_loss']:.3f} val loss {val_loss:.3f} val F1 {f1:.3f}"
                    + (" *" if improved else ""),
                )
                logger.info(
                    "%s %s epoch %d/%d: train loss %.4f, val loss %.4f, val macro-F1 %.4f%s (%.1f s)",
                    config.architecture,
                    config.task,
                    epoch,
                    config.epochs,
                    row["train_loss"],
                    val_loss,
                    f1,
                    " (best)" if improved else "",
                    row["seconds"],
                )
                if stale >= config.patience:
                    stopped_early = epoch < config.epochs
                    logger.info(
                        "early stop after epoch %d: no better val macro-F1 for %d epochs", epoch, stale
                    )
                    break

        model.load_state_dict(best_state)
        model.eval()

    evaluation = classification_report(
        val_labels, best_probs.argmax(axis=1), config.class_names, probs=best_probs
    )
    logger.info(
        "%s %s: best epoch %d, val macro-F1 %.4f, accuracy %.4f (%.1f s)",
        config.architecture,
        config.task,
        best_epoch,
        evaluation.macro_f1,
        evaluation.accuracy,
        time.perf_counter() - started,
    )
    return TrainResult(
        model=model,
        best_epoch=best_epoch,
        history=history,
        val_evaluation=evaluation,
        val_probs=best_probs,
        config=config,
        stopped_early=stopped_early,
    )


def fit_model(
    model: nn.Module,
    config: TrainConfig,
    train: ImageDataset,
    *,
    min_steps: int = 0,
    after_epoch: Callable[[int], None] | None = None,
) -> FitResult:
    """Train ``model`` in place on ``train`` with ``train_model``'s recipe, but no validation set.

    Whatever weights ``model`` has are the start (``config``'s weights and warm-start fields are not
    read); the optimiser and schedule are new. Runs ``config.epochs`` epochs, or more when that is
    fewer than ``min_steps`` batches; no early stopping: the last epoch's weights are kept, with batch
    norm recalibrated on ``train`` and the model left in eval mode. ``after_epoch(epoch)`` is called after
    each epoch with the model recalibrated and in eval mode (to score it; it must not train it).
    Seeded by ``config.seed`` like ``train_model``; the caller's RNG and torch settings come back.
    """
    labels = _check_dataset(train, config, "training")
    if min_steps < 0:
        raise ValueError(f"min_steps must be >= 0, got {min_steps}")
    started = time.perf_counter()
    bn_batch = max(64, config.batch_size)
    with _repeatable(config.seed, config.threads):
        generator = torch.Generator().manual_seed(config.seed)
        loader = _loader(train, labels, config, generator)
        epochs = max(config.epochs, math.ceil(min_steps / max(len(loader), 1)))
        criterion, optimizer, scheduler = _optimisation(model, config, labels, epochs)
        losses: list[float] = []
        for epoch in range(1, epochs + 1):
            losses.append(_train_epoch(model, loader, criterion, optimizer))
            scheduler.step()
            # Every epoch, as in train_model, so that scoring with after_epoch or not trains alike (the
            # pass draws from the global RNG that augmentation draws from).
            _recalibrate_batch_norm(model, train, bn_batch, config.seed + epoch)
            model.eval()
            if after_epoch is not None:
                after_epoch(epoch)
    model.eval()
    return FitResult(
        epochs=epochs, steps=epochs * len(loader), train_loss=losses, seconds=time.perf_counter() - started
    )
