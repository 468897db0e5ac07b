"""Camera ingestion with a real watchdog observer, real files and a real migrated database.

The tests needing only files and SQLite are unit tests; the same scenarios on PostgreSQL carry the
``integration`` mark (ids ending in ``[postgresql]``). Nothing asserts a timing: completion is polled
with a generous deadline, so a loaded machine makes the tests slower, never red.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import Image, ImageStatus, Source, SourceKind
from tests.db_helpers import migrated_sessions, temporary_postgres_database
from tests.image_files import ODD_NAMES, Drop, bad_files, converted_images, sha, synthetic_photo, write_slowly
from workers import ingest, validation
from workers.ingest import IngestConfig, IngestService, camera_source_name
from workers.validation import Reason, reason_of

DEADLINE_S = 60.0
STABLE_S = 0.3
GRACE_S = 1.5


# --- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A session factory on a freshly migrated database: SQLite, and PostgreSQL (integration)."""
    if request.param == "sqlite":
        with migrated_sessions(f"sqlite:///{tmp_path / 'ingest.db'}") as factory:
            yield factory
        return
    with temporary_postgres_database() as url, migrated_sessions(url) as factory:
        yield factory


@pytest.fixture
def sqlite_sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A session factory on a freshly migrated SQLite file."""
    with migrated_sessions(f"sqlite:///{tmp_path / 'ingest.db'}") as factory:
        yield factory


class Publisher:
    """A ``publish`` callback that records what it got and checks the rows were committed first."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._lock = threading.Lock()
        self.failing = False
        self.delivered: list[list[int]] = []
        self.refused: list[list[int]] = []
        self.not_committed: list[int] = []

    def __call__(self, image_ids: list[int]) -> None:
        # Another session (another connection) must already see every id as a committed new row.
        with self._sessions() as session:
            rows = {i.id: i.status for i in session.scalars(select(Image).where(Image.id.in_(image_ids)))}
        with self._lock:
            self.not_committed += [i for i in image_ids if rows.get(i) is not ImageStatus.NEW]
            if self.failing:
                self.refused.append(list(image_ids))
                raise ConnectionError("broker unreachable (simulated)")
            self.delivered.append(list(image_ids))

    def ids(self) -> list[int]:
        with self._lock:
            return [i for call in self.delivered for i in call]


def wait_until(
    condition: Callable[[], bool], describe: Callable[[], str], timeout: float = DEADLINE_S
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done after {timeout:.0f}s: {describe()}")
        time.sleep(0.05)


def all_rows(sessions: sessionmaker[Session]) -> list[tuple[Image, str]]:
    with sessions() as session:
        return [(image, name) for image, name in session.execute(select(Image, Source.name).join(Source))]


def count_rows(sessions: sessionmaker[Session]) -> dict[ImageStatus, int]:
    """Rows per status, statuses without rows left out."""
    with sessions() as session:
        return {s: n for s, n in repo.count_images_by_status(session=session).items() if n}


def make_service(
    sessions: sessionmaker[Session],
    roots: list[Path],
    publish: Callable[[list[int]], None],
    **overrides: object,
) -> IngestService:
    settings: dict[str, object] = {
        "stable_seconds": STABLE_S,
        "incomplete_grace_seconds": GRACE_S,
        "rescan_seconds": 2.0,
    }
    settings.update(overrides)
    return IngestService(IngestConfig(roots, **settings), sessions, publish)  # type: ignore[arg-type]


StartService = Callable[..., IngestService]


@pytest.fixture
def start_service() -> Iterator[StartService]:
    """Starts ``make_service(sessions, roots, publish, **overrides)``; each service started is stopped at
    the end whatever happens."""
    services: list[IngestService] = []

    def start(
        sessions: sessionmaker[Session],
        roots: list[Path],
        publish: Callable[[list[int]], None],
        **overrides: object,
    ) -> IngestService:
        service = make_service(sessions, roots, publish, **overrides)
        services.append(service)
        service.start()
        return service

    yield start
    for service in services:
        service.stop(timeout=30)


@pytest.fixture
def cam(tmp_path: Path) -> Path:
    """An empty camera folder, ``tmp_path / "cam"``."""
    folder = tmp_path / "cam"
    folder.mkdir()
    return folder


# --- the check: 200 good images and 30 bad files, some written slowly ---------------------


def test_drop_of_200_images_and_30_bad_files(
    sessions: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    start_service: StartService,
) -> None:
    cam1, cam2, outside = (tmp_path / "cam1").resolve(), (tmp_path / "cam2").resolve(), tmp_path / "outside"
    for folder in (cam1, cam2, outside):
        folder.mkdir()
    photos = [synthetic_photo(i, fmt="JPEG" if i % 2 else "PNG") for i in range(179)]
    photos += list(converted_images().values())  # 185 distinct contents, 6 of them converted on load
    assert len({sha(p) for p in photos}) == 185
    drop = Drop()
    bad = bad_files()
    bad_names = sorted(bad)

    # A camera that fails on open, and a file whose check hits a bug: both quarantined with a reason.
    real_open, real_read = validation._open_readonly, validation.read_image_file

    def open_denied(path: Path) -> int:
        if path.name == "locked.jpg":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path)

    def read_with_bug(path: Path, *, max_bytes: int) -> validation.FileData:
        if path.name == "boom.png":
            raise RuntimeError("simulated bug in the checks")
        return real_read(path, max_bytes=max_bytes)

    monkeypatch.setattr(validation, "_open_readonly", open_denied)
    monkeypatch.setattr(ingest, "read_image_file", read_with_bug)

    # Before start (found by the initial scan): 30 good images, 6 bad files, files to ignore.
    drop.put_named(cam1, cam2, photos[:30], (*ODD_NAMES, "spaces  in  name.jpg"))
    for name in bad_names[:6]:
        drop.put_bad(cam1 / name, bad[name][0], bad[name][1])
    drop.put(cam1 / "folder.jpg" / "inside.png", photos[30])  # a folder named like an image
    for ignored in (
        cam1 / "readme.txt",
        cam1 / ".hidden.jpg",
        cam2 / "upload.jpg.part",
        cam1 / ".tmp" / "x.png",
    ):
        ignored.parent.mkdir(exist_ok=True)
        ignored.write_bytes(synthetic_photo(600))
        drop.ignored.append(ignored)

    publisher = Publisher(sessions)
    service = start_service(sessions, [cam1, cam2], publisher, max_bytes=1_000_000)

    # After start: folders created now (watched recursively), the rest of the bad files, duplicates.
    line2, deep = cam1 / "line2", cam2 / "a" / "b" / "c"
    line2.mkdir()
    deep.mkdir(parents=True)
    targets = [cam1, cam2, line2, deep]
    for i in range(32, 170):
        drop.put(targets[i % 4] / f"img_{i:03d}.{'jpg' if i % 2 else 'png'}", photos[i])
    for i, (name, data) in enumerate(zip(converted_images(), photos[179:], strict=True)):
        drop.put(targets[i % 4] / f"converted_{name}", data)
    for name in bad_names[6:]:
        drop.put_bad(targets[bad_names.index(name) % 4] / name, bad[name][0], bad[name][1])
    for i in range(14):  # the same bytes under other names, in the other camera too
        drop.put((cam2 if i % 2 else line2) / f"copy_of_{i:02d}.{'jpg' if i % 2 else 'png'}", photos[i])
    drop.put_bad(cam1 / "empty_a.jpg", b"", Reason.EMPTY)
    drop.put_bad(deep / "empty_b.png", b"", Reason.EMPTY)
    drop.put_unusual(cam1, cam2, outside, seed=500)
    drop.put_bad(cam1 / "huge.jpg", os.urandom(1_500_000), Reason.TOO_LARGE)
    drop.put_bad(cam2 / "locked.jpg", synthetic_photo(502), Reason.UNREADABLE)
    (cam2 / "locked.jpg").chmod(0)
    drop.put_bad(line2 / "boom.png", synthetic_photo(503), Reason.INTERNAL_ERROR)

    # Written slowly, in chunks through an open file, by two writers: 6 new images, 1 duplicate,
    # and one file whose writer stops half-way (quarantined as truncated once it has stayed so).
    slow = [(deep / f"slow_{i}.{'jpg' if i % 2 else 'png'}", photos[170 + i]) for i in range(6)]
    slow.append((cam1 / "slow_copy.png", photos[20]))
    drop.good += slow
    cut_jpeg = synthetic_photo(504, fmt="JPEG")
    drop.bad[str(cam2 / "slow_cut.jpg")] = Reason.TRUNCATED

    def writer(files: list[tuple[Path, bytes]]) -> None:
        for path, data in files:
            write_slowly(path, data, chunks=6, pause=0.1)

    writers = [threading.Thread(target=writer, args=(slow[i::2],)) for i in range(2)]
    writers.append(
        threading.Thread(
            target=write_slowly,
            args=(cam2 / "slow_cut.jpg", cut_jpeg),
            kwargs={"chunks": 6, "pause": 0.1, "stop_after": 3},
        )
    )
    for thread in writers:
        thread.start()
    for i in (31, 176, 177, 178):  # the last few plain ones, after the slow writers began
        drop.put(targets[i % 4] / f"late_{i:03d}.png", photos[i])
    for thread in writers:
        thread.join(timeout=DEADLINE_S)

    assert len(drop.good) == 200
    assert len(drop.bad) == 30
    distinct = drop.distinct()
    assert len(distinct) == 185

    def progress() -> str:
        return f"rows by status {count_rows(sessions)}, announced {len(publisher.ids())}, {service.stats()}"

    wait_until(
        lambda: (
            count_rows(sessions) == {ImageStatus.NEW: 185, ImageStatus.QUARANTINED: 30}
            and len(publisher.ids()) == 185
            and service.stats().pending == 0
        ),
        progress,
    )
    # Every file handled: nothing re-ingested by a rescan either.
    again = service.scan_once()
    assert (again.ingested, again.duplicates, again.quarantined, again.waiting) == ([], [], [], 0)

    rows = all_rows(sessions)
    good_rows = [(image, source) for image, source in rows if image.status is ImageStatus.NEW]
    bad_rows = {image.path: image for image, _ in rows if image.status is ImageStatus.QUARANTINED}
    # Every distinct good image is one row, recorded from one of the paths carrying its bytes.
    assert {image.sha256 for image, _ in good_rows} == set(distinct)
    for image, source in good_rows:
        assert image.path in distinct[str(image.sha256)]
        root = cam1 if Path(image.path).is_relative_to(cam1) else cam2
        assert source == camera_source_name(root)
        assert image.original_name == Path(image.path).name
        assert image.width
        assert image.height
        assert image.size_bytes
    modes = ["I;16", "CMYK", "P", "RGBA", "1", "F"]
    converted = {sha(data): mode for data, mode in zip(photos[179:], modes, strict=True)}
    assert {str(i.sha256): i.mode for i, _ in good_rows if i.sha256 in converted} == converted
    # Every bad file is quarantined once, for the right reason.
    assert {path: reason_of(str(image.reason)) for path, image in bad_rows.items()} == {
        path: reason.value for path, reason in drop.bad.items()
    }
    # Announced: each new image exactly once, and only after its row was committed.
    announced = publisher.ids()
    assert sorted(announced) == sorted(image.id for image, _ in good_rows)
    assert publisher.not_committed == []
    # Ignored files left no trace; camera files are all still there, unchanged.
    recorded = {image.path for image, _ in rows}
    assert not recorded & {str(p) for p in drop.ignored}
    for path, data in drop.good:
        assert path.read_bytes() == data
    with sessions() as session:
        by_reason = repo.count_quarantined_by_reason(session=session)
        sources = session.scalars(select(Source).order_by(Source.name)).all()
    assert sum(by_reason.values()) == 30
    assert [(s.name, s.kind, s.path) for s in sources] == [
        (camera_source_name(root), SourceKind.CAMERA, str(root)) for root in sorted([cam1, cam2])
    ]
    stats = service.stats()
    assert (stats.ingested, stats.duplicates, stats.quarantined) == (185, 15, 30)
    assert stats.unexpected_errors == 1  # the simulated bug, logged with its path
    assert service.alive


# --- the broker is down for a while ---------------------------------------------------------------


def test_publish_failures_lose_nothing_and_the_watcher_keeps_going(
    sessions: sessionmaker[Session], cam: Path, start_service: StartService
) -> None:
    publisher = Publisher(sessions)
    publisher.failing = True
    service = start_service(sessions, [cam], publisher)
    for i in range(8):
        (cam / f"a_{i}.png").write_bytes(synthetic_photo(i))
    wait_until(
        lambda: count_rows(sessions).get(ImageStatus.NEW) == 8 and len(publisher.refused) >= 2,
        lambda: f"{count_rows(sessions)}, {len(publisher.refused)} refused calls, {service.stats()}",
    )
    for i in range(8, 14):  # more arrive while the broker is still down
        (cam / f"b_{i}.png").write_bytes(synthetic_photo(i))
    wait_until(
        lambda: count_rows(sessions).get(ImageStatus.NEW) == 14,
        lambda: f"{count_rows(sessions)}, {service.stats()}",
    )
    assert publisher.delivered == []
    assert service.alive
    publisher.failing = False
    wait_until(lambda: len(publisher.ids()) == 14, lambda: f"announced {publisher.ids()}, {service.stats()}")
    with sessions() as session:
        new_ids = sorted(session.scalars(select(Image.id).where(Image.status == ImageStatus.NEW)))
    assert sorted(publisher.ids()) == new_ids  # each exactly once once the broker is back
    assert publisher.not_committed == []
    assert service.stats().publish_failures >= 2
    assert service.alive


def test_a_broker_that_hangs_does_not_stop_files_being_recorded(
    sqlite_sessions: sessionmaker[Session], cam: Path, start_service: StartService
) -> None:
    """A broker can hang without closing its connections (a network partition): a publish then blocks
    for as long as it lasts. Publishing runs in its own thread, so files are recorded meanwhile and
    announced, each once, when the broker answers again."""
    publisher = Publisher(sqlite_sessions)
    release = threading.Event()
    calls: list[list[int]] = []

    def hanging(image_ids: list[int]) -> None:
        calls.append(list(image_ids))
        release.wait(DEADLINE_S)  # the broker hangs until the test releases it
        publisher(image_ids)

    service = start_service(sqlite_sessions, [cam], hanging, publish_batch_size=4)
    (cam / "first.png").write_bytes(synthetic_photo(0))
    wait_until(lambda: len(calls) == 1, lambda: f"{service.stats()}")
    for i in range(1, 11):  # arrive while the publish hangs
        (cam / f"during_{i}.png").write_bytes(synthetic_photo(i))
    wait_until(
        lambda: count_rows(sqlite_sessions).get(ImageStatus.NEW) == 11,
        lambda: f"{count_rows(sqlite_sessions)}, {service.stats()}",
    )
    assert len(calls) == 1
    assert service.alive
    release.set()
    wait_until(lambda: len(publisher.ids()) == 11, lambda: f"announced {publisher.ids()}, {service.stats()}")
    assert sorted(publisher.ids()) == sorted(set(publisher.ids()))  # each once
    assert max(len(call) for call in publisher.delivered) <= 4  # in messages of publish_batch_size
    assert publisher.not_committed == []


def test_stop_announces_the_last_images_once(sqlite_sessions: sessionmaker[Session], cam: Path) -> None:
    publisher = Publisher(sqlite_sessions)
    service = make_service(sqlite_sessions, [cam], publisher)
    publisher.failing = True
    service.start()
    (cam / "last.png").write_bytes(synthetic_photo(3))
    wait_until(lambda: len(publisher.refused) >= 1, lambda: f"{service.stats()}")
    publisher.failing = False  # back, but the next attempt is still backing off: stop must not wait
    service.stop(timeout=30)
    assert publisher.ids() == [i.id for i, _ in all_rows(sqlite_sessions)]
    assert not any(t.name.startswith("defectloop-") and t.is_alive() for t in threading.enumerate())


# --- observers ------------------------------------------------------------------------------------


def test_polling_observer_sees_new_files_and_folders(
    sqlite_sessions: sessionmaker[Session], tmp_path: Path, start_service: StartService
) -> None:
    cam = tmp_path / "share"
    cam.mkdir()
    (cam / "before.png").write_bytes(synthetic_photo(0))
    publisher = Publisher(sqlite_sessions)
    # No periodic rescan during the test: whatever arrives after start is seen by polling.
    service = start_service(
        sqlite_sessions, [cam], publisher, poll=True, poll_interval_seconds=0.2, rescan_seconds=600
    )
    wait_until(lambda: len(publisher.ids()) == 1, lambda: str(service.stats()))
    (cam / "later").mkdir()
    for i in range(1, 7):
        (cam / ("later" if i % 2 else ".") / f"p_{i}.jpg").write_bytes(synthetic_photo(i, fmt="JPEG"))
    (cam / "later" / "cut.png").write_bytes(bad_files()["truncated_half.png"][0])
    (cam / "dup.png").write_bytes(synthetic_photo(0))
    wait_until(
        lambda: (
            count_rows(sqlite_sessions) == {ImageStatus.NEW: 7, ImageStatus.QUARANTINED: 1}
            and service.stats().duplicates == 1
        ),
        lambda: f"{count_rows(sqlite_sessions)}, {service.stats()}",
    )
    assert sorted(publisher.ids()) == list(range(1, 8)) or len(set(publisher.ids())) == 7
    assert service.stats().scans == 1  # only the initial scan ran
    assert service.alive


def test_events_missed_by_the_observer_are_found_by_the_rescan(
    sqlite_sessions: sessionmaker[Session],
    cam: Path,
    monkeypatch: pytest.MonkeyPatch,
    start_service: StartService,
) -> None:
    monkeypatch.setattr(ingest._EventRecorder, "on_any_event", lambda self, event: None)
    publisher = Publisher(sqlite_sessions)
    service = start_service(sqlite_sessions, [cam], publisher, rescan_seconds=0.5)
    (cam / "sub").mkdir()
    for i in range(5):
        (cam / ("sub" if i % 2 else ".") / f"m_{i}.png").write_bytes(synthetic_photo(i))
    wait_until(lambda: len(publisher.ids()) == 5, lambda: str(service.stats()))
    assert service.stats().scans >= 2


def test_a_folder_moved_in_after_start_is_scanned(
    sqlite_sessions: sessionmaker[Session], tmp_path: Path, start_service: StartService
) -> None:
    cam, staging = tmp_path / "cam", tmp_path / "staging"
    cam.mkdir()
    (staging / "batch" / "inner").mkdir(parents=True)
    for i in range(4):
        (staging / "batch" / ("inner" if i % 2 else ".") / f"s_{i}.png").write_bytes(synthetic_photo(i))
    publisher = Publisher(sqlite_sessions)
    service = start_service(sqlite_sessions, [cam], publisher, rescan_seconds=600)
    wait_until(lambda: service.stats().scans == 1, lambda: str(service.stats()))
    (staging / "batch").rename(cam / "batch")
    wait_until(lambda: len(publisher.ids()) == 4, lambda: str(service.stats()))


# --- one file at a time ---------------------------------------------------------------------------


def test_a_writer_that_pauses_longer_than_the_stability_interval_is_waited_for(
    sqlite_sessions: sessionmaker[Session],
    cam: Path,
    start_service: StartService,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="workers.ingest")
    publisher = Publisher(sqlite_sessions)
    service = start_service(sqlite_sessions, [cam], publisher, incomplete_grace_seconds=30.0)
    data = synthetic_photo(3, fmt="JPEG")
    with (cam / "paused.jpg").open("wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        # Quiet for longer than stable_seconds: looked at, found truncated, waited for (not quarantined).
        wait_until(
            lambda: any("not a complete image yet" in r.getMessage() for r in caplog.records),
            lambda: str(service.stats()),
        )
        handle.write(data[len(data) // 2 :])
    wait_until(lambda: len(publisher.ids()) == 1, lambda: str(service.stats()))
    assert count_rows(sqlite_sessions) == {ImageStatus.NEW: 1}
    [(image, _)] = all_rows(sqlite_sessions)
    assert image.sha256 == sha(data)


def test_a_database_outage_delays_a_file_and_loses_nothing(
    sqlite_sessions: sessionmaker[Session], cam: Path, start_service: StartService
) -> None:
    failures = {"left": 2}

    def flaky_sessions() -> Session:
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("connect", {}, Exception("database unavailable (simulated)"))
        return sqlite_sessions()

    publisher = Publisher(sqlite_sessions)
    service = start_service(flaky_sessions, [cam], publisher)  # type: ignore[arg-type]
    (cam / "x.png").write_bytes(synthetic_photo(1))
    wait_until(lambda: len(publisher.ids()) == 1, lambda: str(service.stats()))
    assert service.stats().retries == 2
    assert service.alive


def test_scan_once_takes_quiet_files_now_and_waits_for_the_rest(
    sqlite_sessions: sessionmaker[Session], cam: Path
) -> None:
    hour_ago = time.time() - 3600
    for i in range(4):
        (cam / f"old_{i}.png").write_bytes(synthetic_photo(i))
    (cam / "old_dup.png").write_bytes(synthetic_photo(0))
    (cam / "old_bomb.png").write_bytes(bad_files()["bomb.png"][0])
    (cam / "old_cut.png").write_bytes(bad_files()["truncated_half.png"][0])
    for path in cam.iterdir():
        os.utime(path, (hour_ago, hour_ago))
    (cam / "fresh.png").write_bytes(synthetic_photo(9))
    publisher = Publisher(sqlite_sessions)
    service = make_service(sqlite_sessions, [cam], publisher, stable_seconds=30, incomplete_grace_seconds=60)

    first = service.scan_once()
    assert len(first.ingested) == 4
    assert len(first.duplicates) == 1
    assert len(first.quarantined) == 1  # the bomb: refused at once; the truncated file may still grow
    assert first.waiting == 2  # old_cut.png (grace) and fresh.png (stability)
    assert sorted(publisher.ids()) == sorted(first.ingested)

    second = service.scan_once()
    assert (second.ingested, second.duplicates, second.quarantined) == ([], [], [])
    # A file replaced by new bytes is a new image; a deleted one is forgotten.
    (cam / "old_1.png").write_bytes(synthetic_photo(77))
    os.utime(cam / "old_1.png", (hour_ago, hour_ago))
    (cam / "old_2.png").unlink()
    third = service.scan_once()
    assert len(third.ingested) == 1
    assert third.waiting == 2


def test_delete_after_ingest_keeps_a_copy_and_leaves_bad_files(
    sqlite_sessions: sessionmaker[Session], tmp_path: Path, start_service: StartService
) -> None:
    cam, store = tmp_path / "cam", tmp_path / "store"
    cam.mkdir()
    publisher = Publisher(sqlite_sessions)
    service = start_service(sqlite_sessions, [cam], publisher, store_dir=store, delete_after_ingest=True)
    photos = {f"d_{i}.jpg": synthetic_photo(i, fmt="JPEG") for i in range(3)}
    for name, data in photos.items():
        (cam / name).write_bytes(data)
    (cam / "again.jpg").write_bytes(photos["d_0.jpg"])
    (cam / "bad.png").write_bytes(b"not an image")
    wait_until(
        lambda: (
            count_rows(sqlite_sessions) == {ImageStatus.NEW: 3, ImageStatus.QUARANTINED: 1}
            and service.stats().duplicates == 1
        ),
        lambda: f"{count_rows(sqlite_sessions)}, {service.stats()}",
    )
    wait_until(lambda: sorted(p.name for p in cam.iterdir()) == ["bad.png"], lambda: str(list(cam.iterdir())))
    for image, _ in all_rows(sqlite_sessions):
        if image.status is ImageStatus.NEW:
            assert Path(image.path).is_relative_to(store.resolve())
            assert sha(Path(image.path).read_bytes()) == image.sha256
            assert image.original_name in {*photos, "again.jpg"}


def test_delete_after_ingest_never_deletes_the_file_a_row_points_at(
    sqlite_sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    cam, store = tmp_path / "cam", tmp_path / "store"
    cam.mkdir()
    hour_ago = time.time() - 3600
    (cam / "early.png").write_bytes(synthetic_photo(1))
    os.utime(cam / "early.png", (hour_ago, hour_ago))
    publisher = Publisher(sqlite_sessions)
    assert len(make_service(sqlite_sessions, [cam], publisher).scan_once().ingested) == 1  # no store yet
    (cam / "later.png").write_bytes(synthetic_photo(2))
    os.utime(cam / "later.png", (hour_ago, hour_ago))
    deleting = make_service(sqlite_sessions, [cam], publisher, store_dir=store, delete_after_ingest=True)
    result = deleting.scan_once()
    assert len(result.ingested) == 1
    assert len(result.duplicates) == 1
    # early.png is what its row points at: kept; later.png has its copy in the store: deleted.
    assert sorted(p.name for p in cam.iterdir()) == ["early.png"]


def test_a_camera_folder_that_vanishes_and_comes_back_is_watched_again(
    sqlite_sessions: sessionmaker[Session], cam: Path, start_service: StartService
) -> None:
    publisher = Publisher(sqlite_sessions)
    service = start_service(sqlite_sessions, [cam], publisher, rescan_seconds=0.3)
    cam.rmdir()  # the share is unmounted
    wait_until(lambda: service.stats().scans >= 3, lambda: str(service.stats()))
    assert service.alive
    cam.mkdir()
    (cam / "back.png").write_bytes(synthetic_photo(4))
    wait_until(lambda: len(publisher.ids()) == 1, lambda: str(service.stats()))

    def watched() -> bool:
        observer = service._observer
        return observer is not None and any(
            e.is_alive() and Path(e.watch.path) == cam.resolve() for e in list(observer.emitters)
        )

    wait_until(watched, lambda: "no live watch on the folder")


def test_a_dead_observer_is_replaced(
    sqlite_sessions: sessionmaker[Session], cam: Path, start_service: StartService
) -> None:
    publisher = Publisher(sqlite_sessions)
    service = start_service(sqlite_sessions, [cam], publisher, rescan_seconds=0.3)
    first = service._observer
    assert first is not None
    first.stop()
    first.join(timeout=DEADLINE_S)
    wait_until(
        lambda: (
            service._observer is not first and service._observer is not None and service._observer.is_alive()
        ),
        lambda: "observer not replaced",
    )
    (cam / "after.png").write_bytes(synthetic_photo(5))
    wait_until(lambda: len(publisher.ids()) == 1, lambda: str(service.stats()))


def test_stop_is_clean_and_a_service_starts_once(sqlite_sessions: sessionmaker[Session], cam: Path) -> None:
    service = make_service(sqlite_sessions, [cam], Publisher(sqlite_sessions))
    service.start()
    assert service.alive
    with pytest.raises(RuntimeError, match="already started"):
        service.start()
    service.stop(timeout=30)
    assert not service.alive
    assert not any(t.name.startswith("defectloop-") and t.is_alive() for t in threading.enumerate())


def test_run_forever_returns_after_request_stop(sqlite_sessions: sessionmaker[Session], cam: Path) -> None:
    (cam / "one.png").write_bytes(synthetic_photo(1))
    publisher = Publisher(sqlite_sessions)
    service = make_service(sqlite_sessions, [cam], publisher)
    runner = threading.Thread(target=service.run_forever)
    runner.start()
    wait_until(lambda: len(publisher.ids()) == 1, lambda: str(service.stats()))
    service.request_stop()
    runner.join(timeout=DEADLINE_S)
    assert not runner.is_alive()


# --- configuration --------------------------------------------------------------------------------


def test_config_normalises_and_refuses_what_would_go_wrong(cam: Path) -> None:
    config = IngestConfig([cam, cam / "."], extensions=["JPG", ".Png", " tif "])
    assert config.roots == (cam.resolve(),)
    assert config.extensions == frozenset({".jpg", ".png", ".tif"})
    with pytest.raises(ValueError, match="needs store_dir"):
        IngestConfig([cam], delete_after_ingest=True)
    with pytest.raises(ValueError, match="inside a watched folder"):
        IngestConfig([cam], store_dir=cam / "store")
    with pytest.raises(ValueError, match="at least one camera folder"):
        IngestConfig([])
    with pytest.raises(ValueError, match="incomplete_grace_seconds"):
        IngestConfig([cam], stable_seconds=5, incomplete_grace_seconds=1)


def test_a_missing_camera_folder_is_refused_at_start(
    sqlite_sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    service = make_service(sqlite_sessions, [tmp_path / "not_mounted"], Publisher(sqlite_sessions))
    with pytest.raises(NotADirectoryError, match="not_mounted"):
        service.start()


def test_source_names_fit_the_column() -> None:
    assert camera_source_name(Path("/mnt/cam1")) == "camera:/mnt/cam1"
    long_name = camera_source_name(Path("/mnt/" + "x" * 300))
    assert len(long_name) <= 200
    assert long_name != camera_source_name(Path("/mnt/" + "y" + "x" * 299))


# --- integrity: only files inside the folders, one row per content, rows bound to their bytes -------


def rows_by_path(sessions: sessionmaker[Session]) -> dict[str, Image]:
    return {image.path: image for image, _ in all_rows(sessions)}


@pytest.mark.parametrize("route", ["scan", "events", "rescan", "polling"])
def test_nothing_outside_the_camera_folders_is_taken_on_any_route(
    sqlite_sessions: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    start_service: StartService,
    caplog: pytest.LogCaptureFixture,
    route: str,
) -> None:
    """Symlinked folders are never entered, wherever they appear: found by the initial scan, created in
    an existing folder, created at once inside a new folder (whose scan once followed them), found only by
    a rescan, or followed by the polling observer. Their files are outside the roots (or, pointing into
    the roots, are taken by their real path only)."""
    caplog.set_level(logging.DEBUG, logger="workers.ingest")
    cam, outside = (tmp_path / "cam").resolve(), (tmp_path / "outside").resolve()
    (cam / "real").mkdir(parents=True)
    outside.mkdir()
    for i in range(3):
        (outside / f"out_{i}.png").write_bytes(synthetic_photo(100 + i))
    (cam / "real" / "in.png").write_bytes(synthetic_photo(1))

    def make_links() -> None:
        (cam / "link_out").symlink_to(outside, target_is_directory=True)  # in an existing folder
        (cam / "new").mkdir()  # a new folder with, at once, links inside it
        (cam / "new" / "deeper_out").symlink_to(outside, target_is_directory=True)
        (cam / "new" / "back_in").symlink_to(cam / "real", target_is_directory=True)

    if route == "scan":
        make_links()
    if route == "rescan":
        monkeypatch.setattr(ingest._EventRecorder, "on_any_event", lambda self, event: None)
    publisher = Publisher(sqlite_sessions)
    service = start_service(
        sqlite_sessions,
        [cam],
        publisher,
        rescan_seconds=0.5 if route == "rescan" else 600,
        poll=route == "polling",
        poll_interval_seconds=0.2,
    )
    wait_until(lambda: len(publisher.ids()) == 1, lambda: str(service.stats()))
    if route != "scan":
        make_links()
        # A file written through a link lands outside: it must not be taken either.
        (cam / "link_out" / "written_through_link.png").write_bytes(synthetic_photo(200))
    (cam / "sentinel.png").write_bytes(synthetic_photo(2))  # after the links: handled after them
    scans = service.stats().scans + (2 if route == "rescan" else 0)  # two whole rescans after the links
    wait_until(
        lambda: len(publisher.ids()) >= 2 and service.stats().pending == 0 and service.stats().scans >= scans,
        lambda: f"{count_rows(sqlite_sessions)}, {service.stats()}",
    )
    assert service.scan_once().ingested == []  # and a scan now finds nothing more either
    rows = rows_by_path(sqlite_sessions)
    assert sorted(rows) == sorted([str(cam / "real" / "in.png"), str(cam / "sentinel.png")])
    assert all(image.status is ImageStatus.NEW for image in rows.values())
    assert sorted(p.name for p in outside.iterdir()) == sorted(
        [f"out_{i}.png" for i in range(3)] + ([] if route == "scan" else ["written_through_link.png"])
    )
    if route in ("scan", "rescan", "events"):
        # The folders a scan met (or a created-folder event named) were refused with a warning.
        assert any("symlinked folders are not followed" in r.getMessage() for r in caplog.records), route


def test_a_symlink_to_an_image_in_the_folders_is_recorded_by_the_file_it_points_to(
    sqlite_sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    cam, shared = (tmp_path / "cam").resolve(), (tmp_path / "shared").resolve()
    (cam / "z").mkdir(parents=True)
    shared.mkdir()
    hour_ago = time.time() - 3600
    target = cam / "z" / "target.png"
    target.write_bytes(synthetic_photo(1))
    (shared / "kept.png").write_bytes(synthetic_photo(2))
    (cam / "a_link.png").symlink_to(target)  # handled before its target (paths in order)
    (cam / "b_link.png").symlink_to(shared / "kept.png")  # into an allowed symlink target
    for path in (target, shared / "kept.png"):
        os.utime(path, (hour_ago, hour_ago))
    publisher = Publisher(sqlite_sessions)
    service = make_service(sqlite_sessions, [cam], publisher, symlink_targets=[shared])
    result = service.scan_once()
    assert len(result.ingested) == 2
    assert len(result.duplicates) == 1  # the target itself, after its link
    rows = rows_by_path(sqlite_sessions)
    assert sorted(rows) == sorted([str(target), str(shared / "kept.png")])
    assert {image.original_name for image in rows.values()} == {"a_link.png", "b_link.png"}
    assert not any(Path(path).is_symlink() for path in rows)


def test_a_file_changed_in_place_or_replaced_by_a_rename_supersedes_its_row(
    sessions: sessionmaker[Session], tmp_path: Path, start_service: StartService
) -> None:
    cam = (tmp_path / "cam").resolve()
    cam.mkdir()
    shot = cam / "shot.png"
    publisher = Publisher(sessions)
    service = start_service(sessions, [cam], publisher)
    first, second, third = (synthetic_photo(i) for i in (1, 2, 3))

    def row_of(data: bytes) -> Image:
        with sessions() as session:
            image = repo.get_image_by_sha256(session=session, sha256=sha(data))
        assert image is not None
        return image

    def wait_status(data: bytes, status: ImageStatus) -> None:
        def holds() -> bool:
            with sessions() as session:
                image = repo.get_image_by_sha256(session=session, sha256=sha(data))
            return image is not None and image.status is status

        wait_until(holds, lambda: f"{count_rows(sessions)}, {service.stats()}")

    shot.write_bytes(first)
    wait_status(first, ImageStatus.NEW)
    inode = shot.stat().st_ino
    with shot.open("r+b") as handle:  # overwritten in place: same inode, new bytes
        handle.write(second)
        handle.truncate()
    assert shot.stat().st_ino == inode
    wait_status(second, ImageStatus.NEW)
    wait_status(first, ImageStatus.SUPERSEDED)
    a, b = row_of(first), row_of(second)
    assert a.superseded_by_id == b.id
    assert a.reason == f"file changed after it was recorded: {shot} now holds image {b.id}"

    staging = cam / ".incoming.png"  # hidden: ignored until renamed into place
    staging.write_bytes(third)
    staging.replace(shot)
    wait_status(third, ImageStatus.NEW)
    wait_status(second, ImageStatus.SUPERSEDED)
    c = row_of(third)
    assert row_of(second).superseded_by_id == c.id

    shot.write_bytes(first)  # the first bytes again: their row is an image again, announced again
    wait_status(first, ImageStatus.NEW)
    wait_status(third, ImageStatus.SUPERSEDED)
    assert row_of(first).superseded_by_id is None
    assert row_of(third).superseded_by_id == a.id
    wait_until(lambda: publisher.ids().count(a.id) == 2, lambda: str(publisher.ids()))

    shot.write_bytes(b"PK\x03\x04 not a photo any more")  # a bad file now: it supersedes the image
    wait_until(
        lambda: count_rows(sessions) == {ImageStatus.QUARANTINED: 1, ImageStatus.SUPERSEDED: 3},
        lambda: f"{count_rows(sessions)}, {service.stats()}",
    )
    assert row_of(first).status is ImageStatus.SUPERSEDED
    assert sorted(publisher.ids()) == sorted([a.id, a.id, b.id, c.id])
    assert service.stats().superseded == 4
    assert publisher.not_committed == []


def test_a_quarantined_file_that_becomes_a_valid_image_supersedes_its_quarantine_row(
    sqlite_sessions: sessionmaker[Session], tmp_path: Path, start_service: StartService
) -> None:
    """A writer that pauses longer than the grace: its half file is quarantined as truncated; once the
    file is complete, its image supersedes that row, and the counts say one image, no bad file."""
    cam = (tmp_path / "cam").resolve()
    cam.mkdir()
    publisher = Publisher(sqlite_sessions)
    service = start_service(sqlite_sessions, [cam], publisher)
    data = synthetic_photo(5, fmt="JPEG")
    with (cam / "paused.jpg").open("wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        wait_until(
            lambda: count_rows(sqlite_sessions) == {ImageStatus.QUARANTINED: 1},
            lambda: f"{count_rows(sqlite_sessions)}, {service.stats()}",
        )
        handle.write(data[len(data) // 2 :])
    wait_until(
        lambda: count_rows(sqlite_sessions) == {ImageStatus.NEW: 1, ImageStatus.SUPERSEDED: 1},
        lambda: f"{count_rows(sqlite_sessions)}, {service.stats()}",
    )
    rows = {image.status: image for image, _ in all_rows(sqlite_sessions)}
    image, stale = rows[ImageStatus.NEW], rows[ImageStatus.SUPERSEDED]
    assert image.sha256 == sha(data)
    assert stale.superseded_by_id == image.id
    assert stale.path == image.path == str(cam / "paused.jpg")
    assert "now holds image" in (stale.reason or "")
    with sqlite_sessions() as session:
        assert repo.count_quarantined_by_reason(session=session) == {}
    assert publisher.ids() == [image.id]

    # A file quarantined without a content hash (empty: space reserved, never written) becomes an image.
    (cam / "reserved.png").touch()
    wait_until(
        lambda: count_rows(sqlite_sessions).get(ImageStatus.QUARANTINED) == 1,
        lambda: f"{count_rows(sqlite_sessions)}, {service.stats()}",
    )
    later = synthetic_photo(6)
    (cam / "reserved.png").write_bytes(later)
    wait_until(
        lambda: count_rows(sqlite_sessions) == {ImageStatus.NEW: 2, ImageStatus.SUPERSEDED: 2},
        lambda: f"{count_rows(sqlite_sessions)}, {service.stats()}",
    )
    reserved = {
        image.status: image for image, _ in all_rows(sqlite_sessions) if image.original_name == "reserved.png"
    }
    assert reserved[ImageStatus.SUPERSEDED].sha256 is None
    assert reserved[ImageStatus.SUPERSEDED].superseded_by_id == reserved[ImageStatus.NEW].id
    assert reserved[ImageStatus.NEW].sha256 == sha(later)


def test_a_file_closed_or_renamed_into_place_complete_is_taken_without_the_stability_wait(
    sqlite_sessions: sessionmaker[Session],
    tmp_path: Path,
    start_service: StartService,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a stability wait far longer than the test, only the fast path can take a file: closed after
    writing, or renamed into place (from inside the folder or from outside it), with bytes that end as
    their format says. A file closed half-written, or one whose format has no end marker, is not."""
    caplog.set_level(logging.DEBUG, logger="workers.ingest")
    cam, staging = (tmp_path / "cam").resolve(), (tmp_path / "staging").resolve()
    cam.mkdir()
    staging.mkdir()
    publisher = Publisher(sqlite_sessions)
    service = start_service(
        sqlite_sessions,
        [cam],
        publisher,
        stable_seconds=600,
        incomplete_grace_seconds=600,
        rescan_seconds=600,
    )
    photos = {
        "closed.png": synthetic_photo(1),
        "closed.jpg": synthetic_photo(2, fmt="JPEG"),
        "closed.webp": encode_webp(synthetic_photo(3)),
        "moved_in.jpg": synthetic_photo(4, fmt="JPEG"),
        "renamed.png": synthetic_photo(5),
    }
    for name in ("closed.png", "closed.jpg", "closed.webp"):
        (cam / name).write_bytes(photos[name])
    (staging / "moved_in.jpg").write_bytes(photos["moved_in.jpg"])
    (staging / "moved_in.jpg").rename(cam / "moved_in.jpg")  # from outside the watched folder
    (cam / "renamed.png.part").write_bytes(photos["renamed.png"])
    (cam / "renamed.png.part").rename(cam / "renamed.png")
    half = synthetic_photo(6)
    (cam / "half.png").write_bytes(half[: len(half) // 2])  # closed, but stops short
    tiff = encode_tiff(synthetic_photo(7))
    (cam / "no_marker.tif").write_bytes(tiff)
    wait_until(lambda: len(publisher.ids()) == 5, lambda: f"{count_rows(sqlite_sessions)}, {service.stats()}")
    wait_until(
        lambda: sum("do not end as a complete image" in r.getMessage() for r in caplog.records) >= 2,
        lambda: str(service.stats()),
    )
    assert {image.original_name: image.sha256 for image, _ in all_rows(sqlite_sessions)} == {
        name: sha(data) for name, data in photos.items()
    }
    with (cam / "half.png").open("ab") as handle:  # the writer comes back and finishes
        handle.write(half[len(half) // 2 :])
    wait_until(lambda: len(publisher.ids()) == 6, lambda: f"{count_rows(sqlite_sessions)}, {service.stats()}")
    assert sha(half) in {image.sha256 for image, _ in all_rows(sqlite_sessions)}
    assert count_rows(sqlite_sessions) == {ImageStatus.NEW: 6}  # the TIFF waits its 600 s; nothing else
    assert service.stats().pending == 1


def encode_webp(png: bytes) -> bytes:
    return converted(png, "WEBP")


def encode_tiff(png: bytes) -> bytes:
    return converted(png, "TIFF")


def converted(data: bytes, fmt: str) -> bytes:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    with PILImage.open(io.BytesIO(data)) as image:
        image.convert("RGB").save(buffer, fmt)
    return buffer.getvalue()
