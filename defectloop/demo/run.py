"""`defectloop demo`: the whole loop on the embedded default, against a random control arm.

What runs: the real processes of ``defectloop up CAMERA`` (watcher, inference worker, training worker,
beat; with Label Studio configured, its labelling worker and webhook receiver too) as a child process
with the demo's settings, and this process, which plays the camera, the annotator and the engineer:

1. photos are made (or taken from ``--dataset``) and split: the camera pool, the loop's frozen
   evaluation set (imported with its labels; champion and challengers are compared on it) and the
   demo's frozen test set (never in the database: both arms are scored on it every round);
2. the camera folder is fed over time; the demo waits until the watcher has ingested every photo;
3. round 0: seed labels drawn at random from the pool (shared by both arms, origin ``simulated``), a
   retrain request handled by the training worker makes the first champions, the pool is predicted;
4. rounds 1..N: rank -> the simulated annotator labels a batch -> a retrain request (the training worker
   retrains, compares on the frozen set and promotes by the rule, or records a keep) -> the pool is
   re-scored by the new champions -> re-rank. The random arm gets the same number of labels drawn at
   random from the same pool, is trained in this process with the champion's hyper-parameters and is
   scored on the same test set; it writes no annotation;
5. after each round one ``DemoRound`` per arm (metrics, labels used, defects found, stage timings);
   at the end the report (``defectloop.report``) and a one-line verdict.

Ctrl-C (or SIGTERM) stops the children and marks the run ``stopped``; a rerun resumes the latest
unfinished run at its first unrecorded round; ``--fresh`` starts over on an empty database.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import (
    DemoArm,
    DemoRunStatus,
    Image,
    ImageStatus,
    ModelTask,
    Prediction,
    TrainingRunStatus,
    TrainingTrigger,
)
from db.session import session_scope
from defectloop.demo.annotators import Annotator, DirectAnnotator
from defectloop.demo.metrics import DEFECTIVE
from defectloop.demo.photos import DemoPhotos, feed_camera, prepare_photos, write_compare_folder
from defectloop.demo.plan import (
    TIME_BUDGET_S,
    DemoOptions,
    estimate_seconds,
    label_targets,
    next_round,
    random_draws,
    round_up_minutes,
    seed_draw,
)
from defectloop.errors import DefectloopError
from defectloop.settings import Settings

if TYPE_CHECKING:
    from defectloop.demo.control import ScoringModel

logger = logging.getLogger(__name__)

__all__ = ["DemoResult", "demo_settings", "run_demo"]

EVALUATION_FRACTION = 1e-9
"""The loop's evaluation rule in the demo: hold out (almost) nothing by hash; the frozen evaluation set
is the demo's ``compare`` photos, added explicitly with a reason."""
SEED_ANNOTATOR = "demo-seed"
STAGES = ("ingest", "predict", "rank", "label", "train", "compare", "rescore")
_MARKER = ".defectloop-demo"
_WAIT_POLL_S = 0.5


@dataclass
class DemoResult:
    run_name: str
    status: str
    report: Path | None = None
    verdict: str = ""
    rounds: list[dict[str, Any]] = field(default_factory=list)


def demo_settings(settings: Settings, options: DemoOptions) -> Settings:
    """The settings the loop runs with in the demo: the user's, with the demo's model size, a retrain
    only on request (the demo requests one per round), promotion by the policy, a quick watcher."""
    return settings.model_copy(
        update={
            "image_size": options.image_size,
            "image_channels": options.channels,
            "train_epochs": options.epochs,
            "train_batch_size": options.train_batch_size,
            "train_patience": options.patience,
            "retrain_architectures": tuple(options.architectures),
            "auto_promote": True,
            "retrain_min_new_labels": 0,
            "retrain_interval_s": 0,
            "evaluation_fraction": EVALUATION_FRACTION,
            "labelling_batch_size": options.batch,
            "ingest_stable_seconds": min(settings.ingest_stable_seconds, 0.3),
            "ingest_rescan_seconds": min(settings.ingest_rescan_seconds, 5.0),
        }
    )


_CHILD_FIELDS = (
    "data_dir",
    "image_size",
    "image_channels",
    "train_epochs",
    "train_batch_size",
    "train_patience",
    "retrain_architectures",
    "auto_promote",
    "retrain_min_new_labels",
    "retrain_interval_s",
    "evaluation_fraction",
    "labelling_batch_size",
    "ingest_stable_seconds",
    "ingest_rescan_seconds",
)


def child_environment(settings: Settings, base: Mapping[str, str]) -> dict[str, str]:
    """The environment of the ``up`` child: ``base`` with the demo's settings as DEFECTLOOP_* values."""
    env = dict(base)
    for name in _CHILD_FIELDS:
        value = getattr(settings, name)
        text = (
            ",".join(value)
            if isinstance(value, tuple)
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
        env[f"DEFECTLOOP_{name.upper()}"] = text
    return env


# --- stages and progress ----------------------------------------------------------------------------


class _Stages:
    """One progress bar per stage of a round, and the seconds each took."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.timings: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._tasks: list[Any] = []

    def clear(self) -> None:
        """Take the finished bars off the screen (a round's printed line stays)."""
        for task in self._tasks:
            self.progress.remove_task(task)
        self._tasks = []

    @contextlib.contextmanager
    def stage(
        self, name: str, description: str, total: float | None = None
    ) -> Iterator[Callable[[float], None]]:
        task = self.progress.add_task(description, total=total)
        self._tasks.append(task)
        started = time.perf_counter()

        def advance_to(done: float) -> None:
            self.progress.update(task, completed=done)

        try:
            yield advance_to
        finally:
            elapsed = time.perf_counter() - started
            self.timings[name] = self.timings.get(name, 0.0) + elapsed
            self.progress.update(task, total=total or 1, completed=total or 1)
            self.progress.update(task, description=f"{description} ({elapsed:.1f} s)")
            self.progress.stop_task(task)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )


# --- the database side ---------------------------------------------------------------------------


def _under(folder: Path) -> Any:
    return Image.path.startswith(f"{folder}{os.sep}")


def _pool_counts(sessions: sessionmaker[Session], camera: Path) -> dict[ImageStatus, int]:
    with session_scope(sessions) as session:
        rows = session.execute(
            select(Image.status, func.count()).where(_under(camera)).group_by(Image.status)
        ).all()
    return {ImageStatus(status): int(n) for status, n in rows}


def _predicted_by_current(sessions: sessionmaker[Session], camera: Path) -> tuple[int, int, str | None]:
    """(unlabelled pool images, of which predicted by the current champions, the current model key)."""
    with session_scope(sessions) as session:
        key = repo.current_model_key(session=session)
        waiting = (ImageStatus.NEW, ImageStatus.QUEUED, ImageStatus.PREDICTED)
        total = session.scalar(
            select(func.count()).select_from(Image).where(_under(camera), Image.status.in_(waiting))
        )
        done = 0
        if key is not None:
            done = (
                session.scalar(
                    select(func.count(func.distinct(Image.id)))
                    .select_from(Image)
                    .join(Prediction, Prediction.image_id == Image.id)
                    .where(_under(camera), Image.status == ImageStatus.PREDICTED, Prediction.model_key == key)
                )
                or 0
            )
    return int(total or 0), int(done), key


def _labelled_pool(sessions: sessionmaker[Session], camera: Path) -> dict[int, str]:
    """Image id -> label of the labelled camera photos (the active arm's labels, seed included)."""
    prefix = f"{camera}{os.sep}"
    with session_scope(sessions) as session:
        return {
            image.id: label
            for image, label in repo.list_labelled_images(session=session)
            if image.path.startswith(prefix)
        }


def _image_ids_under(sessions: sessionmaker[Session], folder: Path) -> dict[str, int]:
    """File name -> image id of the images under ``folder`` (any status)."""
    with session_scope(sessions) as session:
        rows = session.execute(select(Image.id, Image.path).where(_under(folder))).all()
    return {Path(path).name: int(image_id) for image_id, path in rows}


# --- the run ---------------------------------------------------------------------------------------


class _StopError(Exception):
    """SIGTERM: stop like Ctrl-C."""


class DemoRunner:
    """One demo run; see the module docstring. ``up_command``: how the loop's processes are started
    (default ``defectloop up CAMERA``)."""

    def __init__(
        self,
        *,
        settings: Settings,
        options: DemoOptions,
        console: Console,
        fresh: bool = False,
        out: Path | None = None,
        up_args: Sequence[str] = (),
    ) -> None:
        self.user_settings = settings
        self.options = options
        self.console = console
        self.fresh = fresh
        self.out = out
        self.up_args = tuple(up_args)
        self.child: subprocess.Popen[bytes] | None = None
        self.sessions: sessionmaker[Session] | None = None
        # The random arm's champions (in memory: it writes nothing to the loop's tables) and the round
        # whose labels each was trained on (a resumed run trains it again from those).
        self.random_champions: dict[str, ScoringModel | None] | None = None
        self.random_rounds: dict[str, int] = {}

    # -- set-up

    def _wipe(self, settings: Settings) -> None:
        data = settings.data_dir
        if not settings.embedded:
            raise DefectloopError(
                "--fresh starts over on an empty embedded database; with DEFECTLOOP_DATABASE_URL set, "
                "empty that database yourself or point the demo at another DEFECTLOOP_DATA_DIR"
            )
        db_file = data / "defectloop.db"
        if db_file.exists() and not (data / _MARKER).exists():
            raise DefectloopError(
                f"--fresh would delete {db_file}, which the demo did not create; run the demo in a data dir "
                "of its own: DEFECTLOOP_DATA_DIR=/some/empty/dir defectloop demo"
            )
        self._refuse_a_kept_label_studio_project(settings)
        import shutil

        for name in (
            "defectloop.db",
            "defectloop.db-wal",
            "defectloop.db-shm",
            "broker.db",
            "broker.db-wal",
            "broker.db-shm",
            "celerybeat-schedule",
        ):
            (data / name).unlink(missing_ok=True)
        for folder in ("artifacts", "heatmaps", "demo"):
            shutil.rmtree(data / folder, ignore_errors=True)
        self.console.print(f"--fresh: the demo's database, models and photos under {data} were removed")

    @staticmethod
    def _refuse_a_kept_label_studio_project(settings: Settings) -> None:
        """A new database beside the old run's Label Studio project would let reconciliation attach that
        run's annotations to the new images that reuse its ids: the project must go first."""
        from defectloop.app import label_studio_gateway, labelling_config

        if labelling_config(settings) is None:
            return
        title = settings.label_studio_project_title
        with label_studio_gateway(settings) as gateway:
            kept = gateway.project_ids(title=title)
        if kept:
            raise DefectloopError(
                f"--fresh starts a new database, but the Label Studio project {title!r} (id "
                f"{', '.join(map(str, kept))}) still holds the previous run's tasks and annotations; delete "
                "it in Label Studio, or set DEFECTLOOP_LABEL_STUDIO_PROJECT_TITLE to a new title, and run "
                "again"
            )

    def run(self) -> DemoResult:
        from db.migrate import upgrade
        from defectloop.app import open_database

        settings = demo_settings(self.user_settings, self.options)
        if self.fresh:
            self._wipe(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings.database_url)
        database = open_database(settings)
        self.sessions = database.sessions
        try:
            return self._run(settings)
        finally:
            database.dispose()

    def _pick_run(self, settings: Settings) -> tuple[int, str, DemoOptions, bool]:
        """(run id, name, options, resumed): the latest unfinished run, else a new one on a clean db."""
        assert self.sessions is not None
        with session_scope(self.sessions) as session:
            latest = repo.latest_demo_run(session=session)
            if latest is not None and latest.status is not DemoRunStatus.FINISHED:
                stored = DemoOptions.from_dict(latest.settings.get("demo", {}))
                repo.set_demo_run_status(session=session, run_id=latest.id, status=DemoRunStatus.RUNNING)
                return latest.id, latest.name, stored, True
            if latest is not None:
                raise _FinishedError(latest.name)
            images = sum(repo.count_images_by_status(session=session).values())
            versions = repo.list_model_versions(session=session)
            if images or versions:
                raise DefectloopError(
                    f"the database under {settings.data_dir} holds {images} image(s) and {len(versions)} "
                    "model version(s) that are not a demo's: the demo needs a database of its own. Point it "
                    "at an empty "
                    "folder (DEFECTLOOP_DATA_DIR=var/demo defectloop demo)"
                )
            name = f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"
            run = repo.create_demo_run(
                session=session,
                name=name,
                settings={"demo": self.options.to_dict(), "settings": _shown_settings(settings)},
            )
            (settings.data_dir / _MARKER).write_text(f"{name}\n", encoding="utf-8")
            return run.id, name, self.options, False

    def _run(self, settings: Settings) -> DemoResult:
        try:
            run_id, name, options, resumed = self._pick_run(settings)
        except _FinishedError as done:
            self.console.print(
                f"the latest demo run {done.name} has finished; its report is written again below "
                "(`defectloop demo --fresh` runs a new one)"
            )
            report = self._write_report(settings, done.name)
            return DemoResult(
                run_name=done.name, status="finished", report=report, verdict=self._verdict_of(done.name)
            )
        if resumed and options != self.options:
            self.console.print(
                f"resuming {name} with the options it was started with (the ones given now differ; "
                "`--fresh` starts over with them)"
            )
        self.options = options
        settings = demo_settings(self.user_settings, options)
        estimate = estimate_seconds(options)
        if estimate > TIME_BUDGET_S:
            self.console.print(
                f"[yellow]warning:[/] this size will take about {round_up_minutes(estimate)} min on a "
                "2-core machine "
                f"(the default takes under {round_up_minutes(TIME_BUDGET_S)}): {options.n_images} photos, "
                f"{options.rounds} rounds of {options.batch}, {options.image_size} px, "
                f"{options.epochs} epochs, "
                f"{len(options.architectures)} architecture(s)",
                highlight=False,
            )
        self.console.print(
            f"{'resuming' if resumed else 'starting'} demo run [bold]{name}[/] "
            f"(data dir {settings.data_dir}; "
            f"estimated {round_up_minutes(estimate)} min)",
            highlight=False,
        )
        previous = signal.signal(signal.SIGTERM, _raise_stop)
        # Ctrl-C raises KeyboardInterrupt even when started where SIGINT was ignored (a background job).
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
        status, reason = DemoRunStatus.FAILED, None
        result = DemoResult(run_name=name, status="running")
        try:
            self._loop(settings, run_id, name, result)
            status = DemoRunStatus.FINISHED
        except (KeyboardInterrupt, _StopError):
            status, reason = DemoRunStatus.STOPPED, "stopped by the user (Ctrl-C or SIGTERM)"
            self.console.print(
                "[yellow]stopping[/]: the loop's processes are stopped; rerun `defectloop demo` to resume"
            )
        except BaseException as exc:
            reason = f"{type(exc).__name__}: {exc}"[:2000]
            raise
        finally:
            self._stop_child()
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
            assert self.sessions is not None
            with session_scope(self.sessions) as session:
                repo.set_demo_run_status(session=session, run_id=run_id, status=status, reason=reason)
            result.status = str(status)
        if status is DemoRunStatus.FINISHED:
            result.report = self._write_report(settings, name)
            result.verdict = self._verdict_of(name)
        return result

    # -- the loop's processes

    def _start_child(self, settings: Settings, camera: Path, log_path: Path) -> None:
        from defectloop.supervise import _die_with_parent

        command = [
            sys.executable,
            "-m",
            "defectloop.cli",
            "up",
            str(camera),
            "--sweep-every=5",
            "--stuck-after=30",
            *self.up_args,
        ]
        log = log_path.open("ab")
        self.child = subprocess.Popen(
            command,
            env=child_environment(settings, os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops the child in order
            preexec_fn=_die_with_parent(os.getpid()),
        )
        log.close()
        logger.info("started defectloop up (pid %d); its log: %s", self.child.pid, log_path)

    def _check_child(self) -> None:
        if self.child is not None and self.child.poll() is not None:
            raise DefectloopError(
                f"`defectloop up` exited with {self.child.returncode}; its log is in the run folder (up.log)"
            )

    def _stop_child(self) -> None:
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=90)
        except subprocess.TimeoutExpired:
            logger.error("defectloop up did not stop within 90 s; killing it")
            child.kill()
            child.wait()

    def _wait(
        self,
        what: str,
        done: Callable[[], bool],
        *,
        timeout_s: float,
        on_poll: Callable[[], None] | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            self._check_child()
            if time.monotonic() > deadline:
                raise DefectloopError(
                    f"timed out after {timeout_s:.0f} s waiting for {what}; see up.log in the run folder"
                )
            if on_poll is not None:
                on_poll()
            time.sleep(_WAIT_POLL_S)

    # -- the rounds

    def _loop(self, settings: Settings, run_id: int, name: str, result: DemoResult) -> None:
        from defectloop.app import create_celery_app

        assert self.sessions is not None
        sessions = self.sessions
        options = self.options
        run_dir = settings.data_dir / "demo" / name
        progress = _progress(self.console)
        with progress:
            stages = _Stages(progress)
            with stages.stage("ingest", "making the photos"):
                photos = prepare_photos(run_dir, options, classes=settings.classes)
            self._prepare_evaluation_set(settings, photos, stages)
            camera = photos.camera_dir.resolve()
            camera.mkdir(parents=True, exist_ok=True)
            # A retrain the previous run's trainer was running when it stopped never finishes: no worker
            # of this database runs now, so every running request is closed as failed (a new one is asked).
            from workers.retrain_policy import fail_stale_requests

            fail_stale_requests(sessions, older_than_s=0)
            self._start_child(settings, camera, run_dir / "up.log")
            celery_app = create_celery_app(settings)
            pool = photos.of_role("pool")
            with stages.stage("ingest", f"camera: {len(pool)} photos", total=len(pool)) as advance:
                feed_camera(photos, seconds=options.feed_seconds, on_file=advance)
                self._wait(
                    "the watcher to ingest every photo",
                    lambda: sum(_pool_counts(sessions, camera).values()) >= len(pool),
                    timeout_s=300 + len(pool),
                    on_poll=lambda: advance(sum(_pool_counts(sessions, camera).values())),
                )
            quarantined = _pool_counts(sessions, camera).get(ImageStatus.QUARANTINED, 0)
            if quarantined:
                self.console.print(f"[yellow]{quarantined} photo(s) quarantined by the watcher[/]")

            truth_by_name = photos.camera_truth()
            ids = _image_ids_under(sessions, camera)
            truth_by_id = {ids[n]: label for n, label in truth_by_name.items() if n in ids}
            pool_names = sorted(truth_by_name)
            targets = label_targets(
                seed_labels=options.seed_labels,
                batch=options.batch,
                rounds=options.rounds,
                pool_size=len(pool_names),
            )
            seed_names = seed_draw(
                pool_names,
                size=targets[0],
                seed=options.seed,
                is_defect={n: label != settings.good_class for n, label in truth_by_name.items()},
            )
            test = [(p.source, p.label) for p in sorted(photos.of_role("test"), key=lambda p: p.key)]
            compare = [(p.source, p.label) for p in sorted(photos.of_role("compare"), key=lambda p: p.key)]
            annotator = self._annotator(settings, truth_by_id)

            with session_scope(sessions) as session:
                done_rounds = {
                    arm.value: {
                        r.round for r in repo.list_demo_rounds(session=session, run_id=run_id, arm=arm)
                    }
                    for arm in DemoArm
                }
            start = next_round(done_rounds, options.rounds)
            ingest_s = stages.timings["ingest"]
            for round_number in range(start, options.rounds + 1):
                stages.timings = dict.fromkeys(STAGES, 0.0)
                if round_number == start:
                    stages.timings["ingest"] = ingest_s
                summary = self._round(
                    round_number,
                    settings=settings,
                    run_id=run_id,
                    name=name,
                    stages=stages,
                    celery_app=celery_app,
                    camera=camera,
                    target=targets[round_number],
                    seed_ids=[ids[n] for n in seed_names if n in ids],
                    random_names=random_draws(
                        pool_names, seed_set=seed_names, total=targets[round_number], seed=options.seed
                    ),
                    truth_by_name=truth_by_name,
                    truth_by_id=truth_by_id,
                    annotator=annotator,
                    test=test,
                    compare=compare,
                    random_names_at=lambda r: random_draws(
                        pool_names, seed_set=seed_names, total=targets[r], seed=options.seed
                    ),
                )
                result.rounds.append(summary)
                stages.clear()
                progress.console.print(_round_line(summary), highlight=False)

    def _prepare_evaluation_set(self, settings: Settings, photos: DemoPhotos, stages: _Stages) -> None:
        """Import the compare photos with their labels and make them the loop's frozen evaluation sets
        (created here, with a rule that holds nothing else out), unless done already."""
        from workers.importing import import_folder
        from workers.retraining import EvaluationRule, evaluation_set_name

        assert self.sessions is not None
        with stages.stage("ingest", "the loop's frozen evaluation set"):
            folder = write_compare_folder(photos).resolve()
            import_folder(
                sessions=self.sessions,
                root=folder,
                known_labels=(*settings.classes, DEFECTIVE),
                source_name="demo:frozen-evaluation-set",
            )
            ids = _image_ids_under(self.sessions, folder)
            labels = {ids[p.name]: p.label for p in photos.of_role("compare") if p.name in ids}
            rule = EvaluationRule.new(EVALUATION_FRACTION)
            good = settings.good_class
            with session_scope(self.sessions) as session:
                for task in ModelTask:
                    set_name = evaluation_set_name(task)
                    existing = repo.get_evaluation_set(session=session, name=set_name)
                    if existing is None:
                        existing = repo.create_evaluation_set(
                            session=session, name=set_name, task=task, rule=rule.to_dict()
                        )
                    if task is ModelTask.BINARY:
                        members = {i: (good if label == good else DEFECTIVE) for i, label in labels.items()}
                    else:
                        members = {i: label for i, label in labels.items() if label not in (good, DEFECTIVE)}
                    if members:
                        repo.add_evaluation_members(
                            session=session,
                            evaluation_set_id=existing.id,
                            members=members,
                            reason="defectloop demo: photos held out of the camera as the frozen "
                            "evaluation set",
                        )

    def _annotator(self, settings: Settings, truth_by_id: Mapping[int, str]) -> Annotator:
        from defectloop.app import labelling_config

        def truth(image_id: int) -> str:
            return truth_by_id[image_id]

        assert self.sessions is not None
        if labelling_config(settings) is not None:
            # Imported here: the direct path needs neither the SDK nor the gateway.
            from defectloop.demo.label_studio import LabelStudioAnnotator

            annotator: Annotator = LabelStudioAnnotator(
                settings=settings, sessions=self.sessions, truth=truth
            )
            return annotator
        return DirectAnnotator(sessions=self.sessions, settings=settings, truth=truth)

    def _retrain(self, celery_app: Any, reason: str, stages: _Stages) -> dict[str, Any]:
        """Ask the training worker for a retrain (as an engineer would) and wait for it; what it did."""
        from workers.retrain_policy import pending_requests, request_retrain
        from workers.retraining_tasks import publish_retrain

        assert self.sessions is not None
        sessions = self.sessions
        started = datetime.now(UTC)
        with stages.stage("train", "retrain: training worker") as _:
            ids = request_retrain(sessions=sessions, trigger=TrainingTrigger.MANUAL, reason=reason)
            if not ids:
                queued, running = pending_requests(sessions)
                ids = queued + running
            publish_retrain(celery_app)
            last_publish = time.monotonic()

            def finished() -> bool:
                nonlocal last_publish
                with session_scope(sessions) as session:
                    runs = [repo.get_training_run(session=session, run_id=i) for i in ids]
                    if (
                        any(r.status is TrainingRunStatus.QUEUED for r in runs)
                        and time.monotonic() - last_publish > 60
                    ):
                        publish_retrain(celery_app)  # a message lost with a restarted worker
                        last_publish = time.monotonic()
                    return all(
                        r.status in (TrainingRunStatus.SUCCEEDED, TrainingRunStatus.FAILED) for r in runs
                    )

            self._wait("the retrain", finished, timeout_s=3600)
        with session_scope(sessions) as session:
            request = repo.get_training_run(session=session, run_id=ids[0])
            details = dict((request.params or {}).get("result") or {})
            error = request.error
            request_finished = request.finished_at
            trained_finished = [
                r.finished_at
                for r in repo.list_training_runs(session=session)
                if r.architecture != "all"
                and r.started_at is not None
                and r.finished_at is not None
                and r.started_at >= started
            ]
            comparisons = [
                c for c in repo.list_comparisons(session=session, limit=20) if c.created_at >= started
            ]
            decisions = [
                {"task": str(c.task), "decision": str(c.decision), "reason": c.reason} for c in comparisons
            ]
        if request_finished is not None and trained_finished:
            compare_s = max(0.0, (request_finished - max(trained_finished)).total_seconds())
            stages.timings["compare"] += compare_s
            stages.timings["train"] = max(0.0, stages.timings["train"] - compare_s)
        if error and not details.get("trained"):
            raise DefectloopError(f"the retrain failed: {error}")
        return {"request": ids[0], "error": error, "decisions": decisions, **details}

    def _wait_predicted(self, celery_app: Any, camera: Path, stages: _Stages, stage: str) -> None:
        """Send the waiting pool photos to the workers (the first champions find them waiting) and wait
        until every unlabelled one is predicted by the current champions."""
        from workers.celery_app import publish_classification

        assert self.sessions is not None
        sessions = self.sessions
        with session_scope(sessions) as session:
            waiting = [
                image.id
                for image in repo.list_images_by_status(session=session, status=ImageStatus.NEW)
                if image.path.startswith(f"{camera}{os.sep}")
            ]
            # Predicted while only the first binary champion existed (its multiclass one came moments
            # later, without a champion *change* that would re-queue the pool): score them again.
            key = repo.current_model_key(session=session)
            current = select(Prediction.image_id).where(Prediction.model_key == key)
            stale = (
                []
                if key is None
                else list(
                    session.scalars(
                        select(Image.id).where(
                            _under(camera), Image.status == ImageStatus.PREDICTED, Image.id.not_in(current)
                        )
                    )
                )
            )
            for image_id in stale:
                repo.set_image_status(
                    session=session,
                    image_id=image_id,
                    status=ImageStatus.QUEUED,
                    expected=ImageStatus.PREDICTED,
                )
            waiting.extend(stale)
        for i in range(0, len(waiting), 64):
            publish_classification(celery_app, waiting[i : i + 64])
        total, _, _ = _predicted_by_current(sessions, camera)
        label = (
            "predict: the pool by the first champions"
            if stage == "predict"
            else "rescore: the pool by the champions"
        )
        with stages.stage(stage, label, total=total) as advance:

            def done() -> bool:
                total_now, predicted, key = _predicted_by_current(sessions, camera)
                advance(predicted)
                return key is not None and predicted >= total_now

            self._wait("the pool to be predicted", done, timeout_s=1800)

    def _round(
        self,
        round_number: int,
        *,
        settings: Settings,
        run_id: int,
        name: str,
        stages: _Stages,
        celery_app: Any,
        camera: Path,
        target: int,
        seed_ids: Sequence[int],
        random_names: Sequence[str],
        truth_by_name: Mapping[str, str],
        truth_by_id: Mapping[int, str],
        annotator: Annotator,
        test: Sequence[tuple[Path, str]],
        compare: Sequence[tuple[Path, str]],
        random_names_at: Callable[[int], list[str]],
    ) -> dict[str, Any]:
        from workers.labelling import record_simulated_annotations

        assert self.sessions is not None
        sessions = self.sessions
        good = settings.good_class
        labelled = _labelled_pool(sessions, camera)
        if round_number == 0:
            with (
                stages.stage(
                    "label", f"round 0: {len(seed_ids)} seed labels (random, both arms)", total=len(seed_ids)
                ),
                session_scope(sessions) as session,
            ):
                record_simulated_annotations(
                    session=session,
                    labels={i: truth_by_id[i] for i in seed_ids if i not in labelled},
                    annotator=SEED_ANNOTATOR,
                )
        else:
            missing = target - len(labelled)
            with stages.stage(
                "label",
                f"round {round_number}: the annotator labels {max(0, missing)}",
                total=max(0, missing),
            ) as advance:
                got = 0
                while got < missing:
                    new = annotator.label_batch(missing - got)
                    if not new:
                        break
                    got += len(new)
                    advance(got)
            timings = getattr(annotator, "timings", {})
            if "rank" in timings:
                stages.timings["rank"] += float(timings["rank"])
                stages.timings["label"] = max(0.0, stages.timings["label"] - float(timings["rank"]))
        retrain = self._retrain(
            celery_app, f"defectloop demo {name}, round {round_number}: {target} labels", stages
        )
        self._wait_predicted(celery_app, camera, stages, "predict" if round_number == 0 else "rescore")

        active_labels = _labelled_pool(sessions, camera)
        active_models, binary_row, multiclass_row = self._champions()
        with stages.stage("compare", f"round {round_number}: scoring the champions on the frozen test set"):
            from defectloop.demo.control import score_arm

            active_metrics = score_arm(active_models, test, classes=settings.classes)
        active_metrics["loop"] = retrain
        active_timings = dict(stages.timings)

        random_photos = [(camera / n, truth_by_name[n]) for n in random_names]
        random_timings = dict.fromkeys(STAGES, 0.0)
        if round_number == 0:
            # The same labels as the active arm, hence the same first champions.
            self.random_champions = {"binary": active_models.binary, "multiclass": active_models.multiclass}
            self.random_rounds = {"binary": 0, "multiclass": 0}
            random_metrics = {k: v for k, v in active_metrics.items() if k != "loop"}
            random_metrics["champion_rounds"] = dict(self.random_rounds)
        else:
            random_metrics = self._random_round(
                round_number,
                run_id=run_id,
                settings=settings,
                random_photos=random_photos,
                photos_at=lambda r: [(camera / n, truth_by_name[n]) for n in random_names_at(r)],
                hyper=(
                    binary_row["hyperparameters"],
                    None if multiclass_row is None else multiclass_row["hyperparameters"],
                ),
                compare=compare,
                test=test,
                stages=stages,
                timings=random_timings,
            )
        active_defects = sum(1 for label in active_labels.values() if label != good)
        random_defects = sum(1 for _, label in random_photos if label != good)
        arm_rows = (
            (
                DemoArm.ACTIVE,
                len(active_labels),
                active_defects,
                active_metrics,
                active_timings,
                binary_row["name"],
                None if multiclass_row is None else multiclass_row["name"],
            ),
            (
                DemoArm.RANDOM,
                len(random_photos),
                random_defects,
                random_metrics,
                random_timings if round_number else active_timings,
                None,
                None,
            ),
        )
        with session_scope(sessions) as session:
            for arm, labels_used, defects_found, metrics, timings, binary_name, multiclass_name in arm_rows:
                repo.record_demo_round(
                    session=session,
                    run_id=run_id,
                    round_number=round_number,
                    arm=arm,
                    labels_used=labels_used,
                    defects_found=defects_found,
                    metrics=metrics,
                    timings=timings,
                    binary_version=binary_name,
                    multiclass_version=multiclass_name,
                )
        return {
            "round": round_number,
            "active": {
                "labels": len(active_labels),
                "defects": active_defects,
                "macro_f1": active_metrics["macro_f1"],
                "multiclass_macro_f1": active_metrics["multiclass_macro_f1"],
            },
            "random": {
                "labels": len(random_photos),
                "defects": random_defects,
                "macro_f1": random_metrics["macro_f1"],
                "multiclass_macro_f1": random_metrics["multiclass_macro_f1"],
            },
            "champions": [binary_row["name"], None if multiclass_row is None else multiclass_row["name"]],
            "timings": active_timings,
            "random_timings": random_timings,
            "promoted": [c.get("promoted") for c in retrain.get("comparisons", []) if c.get("promoted")],
        }

    def _random_round(
        self,
        round_number: int,
        *,
        run_id: int,
        settings: Settings,
        random_photos: Sequence[tuple[Path, str]],
        photos_at: Callable[[int], list[tuple[Path, str]]],
        hyper: tuple[Mapping[str, Any], Mapping[str, Any] | None],
        compare: Sequence[tuple[Path, str]],
        test: Sequence[tuple[Path, str]],
        stages: _Stages,
        timings: dict[str, float],
    ) -> dict[str, Any]:
        """The random arm's round: train on its labels as the loop would, promote by the loop's rule on
        the loop's frozen evaluation set, and score its champions on the test set."""
        from defectloop.app import retraining_config
        from defectloop.demo.control import ArmModels, decide_random_promotion, score_arm, train_random_arm

        good = settings.good_class
        if self.random_champions is None:
            self._restore_random_champions(run_id, round_number, settings, photos_at, hyper)
        assert self.random_champions is not None
        started = time.perf_counter()
        with stages.stage("train", f"round {round_number}: the random arm ({len(random_photos)} labels)"):
            trained = train_random_arm(
                random_photos,
                binary_hyperparameters=hyper[0],
                multiclass_hyperparameters=hyper[1],
                label_space=settings.label_space,
            )
        timings["train"] = time.perf_counter() - started
        started = time.perf_counter()
        policy = retraining_config(settings).plan.policy
        decisions = {}
        for task, challenger in zip(("binary", "multiclass"), trained, strict=True):
            if challenger is None:
                decisions[task] = "keep: not trained (a class with too few labels)"
                continue
            champion = self.random_champions.get(task)
            decision = decide_random_promotion(challenger, champion, compare, good_class=good, policy=policy)
            decisions[task] = decision.reason
            if decision.promote:
                self.random_champions[task] = challenger
                self.random_rounds[task] = round_number
        binary = self.random_champions.get("binary")
        if binary is None:
            raise DefectloopError("the random arm has no binary model: its labels hold a single class")
        metrics = score_arm(
            ArmModels(binary=binary, multiclass=self.random_champions.get("multiclass")),
            test,
            classes=settings.classes,
        )
        timings["compare"] = time.perf_counter() - started
        metrics["champion_rounds"] = dict(self.random_rounds)
        metrics["decisions"] = decisions
        return metrics

    def _restore_random_champions(
        self,
        run_id: int,
        round_number: int,
        settings: Settings,
        photos_at: Callable[[int], list[tuple[Path, str]]],
        hyper: tuple[Mapping[str, Any], Mapping[str, Any] | None],
    ) -> None:
        """A resumed run: the random arm's champions trained again on the labels of the round each was
        made in (training is seeded: the same labels give the same model), or round 0's shared ones."""
        from defectloop.demo.control import load_version, train_random_arm

        assert self.sessions is not None
        with session_scope(self.sessions) as session:
            rows = repo.list_demo_rounds(session=session, run_id=run_id, arm=DemoArm.RANDOM)
            previous = [r for r in rows if r.round < round_number]
            rounds = dict(previous[-1].metrics.get("champion_rounds") or {}) if previous else {}
            first = [
                r
                for r in repo.list_demo_rounds(session=session, run_id=run_id, arm=DemoArm.ACTIVE)
                if r.round == 0
            ]
            first_models: dict[str, ScoringModel | None] = {"binary": None, "multiclass": None}
            if first:
                for task, name in (
                    ("binary", first[0].binary_version),
                    ("multiclass", first[0].multiclass_version),
                ):
                    if name is not None:
                        first_models[task] = load_version(
                            repo.get_model_version_by_name(session=session, name=name)
                        )
        champions: dict[str, ScoringModel | None] = {}
        for task in ("binary", "multiclass"):
            made_in = int(rounds.get(task, 0))
            if made_in == 0:
                champions[task] = first_models[task]
                continue
            trained = train_random_arm(
                photos_at(made_in),
                binary_hyperparameters=hyper[0],
                multiclass_hyperparameters=hyper[1],
                label_space=settings.label_space,
            )
            champions[task] = trained[0] if task == "binary" else trained[1]
        self.random_champions = champions
        self.random_rounds = {task: int(rounds.get(task, 0)) for task in ("binary", "multiclass")}

    def _champions(self) -> tuple[Any, dict[str, Any], dict[str, Any] | None]:
        from defectloop.demo.control import ArmModels, load_version

        assert self.sessions is not None
        with session_scope(self.sessions) as session:
            binary = repo.get_champion(session=session, task=ModelTask.BINARY)
            multiclass = repo.get_champion(session=session, task=ModelTask.MULTICLASS)
            if binary is None:
                raise DefectloopError("the retrain made no binary champion: see up.log in the run folder")
            models = ArmModels(
                binary=load_version(binary),
                multiclass=None if multiclass is None else load_version(multiclass),
            )
            rows = [
                None
                if row is None
                else {"name": row.name, "hyperparameters": dict(row.hyperparameters or {})}
                for row in (binary, multiclass)
            ]
        assert rows[0] is not None
        return models, rows[0], rows[1]

    # -- the end

    def _write_report(self, settings: Settings, name: str) -> Path | None:
        from defectloop.errors import NotBuiltYetError
        from defectloop.report import write_report

        out = self.out or settings.data_dir / "report.html"
        kwargs: dict[str, Any] = {"settings": self.user_settings, "out": out, "run_name": name}
        if "show_progress" in inspect.signature(write_report).parameters:
            kwargs["show_progress"] = self.console.is_terminal
        try:
            return write_report(**kwargs)
        except NotBuiltYetError:
            self.console.print(
                "[yellow]the HTML report is not available yet (defectloop.report is not built)[/]"
            )
            return None

    def _verdict_of(self, name: str) -> str:
        assert self.sessions is not None
        with session_scope(self.sessions) as session:
            run = repo.get_demo_run_by_name(session=session, name=name)
            if run is None:
                return ""
            rounds = repo.list_demo_rounds(session=session, run_id=run.id)
            by_arm: dict[str, Any] = {}
            for row in rounds:
                by_arm[row.arm.value] = (
                    row.round,
                    row.labels_used,
                    row.defects_found,
                    row.metrics.get("macro_f1"),
                )
        return verdict(by_arm.get("active"), by_arm.get("random"))


class _FinishedError(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _raise_stop(_signum: int, _frame: FrameType | None) -> None:
    raise _StopError


def _shown_settings(settings: Settings) -> dict[str, str]:
    """The settings used, for the run's record and the report: secrets masked, URLs without passwords."""
    return settings.redacted()


def verdict(
    active: tuple[int, int, int, float | None] | None, random: tuple[int, int, int, float | None] | None
) -> str:
    """One line: active vs random at the same number of labels (their last recorded round)."""
    if active is None or random is None or active[3] is None or random[3] is None:
        return "no round recorded for both arms yet"
    _, labels, defects, a_f1 = active
    _, r_labels, r_defects, b_f1 = random
    assert a_f1 is not None
    assert b_f1 is not None
    f1, r_f1 = float(a_f1), float(b_f1)
    gain = f1 - r_f1
    if abs(gain) < 0.01:
        outcome = "a tie"
    elif gain > 0:
        outcome = "active learning paid"
    else:
        outcome = "active learning did not pay"
    return (
        f"{outcome}: frozen-set macro-F1 {f1:.3f} (active) vs {r_f1:.3f} (random) "
        f"at {labels} vs {r_labels} labels "
        f"({gain:+.3f}); defects found {defects} vs {r_defects}"
    )


def _round_line(summary: Mapping[str, Any]) -> str:
    a, r = summary["active"], summary["random"]
    promoted = f", promoted {', '.join(summary['promoted'])}" if summary["promoted"] else ""
    return (
        f"round {summary['round']}: active macro-F1 {a['macro_f1']:.3f} "
        f"({a['labels']} labels, {a['defects']} defects) | "
        f"random {r['macro_f1']:.3f} ({r['labels']} labels, {r['defects']} defects) | champions "
        f"{' + '.join(n for n in summary['champions'] if n)}{promoted}"
    )


def run_demo(
    *,
    settings: Settings,
    options: DemoOptions,
    console: Console,
    fresh: bool = False,
    out: Path | None = None,
    up_args: Sequence[str] = (),
) -> DemoResult:
    """Run (or resume) the demo; see the module docstring."""
    return DemoRunner(
        settings=settings, options=options, console=console, fresh=fresh, out=out, up_args=up_args
    ).run()
