"""Bring an existing labelled folder into the database: images with their labels (source ``import``).

Each image file is read once, hashed and decode-checked (Pillow ``verify`` and then a full ``load``,
which is what catches a truncated file). A readable image becomes an ``images`` row (status
``labelled``) with an annotation of origin ``import``; a bad file is quarantined with a reason a person
can act on. Importing the same folder again writes nothing new: the same bytes are one image, and an
image whose latest imported label is the folder's label is left alone. A file moved to another class
folder gets the new label (counted as relabelled, and logged).

Files are checked outside any transaction and written in batches of ``batch_size``, each committed:
on SQLite a transaction holds the write lock the camera watcher also needs, and a crash loses at most
one batch, which a re-run completes.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.repositories import RecordOutcome
from db.schema import Annotation, AnnotationOrigin, ImageStatus, SourceKind, utcnow
from models.data import ImageRecord
from workers.folders import relative_path, scan_labelled_folder
from workers.validation import InvalidImageError, Reason, check_file_name, check_image_bytes, read_image_file

logger = logging.getLogger(__name__)

__all__ = ["IMPORT_ANNOTATOR", "ImportReport", "import_folder"]

IMPORT_ANNOTATOR = "import"
DEFAULT_BATCH_SIZE = 200
_SOURCE_NAME_LENGTH = 200  # db.schema.NAME_LENGTH
# Statuses an image already known to the loop (from a camera, say) leaves when the import labels it.
_UNLABELLED = (ImageStatus.NEW, ImageStatus.QUEUED, ImageStatus.PREDICTED, ImageStatus.LABELLING)

# Bad files are quarantined as "<reason>: <detail>" by the same checks as camera ingestion
# (workers.validation), so `defectloop status` counts bad files of both origins together.
CONFLICT = "same bytes as an earlier file of another class folder"
ALREADY_QUARANTINED = "same bytes as a file quarantined before"


@dataclass(frozen=True)
class ImportReport:
    """What an import did, file by file counted once.

    - ``imported``: new images, recorded with their label.
    - ``labelled_existing``: images already in the database (e.g. from a camera) without an imported
      label, which now have one.
    - ``already_present``: files whose bytes are in the database with the folder's label as their latest
      imported label (a re-run): nothing written.
    - ``relabelled``: images whose imported label changed (the file moved to another class folder).
    - ``duplicates``: files with the same bytes as an earlier file of this folder, same label (one image).
    - ``quarantined``: bad files by reason (empty file, not an image, truncated image, corrupt image, ...).
    - ``skipped``: good files left out by reason (the same bytes in two class folders, ...).
    - ``labels``: the folder's label of every image imported or present.
    """

    root: Path
    source_name: str
    files: int
    imported: int = 0
    labelled_existing: int = 0
    already_present: int = 0
    relabelled: int = 0
    duplicates: int = 0
    quarantined: Mapping[str, int] = field(default_factory=dict)
    skipped: Mapping[str, int] = field(default_factory=dict)
    labels: Mapping[str, int] = field(default_factory=dict)

    @property
    def n_quarantined(self) -> int:
        return sum(self.quarantined.values())

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())


@dataclass(frozen=True)
class _Checked:
    """One file after reading and decoding, before anything is written."""

    record: ImageRecord
    rel: str
    size_bytes: int
    mtime_ns: int
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    category: str | None = None  # a quarantine category, None for a good image
    detail: str = ""

    @property
    def reason(self) -> str:
        return f"{self.category}: {self.detail}" if self.detail else str(self.category)


def import_folder(
    *,
    sessions: sessionmaker[Session],
    root: Path,
    known_labels: Collection[str],
    class_map: Mapping[str, str] | None = None,
    source_name: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> ImportReport:
    """Import the ImageFolder ``root`` (one sub-folder per class) as labelled images.

    ``known_labels``: the labels a folder may carry after ``class_map`` (the configured classes, plus
    "defective" for folders that only say ok / defective). A folder with another label is refused with
    ``DatasetError`` before anything is written. The source is ``source_name`` or ``import:<root>``
    (kind ``import``). Idempotent: a second run over the same folder creates no image or annotation.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    root = Path(root).expanduser().resolve()
    records = scan_labelled_folder(root, class_map=class_map, known_labels=known_labels)
    name = source_name or _default_source_name(root)
    with sessions() as session:
        source_id = repo.get_or_create_source(
            session=session, name=name, kind=SourceKind.IMPORT, path=str(root)
        ).id
        session.commit()
    logger.info("importing %d files from %s as source %r", len(records), root, name)

    counts: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    seen: dict[str, tuple[str, str]] = {}  # sha256 -> (label, relative path) of its first file in this run
    bar = Progress(
        TextColumn("importing"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not progress,
    )
    with bar:
        bar_task = bar.add_task("importing", total=len(records))
        for batch in _batches(records, batch_size):
            checked = [_check_file(record, root) for record in batch]
            with sessions() as session:
                for item in checked:
                    outcome = _write(session, item, source_id, seen)
                    if item.category is not None:
                        quarantined[item.category] += 1
                    elif outcome in (CONFLICT, ALREADY_QUARANTINED):
                        skipped[outcome] += 1
                    else:
                        counts[outcome] += 1
                        labels[str(item.record.label)] += 1
                session.commit()
            bar.update(bar_task, advance=len(batch))
    report = ImportReport(
        root=root,
        source_name=name,
        files=len(records),
        imported=counts["imported"],
        labelled_existing=counts["labelled_existing"],
        already_present=counts["already_present"],
        relabelled=counts["relabelled"],
        duplicates=counts["duplicates"],
        quarantined=dict(sorted(quarantined.items())),
        skipped=dict(sorted(skipped.items())),
        labels=dict(sorted(labels.items())),
    )
    logger.info(
        "import of %s: %d new, %d labelled, %d already present, %d relabelled, %d duplicates, "
        "%d quarantined, %d skipped",
        root,
        report.imported,
        report.labelled_existing,
        report.already_present,
        report.relabelled,
        report.duplicates,
        report.n_quarantined,
        report.n_skipped,
    )
    return report


def _default_source_name(root: Path) -> str:
    name = f"import:{root}"
    if len(name) <= _SOURCE_NAME_LENGTH:
        return name
    # A very deep path: keep its end (the recognisable part) and a hash of the whole, so it stays unique.
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return f"import:{digest}:...{str(root)[-(_SOURCE_NAME_LENGTH - 24) :]}"


def _batches(records: Sequence[ImageRecord], size: int) -> Iterator[Sequence[ImageRecord]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]


def _check_file(record: ImageRecord, root: Path) -> _Checked:
    """Read, hash and decode one file with the camera ingester's checks; never raises for a bad file."""
    rel = relative_path(record, root)
    try:
        check_file_name(record.path)
        read = read_image_file(record.path)
    except InvalidImageError as exc:
        return _refused(record, rel, exc, size_bytes=0, mtime_ns=0)
    except OSError as exc:
        return _Checked(record, rel, 0, 0, category=Reason.UNREADABLE.value, detail=_first_line(exc))
    try:
        facts = check_image_bytes(read.data)
    except InvalidImageError as exc:
        return _refused(record, rel, exc, size_bytes=len(read.data), mtime_ns=read.stat.st_mtime_ns)
    return _Checked(
        record,
        rel,
        facts.size_bytes,
        read.stat.st_mtime_ns,
        sha256=facts.sha256,
        width=facts.width,
        height=facts.height,
        mode=facts.file_mode,
    )


def _refused(
    record: ImageRecord, rel: str, exc: InvalidImageError, *, size_bytes: int, mtime_ns: int
) -> _Checked:
    return _Checked(
        record,
        rel,
        exc.size_bytes if exc.size_bytes is not None else size_bytes,
        mtime_ns,
        sha256=exc.sha256,
        category=exc.reason.value,
        detail=exc.detail,
    )


def _first_line(exc: BaseException, *, limit: int = 200) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _write(session: Session, item: _Checked, source_id: int, seen: dict[str, tuple[str, str]]) -> str:
    """Record one checked file in the caller's transaction; returns what happened to it."""
    path = str(item.record.path)
    if item.category is not None:
        _, created = repo.quarantine_file(
            session=session,
            path=path,
            reason=item.reason,
            source_id=source_id,
            sha256=item.sha256,
            size_bytes=item.size_bytes,
            mtime_ns=item.mtime_ns,
            original_name=item.record.path.name,
        )
        if created:
            logger.warning("quarantined %s: %s", item.rel, item.reason)
        return "quarantined"
    assert item.sha256 is not None  # a readable image always has its hash
    label = str(item.record.label)
    first = seen.setdefault(item.sha256, (label, item.rel))
    if first[1] != item.rel and first[0] == label:
        return "duplicates"
    if first[0] != label:
        # The same bytes under two labels: keeping the first (sorted order) keeps a re-run idempotent.
        logger.warning(
            "skipped %s: the same image as %s, which is labelled %s, not %s",
            item.rel,
            first[1],
            first[0],
            label,
        )
        return CONFLICT
    image, created = repo.add_image(
        session=session,
        sha256=item.sha256,
        path=path,
        source_id=source_id,
        width=item.width,
        height=item.height,
        mode=item.mode,
        size_bytes=item.size_bytes,
        original_name=item.record.path.name,
        status=ImageStatus.LABELLED,
    )
    if image.status is ImageStatus.QUARANTINED:
        logger.warning("skipped %s: its bytes were quarantined before (%s)", item.rel, image.reason)
        return ALREADY_QUARANTINED
    if image.status is ImageStatus.SUPERSEDED:
        # These bytes were recorded before from a file that changed since: here they are again, an
        # image once more (as the watcher does), labelled below.
        repo.revive_image(
            session=session,
            image_id=image.id,
            status=ImageStatus.LABELLED,
            path=path,
            original_name=item.record.path.name,
            source_id=source_id,
        )
    previous = None if created else _latest_import_label(session, image.id)
    if previous == label:
        return "already_present"
    annotation, outcome = repo.record_annotation(
        session=session,
        image_id=image.id,
        label=label,
        annotator=IMPORT_ANNOTATOR,
        origin=AnnotationOrigin.IMPORT,
    )
    if outcome is RecordOutcome.UNCHANGED:
        # The file went back to a class folder it was imported from before: that older annotation is
        # re-dated, so it is again the latest (record_annotation treats the same label as one annotation).
        annotation.annotated_at = utcnow()
        session.flush()
    if not created:
        repo.set_image_status(
            session=session, image_id=image.id, status=ImageStatus.LABELLED, expected=_UNLABELLED
        )
    if created:
        return "imported"
    if previous is None:
        return "labelled_existing"
    logger.info("relabelled %s (image %d): %s -> %s", item.rel, image.id, previous, label)
    return "relabelled"


def _latest_import_label(session: Session, image_id: int) -> str | None:
    """The label of the image's latest imported annotation (a human label from Label Studio does not
    count: re-importing a folder must not undo an annotator's correction)."""
    stmt = (
        select(Annotation.label)
        .where(
            Annotation.image_id == image_id,
            Annotation.origin == AnnotationOrigin.IMPORT,
            Annotation.deleted.is_(False),
            Annotation.was_cancelled.is_(False),
        )
        .order_by(Annotation.annotated_at.desc(), Annotation.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()
