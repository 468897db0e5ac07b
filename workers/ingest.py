"""Camera ingestion: watch folders, take each file once it is complete, record it, announce it.

A watchdog observer (inotify, or polling for network shares) only notes which paths changed; one ingest
thread does all the work, so nothing here needs more than one lock. A file is taken at once when inotify
reports it closed after writing or renamed into place AND its bytes end where their format says a file
ends (`workers.validation.is_structurally_complete`: JPEG EOI, PNG IEND, WebP/BMP sizes); otherwise when
its size and mtime have not changed for ``stable_seconds`` (a writer that pauses longer than that is
caught by the decode check: a file that fails the way a half-written file fails waits
``incomplete_grace_seconds`` more before it is quarantined). Either way it is decoded in full before it
becomes an image, so a half-written file never does. The initial scan, a periodic rescan and a scan of
every folder created later make up for events the observer missed.

Only files inside the watched folders are taken, on every route (scan, rescan, events, created
folders): a symlinked folder is never entered, and a file reached through one is refused; a symlink to
a file is followed only into the roots (or ``symlink_targets``) and recorded by the path it resolves to.

Each file is read once (`workers.validation`): a good image becomes an ``images`` row with status
``new`` (the same bytes anywhere are one row), a bad one a ``quarantined`` row with its reason. A row is
bound to the bytes it was recorded with: when a file changes (overwritten in place, replaced by a rename,
a quarantined half-written file that became a valid image), the rows recorded from that path before are
``superseded`` by the row of its new bytes (`db.repositories.supersede_images_at`), and bytes of a
superseded row found again bring it back. The row is committed before ``publish`` is called with the ids
of the images this service created. Publishing
runs in a thread of its own (``defectloop-publish``), so a broker that is down, or hangs without
closing its connections, never stops files from being recorded; a failed publish leaves the rows
committed (status ``new``) and is retried with back-off, and the sweeper re-queues whatever is still
``new`` after a crash. Camera files are never moved or deleted unless
``delete_after_ingest`` is set, which needs a ``store_dir`` holding the copies the rows point to.
Nothing a single file does stops the service: every per-file failure is logged with its path and
ends as a quarantined row, or (database down, disk full) is retried later.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

try:
    from watchdog.observers.inotify import InotifyObserver
except ImportError:  # not Linux: the platform's own observer
    InotifyObserver = None  # type: ignore[assignment,misc]

from db import repositories as repo
from db.schema import NAME_LENGTH, PATH_LENGTH, ImageStatus, SourceKind
from db.session import session_scope
from workers.validation import (
    DEFAULT_EXTENSIONS,
    DEFAULT_MAX_ASPECT,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    ImageFacts,
    InvalidImageError,
    Reason,
    check_file_name,
    check_image_bytes,
    check_symlink,
    is_structurally_complete,
    read_image_file,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_EXTENSIONS",
    "IngestConfig",
    "IngestService",
    "IngestStats",
    "Outcome",
    "Publish",
    "ScanResult",
    "camera_source_name",
]

Publish = Callable[[list[int]], None]
"""Announces newly recorded image ids (e.g. sends them to the inference queue); may raise."""

_Signature = tuple[int, int, int]  # size, mtime_ns, ctime_ns: any write, chmod or replacement changes it
_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileClosedEvent,
    FileAttribEvent,  # a file made readable later
    DirCreatedEvent,
    DirMovedEvent,
]
_MAX_TICK_S = 0.5
_MAX_RETRY_DELAY_S = 30.0
_MAX_UNPUBLISHED = 100_000  # beyond this, the oldest unannounced ids are left to the sweeper
_MAX_REMEMBERED_REFUSALS = 10_000


@dataclass(frozen=True)
class IngestConfig:
    """How the camera folders are watched and what a file must be to be taken.

    ``roots`` are resolved once; ``extensions`` are matched case-insensitively (``.JPG`` counts).
    ``symlink_targets`` lists folders besides the roots that a symlink in a root may point into.
    """

    roots: Sequence[Path]
    extensions: Iterable[str] = DEFAULT_EXTENSIONS
    stable_seconds: float = 1.0
    incomplete_grace_seconds: float = 10.0
    rescan_seconds: float = 30.0
    poll: bool = False
    poll_interval_seconds: float = 1.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE
    max_aspect: float = DEFAULT_MAX_ASPECT
    max_bytes: int = DEFAULT_MAX_BYTES
    ignore_hidden: bool = True
    symlink_targets: Sequence[Path] = ()
    store_dir: Path | None = None
    delete_after_ingest: bool = False
    publish_batch_size: int = 64

    def __post_init__(self) -> None:
        # Frozen: normalised values are set once here, the dataclass-sanctioned way.
        roots = tuple(dict.fromkeys(Path(r).expanduser().resolve() for r in self.roots))
        if not roots:
            raise ValueError("give at least one camera folder to watch")
        object.__setattr__(self, "roots", roots)
        extensions = frozenset(
            e.lower() if e.startswith(".") else f".{e.lower()}"
            for e in (x.strip() for x in self.extensions)
            if e
        )
        if not extensions:
            raise ValueError("give at least one accepted extension, e.g. .jpg,.png")
        object.__setattr__(self, "extensions", extensions)
        targets = tuple(Path(t).expanduser().resolve() for t in self.symlink_targets)
        object.__setattr__(self, "symlink_targets", targets)
        for name in ("stable_seconds", "incomplete_grace_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.incomplete_grace_seconds < self.stable_seconds:
            raise ValueError(
                f"incomplete_grace_seconds ({self.incomplete_grace_seconds}) must be >= stable_seconds "
                f"({self.stable_seconds})"
            )
        for name in ("rescan_seconds", "poll_interval_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_pixels", "min_side", "max_bytes", "publish_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_aspect < 1:
            raise ValueError(f"max_aspect must be >= 1, got {self.max_aspect}")
        if self.store_dir is not None:
            store = Path(self.store_dir).expanduser().resolve()
            object.__setattr__(self, "store_dir", store)
            if any(store.is_relative_to(root) for root in roots):
                raise ValueError(
                    f"store_dir {store} lies inside a watched folder: its copies would be ingested"
                )
        if self.delete_after_ingest and self.store_dir is None:
            raise ValueError(
                "delete_after_ingest needs store_dir: the images rows must point at a copy that is kept"
            )

    @property
    def link_roots(self) -> tuple[Path, ...]:
        """Folders a symlink may point into."""
        return (*self.roots, *self.symlink_targets)


class Outcome(StrEnum):
    """What happened to one file."""

    INGESTED = "ingested"  # a new image row, announced
    DUPLICATE = "duplicate"  # the bytes were already an image
    QUARANTINED = "quarantined"
    WAITING = "waiting"  # not complete yet
    RETRY = "retry"  # recording failed (database, disk); tried again later
    GONE = "gone"  # vanished, or already handled unchanged


@dataclass
class ScanResult:
    """Ids by outcome for the files handled in one scan (`IngestService.scan_once`)."""

    ingested: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    quarantined: list[int] = field(default_factory=list)
    waiting: int = 0  # files seen but not complete yet (or waiting for a retry)


@dataclass
class IngestStats:
    """Counters since the service was made."""

    ingested: int = 0
    duplicates: int = 0
    quarantined: int = 0
    superseded: int = 0  # rows of files that changed, superseded by the rows of their new bytes
    retries: int = 0
    unexpected_errors: int = 0
    published: int = 0
    publish_failures: int = 0
    scans: int = 0
    pending: int = 0
    unpublished: int = 0


@dataclass
class _Pending:
    """A path that changed and is not handled yet."""

    first_seen: float
    due: float
    signature: _Signature | None = None
    since: float = 0.0  # when `signature` was first observed (monotonic)
    attempts: int = 0
    settled: bool = False  # the last event was a close after writing or a rename into place


def camera_source_name(root: Path) -> str:
    """The name of the source row of a camera folder (``camera:/mnt/cam1``), at most 200 characters."""
    name = f"camera:{root}"
    if len(name) <= NAME_LENGTH:
        return name
    digest = hashlib.sha256(str(root).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"camera:{digest}:…{str(root)[-(NAME_LENGTH - 22) :]}"


def _storable(text: str) -> str:
    """``text`` as the database can hold it: no lone surrogates, at most PATH_LENGTH characters."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if len(text) > PATH_LENGTH:
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        text = f"{text[: PATH_LENGTH - 16]}…#{digest}"
    return text


def _signature(info: os.stat_result) -> _Signature:
    return (info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _real_path(file: Path) -> Path:
    """Where the bytes of ``file`` are: the file a symlink resolves to (checked to lie inside the roots or
    symlink targets before), else ``file`` itself."""
    if file.is_symlink():
        try:
            return file.resolve(strict=True)
        except (OSError, RuntimeError):
            return file
    return file


class _EventRecorder(FileSystemEventHandler):
    """Runs in the observer thread: notes paths, never touches files or the database.

    A file closed after writing, or renamed into place, is noted as settled (it may be taken at once);
    any other event on it (created, modified, attributes) unsettles it again.
    """

    def __init__(self, note_file: Callable[[str, bool], None], note_dir: Callable[[str], None]) -> None:
        super().__init__()
        self._note_file = note_file
        self._note_dir = note_dir

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            path = event.dest_path if isinstance(event, FileMovedEvent | DirMovedEvent) else event.src_path
            path = os.fsdecode(path)
            if not path:  # moved out of the watched folders (inotify full events): nothing to take
                return
            if isinstance(event, DirCreatedEvent | DirMovedEvent):
                self._note_dir(path)
            elif not event.is_directory:
                self._note_file(path, isinstance(event, FileClosedEvent | FileMovedEvent))
        except Exception:
            # An exception here would end the observer thread; the rescan finds what this missed.
            logger.exception("could not note file event %r", event)


def _inside_real_folders(path: Path) -> bool:
    """Whether no folder above ``path`` (absolute, under a resolved root) is a symlink; ``path`` itself
    may be one."""
    try:
        return path.parent.resolve() == path.parent
    except (OSError, RuntimeError, ValueError):
        return False


class IngestService:
    """Watches camera folders and records every complete file once (see the module docstring).

    ``start()`` runs the observer and the ingest thread in the background; ``run_forever()`` blocks
    until ``request_stop()`` (signal-handler safe) or Ctrl-C; ``stop()`` ends both and finishes the
    file in hand. ``scan_once()`` walks the roots and handles every file that is ready, synchronously.
    """

    def __init__(self, config: IngestConfig, sessions: sessionmaker[Session], publish: Publish) -> None:
        self.config = config
        self._sessions = sessions
        self._publish = publish
        self._notes_lock = threading.Lock()
        self._file_notes: dict[str, bool] = {}  # path -> settled (the last event's verdict)
        self._dir_notes: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Everything below is touched only under _work_lock (the ingest thread, or scan_once).
        self._work_lock = threading.RLock()
        self._pending: dict[str, _Pending] = {}
        self._seen: dict[str, _Signature] = {}
        self._source_ids: dict[Path, int] = {}
        self._refused_folders: set[str] = set()
        # The ids recorded but not announced yet: appended by the ingest thread, taken by the publisher.
        self._publish_lock = threading.Lock()
        self._unpublished: list[int] = []
        self._flush_lock = threading.Lock()  # one publish at a time (publisher thread or scan_once)
        self._publish_wake = threading.Event()
        self._publish_failures_in_row = 0
        self._publish_retry_at = 0.0
        self._publisher: threading.Thread | None = None
        self._stats = IngestStats()
        self._stats_lock = threading.Lock()
        self._observer: BaseObserver | None = None
        self._watches: dict[Path, ObservedWatch] = {}
        self._handler = _EventRecorder(self._note_file, self._note_dir)
        self._thread: threading.Thread | None = None
        self._missing_roots: set[Path] = set()
        self._tick = min(_MAX_TICK_S, max(0.02, config.stable_seconds / 3))

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching: observer first (nothing written during the initial scan is missed), then the
        ingest thread, whose first step is the initial scan. Raises ``NotADirectoryError`` for a root
        that is not a folder."""
        if self._thread is not None:
            raise RuntimeError("the ingest service is already started; make a new one to start again")
        for root in self.config.roots:
            if not root.is_dir():
                raise NotADirectoryError(f"camera folder {root} does not exist or is not a folder")
        self._stop.clear()
        self._observer = self._make_observer()
        self._observer.start()
        self._ensure_watching()
        self._thread = threading.Thread(target=self._run, name="defectloop-ingest", daemon=True)
        self._thread.start()
        self._publisher = threading.Thread(target=self._run_publisher, name="defectloop-publish", daemon=True)
        self._publisher.start()
        kind = (
            f"polling every {self.config.poll_interval_seconds:.1f}s" if self.config.poll else "native events"
        )
        logger.info(
            "watching %s (%s; stable after %.2fs; rescan every %.0fs; extensions %s)",
            ", ".join(str(r) for r in self.config.roots),
            kind,
            self.config.stable_seconds,
            self.config.rescan_seconds,
            ",".join(sorted(self.config.extensions)),
        )

    def request_stop(self) -> None:
        """Ask the service to stop (safe from a signal handler); `stop` or `run_forever` then ends it."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the ingest thread (it finishes the file in hand and announces new ids), then the observer."""
        self.request_stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("the ingest thread did not stop within %ss", timeout)
        # After the ingest thread: the publisher announces what it recorded last, once.
        publisher = self._publisher
        if publisher is not None and publisher is not threading.current_thread():
            self._publish_wake.set()
            publisher.join(timeout)
            if publisher.is_alive():
                logger.warning(
                    "the publisher did not stop within %ss (broker hanging?); %d image(s) left to the "
                    "sweeper (status new)",
                    timeout,
                    self._unpublished_count(),
                )
        # After the ingest thread: it is the one that may replace a dead observer.
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout)
        logger.info("ingest service stopped: %s", self.stats())

    def run_forever(self) -> None:
        """Start, then block until `request_stop` or Ctrl-C, then stop."""
        self.start()
        try:
            while not self._stop.wait(1.0):
                if not self.alive:  # never expected: both loops catch everything
                    logger.error("the ingest or publisher thread ended unexpectedly; stopping")
                    break
        except KeyboardInterrupt:
            logger.info("interrupted; stopping")
        finally:
            self.stop()

    @property
    def alive(self) -> bool:
        """True while the ingest thread runs and no stop was asked for."""
        threads = (self._thread, self._publisher)
        return all(t is not None and t.is_alive() for t in threads) and not self._stop.is_set()

    def stats(self) -> IngestStats:
        """A copy of the counters."""
        with self._stats_lock:
            return replace(self._stats)

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            for name, value in increments.items():
                setattr(self._stats, name, getattr(self._stats, name) + value)

    def _set_gauges(self) -> None:
        with self._stats_lock:
            self._stats.pending = len(self._pending)
            self._stats.unpublished = self._unpublished_count()

    # --- watching ---------------------------------------------------------------------------------

    def _make_observer(self) -> BaseObserver:
        if self.config.poll:
            return PollingObserver(timeout=self.config.poll_interval_seconds)
        if InotifyObserver is not None:
            # Full events: a file renamed in from outside the folders is a move (settled), not a creation.
            return InotifyObserver(generate_full_events=True)
        return Observer()

    def _ensure_watching(self) -> None:
        """(Re)schedule every root whose watch is missing or dead; restart a dead observer."""
        observer = self._observer
        if observer is None or self._stop.is_set():
            return
        if not observer.is_alive():
            logger.error("the file observer thread died; starting a new one")
            observer = self._make_observer()
            observer.start()
            self._observer = observer
            self._watches.clear()
        try:
            live = {e.watch for e in list(observer.emitters) if e.is_alive()}
        except RuntimeError:  # the set changed while copied; try again at the next rescan
            return
        for root in self.config.roots:
            watch = self._watches.get(root)
            if watch is not None and watch in live:
                continue
            if not root.is_dir():
                if root not in self._missing_roots:
                    logger.error("camera folder %s is missing; watching it again when it is back", root)
                    self._missing_roots.add(root)
                continue
            if watch is not None:
                try:
                    observer.unschedule(watch)
                except (KeyError, RuntimeError, OSError):
                    logger.debug("stale watch on %s was already gone", root)
            try:
                self._watches[root] = observer.schedule(
                    self._handler, str(root), recursive=True, event_filter=_EVENTS
                )
            except OSError as exc:  # e.g. inotify watch limit; rescans still find the files
                self._watches.pop(root, None)
                logger.error(
                    "cannot watch %s (%s); relying on rescans every %.0fs",
                    root,
                    exc,
                    self.config.rescan_seconds,
                )
                continue
            if watch is not None or root in self._missing_roots:
                logger.warning("watching %s again", root)
            self._missing_roots.discard(root)

    def _wanted(self, path: str) -> bool:
        """Whether a file path is one to take: accepted extension, not hidden, inside a root."""
        p = Path(path)
        if p.suffix.lower() not in self.config.extensions:
            return False
        root = self._root_of(p)
        if root is None:
            return False
        return not (
            self.config.ignore_hidden and any(part.startswith(".") for part in p.relative_to(root).parts)
        )

    def _note_file(self, path: str, settled: bool = False) -> None:
        if self._wanted(path):
            if not _inside_real_folders(Path(path)):
                # An observer that followed a symlinked folder (polling does): outside the roots.
                logger.debug("%r is inside a symlinked folder; not taken", path)
                return
            with self._notes_lock:
                self._file_notes[path] = settled
            self._wake.set()

    def _note_dir(self, path: str) -> None:
        with self._notes_lock:
            self._dir_notes.add(path)
        self._wake.set()

    def _root_of(self, path: Path) -> Path | None:
        best: Path | None = None
        for root in self.config.roots:
            if path.is_relative_to(root) and (best is None or len(root.parts) > len(best.parts)):
                best = root
        return best

    # --- the loop ---------------------------------------------------------------------------------

    def _run(self) -> None:
        next_rescan = 0.0  # the first step is the initial scan
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                with self._work_lock:
                    if now >= next_rescan:
                        self._ensure_watching()
                        self._discover(self.config.roots, full=True)
                        next_rescan = time.monotonic() + self.config.rescan_seconds
                    self._drain_notes()
                    self._process_due(ScanResult())
                    self._publish_wake.set()  # the ids of this pass go out together
                    self._set_gauges()
                    wake_at = min([next_rescan, *(e.due for e in self._pending.values())])
            except Exception:
                # A bug must not end the watcher: log it, wait a little, carry on.
                logger.exception("ingest step failed; continuing")
                self._count(unexpected_errors=1)
                wake_at = time.monotonic() + 1.0
            timeout = min(_MAX_TICK_S, max(0.0, wake_at - time.monotonic()))
            if timeout > 0:
                self._wake.wait(timeout)
            self._wake.clear()

    def scan_once(self) -> ScanResult:
        """Walk every root, then handle every noted file that is ready now; returns what was handled.

        A file is ready when its mtime is at least ``stable_seconds`` old, or it was seen unchanged that
        long; others stay pending for the next call (or the running service).
        """
        result = ScanResult()
        with self._work_lock:
            self._discover(self.config.roots, full=True)
            self._drain_notes()
            self._process_due(result)
            self._flush_publish()
            self._set_gauges()
            result.waiting = len(self._pending)
        return result

    def _drain_notes(self) -> None:
        with self._notes_lock:
            files, self._file_notes = self._file_notes, {}
            dirs, self._dir_notes = self._dir_notes, set()
        if dirs:
            # A folder created (or moved in) after start: its files may predate the watch on it.
            self._discover([Path(d) for d in sorted(dirs)], full=False)
        now = time.monotonic()
        for path, settled in files.items():
            entry = self._pending.get(path)
            if entry is None:
                self._pending[path] = _Pending(first_seen=now, due=now, settled=settled)
            else:
                entry.due = min(entry.due, now)
                entry.settled = settled

    def _discover(self, tops: Iterable[Path], *, full: bool) -> None:
        """Note every wanted file under ``tops`` that is not handled unchanged; a full scan of the roots
        also forgets handled files that are gone."""
        if full:
            self._count(scans=1)
        now = time.monotonic()
        for top in tops:
            root = self._root_of(top)
            if root is None or (top != root and (top.is_symlink() or not _inside_real_folders(top))):
                # A symlinked folder (a created-folder event for one, or a folder inside one): not entered,
                # so nothing outside the roots is ever listed through it.
                self._refuse_symlinked_folder(str(top))
                continue
            found: set[str] = set()
            complete = self._walk(top, found)
            for path in found:
                if path in self._pending:
                    continue
                info = self._stat(path)
                if info is None or self._seen.get(path) != _signature(info):
                    self._pending[path] = _Pending(first_seen=now, due=now)
            if full and complete:
                prefix = f"{top}{os.sep}"
                for path in [p for p in self._seen if p.startswith(prefix) and p not in found]:
                    del self._seen[path]

    def _walk(self, top: Path, found: set[str]) -> bool:
        """Add wanted file paths under ``top`` to ``found``; False if part of the tree was unreadable.

        Symlinked folders are not entered (a symlink to a file is a candidate like a file).
        """
        complete = True
        stack = [str(top)]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        try:
                            is_dir = entry.is_dir(follow_symlinks=False)
                            linked_dir = not is_dir and entry.is_symlink() and entry.is_dir()
                        except OSError:
                            is_dir = linked_dir = False
                        hidden = self.config.ignore_hidden and entry.name.startswith(".")
                        if is_dir:
                            if not hidden:
                                stack.append(entry.path)
                        elif linked_dir:
                            if not hidden:
                                self._refuse_symlinked_folder(entry.path)
                        elif self._wanted(entry.path):
                            found.add(entry.path)
            except FileNotFoundError:
                complete = complete and folder != str(top)
            except OSError as exc:
                logger.warning(
                    "cannot list %r (%s); its files are looked at again at the next rescan", folder, exc
                )
                complete = False
        return complete

    def _refuse_symlinked_folder(self, path: str) -> None:
        """Say once per path that a symlinked folder is not entered (rescans meet it again and again)."""
        if path in self._refused_folders:
            return
        if len(self._refused_folders) < _MAX_REMEMBERED_REFUSALS:
            self._refused_folders.add(path)
        target = Path(path).resolve()
        logger.warning(
            "not entering %s (-> %s): symlinked folders are not followed; watch the folder itself if its "
            "photos belong here",
            path,
            target,
            extra={"path": path},
        )

    def _process_due(self, result: ScanResult) -> None:
        now = time.monotonic()
        due = sorted((entry.first_seen, path) for path, entry in self._pending.items() if entry.due <= now)
        for _, path in due:
            if self._stop.is_set() and self._thread is threading.current_thread():
                break
            outcome, image_id = self._process(path)
            if image_id is not None:
                {
                    Outcome.INGESTED: result.ingested,
                    Outcome.DUPLICATE: result.duplicates,
                    Outcome.QUARANTINED: result.quarantined,
                }[outcome].append(image_id)
            if self._unpublished_count() >= self.config.publish_batch_size:
                self._publish_wake.set()

    # --- one file ---------------------------------------------------------------------------------

    def _process(self, path: str) -> tuple[Outcome, int | None]:
        """Observe ``path`` once more and take it if it is ready; never raises."""
        entry = self._pending.get(path)
        if entry is None:  # handled meanwhile (a folder named like an image was scanned)
            return Outcome.GONE, None
        try:
            return self._observe_and_take(path, entry)
        except Exception as exc:
            # Not expected (validation and recording catch their own errors); never lose the file.
            logger.exception("unexpected error on %r; trying again later", path)
            self._count(unexpected_errors=1)
            self._retry_later(path, entry, exc)
            return Outcome.RETRY, None

    def _observe_and_take(self, path: str, entry: _Pending) -> tuple[Outcome, int | None]:
        now = time.monotonic()
        info = self._stat(path)
        if info is None:
            self._forget(path)
            return Outcome.GONE, None
        if stat.S_ISDIR(info.st_mode) and not Path(path).is_symlink():
            # A folder named like an image: look inside it instead.
            self._pending.pop(path, None)
            self._discover([Path(path)], full=False)
            return Outcome.GONE, None
        signature = _signature(info)
        if self._seen.get(path) == signature:
            self._pending.pop(path, None)
            return Outcome.GONE, None
        if signature != entry.signature:
            entry.signature, entry.since = signature, now
        if entry.settled:
            # Closed after writing, or renamed into place: taken now if its bytes are complete.
            return self._take(path, entry, signature, now)
        stable = self.config.stable_seconds
        quiet_wall = time.time() - info.st_mtime_ns / 1e9
        if now - entry.since < stable and quiet_wall < stable:
            entry.due = entry.since + stable
            return Outcome.WAITING, None
        return self._take(path, entry, signature, now)

    @staticmethod
    def _stat(path: str) -> os.stat_result | None:
        """The file's status (through a symlink when it can), or None if nothing is there any more."""
        file = Path(path)
        try:
            return file.stat()
        except FileNotFoundError:
            pass
        except OSError:
            logger.debug("cannot stat %r through its link", path)
        try:
            return file.lstat()  # a broken or looping symlink: validation says which
        except FileNotFoundError:
            return None
        except OSError:
            logger.debug("cannot stat %r", path)
            return None

    def _take(
        self, path: str, entry: _Pending, signature: _Signature, now: float
    ) -> tuple[Outcome, int | None]:
        """Validate the file and record the verdict; waits instead when it may still be incomplete."""
        file = Path(path)
        data = b""
        if not _inside_real_folders(file):
            logger.warning("%r is inside a symlinked folder (not followed); not taken", path)
            self._handled(path, signature)
            return Outcome.GONE, None
        try:
            check_file_name(file)
            check_symlink(file, self.config.link_roots)
            read = read_image_file(file, max_bytes=self.config.max_bytes)
            if _signature(read.stat) != signature:  # written to between stat and read
                entry.signature, entry.due = None, now + self._tick
                return Outcome.WAITING, None
            data = read.data
            if entry.settled and not is_structurally_complete(data):
                # Closed or moved in, but its bytes stop short (or the format has no end marker): the
                # stability wait decides, as for any file.
                entry.settled = False
                entry.due = entry.since + self.config.stable_seconds
                logger.debug(
                    "%r was closed or moved in, but its bytes do not end as a complete image; waiting for "
                    "it to stay unchanged",
                    path,
                )
                return Outcome.WAITING, None
            facts = check_image_bytes(
                data,
                max_pixels=self.config.max_pixels,
                min_side=self.config.min_side,
                max_aspect=self.config.max_aspect,
            )
        except FileNotFoundError:
            self._forget(path)
            return Outcome.GONE, None
        except InvalidImageError as exc:
            if exc.may_be_incomplete and now - entry.since < self.config.incomplete_grace_seconds:
                entry.due = entry.since + self.config.incomplete_grace_seconds
                logger.debug("%r is not a complete image yet (%s); waiting", path, exc)
                return Outcome.WAITING, None
            return self._quarantine(path, entry, signature, exc)
        except Exception as exc:
            logger.exception("checking %r raised an unexpected error; quarantining it", path)
            self._count(unexpected_errors=1)
            error = InvalidImageError(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            return self._quarantine(path, entry, signature, error)
        return self._record(path, entry, signature, data, facts)

    def _record(
        self, path: str, entry: _Pending, signature: _Signature, data: bytes, facts: ImageFacts
    ) -> tuple[Outcome, int | None]:
        file = Path(path)
        root = self._root_of(file)
        assert root is not None  # only paths inside a root are ever noted
        real = _real_path(file)
        try:
            stored = self._store_copy(data, facts.sha256, file.suffix) if self.config.store_dir else real
            with session_scope(self._sessions) as session:
                source_id = self._source_id(session, root)
                image, created = repo.add_image(
                    session=session,
                    sha256=facts.sha256,
                    path=_storable(str(stored)),
                    source_id=source_id,
                    width=facts.width,
                    height=facts.height,
                    mode=facts.file_mode,
                    size_bytes=facts.size_bytes,
                    original_name=_storable(file.name),
                    status=ImageStatus.NEW,
                )
                image_id, status = image.id, image.status
                if status is ImageStatus.SUPERSEDED:
                    # Bytes whose row was superseded are here again: that row is an image again.
                    created = repo.revive_image(
                        session=session,
                        image_id=image_id,
                        status=ImageStatus.NEW,
                        path=_storable(str(stored)),
                        original_name=_storable(file.name),
                        source_id=source_id,
                    )
                    status = ImageStatus.NEW if created else status
                superseded = self._supersede_rows_of(session, file, real, image_id)
                recorded_path = image.path
        except Exception as exc:
            self._retry_later(path, entry, exc)
            return Outcome.RETRY, None
        # Committed: from here on the image exists whatever happens to this process.
        self._source_ids[root] = source_id
        self._handled(path, signature)
        converted = f", converted from {facts.converted_from}" if facts.converted_from else ""
        extra = {"image_id": image_id, "path": path}
        if superseded:
            self._count(superseded=len(superseded))
            logger.info(
                "%r holds new bytes: image(s) %s recorded from it before are superseded by image %d",
                path,
                superseded,
                image_id,
                extra={**extra, "superseded": superseded},
            )
        if created:
            with self._publish_lock:
                self._unpublished.append(image_id)
            self._count(ingested=1)
            logger.info(
                "ingested %r as image %d (%dx%d %s%s)",
                path,
                image_id,
                facts.width,
                facts.height,
                facts.format,
                converted,
                extra=extra,
            )
            outcome = Outcome.INGESTED
        else:
            self._count(duplicates=1)
            logger.info("%r is a duplicate of image %d (%s)", path, image_id, status, extra=extra)
            outcome = Outcome.DUPLICATE
        if self.config.delete_after_ingest:
            self._delete(path, kept_at=recorded_path)
        return outcome, image_id

    def _quarantine(
        self, path: str, entry: _Pending, signature: _Signature, error: InvalidImageError
    ) -> tuple[Outcome, int | None]:
        file = Path(path)
        root = self._root_of(file)
        assert root is not None
        try:
            with session_scope(self._sessions) as session:
                source_id = self._source_id(session, root)
                image, created = repo.quarantine_file(
                    session=session,
                    path=_storable(path),
                    reason=str(error),
                    source_id=source_id,
                    sha256=error.sha256,
                    size_bytes=error.size_bytes if error.size_bytes is not None else signature[0],
                    mtime_ns=signature[1],
                    original_name=_storable(file.name),
                )
                image_id, status = image.id, image.status
                if status is ImageStatus.SUPERSEDED:
                    created = repo.revive_image(
                        session=session,
                        image_id=image_id,
                        status=ImageStatus.QUARANTINED,
                        path=_storable(path),
                        original_name=_storable(file.name),
                        source_id=source_id,
                        reason=str(error),
                    )
                    status = ImageStatus.QUARANTINED if created else status
                superseded = self._supersede_rows_of(session, file, None, image_id)
        except Exception as exc:
            self._retry_later(path, entry, exc)
            return Outcome.RETRY, None
        self._source_ids[root] = source_id
        self._handled(path, signature)
        self._count(quarantined=1)
        extra = {"image_id": image_id, "path": path, "reason": error.reason.value}
        if superseded:
            self._count(superseded=len(superseded))
            logger.warning(
                "%r no longer holds an image: image(s) %s recorded from it before are superseded by "
                "quarantined file %d",
                path,
                superseded,
                image_id,
                extra={**extra, "superseded": superseded},
            )
        if created:
            logger.warning("quarantined %r as image %d: %s", path, image_id, error, extra=extra)
        elif status is ImageStatus.QUARANTINED:
            logger.info("%r: same bytes as quarantined image %d (%s)", path, image_id, error, extra=extra)
        else:
            logger.warning(
                "%r: %s, but the same bytes are image %d (%s), kept as it is", path, error, image_id, status
            )
        return Outcome.QUARANTINED, image_id

    def _supersede_rows_of(self, session: Session, file: Path, real: Path | None, image_id: int) -> list[int]:
        """Supersede the rows recorded from ``file`` (or the file it resolves to) by ``image_id``: the
        file holds that row's bytes now. Rows pointing into the store keep their own copy."""
        paths = {_storable(str(file))}
        if real is not None:
            paths.add(_storable(str(real)))
        return repo.supersede_images_at(
            session=session,
            paths=paths,
            by_image_id=image_id,
            reason=f"file changed after it was recorded: {_storable(str(file))} now holds image {image_id}",
        )

    def _source_id(self, session: Session, root: Path) -> int:
        cached = self._source_ids.get(root)
        if cached is not None:
            return cached
        source = repo.get_or_create_source(
            session=session, name=camera_source_name(root), kind=SourceKind.CAMERA, path=_storable(str(root))
        )
        return source.id

    def _store_copy(self, data: bytes, sha256: str, suffix: str) -> Path:
        """Write ``data`` to the content-addressed store (atomically, once); returns its path."""
        assert self.config.store_dir is not None
        target = self.config.store_dir / sha256[:2] / f"{sha256}{suffix.lower()}"
        if target.is_file() and target.stat().st_size == len(data):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with temporary.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(target)
        finally:
            temporary.unlink(missing_ok=True)
        return target

    def _delete(self, path: str, *, kept_at: str) -> None:
        """Delete an ingested camera file, but only when its row points at a copy in the store."""
        assert self.config.store_dir is not None
        if not Path(kept_at).is_relative_to(self.config.store_dir):
            # The bytes were recorded before the store was used: the row needs this very file.
            logger.info("kept camera file %r: image row points at %r, not at the store", path, kept_at)
            return
        try:
            Path(path).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("could not delete camera file %r after ingesting it: %s", path, exc)
            return
        self._seen.pop(path, None)
        logger.debug("deleted camera file %r (its copy is %r)", path, kept_at)

    def _handled(self, path: str, signature: _Signature) -> None:
        self._pending.pop(path, None)
        self._seen[path] = signature

    def _forget(self, path: str) -> None:
        self._pending.pop(path, None)
        self._seen.pop(path, None)
        logger.debug("%r vanished before it was taken", path)

    def _retry_later(self, path: str, entry: _Pending, exc: Exception) -> None:
        entry.attempts += 1
        delay = min(_MAX_RETRY_DELAY_S, max(self.config.stable_seconds, 0.5) * 2 ** (entry.attempts - 1))
        entry.due = time.monotonic() + delay
        self._count(retries=1)
        logger.error(
            "could not record %r (attempt %d: %s: %s); trying again in %.1fs",
            path,
            entry.attempts,
            type(exc).__name__,
            exc,
            delay,
        )

    # --- announcing -------------------------------------------------------------------------------

    def _unpublished_count(self) -> int:
        with self._publish_lock:
            return len(self._unpublished)

    def _run_publisher(self) -> None:
        """The publisher thread: announce recorded ids when woken, back off after a failure; at stop,
        one last attempt once the ingest thread has ended."""
        while True:
            stopping = self._stop.is_set() and not (self._thread is not None and self._thread.is_alive())
            try:
                self._flush_publish(final=stopping)
            except Exception:  # never expected: _flush_publish catches what publish raises
                logger.exception("publishing step failed; continuing")
                self._count(unexpected_errors=1)
            if stopping:
                return
            timeout = _MAX_TICK_S
            if self._unpublished_count():
                timeout = min(timeout, max(0.0, self._publish_retry_at - time.monotonic()))
            if timeout > 0:
                self._publish_wake.wait(timeout)
            self._publish_wake.clear()

    def _flush_publish(self, *, final: bool = False) -> None:
        """Call ``publish`` with the ids not yet announced, ``publish_batch_size`` at a time; on failure
        keep them and back off (``final``: one attempt whatever the back-off)."""
        with self._flush_lock:
            while True:
                with self._publish_lock:
                    ids = self._unpublished[: self.config.publish_batch_size]
                if not ids or (not final and time.monotonic() < self._publish_retry_at):
                    return
                if not self._publish_once(ids, final=final):
                    return

    def _publish_once(self, ids: list[int], *, final: bool) -> bool:
        try:
            self._publish(ids)
        except Exception as exc:
            self._publish_failures_in_row += 1
            self._count(publish_failures=1)
            delay = min(_MAX_RETRY_DELAY_S, 0.5 * 2 ** (self._publish_failures_in_row - 1))
            self._publish_retry_at = time.monotonic() + delay
            with self._publish_lock:
                waiting = len(self._unpublished)
                if waiting > _MAX_UNPUBLISHED:
                    dropped = waiting - _MAX_UNPUBLISHED
                    del self._unpublished[:dropped]
                    logger.error("%d unannounced image ids left to the sweeper (status new)", dropped)
            logger.warning(
                "could not announce %d new image(s) (%s: %s); they stay committed with status new, "
                "%s (the sweeper re-queues them too)",
                waiting,
                type(exc).__name__,
                exc,
                "not retried: stopping" if final else f"retrying in {delay:.1f}s",
                extra={"image_ids": ids[:50]},
            )
            return False
        with self._publish_lock:
            # Only appends happened meanwhile (and drops, only on failure, here): the head is ``ids``.
            del self._unpublished[: len(ids)]
        if self._publish_failures_in_row:
            logger.info("announcing new images again after %d failure(s)", self._publish_failures_in_row)
        self._publish_failures_in_row = 0
        self._publish_retry_at = 0.0
        self._count(published=len(ids))
        logger.debug("announced images %s", ids)
        return True
