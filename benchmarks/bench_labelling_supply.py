"""Annotator supply with default settings: photos dropped to first tasks in Label Studio, and whether the
queue ever runs dry while an annotator works faster than one task every 3 s.

The real stack as `defectloop up CAMERA` runs it (watcher, worker, training worker, beat, serve) on the
embedded default, against a real Label Studio server (its own venv, as `labelling serve-dev` installs),
with every labelling setting at its default. Champions are untrained `baseline_cnn`s at the default input
(128 px RGB): the figures are about the loop's timing, not accuracy. One photo goes through first, so
every process has loaded its models (the time it takes is the cold start, reported apart); then a burst
of synthetic garment photos lands in the camera folder at once, and the clock starts when the last is
written. Then a simulated
annotator takes the first open task of Label Studio's queue and submits it through the API every
``--every`` seconds, and the open tasks (pushed, not annotated) are counted before each submit.

    python benchmarks/bench_labelling_supply.py [--photos 150] [--annotations 90] [--every 2.0] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from common import console, machine_info, progress_bar, relative, write_docs_row, write_json

from db import repositories as repo
from db.migrate import upgrade
from db.schema import ModelTask
from db.session import create_engine_for, make_session_factory
from defectloop.settings import DEFAULT_CLASSES, Settings
from defectloop.synth import generate_dataset
from labelling.devserver import (
    LabelStudioServer,
    default_venv_dir,
    ensure_template_db,
    ensure_venv,
    find_free_port,
)
from labelling.gateway import LabelStudioGateway
from models.data import InputSpec
from models.registry import create_model
from models.train import save_checkpoint

RESULT = Path(__file__).resolve().parent / "results" / "labelling_supply.json"
DEFECTLOOP = str(Path(sys.executable).parent / "defectloop")
SECRET = "bench-supply-secret-0123456789abcdef"  # noqa: S105  # a throw-away secret of this run
FIRST_TASKS_TARGET_S = 60.0


def _champions(root: Path) -> str:
    """A migrated SQLite registry with untrained binary and multiclass champions at the default input."""
    fields = Settings.model_fields
    spec = InputSpec(image_size=fields["image_size"].default, channels=fields["image_channels"].default)
    url = f"sqlite:///{root / 'defectloop.db'}"
    upgrade(url)
    engine = create_engine_for(url)
    sessions = make_session_factory(engine)
    for seed, task, classes in (
        (1, ModelTask.BINARY, ("ok", "defective")),
        (2, ModelTask.MULTICLASS, DEFAULT_CLASSES[1:]),
    ):
        torch.manual_seed(seed)
        model = create_model("baseline_cnn", num_classes=len(classes), in_chans=spec.channels)
        path = root / "artifacts" / f"{task}.pt"
        digest = save_checkpoint(
            path, model, architecture="baseline_cnn", task=task.value, class_names=classes, input_spec=spec
        )
        with sessions.begin() as session:
            repo.register_model_version(
                session=session,
                name=f"{task}-baseline_cnn-{seed:04d}",
                task=task,
                architecture="baseline_cnn",
                classes=classes,
                input_spec=spec.to_dict(),
                artifact_path=str(path),
                artifact_sha256=digest,
            )
    engine.dispose()
    return url


def _wait(what: str, check: Any, timeout_s: float, up: subprocess.Popen[bytes], log: Path) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check():
            return time.monotonic()
        if up.poll() is not None:
            raise SystemExit(f"`defectloop up` exited while waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)
    raise SystemExit(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def _run(photos: int, annotations: int, every_s: float, keep_log: Path | None) -> dict[str, Any]:
    venv = default_venv_dir()
    executable = ensure_venv(venv)
    template = ensure_template_db(venv)
    with tempfile.TemporaryDirectory(prefix="bench-supply-") as tmp:
        root = Path(tmp)
        shots = root / "shots"
        generate_dataset(shots, n=photos, seed=11, size=160, write_masks=False)
        files = sorted(shots.rglob("*.png"))
        data = root / "data"
        data.mkdir()
        database_url = _champions(data)
        server = LabelStudioServer(
            executable, data_dir=root / "ls", document_root=root / "ls-files", template_db=template
        )
        server.start()
        port = find_free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTLOOP_")}
        env.update(
            DEFECTLOOP_DATA_DIR=str(data),
            DEFECTLOOP_DATABASE_URL=database_url,
            DEFECTLOOP_LABEL_STUDIO_URL=server.url,
            DEFECTLOOP_LABEL_STUDIO_API_KEY=server.token,
            DEFECTLOOP_WEBHOOK_SECRET=SECRET,
            DEFECTLOOP_HTTP_PORT=str(port),
        )
        log = root / "up.log"
        up: subprocess.Popen[bytes] | None = None
        try:
            subprocess.run([DEFECTLOOP, "labelling", "init"], env=env, check=True, capture_output=True)
            camera = root / "camera"
            camera.mkdir()
            with log.open("wb") as out:
                up = subprocess.Popen(
                    [DEFECTLOOP, "up", str(camera)], env=env, stdout=out, stderr=subprocess.STDOUT
                )

            def receiver_up() -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            _wait("the stack", receiver_up, 120, up, log)
            with LabelStudioGateway(server.url, server.token) as gateway:
                (project_id,) = gateway.project_ids(
                    title=Settings.model_fields["label_studio_project_title"].default
                )
                # Warm-up: one photo through the whole chain, so every process has loaded its models (a
                # line's stack runs all day; its cold start is in `cold_start_s`).
                shutil.copyfile(files[0], camera / "warm-up.png")
                started = time.monotonic()
                warm = _wait(
                    "the warm-up task", lambda: bool(gateway.list_tasks(project_id=project_id)), 300, up, log
                )
                for n, path in enumerate(files[1:]):
                    shutil.copyfile(path, camera / f"shot{n:04d}.png")
                dropped = time.monotonic()
                first = _wait(
                    "the first tasks of the burst",
                    lambda: len(gateway.list_tasks(project_id=project_id)) > 1,
                    300,
                    up,
                    log,
                )
                open_counts: list[int] = []
                done: set[int] = set()
                with progress_bar() as bar:
                    job = bar.add_task(f"annotating every {every_s:.1f} s", total=annotations, info="")
                    for _ in range(annotations):
                        tick = time.monotonic()
                        listed = gateway.list_tasks(project_id=project_id)
                        waiting = {
                            t["id"]
                            for t in listed
                            if t["total_annotations"] + t["cancelled_annotations"] == 0
                        }
                        open_counts.append(len(waiting - done))
                        queue = [
                            i for i in gateway.task_ids_by_score(project_id=project_id) if i in waiting - done
                        ]
                        if queue:
                            gateway.create_annotation(task_id=queue[0], choice="ok")
                            done.add(queue[0])
                        bar.update(job, advance=1, info=f"{open_counts[-1]} open")
                        time.sleep(max(0.0, every_s - (time.monotonic() - tick)))
                pushed = len(gateway.list_tasks(project_id=project_id))
        finally:
            if up is not None and up.poll() is None:
                up.terminate()
                up.wait(timeout=90)
            server.stop()
            if keep_log is not None and log.exists():
                shutil.copyfile(log, keep_log)
    counts = np.asarray(open_counts)
    return {
        "photos": photos,
        "cold_start_s": round(warm - started, 1),
        "first_tasks_s": round(first - dropped, 1),
        "annotated": len(done),
        "annotator_every_s": every_s,
        "open_tasks_min": int(counts.min()),
        "open_tasks_median": float(np.median(counts)),
        "times_empty": int((counts == 0).sum()),
        "open_tasks_before_each_submit": [int(c) for c in counts],
        "pushed": pushed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=150)
    parser.add_argument("--annotations", type=int, default=90, help="submits by the simulated annotator")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between submits (< 3 s)")
    parser.add_argument("--quick", action="store_true", help="40 photos, 10 annotations: a smoke run")
    parser.add_argument("--log", type=Path, default=None, help="keep the log of `defectloop up` here")
    args = parser.parse_args()
    photos, annotations = (40, 10) if args.quick else (args.photos, args.annotations)
    result = _run(photos, annotations, args.every, args.log)
    defaults = {
        name: Settings.model_fields[name].default
        for name in (
            "labelling_push_interval_s",
            "labelling_batch_size",
            "labelling_queue_target",
            "reconcile_interval_s",
            "ingest_stable_seconds",
        )
    }
    write_json(RESULT, {"machine": machine_info(threads=1), "defaults": defaults, "result": result})
    verdict = "met" if result["first_tasks_s"] <= FIRST_TASKS_TARGET_S else "NOT met"
    summary = (
        f"first tasks in Label Studio {result['first_tasks_s']:.1f} s after {photos} photos landed "
        f"(cold start of the stack: {result['cold_start_s']:.0f} s) "
        f"(target <= {FIRST_TASKS_TARGET_S:.0f} s: {verdict}); "
        f"annotator submitting every {args.every:.1f} s: "
        f"open tasks min {result['open_tasks_min']}, median {result['open_tasks_median']:.0f}, "
        f"queue empty {result['times_empty']} of {annotations} times "
        f"(defaults: push every {defaults['labelling_push_interval_s']:.0f} s, batch "
        f"{defaults['labelling_batch_size']}, target {defaults['labelling_queue_target']} open)"
    )
    console.print(summary)
    if not args.quick:
        write_docs_row(
            "annotator supply: `up` at default settings, untrained 128 px champions, real Label Studio",
            summary,
            relative(Path(__file__)),
        )
        console.print(f"wrote {relative(RESULT)} and a row of docs/benchmarks.md")


if __name__ == "__main__":
    main()
