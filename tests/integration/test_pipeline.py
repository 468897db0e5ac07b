"""The whole ingestion chain as real processes: camera files -> watcher -> broker -> worker -> predictions.

On Redis (a database number of this file's own) and on the embedded SQLite broker: 200 good images
and 30 malformed files of every kind dropped into two watched folders (some written slowly) through
``defectloop up``; single-id messages classified in full batches by a real worker; and (Redis only, on
a redis-server this file starts on a free port) the broker stopped during a burst and started again.
Champions are untrained 32 px CNNs and the images tiny: the bookkeeping is checked, not the models.
Every check polls the database up to a deadline; nothing asserts a timing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from db import repositories as repo
from db.schema import Image, ImageStatus, ModelTask, Prediction
from tests.image_files import (
    ODD_NAMES,
    Drop,
    bad_files,
    converted_images,
    jpeg_declaring,
    sha,
    synthetic_photo,
    write_slowly,
)
from tests.worker_harness import DEADLINE_S, DEFECTLOOP, Loop, RedisServer, loop_on, require_redis
from workers.validation import Reason, reason_of

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/12"  # this file's own database number; only it is flushed
FAST_INGEST = {"DEFECTLOOP_INGEST_STABLE_SECONDS": "0.3", "DEFECTLOOP_INGEST_RESCAN_SECONDS": "5"}


@pytest.fixture(params=["redis", "embedded"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "embedded":
        yield f"sqla+sqlite:///{tmp_path / 'broker.db'}"
        return
    require_redis(REDIS_URL)
    redis.Redis.from_url(REDIS_URL).flushdb()
    try:
        yield REDIS_URL
    finally:
        redis.Redis.from_url(REDIS_URL).flushdb()


def without_dac_override() -> list[str]:
    """A command prefix under which ``chmod 0`` makes a file unreadable: root reads any file unless it
    drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (as a camera share mounted for another user would)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root, this test needs setpriv (util-linux) to make a file unreadable")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]


def quarantine_table(loop: Loop) -> dict[str, int]:
    """``defectloop status``'s table of quarantined files by reason, read from its output."""
    result = subprocess.run(
        [DEFECTLOOP, "status"], env=loop.env, capture_output=True, text=True, timeout=DEADLINE_S, check=False
    )
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^\s*│\s*([a-z][a-z ]+?)\s*│\s*(\d+)\s*│\s*$", result.stdout, flags=re.MULTILINE)
    assert "quarantined, by reason" in result.stdout, result.stdout
    return {reason: int(count) for reason, count in rows if reason in {r.value for r in Reason}}


def test_drop_of_200_images_and_30_bad_files_through_up(broker_url: str, tmp_path: Path) -> None:
    cam1, cam2, outside = (tmp_path / "cam1").resolve(), (tmp_path / "cam2").resolve(), tmp_path / "outside"
    for folder in (cam1, cam2, outside):
        folder.mkdir()
    photos = [synthetic_photo(i, fmt="JPEG" if i % 2 else "PNG") for i in range(180)]
    converted = converted_images()  # 16-bit, CMYK, palette with alpha, RGBA, 1-bit, float: accepted
    photos += list(converted.values())
    assert len({sha(p) for p in photos}) == 186
    bad = bad_files()
    bad_names = sorted(bad)
    drop = Drop()

    with loop_on(broker_url, tmp_path, DEFECTLOOP_INFERENCE_BATCH_SIZE="8", **FAST_INGEST) as loop:
        binary = loop.register(ModelTask.BINARY, seed=1)
        multiclass = loop.register(ModelTask.MULTICLASS, seed=2)
        key = repo.make_model_key(binary, multiclass)

        # Before the start (the initial scan finds them): odd Unicode names, a few bad files.
        drop.put_named(cam1, cam2, photos[:30], (*ODD_NAMES, "عيب 縫い目.jpg"))
        for name in bad_names[:6]:
            drop.put_bad(cam1 / name, *bad[name])

        up = loop.start(
            "up", str(cam1), str(cam2), "--sweep-every=1", "--stuck-after=20", "--inference-backend=eager",
            prefix=without_dac_override(),
        )  # fmt: skip

        # After the start: new sub-folders, the other images and bad files, duplicates under other names.
        line2, deep = cam1 / "line2", cam2 / "a" / "b"
        line2.mkdir()
        deep.mkdir(parents=True)
        targets = [cam1, cam2, line2, deep]
        slow = [(deep / f"slow_{i}.{'jpg' if i % 2 else 'png'}", photos[30 + i]) for i in range(6)]

        def write_all(files: list[tuple[Path, bytes]]) -> None:
            for path, data in files:
                write_slowly(path, data, chunks=6, pause=0.1)

        writers = [threading.Thread(target=write_all, args=(slow[i::2],)) for i in range(2)]
        drop.good += slow
        # Two writers that stop half-way: quarantined as truncated once the grace period is over.
        for name, fmt in (("slow_cut.jpg", "JPEG"), ("slow_cut.png", "PNG")):
            data = synthetic_photo(900 + len(writers), fmt=fmt)
            writers.append(
                threading.Thread(
                    target=write_slowly,
                    args=(cam2 / name, data),
                    kwargs={"chunks": 6, "pause": 0.1, "stop_after": 3},
                )
            )
            drop.bad[str(cam2 / name)] = Reason.TRUNCATED
        for thread in writers:
            thread.start()
        for i in range(36, len(photos)):
            drop.put(targets[i % 4] / f"img_{i:03d}.{'jpg' if i % 2 else 'png'}", photos[i])
        for name in bad_names[6:]:
            drop.put_bad(targets[bad_names.index(name) % 4] / name, *bad[name])
        for i in range(14):
            drop.put((cam2 if i % 2 else line2) / f"copy_of_{i:02d}.{'jpg' if i % 2 else 'png'}", photos[i])
        drop.put_bad(cam1 / "empty_a.jpg", b"", Reason.EMPTY)
        drop.put_bad(deep / "empty_b.png", b"", Reason.EMPTY)
        drop.put_bad(cam1 / "thin.jpg", jpeg_declaring(20_000, 16), Reason.ABSURD_DIMENSIONS)
        drop.put_bad(cam2 / "locked.jpg", synthetic_photo(901), Reason.UNREADABLE)
        (cam2 / "locked.jpg").chmod(0)
        drop.put_unusual(cam1, cam2, outside, seed=902)
        for thread in writers:
            thread.join(timeout=DEADLINE_S)

        assert (len(drop.good), len(drop.bad), len(drop.distinct())) == (200, 30, 186)
        done = {ImageStatus.PREDICTED: 186, ImageStatus.QUARANTINED: 30}
        loop.wait_for(f"rows by status {done}", lambda: loop.counts() == done, interval=0.2)

        with loop.sessions() as session:
            images = session.scalars(select(Image)).all()
            per_image = dict(
                session.execute(select(Prediction.image_id, func.count()).group_by(Prediction.image_id)).all()
            )
            keys = set(session.scalars(select(Prediction.model_key).distinct()).all())
        good = [image for image in images if image.status is ImageStatus.PREDICTED]
        quarantined = {
            image.path: str(image.reason) for image in images if image.status is ImageStatus.QUARANTINED
        }
        # Every good image exactly once (duplicates collapsed into one row), with the champions' key.
        assert {image.sha256 for image in good} == set(drop.distinct())
        assert per_image == {image.id: 1 for image in good}
        assert keys == {key}
        converted_rows = {
            image.mode for image in good if image.sha256 in {sha(d) for d in converted.values()}
        }
        assert {"I;16", "CMYK", "P"} <= converted_rows
        # Every bad file quarantined once, for the right reason.
        assert {path: reason_of(text) for path, text in quarantined.items()} == {
            path: reason.value for path, reason in drop.bad.items()
        }
        expected_counts: dict[str, int] = {}
        for reason in drop.bad.values():
            expected_counts[reason.value] = expected_counts.get(reason.value, 0) + 1
        assert quarantine_table(loop) == expected_counts

        # The watcher never died (up stops everything when a child exits) and never hit a bug.
        assert up.poll() is None, loop.log(0)[-3000:]
        log = loop.log(0)
        assert "ingest step failed" not in log
        assert "exited with" not in log
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=DEADLINE_S) == 0, loop.log(0)[-3000:]
        assert "watch stopped (exit 0)" in loop.log(0)


def test_single_id_messages_are_classified_in_full_batches(broker_url: str, tmp_path: Path) -> None:
    """The watcher's usual message names one image; a worker fills its batch with other waiting ones,
    and the messages of the images it took become no-ops: still exactly one prediction each."""
    with loop_on(
        broker_url,
        tmp_path,
        DEFECTLOOP_INFERENCE_BATCH_SIZE="8",
        DEFECTLOOP_INFERENCE_BATCH_TIMEOUT_MS="300",
    ) as loop:
        binary = loop.register(ModelTask.BINARY, seed=1)
        ids = loop.add_images(24)
        loop.publish(ids, per_message=1)  # all waiting before the worker starts
        loop.start_worker()
        loop.wait_for("every image predicted", lambda: loop.predicted(ids) == len(ids))
        loop.assert_exactly_once(ids, repo.make_model_key(binary, None))
        loop.wait_for("the no-op messages", lambda: loop.log(0).count("classifying images") == 24)
        batches = [int(n) for n in re.findall(r"\(batch of (\d+)\)", loop.log(0))]
        assert batches == [8, 8, 8], loop.log(0)[-3000:]


def test_redis_stopped_or_hanging_during_a_burst_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    """The broker (a redis-server of this test's own) fails twice while files keep arriving: it is
    stopped (every message it holds is lost with it) and started again on the same port; then it hangs
    (SIGSTOP: connections stay open, nothing answers) and resumes. The watcher records every file
    meanwhile and keeps running; the sweeper re-publishes what was lost; every image ends predicted
    exactly once, and no process died."""
    cam = tmp_path / "cam"
    cam.mkdir()
    photos = [synthetic_photo(i, seed=21, fmt="PNG") for i in range(100)]
    with (
        RedisServer(tmp_path) as server,
        loop_on(server.url, tmp_path, DEFECTLOOP_INFERENCE_BATCH_SIZE="4", **FAST_INGEST) as loop,
    ):
        binary = loop.register(ModelTask.BINARY, seed=1)
        watch = loop.start("watch", str(cam))
        worker = loop.start_worker()
        beat = loop.start("beat", "--sweep-every=1", "--stuck-after=3")
        gates = {30: threading.Event(), 60: threading.Event()}  # the camera waits there for each failure
        written = threading.Event()

        def camera() -> None:
            for i, data in enumerate(photos):
                if i in gates:
                    gates[i].wait(DEADLINE_S)
                (cam / f"shot_{i:03d}.png").write_bytes(data)
                time.sleep(0.06)
            written.set()

        def last_id() -> int:
            with loop.sessions() as session:
                return int(session.scalar(select(func.max(Image.id))) or 0)

        def recorded_after(image_id: int) -> int:
            with loop.sessions() as session:
                return int(session.scalar(select(func.count()).where(Image.id > image_id)) or 0)

        writer = threading.Thread(target=camera)
        writer.start()
        loop.wait_for("the first predictions", lambda: loop.counts().get(ImageStatus.PREDICTED, 0) >= 10)

        before = last_id()
        server.stop()
        gates[30].set()
        loop.wait_for(
            "the watcher to record files while the broker is down, failing to announce them",
            lambda: recorded_after(before) >= 15 and loop.log(0).count("could not announce") >= 2,
        )
        for process in (watch, worker, beat):
            assert process.poll() is None
        server.start()
        loop.wait_for("the watcher to announce again", lambda: "announcing new images again" in loop.log(0))

        loop.wait_for("the camera to reach the second failure", lambda: recorded_after(before) >= 30)
        before = last_id()
        server.pause()
        gates[60].set()
        loop.wait_for(
            "the watcher to record files while the broker hangs", lambda: recorded_after(before) >= 15
        )
        server.resume()

        loop.wait_for("the camera to finish", written.is_set)
        writer.join()
        loop.wait_for("every file recorded", lambda: sum(loop.counts().values()) == len(photos))
        with loop.sessions() as session:
            ids = list(session.scalars(select(Image.id)).all())
        loop.wait_for(
            "every image predicted",
            lambda: loop.counts() == {ImageStatus.PREDICTED: len(photos)},
            interval=0.2,
        )
        loop.assert_exactly_once(ids, repo.make_model_key(binary, None))
        for process in (watch, worker, beat):
            assert process.poll() is None, loop.logs()
        assert "ingest step failed" not in loop.log(0)


def test_rows_stay_bound_to_their_bytes_when_camera_files_change(broker_url: str, tmp_path: Path) -> None:
    """Real watcher and worker processes. A file overwritten in place, then replaced by a rename, while no
    champion exists: the watcher supersedes the older rows. Then, with the watcher stopped, a recorded file
    is overwritten before the worker reads it: the worker supersedes that row instead of predicting it
    from the new bytes, which the watcher records as an image of their own when it is back. Every
    prediction comes from its own row's bytes: no two rows of different bytes share one."""
    cam = (tmp_path / "cam").resolve()
    cam.mkdir()
    shots = [synthetic_photo(i, seed=31) for i in range(5)]
    with loop_on(broker_url, tmp_path, DEFECTLOOP_STRATEGY="entropy", **FAST_INGEST) as loop:
        watch = loop.start("watch", str(cam))
        loop.start_worker()

        def row(data: bytes) -> Image | None:
            with loop.sessions() as session:
                return repo.get_image_by_sha256(session=session, sha256=sha(data))

        def has_status(data: bytes, status: ImageStatus) -> bool:
            image = row(data)
            return image is not None and image.status is status

        first, second, third, fourth, fifth = shots
        (cam / "a.png").write_bytes(first)
        loop.wait_for("the first bytes recorded", lambda: has_status(first, ImageStatus.NEW))
        with (cam / "a.png").open("r+b") as handle:  # overwritten in place
            handle.write(second)
            handle.truncate()
        loop.wait_for("the second bytes recorded", lambda: has_status(second, ImageStatus.NEW))
        (cam / ".a.png.tmp").write_bytes(third)
        (cam / ".a.png.tmp").replace(cam / "a.png")  # replaced by a rename
        loop.wait_for("the third bytes recorded", lambda: has_status(third, ImageStatus.NEW))
        loop.wait_for("the older rows superseded", lambda: has_status(second, ImageStatus.SUPERSEDED))
        (cam / "b.png").write_bytes(fourth)
        loop.wait_for("b recorded", lambda: has_status(fourth, ImageStatus.NEW))

        watch.send_signal(signal.SIGTERM)
        assert watch.wait(timeout=DEADLINE_S) == 0
        with (cam / "b.png").open("r+b") as handle:  # changed while nobody watches
            handle.write(fifth)
            handle.truncate()
        binary = loop.register(ModelTask.BINARY, seed=1)
        loop.sweep()
        loop.wait_for("the worker to check b's bytes", lambda: has_status(fourth, ImageStatus.SUPERSEDED))
        loop.wait_for("a's current bytes predicted", lambda: has_status(third, ImageStatus.PREDICTED))
        loop.start("watch", str(cam))  # back: the initial scan records b's new bytes
        loop.wait_for("b's new bytes recorded", lambda: row(fifth) is not None)
        loop.sweep()
        loop.wait_for("b's new bytes predicted", lambda: has_status(fifth, ImageStatus.PREDICTED))

        def must(data: bytes) -> Image:
            image = row(data)
            assert image is not None
            return image

        a_rows = [must(data) for data in (first, second, third)]
        b_old, b_new = must(fourth), must(fifth)
        assert [image.status for image in a_rows] == [
            ImageStatus.SUPERSEDED,
            ImageStatus.SUPERSEDED,
            ImageStatus.PREDICTED,
        ]
        assert [image.superseded_by_id for image in a_rows] == [a_rows[1].id, a_rows[2].id, None]
        assert b_old.superseded_by_id == b_new.id  # linked once the watcher recorded the new bytes
        assert "changed after it was recorded" in (b_old.reason or "")
        with loop.sessions() as session:
            predictions = session.execute(select(Prediction.image_id, Prediction.probabilities)).all()
        assert sorted(image_id for image_id, _ in predictions) == sorted([a_rows[2].id, b_new.id])
        assert len({tuple(sorted(p.items())) for _, p in predictions}) == len(predictions)
        loop.assert_exactly_once([a_rows[2].id, b_new.id], repo.make_model_key(binary, None))
