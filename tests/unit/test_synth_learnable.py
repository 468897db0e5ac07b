"""The synthetic defects are learnable: a small CNN trained for seconds on CPU tells ok from defective.

Global pixel statistics cannot (``test_synth.py``); this is the other half of the generator's contract,
and the premise of the demo and of every training test that uses synthetic images. The run is the
project's own pipeline (``models.data`` and ``models.train``), at the size and budget the demo uses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from defectloop.synth import DEFAULT_CLASSES, generate_dataset
from models.data import ImageDataset, InputSpec, group_split, scan_image_folder, task_labels
from models.labels import LabelSpace
from models.train import TrainConfig, TrainResult, train_model

DEFECTS = tuple(c for c in DEFAULT_CLASSES if c != "ok")
SIZE = 48
N_PER_SIDE = 120  # ok images, and defective ones spread evenly over the five types
EPOCHS = 8


pytestmark = pytest.mark.usefixtures("hub_offline")


def train_ok_vs_defective(root: Path, seed: int) -> TrainResult:
    """Generate a balanced ok / defective set under ``root`` and train ``improved_cnn`` on 70% of it.

    Two generator seeds, so no ok photo shares its scene with a defective one; one thread, as the
    other engineers' jobs share the two cores.
    """
    generate_dataset(root / "ok", n=N_PER_SIDE, seed=seed, size=SIZE, classes=("ok",), write_masks=False)
    generate_dataset(
        root / "defective", n=N_PER_SIDE, seed=seed + 10_000, size=SIZE, classes=DEFECTS, write_masks=False
    )
    records = scan_image_folder(root / "ok") + scan_image_folder(root / "defective")
    kept, labels, names = task_labels(records, "binary", LabelSpace("ok", DEFECTS))
    train_idx, val_idx = group_split(kept, labels, val_fraction=0.3, seed=seed)
    spec = InputSpec(image_size=SIZE, channels=1)
    train = ImageDataset([kept[i] for i in train_idx], [labels[i] for i in train_idx], spec, augment=True)
    val = ImageDataset([kept[i] for i in val_idx], [labels[i] for i in val_idx], spec, augment=False)
    config = TrainConfig(
        architecture="improved_cnn",
        task="binary",
        class_names=names,
        input_spec=spec,
        epochs=EPOCHS,
        batch_size=16,
        patience=EPOCHS,
        seed=seed,
        threads=1,
    )
    return train_model(config, train, val, progress=False)


@pytest.mark.slow
def test_a_small_cnn_learns_ok_vs_defective_in_seconds(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """240 images at 48 px (168 to train, 72 to validate), 8 epochs, one CPU thread.

    Measured validation macro-F1 on seeds 0-9: 0.87, 0.80, 0.85, 0.87, 0.88, 0.88, 0.90, 0.82, 0.83,
    0.79 (mean 0.85, min 0.79), in 14-22 s each on two shared cores. The generator as it was before
    its defects were made larger and clearer scored 0.71, 0.55, 0.64, 0.67, 0.63 on seeds 0-4: the
    bound sits between the two, below this generator's worst seed, so another machine's arithmetic
    does not fail it while faint defects would.
    """
    result = train_ok_vs_defective(tmp_path, seed=0)
    f1 = result.val_evaluation.macro_f1
    record_property("ok_vs_defective_val_macro_f1", round(f1, 3))
    assert f1 > 0.75, [round(row["val_macro_f1"], 3) for row in result.history]
