"""`defectloop demo` end to end on the embedded default, as a user runs it: a real `defectloop demo`
process, which starts the real `defectloop up` (watcher, worker, trainer, beat), feeds a camera folder,
and runs a seed round and two rounds of rank -> simulated labels -> retrain -> compare/promote ->
re-score against the random arm. Stopped with Ctrl-C after round 0, then resumed to the end.

Small on purpose (60 tiny photos, 1 epoch): the numbers do not matter, the bookkeeping does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from db import repositories as repo
from db.schema import (
    Annotation,
    AnnotationOrigin,
    DemoArm,
    DemoRunStatus,
    Image,
    ImageStatus,
    Prediction,
    TrainingRunStatus,
)
from db.session import create_engine_for, make_session_factory, session_scope
from defectloop.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEFECTLOOP = str(Path(sys.executable).parent / "defectloop")
ARGS = (
    "demo",
    "--n=72",
    "--rounds=2",
    "--batch=6",
    "--seed-labels=16",
    "--epochs=1",
    "--image-size=32",
    "--feed-seconds=1",
    "--arch=baseline_cnn",
)
DEADLINE_S = 240.0


def _environment(data_dir: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTLOOP_")}
    environ.update({"DEFECTLOOP_DATA_DIR": str(data_dir), "COLUMNS": "200", "NO_COLOR": "1"})
    return environ


def _rounds(sessions: object, arm: DemoArm) -> list[int]:
    with session_scope(sessions) as session:  # type: ignore[arg-type]
        run = repo.latest_demo_run(session=session)
        if run is None:
            return []
        return [r.round for r in repo.list_demo_rounds(session=session, run_id=run.id, arm=arm)]


def test_demo_runs_the_loop_against_the_random_arm_stops_on_ctrl_c_and_resumes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = _environment(data_dir)
    log = (tmp_path / "first.log").open("wb")
    first = subprocess.Popen([DEFECTLOOP, *ARGS], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        database = data_dir / "defectloop.db"
        deadline = time.monotonic() + DEADLINE_S
        sessions = None
        while time.monotonic() < deadline and first.poll() is None:
            if sessions is None and database.exists():
                time.sleep(1.0)  # the demo migrates it first
                sessions = make_session_factory(create_engine_for(f"sqlite:///{database}"))
            if sessions is not None:
                try:
                    if 0 in _rounds(sessions, DemoArm.RANDOM):
                        break
                except Exception:  # the schema is being created
                    pass
            time.sleep(0.5)
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        assert sessions is not None
        first.send_signal(signal.SIGINT)  # Ctrl-C
        assert first.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    stopped = (tmp_path / "first.log").read_text()
    assert "Traceback" not in stopped
    with session_scope(sessions) as session:
        run = repo.latest_demo_run(session=session)
        assert run is not None
        assert run.status is DemoRunStatus.STOPPED
        name = run.name
    up_log = data_dir / "demo" / name / "up.log"
    assert "stopped" in up_log.read_text(), "the loop's processes were stopped in order"

    second = subprocess.run(
        [DEFECTLOOP, *ARGS], env=env, capture_output=True, text=True, timeout=DEADLINE_S, check=False
    )
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    assert f"resuming demo run {name}" in output.replace("\n", " ")
    assert "verdict:" in output

    settings = load_settings(env)
    camera = f"{(data_dir / 'demo' / name / 'camera').resolve()}{os.sep}"
    with session_scope(sessions) as session:
        run = repo.get_demo_run_by_name(session=session, name=name)
        assert run is not None
        assert run.status is DemoRunStatus.FINISHED
        assert run.settings["demo"]["rounds"] == 2
        assert "DEFECTLOOP_LABEL_STUDIO_API_KEY" in run.settings["settings"]
        rounds = repo.list_demo_rounds(session=session, run_id=run.id)
        by_arm = {arm: [r for r in rounds if r.arm is arm] for arm in DemoArm}
        for arm, rows in by_arm.items():
            assert [r.round for r in rows] == [0, 1, 2], arm
            labels = [r.labels_used for r in rows]
            assert labels == sorted(labels)
            assert labels[0] < labels[-1], arm
            for row in rows:
                assert 0.0 <= row.metrics["macro_f1"] <= 1.0
                assert set(row.metrics["calibration"]) == {"bin_edges", "confidence", "accuracy", "count"}
                assert row.metrics["confusion"]["binary"]["classes"] == ["ok", "defective"]
                assert row.binary_version is not None
        assert [r.labels_used for r in by_arm[DemoArm.ACTIVE]] == [r.labels_used for r in by_arm[DemoArm.RANDOM]]
        assert set(by_arm[DemoArm.ACTIVE][1].timings) >= {"rank", "label", "train", "compare", "rescore"}

        # Every photo of the camera is in the database once, and predicted by the current champions
        # (or labelled).
        images = list(session.scalars(select(Image).where(Image.path.startswith(camera))))
        assert len(images) == len(list((data_dir / "demo" / name / "camera").glob("*.png")))
        statuses = Counter(image.status for image in images)
        assert set(statuses) <= {ImageStatus.PREDICTED, ImageStatus.LABELLED}, statuses
        key = repo.current_model_key(session=session)
        predicted = {i.id for i in images if i.status is ImageStatus.PREDICTED}
        with_key = set(
            session.scalars(
                select(Prediction.image_id).where(
                    Prediction.model_key == key, Prediction.image_id.in_(predicted)
                )
            )
        )
        assert with_key == predicted

        # The active arm's labels are simulated annotations, one per image; the random arm wrote none.
        annotations = list(session.scalars(select(Annotation)))
        assert {a.origin for a in annotations} <= {AnnotationOrigin.SIMULATED, AnnotationOrigin.IMPORT}
        simulated = [a for a in annotations if a.origin is AnnotationOrigin.SIMULATED]
        assert len(simulated) == len({a.image_id for a in simulated}) == by_arm[DemoArm.ACTIVE][-1].labels_used
        camera_ids = {i.id for i in images}
        assert {a.image_id for a in simulated} <= camera_ids
        imported = {a.image_id for a in annotations if a.origin is AnnotationOrigin.IMPORT}
        assert not imported & camera_ids, "the frozen evaluation set is not in the camera pool"

        # Retrains ran on the training worker; each was compared and promoted or kept, on record.
        requests = repo.list_training_runs(session=session, architecture="all")
        assert len([r for r in requests if r.status is TrainingRunStatus.SUCCEEDED]) >= 3
        comparisons = repo.list_comparisons(session=session)
        assert comparisons, "a challenger was compared with the champion"
        assert {str(c.decision) for c in comparisons} <= {"promote", "keep"}
        evaluation = repo.get_evaluation_set(session=session, name="frozen-binary")
        assert evaluation is not None
        members = set(repo.list_evaluation_members(session=session, evaluation_set_id=evaluation.id))
        assert members == imported
    assert settings.data_dir == data_dir.resolve()

    from defectloop.errors import NotBuiltYetError
    from defectloop.report import write_report

    try:
        write_report(settings=settings, out=tmp_path / "probe.html", run_name=name)
    except NotBuiltYetError:
        assert "report is not available" in output
    else:
        assert (data_dir / "report.html").is_file(), "the demo wrote its report"
