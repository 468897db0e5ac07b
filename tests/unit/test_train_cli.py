"""Training and evaluating model versions from labelled folders (workers/training.py, `defectloop train`,
`defectloop evaluate`): a real migrated SQLite database, real files, real training at 32 px for an epoch.

Small on purpose (16-18 synthetic images, baseline_cnn, one thread) so the file runs in well under a
minute on two shared cores. Nothing downloads: no model is built with pretrained weights.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import (
    Image,
    ModelEvaluation,
    ModelStatus,
    ModelTask,
    ModelVersion,
    TrainingRun,
    TrainingRunStatus,
)
from defectloop.settings import DEFAULT_CLASSES
from defectloop.synth import generate_dataset
from models.comparison import threshold_flag
from models.data import InputSpec
from models.errors import CheckpointIntegrityError, ModelError, UnknownArchitectureError
from models.labels import LabelSpace
from models.train import file_sha256
from workers.errors import DatasetError, IncompatibleVersionError
from workers.importing import import_folder
from workers.training import (
    Hyperparameters,
    TrainingRequest,
    TrainOutcome,
    evaluate_on_folder,
    train_from_database,
    train_from_folder,
)

DEFECTLOOP = str(Path(sys.executable).parent / "defectloop")
GOOD, DEFECTS = DEFAULT_CLASSES[0], DEFAULT_CLASSES[1:]
SPEC = InputSpec(image_size=32, channels=1)
LABELS = LabelSpace(GOOD, DEFECTS)
_HYPER = tuple(f.name for f in fields(Hyperparameters))


pytestmark = pytest.mark.usefixtures("hub_offline")


@pytest.fixture(scope="module")
def binary_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 synthetic photos, ok and hole, 32 px."""
    root = tmp_path_factory.mktemp("binary") / "images"
    generate_dataset(root, n=16, seed=3, size=32, classes=("ok", "hole"))
    return root


def _request(**overrides: Any) -> TrainingRequest:
    """A one-epoch binary baseline_cnn request; ``overrides`` may name request and hyper-parameter fields."""
    hyper = {name: overrides.pop(name) for name in _HYPER if name in overrides}
    base: dict[str, Any] = {
        "task": ModelTask.BINARY,
        "architecture": "baseline_cnn",
        "label_space": LABELS,
        "input_spec": SPEC,
        "threads": 1,
        "hyperparameters": Hyperparameters(**{"epochs": 1, "batch_size": 8, "val_fraction": 0.25, **hyper}),
    }
    return TrainingRequest(**(base | overrides))


def _train(
    sessions: sessionmaker[Session],
    dataset: Path,
    artifacts: Path,
    class_map: dict[str, str] | None = None,
    **overrides: Any,
) -> TrainOutcome:
    return train_from_folder(
        _request(**overrides),
        sessions=sessions,
        dataset=dataset,
        artifacts_dir=artifacts,
        class_map=class_map,
    )


def _renamed_copy(source: Path, target: Path, renames: dict[str, str]) -> Path:
    """A copy of a synth folder with class folders renamed, and without the manifest (which would name
    the old folders: a scan ignores class folders that a manifest does not list)."""
    shutil.copytree(source, target)
    (target / "manifest.csv").unlink()
    for old, new in renames.items():
        (target / old).rename(target / new)
    return target


def _count(sessions: sessionmaker[Session], model: type[Any]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


# --- training ------------------------------------------------------------------------------------


def test_first_version_is_champion_the_next_a_candidate_and_a_warm_start_names_its_parent(
    sessions: sessionmaker[Session], binary_folder: Path, tmp_path: Path
) -> None:
    artifacts = tmp_path / "artifacts"
    first = _train(sessions, binary_folder, artifacts)
    assert first.version_name == "binary-baseline_cnn-0001"
    assert first.is_champion
    assert first.artifact_path == artifacts.resolve() / "binary-baseline_cnn-0001.pt"
    assert first.n_train + first.n_val == 16
    with sessions() as session:
        version = repo.get_model_version_by_name(session=session, name=first.version_name)
        run = repo.get_training_run(session=session, run_id=first.training_run_id)
        assert version.status is ModelStatus.CHAMPION
        assert Path(version.artifact_path).is_file()
        assert file_sha256(version.artifact_path) == version.artifact_sha256 == first.artifact_sha256
        assert version.classes == ["ok", "defective"]
        assert version.input_spec == SPEC.to_dict()
        assert version.hyperparameters["architecture"] == "baseline_cnn"
        assert version.hyperparameters["epochs"] == 1
        assert {"macro_f1", "accuracy", "confusion_matrix", "best_epoch", "history"} <= set(version.metrics)
        assert len(version.metrics["history"]) == 1
        # A binary version carries the decision threshold tuned on its validation split.
        assert first.threshold is not None
        assert version.metrics["decision_threshold"] == pytest.approx(first.threshold.threshold)
        tuning = version.metrics["threshold_tuning"]
        assert 0.0 <= tuning["threshold"] <= 1.0
        assert tuning["f1"] >= tuning["f1_at_default"]
        assert tuning["support"] == first.n_val // 2  # val_fraction 0.25 of 8 ok + 8 hole, stratified
        snapshot = version.training_snapshot or {}
        assert snapshot["dataset"] == str(binary_folder.resolve())
        assert len(snapshot["dataset_sha256"]) == 64
        assert (snapshot["n_train"], snapshot["n_val"]) == (first.n_train, first.n_val)
        assert snapshot["val_groups"] == first.n_val  # synthetic renders: each file is its own group
        json.dumps([version.hyperparameters, version.metrics, snapshot])  # plain JSON, nothing else
        assert run.status is TrainingRunStatus.SUCCEEDED
        assert run.model_version_id == version.id
        assert (run.n_train, run.n_val) == (first.n_train, first.n_val)
    assert not list(artifacts.glob(".*")), "no partial checkpoint is left behind"

    second = _train(sessions, binary_folder, artifacts, seed=1)
    assert second.version_name == "binary-baseline_cnn-0002"
    assert not second.is_champion
    with sessions() as session:
        champion = repo.get_champion(session=session, task=ModelTask.BINARY)
        assert champion is not None
        assert champion.name == first.version_name
        assert repo.get_model_version(session=session, version_id=second.version_id).status is (
            ModelStatus.CANDIDATE
        )

    warm = _train(sessions, binary_folder, artifacts, warm_start_version=first.version_name)
    assert warm.parent_name == first.version_name
    with sessions() as session:
        row = repo.get_model_version(session=session, version_id=warm.version_id)
        assert row.parent_id == first.version_id
        assert row.hyperparameters["warm_start_sha256"] == first.artifact_sha256

    runs_before = _count(sessions, TrainingRun)
    with pytest.raises(IncompatibleVersionError, match="improved_cnn"):
        _train(
            sessions,
            binary_folder,
            artifacts,
            architecture="improved_cnn",
            warm_start_version=first.version_name,
        )
    with pytest.raises(IncompatibleVersionError, match="64 px"):
        _train(
            sessions,
            binary_folder,
            artifacts,
            input_spec=InputSpec(image_size=64, channels=1),
            warm_start_version=first.version_name,
        )
    assert _count(sessions, TrainingRun) == runs_before, "a refused warm start costs no run"


def test_a_validation_split_that_cannot_be_tuned_on_gets_no_degenerate_threshold(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # Every photo is the same flat grey, ok and hole alike (one duplicate group per class, so the split
    # puts each class on one side): any threshold tuned on that validation split would call every image
    # one class. The tuning is refused, the reason recorded with the version, which calls at 0.5.
    from PIL import Image as PILImage

    folder = tmp_path / "flat"
    for cls in ("ok", "hole"):
        (folder / cls).mkdir(parents=True)
        for i in range(8):
            PILImage.new("L", (32, 32), color=128).save(folder / cls / f"{cls}_{i}.png")
    outcome = _train(sessions, folder, tmp_path / "artifacts")
    assert outcome.threshold is None
    with sessions() as session:
        version = repo.get_model_version_by_name(session=session, name=outcome.version_name)
        assert "decision_threshold" not in version.metrics  # the version calls at 0.5
        tuning = version.metrics["threshold_tuning"]
        assert tuning["threshold"] == 0.5
        assert re.search("without a negative|without a positive|scores are equal", tuning["refused"])
        assert threshold_flag(version.metrics) == f"not tuned: {tuning['refused']}"


def test_a_request_with_invalid_settings_is_refused_before_a_run_is_recorded(
    sessions: sessionmaker[Session], binary_folder: Path, tmp_path: Path
) -> None:
    assert _request(task="multiclass").task is ModelTask.MULTICLASS
    with pytest.raises(DatasetError, match="invalid training settings: epochs"):
        _train(sessions, binary_folder, tmp_path / "artifacts", epochs=0)
    with pytest.raises(DatasetError, match="val_fraction"):
        _train(sessions, binary_folder, tmp_path / "artifacts", val_fraction=1.0)
    assert _count(sessions, TrainingRun) == 0


def test_an_unknown_architecture_is_refused_before_anything_is_recorded(
    sessions: sessionmaker[Session], binary_folder: Path, tmp_path: Path
) -> None:
    with pytest.raises(UnknownArchitectureError, match="baseline_cnn") as caught:
        _train(sessions, binary_folder, tmp_path / "artifacts", architecture="resnet99")
    assert "resnet99" in str(caught.value)
    assert _count(sessions, ModelVersion) == 0
    assert _count(sessions, TrainingRun) == 0


def test_a_failure_during_training_marks_the_run_failed_and_registers_nothing(
    sessions: sessionmaker[Session], binary_folder: Path, tmp_path: Path
) -> None:
    dataset = tmp_path / "images"
    shutil.copytree(binary_folder, dataset)
    (dataset / "ok" / "ok_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    artifacts = tmp_path / "artifacts"
    with pytest.raises(ModelError, match=r"ok_corrupt\.png"):
        _train(sessions, dataset, artifacts)
    assert _count(sessions, ModelVersion) == 0
    with sessions() as session:
        runs = list(session.scalars(select(TrainingRun)))
    assert len(runs) == 1
    assert runs[0].status is TrainingRunStatus.FAILED
    assert "ImageLoadError" in (runs[0].error or "")
    assert "ok_corrupt.png" in (runs[0].error or "")
    assert runs[0].model_version_id is None
    assert not artifacts.exists() or not any(artifacts.iterdir())


def test_multiclass_trains_on_the_defect_folders_only(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    dataset = tmp_path / "images"
    generate_dataset(dataset, n=18, seed=4, size=32, classes=("ok", "hole", "raw_edge"))
    outcome = _train(sessions, dataset, tmp_path / "artifacts", task=ModelTask.MULTICLASS)
    assert outcome.version_name == "multiclass-baseline_cnn-0001"
    assert outcome.is_champion, "the first multiclass version is its task's champion"
    assert outcome.n_train + outcome.n_val == 12  # the 6 ok images are left out
    with sessions() as session:
        version = repo.get_model_version(session=session, version_id=outcome.version_id)
        assert version.classes == list(DEFECTS)
        assert (version.training_snapshot or {})["labels"] == {"hole": 6, "raw_edge": 6}
        assert set(outcome.val_evaluation.class_names) == set(DEFECTS)


def test_folders_that_cannot_train_are_refused_with_what_to_do(
    sessions: sessionmaker[Session], binary_folder: Path, tmp_path: Path
) -> None:
    artifacts = tmp_path / "artifacts"
    unknown = _renamed_copy(binary_folder, tmp_path / "unknown", {"hole": "defect"})
    with pytest.raises(DatasetError, match="--class-map") as caught:
        _train(sessions, unknown, artifacts)
    assert "defect/" in str(caught.value)
    assert "known labels: ok, defective, hole" in str(caught.value)
    mapped = _train(sessions, unknown, artifacts, class_map={"defect": "defective"})
    assert mapped.is_champion

    with pytest.raises(DatasetError, match="no images of a defect type"):
        _train(sessions, unknown, artifacts, task=ModelTask.MULTICLASS, class_map={"defect": "defective"})

    lonely = tmp_path / "lonely"
    (lonely / "ok").mkdir(parents=True)
    (lonely / "hole").mkdir()
    for i, source in enumerate(sorted((binary_folder / "ok").glob("*.png"))[:4]):
        shutil.copy(source, lonely / "ok" / f"ok_{i}.png")
    shutil.copy(next((binary_folder / "hole").glob("*.png")), lonely / "hole" / "hole_0.png")
    with pytest.raises(DatasetError, match="fewer than 2 images"):
        _train(sessions, lonely, artifacts)
    shutil.rmtree(lonely / "hole")
    with pytest.raises(DatasetError, match="needs ok and defective images"):
        _train(sessions, lonely, artifacts)
    with pytest.raises(DatasetError, match="does not exist"):
        _train(sessions, tmp_path / "missing", artifacts)
    assert _count(sessions, TrainingRun) == 1, "only the successful run was recorded"


# --- evaluation ----------------------------------------------------------------------------------


def test_evaluate_records_the_metrics_and_refuses_a_changed_checkpoint(
    sessions: sessionmaker[Session], binary_folder: Path, tmp_path: Path
) -> None:
    trained = _train(sessions, binary_folder, tmp_path / "artifacts")
    outcome = evaluate_on_folder(
        sessions=sessions,
        version_name=trained.version_name,
        dataset=binary_folder,
        label_space=LABELS,
    )
    assert outcome.n_images == 16
    assert outcome.evaluation.ece is not None
    assert sum(outcome.evaluation.support) == 16
    with sessions() as session:
        row = session.get(ModelEvaluation, outcome.evaluation_id)
        assert row is not None
        assert row.model_version_id == trained.version_id
        assert row.dataset == str(binary_folder.resolve())
        assert row.n_images == 16
        assert row.metrics["macro_f1"] == pytest.approx(outcome.evaluation.macro_f1)
        assert row.metrics["confusion_matrix"] == [list(r) for r in outcome.evaluation.confusion]
        # The same files and labels as training used: the same fingerprint.
        version = repo.get_model_version(session=session, version_id=trained.version_id)
        assert row.dataset_sha256 == (version.training_snapshot or {})["dataset_sha256"]

    # The calls are made at the version's stored threshold: at 0 every image is called defective, at 1
    # none is (a one-epoch model is nowhere near p = 1).
    for threshold, called_defective in ((0.0, 16), (1.0, 0)):
        with sessions.begin() as session:
            version = repo.get_model_version(session=session, version_id=trained.version_id)
            version.metrics = {**version.metrics, "decision_threshold": threshold}
        at = evaluate_on_folder(
            sessions=sessions,
            version_name=trained.version_name,
            dataset=binary_folder,
            label_space=LABELS,
        )
        assert at.threshold == threshold
        assert sum(row[1] for row in at.evaluation.confusion) == called_defective
        with sessions() as session:
            recorded = session.get(ModelEvaluation, at.evaluation_id)
            assert recorded is not None
            assert recorded.metrics["decision_threshold"] == threshold

    data = bytearray(trained.artifact_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    trained.artifact_path.write_bytes(bytes(data))
    with pytest.raises(CheckpointIntegrityError, match="the registry expects"):
        evaluate_on_folder(
            sessions=sessions,
            version_name=trained.version_name,
            dataset=binary_folder,
            label_space=LABELS,
        )
    assert _count(sessions, ModelEvaluation) == 3


# --- training on the database's labels -----------------------------------------------------------------


def _label(sessions: sessionmaker[Session], path: Path, label: str, ls_id: int) -> None:
    """An annotator's label (as the webhook records it) for the image at ``path``."""
    with sessions.begin() as session:
        image = session.scalars(select(Image).where(Image.path == str(path))).one()
        repo.record_annotation(
            session=session, image_id=image.id, label=label, annotator="ann@factory", ls_annotation_id=ls_id
        )


def test_training_on_the_database_uses_the_current_labels_and_leaves_out_what_it_cannot_use(
    sessions: sessionmaker[Session], binary_folder: Path, tmp_path: Path
) -> None:
    with pytest.raises(DatasetError, match="none to train on"):
        train_from_database(
            TrainingRequest(
                task=ModelTask.BINARY, architecture="baseline_cnn", label_space=LABELS, input_spec=SPEC
            ),
            sessions=sessions,
            artifacts_dir=tmp_path / "artifacts",
        )
    assert _count(sessions, TrainingRun) == 0

    folder = Path(shutil.copytree(binary_folder, tmp_path / "images"))
    import_folder(sessions=sessions, root=folder, known_labels=(GOOD, "defective", *DEFECTS))
    oks, holes = sorted((folder / "ok").iterdir()), sorted((folder / "hole").iterdir())
    _label(sessions, oks[0], "hole", 1)  # an annotator overrides an imported label: 7 ok, 9 hole
    _label(sessions, oks[1], "stain", 2)  # a label the deployment no longer knows: left out
    holes[0].unlink()  # the file is gone: left out

    def train_db(**overrides: Any) -> TrainOutcome:
        return train_from_database(
            _request(**overrides), sessions=sessions, artifacts_dir=tmp_path / "artifacts"
        )

    first = train_db()
    assert first.is_champion
    assert first.n_train + first.n_val == 14  # 16 - the unknown label - the missing file
    with sessions() as session:
        snapshot = repo.get_model_version(session=session, version_id=first.version_id).training_snapshot
    assert snapshot is not None
    assert snapshot["dataset"] == "database"
    assert snapshot["labels"] == {"hole": 8, "ok": 6}
    assert (snapshot["left_out_missing_file"], snapshot["left_out_unknown_label"]) == (1, {"stain": 1})
    assert snapshot["labelled_images"] == 16

    again = train_db(seed=1)
    _label(sessions, oks[2], "hole", 3)
    relabelled = train_db()
    with sessions() as session:
        same, changed = (
            repo.get_model_version(session=session, version_id=outcome.version_id).training_snapshot or {}
            for outcome in (again, relabelled)
        )
    assert same["dataset_sha256"] == snapshot["dataset_sha256"], "the same labels: the same fingerprint"
    assert changed["dataset_sha256"] != snapshot["dataset_sha256"]
    assert changed["labels"] == {"hole": 9, "ok": 5}


# --- the console script ----------------------------------------------------------------------------


def _run_cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTLOOP_")}
    environ.update(
        {"DEFECTLOOP_DATA_DIR": str(data_dir), "COLUMNS": "200", "NO_COLOR": "1", "HF_HUB_OFFLINE": "1"}
    )
    return subprocess.run(
        [DEFECTLOOP, *args], capture_output=True, text=True, env=environ, timeout=180, check=False
    )


def test_train_evaluate_and_import_from_the_command_line(binary_folder: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    dataset = _renamed_copy(binary_folder, tmp_path / "images", {"hole": "defect"})

    malformed = _run_cli("train", "--dataset", str(dataset), "--task", "binary", "--arch", "baseline_cnn",
                         "--class-map", "defect", data_dir=data_dir)  # fmt: skip
    assert malformed.returncode == 2
    assert "FOLDER=LABEL" in malformed.stderr

    refused = _run_cli("train", "--dataset", str(dataset), "--task", "binary", "--arch", "baseline_cnn",
                       data_dir=data_dir)  # fmt: skip
    assert refused.returncode == 1
    assert "defectloop db upgrade" in refused.stderr

    assert _run_cli("db", "upgrade", data_dir=data_dir).returncode == 0
    unknown = _run_cli("import", str(dataset), data_dir=data_dir)
    assert unknown.returncode == 1
    assert "--class-map" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    imported = _run_cli("import", str(dataset), "--class-map", "defect=defective", data_dir=data_dir)
    assert imported.returncode == 0, imported.stderr
    assert "imported (new images)" in imported.stdout
    assert "labels: defective 8, ok 8" in imported.stdout

    trained = _run_cli(
        "train", "--dataset", str(dataset), "--task", "binary", "--arch", "baseline_cnn",
        "--class-map", "defect=defective", "--epochs", "1", "--batch-size", "8", "--image-size", "32",
        "--channels", "1", "--val-fraction", "0.25", data_dir=data_dir,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "registered binary-baseline_cnn-0001 as champion" in trained.stdout
    assert "macro-F1" in trained.stdout
    assert re.search(r"decision threshold \d\.\d{3}, tuned on validation", trained.stdout), trained.stdout
    assert (data_dir / "artifacts" / "binary-baseline_cnn-0001.pt").is_file()
    status = _run_cli("status", data_dir=data_dir)
    assert re.search(
        r"champion binary: binary-baseline_cnn-0001 \(defective at p >= \d\.\d{3}\)", status.stdout
    )

    evaluated = _run_cli("evaluate", "binary-baseline_cnn-0001", "--dataset", str(dataset),
                         "--class-map", "defect=defective", data_dir=data_dir)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    for text in ("precision", "recall", "macro-F1", "ECE", "confusion matrix", "recorded as evaluation 1"):
        assert text in evaluated.stdout, text
    assert "16" in evaluated.stdout
    assert re.search(r"defective at p >= \d\.\d{3}", evaluated.stdout), evaluated.stdout

    # The same labels, now in the database (the import above): a second version trained on them.
    both = _run_cli("train", "--dataset", str(dataset), "--from-database", "--task", "binary",
                    "--arch", "baseline_cnn", data_dir=data_dir)  # fmt: skip
    neither = _run_cli("train", "--task", "binary", "--arch", "baseline_cnn", data_dir=data_dir)
    for refused in (both, neither):
        assert refused.returncode == 2
        assert "--from-database" in refused.stderr
    from_db = _run_cli(
        "train", "--from-database", "--task", "binary", "--arch", "baseline_cnn", "--epochs", "1",
        "--batch-size", "8", "--image-size", "32", "--channels", "1", "--val-fraction", "0.25",
        data_dir=data_dir,
    )  # fmt: skip
    assert from_db.returncode == 0, from_db.stderr
    assert "registered binary-baseline_cnn-0002 as candidate" in from_db.stdout
    assert "trained on 12 images, validated on 4" in from_db.stdout
