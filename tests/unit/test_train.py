"""Training runs, early stopping, repeatability, checkpoints and warm starts (models/train.py).

Tiny on purpose (32-40 px, a few epochs, one thread): the whole file runs in well under a minute on
two shared CPU cores. Nothing downloads: every model is built with pretrained=False.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import models.train as train_module
from defectloop.synth import generate_dataset, iter_samples
from models.data import ImageDataset, InputSpec, group_split, scan_image_folder, task_labels
from models.errors import CheckpointIntegrityError, ModelError, UnknownArchitectureError
from models.labels import LabelSpace
from models.registry import create_model
from models.train import (
    TrainConfig,
    build_model,
    file_sha256,
    fit_model,
    load_checkpoint,
    predict_dataset,
    save_checkpoint,
    train_model,
)

SPEC = InputSpec(image_size=32, channels=3)
BINARY = ("ok", "defective")


pytestmark = pytest.mark.usefixtures("hub_offline")


def _datasets(root: Path, spec: InputSpec, *, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    records, labels, _ = task_labels(scan_image_folder(root), "binary", LabelSpace("ok", ("hole",)))
    train_idx, val_idx = group_split(records, labels, val_fraction=0.3, seed=seed)
    train = ImageDataset([records[i] for i in train_idx], [labels[i] for i in train_idx], spec, augment=True)
    val = ImageDataset([records[i] for i in val_idx], [labels[i] for i in val_idx], spec, augment=False)
    return train, val


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageDataset, ImageDataset]:
    """24 synthetic photos (ok / hole) at 32 px: enough to exercise the machinery, not to learn."""
    root = tmp_path_factory.mktemp("small") / "images"
    generate_dataset(root, n=24, seed=2, size=32, classes=("ok", "hole"))
    return _datasets(root, SPEC)


def _config(**overrides: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "architecture": "improved_cnn",
        "task": "binary",
        "class_names": BINARY,
        "input_spec": SPEC,
        "epochs": 2,
        "batch_size": 8,
        "lr": 2e-3,
        "patience": 5,
        "seed": 0,
        "threads": 1,
    }
    return TrainConfig(**{**base, **overrides})


def _states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- learning -------------------------------------------------------------------------------------


def _painted_holes(root: Path, *, n: int, size: int, seed: int) -> None:
    """Synthetic fabric photos (defectloop.synth, ``ok`` renders); every second one gets a plain hole.

    The synth generator's own defects are subtle on purpose: at 40 px with 140 training images an
    improved CNN reaches val macro-F1 0.58-0.87 over seeds in 12 epochs, too spread for a unit test.
    A disk of a tenth of the image width, dark or light, is learnt in a few epochs on any seed.
    """
    rng = np.random.default_rng(seed)
    for name in ("ok", "hole"):
        (root / name).mkdir(parents=True)
    yy, xx = np.mgrid[:size, :size]
    for i, sample in iter_samples(n, seed=seed, size=size, classes=("ok",)):
        pixels = np.array(sample.image.convert("RGB"))
        label = "hole" if i % 2 else "ok"
        if label == "hole":
            radius = size / 10
            cy, cx = rng.uniform(radius + 1, size - radius - 1, size=2)
            pixels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = rng.choice([15, 240])
        Image.fromarray(pixels).save(root / label / f"{label}_{i:06d}.png")


def test_a_tiny_binary_run_on_synthetic_images_beats_chance(tmp_path: Path) -> None:
    """120 photos at 32 px (84 train / 36 val), improved CNN, 6 epochs, about 2 s.

    Measured over seeds 0-9 (split and training seed): val macro-F1 mean 0.94, min 0.89 (chance 0.5).
    """
    root = tmp_path / "images"
    _painted_holes(root, n=120, size=32, seed=3)
    train, val = _datasets(root, SPEC, seed=0)
    config = _config(epochs=6, batch_size=16, lr=3e-3, patience=6, seed=0)
    result = train_model(config, train, val, progress=False)

    assert result.val_evaluation.macro_f1 > 0.75
    assert result.val_evaluation.macro_f1 == max(h["val_macro_f1"] for h in result.history)
    assert result.val_evaluation.ece is not None
    assert result.val_probs.shape == (len(val), 2)
    np.testing.assert_allclose(result.val_probs.sum(axis=1), 1.0, atol=1e-5)
    # The returned model is the best epoch's, in eval mode: predicting again gives the same numbers.
    assert not result.model.training
    np.testing.assert_allclose(predict_dataset(result.model, val), result.val_probs, atol=1e-5)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


# --- repeatability and early stopping -------------------------------------------------------------


def test_two_runs_with_the_same_seed_give_identical_weights(
    small: tuple[ImageDataset, ImageDataset],
) -> None:
    train, val = small
    first = train_model(_config(seed=3), train, val, progress=False)
    second = train_model(_config(seed=3), train, val, progress=False)
    other = train_model(_config(seed=4, epochs=1), train, val, progress=False)
    assert _states_equal(first.model.state_dict(), second.model.state_dict())
    assert [h["train_loss"] for h in first.history] == [h["train_loss"] for h in second.history]
    np.testing.assert_array_equal(first.val_probs, second.val_probs)
    assert not _states_equal(first.model.state_dict(), other.model.state_dict())


def test_a_run_restores_the_callers_torch_settings(small: tuple[ImageDataset, ImageDataset]) -> None:
    train, val = small
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    train_model(_config(epochs=1, threads=1, balance="sampler"), train, val, progress=True)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is untouched
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_early_stopping_keeps_the_best_epoch(
    small: tuple[ImageDataset, ImageDataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation macro-F1 peaks at epoch 2 and never improves again: patience 2 stops after epoch 4."""
    scores: Iterator[float] = iter([0.5, 0.8, 0.7, 0.6, 0.9, 0.9, 0.9, 0.9])
    monkeypatch.setattr(train_module, "macro_f1", lambda *a, **k: next(scores))
    train, val = small
    result = train_model(_config(epochs=8, patience=2, lr=5e-3), train, val, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.best_epoch == 2
    assert result.stopped_early
    # The returned weights and probabilities are epoch 2's, not the last epoch's.
    np.testing.assert_allclose(predict_dataset(result.model, val), result.val_probs, atol=1e-5)
    val_loss = nn.functional.cross_entropy(
        torch.log(torch.as_tensor(result.val_probs)), torch.as_tensor(val.labels)
    )
    assert float(val_loss) == pytest.approx(result.history[1]["val_loss"], rel=1e-4)


def test_equal_macro_f1_is_broken_by_the_lower_validation_loss(
    small: tuple[ImageDataset, ImageDataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_module, "macro_f1", lambda *a, **k: 0.5)
    train, val = small
    result = train_model(_config(epochs=3, patience=3, lr=5e-3), train, val, progress=False)
    losses = [h["val_loss"] for h in result.history]
    assert len(losses) == 3
    assert not result.stopped_early
    assert result.best_epoch == 1 + int(np.argmin(losses))


# --- fixed-epoch fitting --------------------------------------------------------------------------


def test_fit_model_trains_in_place_for_fixed_epochs_and_repeats(
    small: tuple[ImageDataset, ImageDataset],
) -> None:
    """No validation, no early stopping: ``min_steps`` adds epochs, the last epoch's weights are kept."""
    train, _ = small
    config = _config(epochs=1, seed=5)
    model = build_model(config)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    scored: list[tuple[int, bool]] = []
    batches = -(-len(train) // config.batch_size)  # no batch of one is dropped at this size
    result = fit_model(
        model,
        config,
        train,
        min_steps=2 * batches + 1,
        after_epoch=lambda e: scored.append((e, model.training)),
    )
    assert result.epochs == 3
    assert result.steps == 3 * batches
    assert len(result.train_loss) == 3
    assert all(np.isfinite(result.train_loss))
    assert scored == [(1, False), (2, False), (3, False)]
    assert not model.training
    assert not _states_equal(start, model.state_dict())
    again = build_model(config)  # the same run, not scored after each epoch: the same weights
    fit_model(again, config, train, min_steps=2 * batches + 1)
    assert _states_equal(model.state_dict(), again.state_dict())
    # Warm: a second fit continues from the weights it is given.
    warm = fit_model(model, config, train)
    assert warm.epochs == 1
    assert not _states_equal(model.state_dict(), again.state_dict())


def test_fit_model_refuses_a_mismatched_set(small: tuple[ImageDataset, ImageDataset]) -> None:
    train, _ = small
    config = _config(input_spec=InputSpec(image_size=40, channels=3))
    with pytest.raises(ValueError, match="prepares images as"):
        fit_model(build_model(config), config, train)
    with pytest.raises(ValueError, match="min_steps"):
        fit_model(build_model(_config()), _config(), train, min_steps=-1)


def test_multiclass_run_and_config_record(small: tuple[ImageDataset, ImageDataset]) -> None:
    train, val = small
    names = ("hole", "raw_edge", "uncut_thread")
    labels = [i % 3 for i in range(len(train))]
    multi_train = ImageDataset(train.records, labels, SPEC, augment=True)
    multi_val = ImageDataset(val.records, [i % 3 for i in range(len(val))], SPEC, augment=False)
    config = _config(task="multiclass", class_names=names, architecture="baseline_cnn", epochs=1)
    result = train_model(config, multi_train, multi_val, progress=False)
    assert result.val_probs.shape == (len(val), 3)
    assert result.val_evaluation.class_names == names
    record = json.loads(json.dumps(config.to_dict()))
    assert record["class_names"] == list(names)
    assert record["input_spec"] == SPEC.to_dict()


def test_config_and_data_mismatches_are_refused(small: tuple[ImageDataset, ImageDataset]) -> None:
    train, val = small
    with pytest.raises(UnknownArchitectureError, match="Valid names"):
        _config(architecture="resnet99")
    with pytest.raises(ValueError, match="binary task's class_names"):
        _config(class_names=("ok", "hole"))
    with pytest.raises(ValueError, match="epochs"):
        _config(epochs=0)
    other_spec = ImageDataset(val.records, val.labels, InputSpec(image_size=40, channels=3), augment=False)
    with pytest.raises(ValueError, match="prepares images as"):
        train_model(_config(), train, other_spec, progress=False)


# --- checkpoints ----------------------------------------------------------------------------------


def _saved(tmp_path: Path, **extra: Any) -> tuple[Path, str, nn.Module]:
    torch.manual_seed(123)  # not a training seed below: a warm start must differ from a cold one
    model = create_model("improved_cnn", num_classes=2, in_chans=3).eval()
    path = tmp_path / "ckpt" / "binary.pt"
    digest = save_checkpoint(
        path,
        model,
        architecture="improved_cnn",
        task="binary",
        class_names=BINARY,
        input_spec=SPEC,
        extra={"best_epoch": 3, "metrics": {"macro_f1": 0.8}, **extra},
    )
    return path, digest, model


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    path, digest, model = _saved(tmp_path)
    assert digest == file_sha256(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["binary.pt"]  # no temporary file left behind
    loaded = load_checkpoint(path, expected_sha256=digest.upper())
    assert (loaded.architecture, loaded.task, loaded.class_names) == ("improved_cnn", "binary", BINARY)
    assert loaded.input_spec == SPEC
    assert loaded.extra == {"best_epoch": 3, "metrics": {"macro_f1": 0.8}}
    assert loaded.sha256 == digest
    assert not loaded.model.training
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(model(x), loaded.model(x))


def test_the_checkpoint_holds_no_pickled_classes(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["format"] == 1
    assert isinstance(payload["input_spec"], dict)
    with pytest.raises(ValueError, match=r"extra\['where'\] is a PosixPath"):
        _saved(tmp_path, where=Path("/x"))


def test_a_wrong_hash_is_refused(tmp_path: Path) -> None:
    path, digest, _ = _saved(tmp_path)
    wrong = "0" * 64
    with pytest.raises(CheckpointIntegrityError, match=f"has sha256 {digest}, the registry expects {wrong}"):
        load_checkpoint(path, expected_sha256=wrong)


def test_a_file_with_one_byte_flipped_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, digest, _ = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    unpickled: list[object] = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a))
    with pytest.raises(CheckpointIntegrityError, match="changed or corrupted: retrain or restore it"):
        load_checkpoint(path, expected_sha256=digest)
    assert not unpickled  # refused before anything was unpickled


def test_a_missing_or_foreign_file_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(CheckpointIntegrityError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt", expected_sha256="0" * 64)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot be read with weights_only=True"):
        load_checkpoint(junk, expected_sha256=file_sha256(junk))
    bare = tmp_path / "bare.pt"
    torch.save({"weight": torch.zeros(2)}, bare)
    with pytest.raises(ModelError, match="not a defectloop checkpoint"):
        load_checkpoint(bare, expected_sha256=file_sha256(bare))


def test_an_interrupted_save_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, digest, model = _saved(tmp_path)

    def half_written(obj: object, fh: Any) -> None:
        fh.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(
            path, model, architecture="improved_cnn", task="binary", class_names=BINARY, input_spec=SPEC
        )
    assert file_sha256(path) == digest
    assert sorted(p.name for p in path.parent.iterdir()) == ["binary.pt"]


# --- warm start -----------------------------------------------------------------------------------


def test_warm_start_begins_at_the_checkpoints_weights(tmp_path: Path) -> None:
    path, digest, model = _saved(tmp_path)
    warm = build_model(_config(warm_start=path, warm_start_sha256=digest, seed=9))
    assert _states_equal(warm.state_dict(), model.state_dict())


def test_warm_start_with_other_classes_reinitialises_the_head_only(tmp_path: Path) -> None:
    path, digest, model = _saved(tmp_path)
    names = ("hole", "raw_edge", "uncut_thread")
    warm = build_model(
        _config(task="multiclass", class_names=names, warm_start=path, warm_start_sha256=digest)
    )
    old, new = model.state_dict(), warm.state_dict()
    assert new["fc.weight"].shape == (3, old["fc.weight"].shape[1])
    assert all(torch.equal(old[k], new[k]) for k in old if not k.startswith("fc."))


def test_warm_start_is_verified_and_must_match(
    tmp_path: Path, small: tuple[ImageDataset, ImageDataset]
) -> None:
    path, digest, _ = _saved(tmp_path)
    with pytest.raises(CheckpointIntegrityError):
        build_model(_config(warm_start=path, warm_start_sha256="f" * 64))
    with pytest.raises(ModelError, match="same architecture"):
        build_model(_config(architecture="baseline_cnn", warm_start=path, warm_start_sha256=digest))
    with pytest.raises(ModelError, match="same input spec"):
        build_model(_config(input_spec=InputSpec(32, channels=1), warm_start=path, warm_start_sha256=digest))
    # A warm-started run trains from there: its first epoch differs from a cold start's.
    train, val = small
    cold = train_model(_config(epochs=1), train, val, progress=False)
    warm = train_model(
        _config(epochs=1, warm_start=path, warm_start_sha256=digest), train, val, progress=False
    )
    assert not _states_equal(cold.model.state_dict(), warm.model.state_dict())
