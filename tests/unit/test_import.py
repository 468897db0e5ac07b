"""Importing a labelled folder into the database (workers/importing.py): real files, a real migrated
SQLite database. Idempotence, quarantine reasons, refusals, class maps, relabelling and crash recovery."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import workers.importing as importing
from db import repositories as repo
from db.schema import Annotation, AnnotationOrigin, Image, ImageStatus, Source, SourceKind
from defectloop.settings import DEFAULT_CLASSES
from defectloop.synth import generate_dataset
from models.data import ImageRecord
from workers.errors import DatasetError
from workers.importing import ImportReport, import_folder

KNOWN = (*DEFAULT_CLASSES, "defective")


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic photos (6 ok, 6 hole) at 32 px, without the manifest so folders may be renamed."""
    root = tmp_path_factory.mktemp("import") / "images"
    generate_dataset(root, n=12, seed=5, size=32, classes=("ok", "hole"))
    (root / "manifest.csv").unlink()
    return root


@pytest.fixture
def folder(synth_folder: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic folder, free to change."""
    return Path(shutil.copytree(synth_folder, tmp_path / "images"))


def _import(sessions: sessionmaker[Session], root: Path, **overrides: Any) -> ImportReport:
    kwargs: dict[str, Any] = {"sessions": sessions, "root": root, "known_labels": KNOWN}
    kwargs.update(overrides)
    return import_folder(**kwargs)


def _count(sessions: sessionmaker[Session], model: type[Any], *where: Any) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def _label_of(sessions: sessionmaker[Session], path: Path) -> str | None:
    with sessions() as session:
        image = session.scalars(select(Image).where(Image.original_name == path.name)).one()
        return repo.current_label(session=session, image_id=image.id)


def _add_bad_files(root: Path) -> None:
    good = sorted((root / "ok").glob("*.png"))[0].read_bytes()
    (root / "ok" / "ok_truncated.png").write_bytes(good[: len(good) // 2])
    (root / "hole" / "hole_corrupt.png").write_bytes(b"these bytes are no image at all" * 4)
    (root / "hole" / "hole_empty.png").write_bytes(b"")


def test_importing_twice_records_each_image_and_label_once(
    sessions: sessionmaker[Session], folder: Path
) -> None:
    _add_bad_files(folder)
    first = _import(sessions, folder)
    assert (first.files, first.imported, first.already_present) == (15, 12, 0)
    assert first.quarantined == {"empty file": 1, "not an image": 1, "truncated image": 1}
    assert first.labels == {"hole": 6, "ok": 6}
    assert first.source_name == f"import:{folder.resolve()}"

    second = _import(sessions, folder)
    assert (second.imported, second.already_present, second.relabelled) == (0, 12, 0)
    assert second.quarantined == first.quarantined

    assert _count(sessions, Image, Image.status == ImageStatus.LABELLED) == 12
    assert _count(sessions, Image, Image.status == ImageStatus.QUARANTINED) == 3
    assert _count(sessions, Annotation) == 12
    assert _count(sessions, Annotation, Annotation.origin == AnnotationOrigin.IMPORT) == 12
    assert _count(sessions, Source) == 1
    with sessions() as session:
        source = session.scalars(select(Source)).one()
        assert source.kind is SourceKind.IMPORT
        assert source.path == str(folder.resolve())
        reasons = {
            Path(image.path).name: image.reason
            for image in session.scalars(select(Image).where(Image.status == ImageStatus.QUARANTINED))
        }
        annotation = session.scalars(select(Annotation).limit(1)).one()
        assert annotation.annotator == "import"
        image = session.get(Image, annotation.image_id)
        assert image is not None
        assert (image.width, image.height, image.size_bytes) == (32, 32, Path(image.path).stat().st_size)
    assert reasons["hole_empty.png"] == "empty file: 0 bytes"
    assert (reasons["hole_corrupt.png"] or "").startswith("not an image")
    assert (reasons["ok_truncated.png"] or "").startswith("truncated image: ")
    assert _label_of(sessions, sorted((folder / "hole").glob("hole_0*.png"))[0]) == "hole"


def test_an_unknown_label_folder_is_refused_before_anything_is_written(
    sessions: sessionmaker[Session], folder: Path
) -> None:
    (folder / "hole").rename(folder / "stain")
    with pytest.raises(DatasetError, match="--class-map") as caught:
        _import(sessions, folder)
    message = str(caught.value)
    assert "stain/" in message
    assert (
        "known labels: ok, hole, seam_puckering, uncut_thread, raw_edge, broken_stitch, defective" in message
    )
    assert _count(sessions, Image) == 0
    assert _count(sessions, Source) == 0

    report = _import(sessions, folder, class_map={"stain": "hole"}, source_name="legacy")
    assert report.labels == {"hole": 6, "ok": 6}
    assert report.source_name == "legacy"


def test_a_class_map_folds_a_binary_folder_into_defective(
    sessions: sessionmaker[Session], folder: Path
) -> None:
    (folder / "hole").rename(folder / "defect")
    report = _import(sessions, folder, class_map={"defect": "defective"})
    assert report.labels == {"defective": 6, "ok": 6}
    assert _label_of(sessions, next((folder / "defect").glob("*.png"))) == "defective"


def test_a_moved_file_is_relabelled_and_moving_it_back_restores_the_label(
    sessions: sessionmaker[Session], folder: Path
) -> None:
    _import(sessions, folder)
    moved = sorted((folder / "ok").glob("*.png"))[0]
    as_hole = folder / "hole" / moved.name
    moved.rename(as_hole)
    report = _import(sessions, folder)
    assert (report.relabelled, report.already_present) == (1, 11)
    assert _label_of(sessions, as_hole) == "hole"

    as_hole.rename(moved)
    back = _import(sessions, folder)
    assert (back.relabelled, back.already_present) == (1, 11)
    assert _label_of(sessions, moved) == "ok"
    assert _count(sessions, Annotation) == 13, "moving back re-uses the first imported annotation"


def test_a_human_label_survives_a_reimport(sessions: sessionmaker[Session], folder: Path) -> None:
    _import(sessions, folder)
    photo = sorted((folder / "ok").glob("*.png"))[0]
    with sessions() as session:
        image = session.scalars(select(Image).where(Image.original_name == photo.name)).one()
        repo.record_annotation(
            session=session, image_id=image.id, label="hole", annotator="anna", ls_annotation_id=7
        )
        session.commit()
    report = _import(sessions, folder)
    assert report.already_present == 12
    assert _label_of(sessions, photo) == "hole"


def _record_camera_copy(session: Session, folder: Path, photo: Path) -> int:
    """Record the bytes of ``photo`` (a hole photo of ``folder``) as camera cam1's /mnt/cam1/x.png; its id."""
    facts = importing._check_file(ImageRecord(path=photo, label="hole", group="g"), folder)
    assert facts.sha256 is not None
    camera = repo.get_or_create_source(session=session, name="cam1", kind=SourceKind.CAMERA)
    image, _ = repo.add_image(
        session=session,
        sha256=facts.sha256,
        path="/mnt/cam1/x.png",
        source_id=camera.id,
        width=32,
        height=32,
        mode="RGB",
        size_bytes=facts.size_bytes,
        original_name="x.png",
    )
    return image.id


def test_an_image_seen_by_a_camera_is_labelled_by_the_import(
    sessions: sessionmaker[Session], folder: Path
) -> None:
    with sessions() as session:
        _record_camera_copy(session, folder, sorted((folder / "hole").glob("*.png"))[0])
        session.commit()
    report = _import(sessions, folder)
    assert (report.imported, report.labelled_existing) == (11, 1)
    assert _count(sessions, Image, Image.status == ImageStatus.LABELLED) == 12
    assert _label_of(sessions, Path("/mnt/cam1/x.png")) == "hole"


def test_bytes_of_a_superseded_camera_row_are_an_image_again_when_imported(
    sessions: sessionmaker[Session], folder: Path
) -> None:
    photo = sorted((folder / "hole").glob("*.png"))[0]
    with sessions.begin() as session:
        image_id = _record_camera_copy(session, folder, photo)
        # The camera file was overwritten since: its row no longer is an image.
        repo.supersede_images_at(session=session, paths=["/mnt/cam1/x.png"], reason="file changed")
    _import(sessions, folder)
    with sessions() as session:
        revived = repo.get_image(session=session, image_id=image_id)
        assert revived.status is ImageStatus.LABELLED  # so it is trained on
        assert revived.path == str(photo)
        assert repo.current_label(session=session, image_id=image_id) == "hole"
    assert _count(sessions, Image, Image.status == ImageStatus.LABELLED) == 12


def test_the_same_bytes_in_two_class_folders_keep_the_first_label(
    sessions: sessionmaker[Session], folder: Path
) -> None:
    source = sorted((folder / "hole").glob("*.png"))[0]
    shutil.copy(source, folder / "ok" / "zz_copy.png")
    shutil.copy(source, folder / "hole" / "zz_copy.png")
    for _ in range(2):
        report = _import(sessions, folder)
        assert report.skipped == {importing.CONFLICT: 1}  # ok/zz_copy.png: the same bytes as a hole image
        assert report.duplicates == 1  # hole/zz_copy.png: a second copy under the same label
    assert _count(sessions, Image) == 12
    assert _label_of(sessions, source) == "hole"


def test_a_crash_midway_loses_at_most_one_batch_and_a_rerun_completes(
    sessions: sessionmaker[Session], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = importing._write
    calls = 0

    def failing_write(*args: Any, **kwargs: Any) -> str:
        nonlocal calls
        calls += 1
        if calls == 8:
            raise RuntimeError("power cut")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(importing, "_write", failing_write)
    with pytest.raises(RuntimeError, match="power cut"):
        _import(sessions, folder, batch_size=5)
    assert _count(sessions, Image) == 5, "the first batch was committed, the second rolled back"
    monkeypatch.setattr(importing, "_write", real_write)
    report = _import(sessions, folder, batch_size=5)
    assert (report.imported, report.already_present) == (7, 5)
    assert _count(sessions, Image) == 12
    assert _count(sessions, Annotation) == 12
