"""A multiclass retrain on the database's labels leaves out a defect type labelled only once (as a loop
that labels as it goes meets one), instead of refusing to train the other types."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import ModelTask
from defectloop.settings import DEFAULT_CLASSES
from defectloop.synth import generate_dataset
from models.data import InputSpec
from models.labels import LabelSpace
from workers.errors import DatasetError
from workers.importing import import_folder
from workers.training import Hyperparameters, TrainingRequest, train_from_database

GOOD, DEFECTS = DEFAULT_CLASSES[0], DEFAULT_CLASSES[1:]
SPEC = InputSpec(image_size=32, channels=1)
TINY = Hyperparameters(epochs=1, batch_size=8, val_fraction=0.25)


def _folder(tmp_path: Path, keep: dict[str, int]) -> Path:
    """A labelled folder with ``keep[class]`` photos of each class (synthetic, 32 px)."""
    source = tmp_path / "synth"
    generate_dataset(source, n=48, seed=3, size=32, write_masks=False)
    root = tmp_path / "labelled"
    for label, n in keep.items():
        (root / label).mkdir(parents=True)
        for path in sorted((source / label).glob("*.png"))[:n]:
            shutil.copy(path, root / label / path.name)
    return root


def _train(sessions: sessionmaker[Session], tmp_path: Path) -> int:
    request = TrainingRequest(
        task=ModelTask.MULTICLASS,
        architecture="baseline_cnn",
        label_space=LabelSpace(GOOD, DEFECTS),
        input_spec=SPEC,
        hyperparameters=TINY,
        threads=1,
    )
    outcome = train_from_database(request, sessions=sessions, artifacts_dir=tmp_path / "artifacts")
    return outcome.version_id


def test_a_type_labelled_once_is_left_out_and_counted(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    keep = {"ok": 4, "hole": 1, "seam_puckering": 4, "uncut_thread": 4, "raw_edge": 0, "broken_stitch": 3}
    import_folder(sessions=sessions, root=_folder(tmp_path, keep), known_labels=(GOOD, *DEFECTS))
    version_id = _train(sessions, tmp_path)
    with sessions() as session:
        version = repo.get_model_version(session=session, version_id=version_id)
        snapshot = version.training_snapshot
        assert snapshot is not None
        assert snapshot["left_out_rare_class"] == {"hole": 1}
        assert snapshot["n_images"] == 4 + 4 + 3
        assert list(version.classes) == list(DEFECTS), "the model still names every type"


def test_two_types_are_still_needed(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    keep = {"ok": 4, "hole": 1, "seam_puckering": 4}
    import_folder(sessions=sessions, root=_folder(tmp_path, keep), known_labels=(GOOD, *DEFECTS))
    with pytest.raises(DatasetError, match="fewer than 2 images"):
        _train(sessions, tmp_path)
