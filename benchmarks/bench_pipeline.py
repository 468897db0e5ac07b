"""Pipeline benchmark: camera file written -> prediction committed, through the real processes.

A deployment per broker (the embedded ``sqla+sqlite`` broker, and Redis: a redis-server this script
starts on a free port, persisting nothing), each with a SQLite registry of its own, a ``defectloop
watch`` process on a camera folder and a ``defectloop worker`` process (solo pool, default settings:
batch 16, batch timeout 200 ms, 8 MC-dropout passes), both champions registered: binary ``resnet18``
and multiclass ``improved_cnn`` (the study's best of each task), untrained, 128 px RGB (throughput
and memory do not depend on the weights). Camera images: seeded synthetic garment photos
(``defectloop.synth``), 128 px JPEG, each written and closed at once. The watcher runs with its default
settings (``--stable-seconds`` sets ``DEFECTLOOP_INGEST_STABLE_SECONDS``: 0.1 s for the rows recorded
before the watcher took a file closed complete at once, when the default 1 s added a second to every
latency).

Figures, per broker:

- throughput: ``--n`` files written at once into the watched folder (after a warm-up that loads the
  champions); images per second from the first write to the last prediction committed, divided by the
  bare forward throughput of the same two models (``binary(x); multiclass(x)`` under
  ``torch.inference_mode``, eager, batch 16, the worker's thread count), measured in this run right
  before and right after the burst (their mean; both are kept, the machine is shared);
- latency: files written at a steady ``--rate`` per second for ``--seconds``; p50/p95 from the write
  (the file closed) to the prediction's commit, with the split watcher (file -> row) / worker (row ->
  prediction);
- worker resident memory (VmRSS, and the peak VmHWM) with both champions loaded, after the runs.

The worker runs the ``--backends`` given: ``eager`` (the computation ``model(x)`` does: the ratio then
measures what the pipeline costs) and/or ``auto`` (what a deployment runs: ONNX Runtime, see
bench_inference.py; its ratio to the eager forward can pass 1).

Writes benchmarks/results/pipeline.json and three rows of docs/benchmarks.md (throughput ratio,
latency, memory); with ``--latency-only`` (no burst), results/pipeline_latency.json and the latency row.
The recorded run: ``.venv/bin/python benchmarks/bench_pipeline.py --backends
eager,auto`` (8.5 minutes on the shared 2-core machine, about 2 per broker and backend); ``--quick`` for a
smoke run (a few images, nothing written, under a minute); ``--docs-from JSON`` writes the rows of a
recorded run again; ``--workdir DIR`` keeps the deployments' logs and databases.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    RESULTS_DIR,
    command_line,
    console,
    machine_info,
    progress_bar,
    relative,
    setup_logging,
    write_docs_row,
    write_json,
    write_recorded_docs_rows,
)
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.migrate import upgrade
from db.schema import Image, ModelTask, Prediction
from db.session import create_engine_for, make_session_factory
from defectloop.synth import DEFAULT_CLASSES, render_sample
from models.data import InputSpec, load_image
from models.infer import Predictor
from models.registry import create_model
from models.selection import DEFAULT_STRATEGY, strategy_spec
from models.train import load_checkpoint, save_checkpoint

NAME = "pipeline"
DEFECTLOOP = str(Path(sys.executable).parent / "defectloop")
SPEC = InputSpec(image_size=128, channels=3)
CHAMPIONS = {ModelTask.BINARY: "resnet18", ModelTask.MULTICLASS: "improved_cnn"}
BATCH = 16  # DEFECTLOOP_INFERENCE_BATCH_SIZE's default
MC_PASSES_FOR_BALD = (
    8  # DEFECTLOOP_MC_DROPOUT_PASSES's default; workers run them only when the strategy needs them
)
MC_PASSES = 0  # set from --strategy in main()
STRATEGY = DEFAULT_STRATEGY
STABLE_S: float | None = None  # DEFECTLOOP_INGEST_STABLE_SECONDS; None: the setting's default (1 s)
TARGET_RATIO = 0.9
TARGET_P95_S = {"embedded": 0.5, "redis": 1.0}
TARGET_RSS_MB = 1536.0
DEADLINE_S = 600.0


# --- helpers --------------------------------------------------------------------------------------


def render_jpegs(n: int, seed: int) -> list[bytes]:
    """``n`` distinct seeded synthetic garment photos, 128 px JPEG (quality 90)."""
    import io

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sample = render_sample(
            DEFAULT_CLASSES[i % len(DEFAULT_CLASSES)], rng, size=SPEC.image_size, grayscale=False
        )
        buffer = io.BytesIO()
        sample.image.convert("RGB").save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A redis-server of this benchmark's own on a free port (nothing persisted); yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        console.print("[red]redis-server is not on PATH; run with --brokers embedded, or install it[/red]")
        raise SystemExit(2)
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(
        [*args, "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        import redis

        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis(port=port, socket_timeout=1).ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=30)


def status_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass
class Champion:
    task: ModelTask
    architecture: str
    classes: tuple[str, ...]
    path: Path
    sha256: str


def work_folder(keep: contextlib.ExitStack, workdir: Path | None, *, prefix: str) -> Path:
    """``workdir``, created (it must not exist yet), or without one a temporary folder that ``keep``
    removes when it closes."""
    if workdir is None:
        return Path(keep.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
    workdir.mkdir(parents=True)
    return workdir


def make_champions(folder: Path) -> list[Champion]:
    """Untrained checkpoints of the two champions (seeded), written once and registered per run."""
    out = []
    for seed, (task, arch) in enumerate(CHAMPIONS.items()):
        classes = ("ok", "defective") if task is ModelTask.BINARY else DEFAULT_CLASSES[1:]
        torch.manual_seed(seed)
        model = create_model(arch, num_classes=len(classes), in_chans=SPEC.channels)
        path = folder / f"{task}-{arch}.pt"
        digest = save_checkpoint(
            path, model, architecture=arch, task=task.value, class_names=classes, input_spec=SPEC
        )
        out.append(Champion(task, arch, classes, path, digest))
    return out


# --- the bare forward -----------------------------------------------------------------------------


class BareForward:
    """The reference throughputs on one batch of real decoded images, in this process:

    - ``model``: ``binary(x); multiclass(x)``, eager, under ``torch.inference_mode`` (the issue's
      denominator);
    - ``predictor``: the two champions' ``models.infer.Predictor.predict(x)`` with the worker's backend
      and MC-dropout passes (the same model computation the worker does: the ratio to it is what the
      pipeline itself costs).
    """

    def __init__(self, champions: list[Champion], images: list[bytes], folder: Path) -> None:
        self.champions = champions
        self.models = [load_checkpoint(c.path, expected_sha256=c.sha256).model.eval() for c in champions]
        tensors = []
        for i, data in enumerate(images[:BATCH]):
            path = folder / f"bare_{i}.jpg"
            path.write_bytes(data)
            tensors.append(load_image(path, SPEC))
        self.x = torch.stack(tensors)
        self.predictors: dict[str, list[Predictor]] = {}
        self.measurements: list[dict[str, Any]] = []

    def _predictors(self, backend: str) -> list[Predictor]:
        if backend not in self.predictors:
            self.predictors[backend] = [
                Predictor(
                    model,
                    c.architecture,
                    class_names=c.classes,
                    image_size=SPEC.image_size,
                    channels=SPEC.channels,
                    mc_passes=MC_PASSES,
                    backend=backend,  # type: ignore[arg-type]  # checked by Predictor
                )
                for model, c in zip(self.models, self.champions, strict=True)
            ]
        return self.predictors[backend]

    def _rate(self, forward: Callable[[], None], seconds: float) -> float:
        forward()  # warm-up
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            forward()
            n += len(self.x)
        return n / (time.perf_counter() - start)

    def measure(self, seconds: float, backend: str) -> dict[str, float]:
        """Images per second of each reference for ``seconds``; kept in ``measurements``."""
        predictors = self._predictors(backend)

        def bare() -> None:
            with torch.inference_mode():
                for model in self.models:
                    model(self.x)

        def predict() -> None:
            for predictor in predictors:
                predictor.predict(self.x)

        rates = {"model": self._rate(bare, seconds), "predictor": self._rate(predict, seconds)}
        self.measurements.append({"backend": backend, **rates, "load_average": list(os.getloadavg())})
        return rates


# --- a deployment ---------------------------------------------------------------------------------


@dataclass
class Deployment:
    """A SQLite registry, a broker, a camera folder, and the watch + worker processes on them."""

    root: Path
    broker: str
    broker_url: str
    backend: str
    champions: list[Champion]
    batch_timeout_ms: int
    stable_seconds: float | None = None  # DEFECTLOOP_INGEST_STABLE_SECONDS; None: the setting's default
    sessions: sessionmaker[Session] = field(init=False)
    cam: Path = field(init=False)
    env: dict[str, str] = field(init=False)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    written: dict[str, float] = field(default_factory=dict)  # path -> wall time the file was closed

    def __post_init__(self) -> None:
        database_url = f"sqlite:///{self.root / 'defectloop.db'}"
        upgrade(database_url)
        self.sessions = make_session_factory(create_engine_for(database_url))
        with self.sessions() as session:
            for c in self.champions:
                repo.register_model_version(
                    session=session,
                    name=f"{c.task}-{c.architecture}-0001",
                    task=c.task,
                    architecture=c.architecture,
                    classes=c.classes,
                    input_spec=SPEC.to_dict(),
                    artifact_path=str(c.path),
                    artifact_sha256=c.sha256,
                )
            session.commit()
        self.cam = self.root / "cam"
        self.cam.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTLOOP_")}
        self.env.update(
            DEFECTLOOP_DATA_DIR=str(self.root),
            DEFECTLOOP_DATABASE_URL=database_url,
            DEFECTLOOP_BROKER_URL=self.broker_url,
            DEFECTLOOP_STRATEGY=STRATEGY,
            DEFECTLOOP_MC_DROPOUT_PASSES=str(MC_PASSES_FOR_BALD),
            DEFECTLOOP_INFERENCE_BATCH_TIMEOUT_MS=str(self.batch_timeout_ms),
            DEFECTLOOP_LOG_LEVEL="INFO",
            COLUMNS="200",
        )
        if self.stable_seconds is not None:
            self.env["DEFECTLOOP_INGEST_STABLE_SECONDS"] = str(self.stable_seconds)

    def start(self) -> None:
        self.start_process("worker", ["worker", f"--inference-backend={self.backend}"])
        self.start_process("watch", ["watch", str(self.cam)])

    def start_process(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        """Start ``defectloop ARGS`` as ``name``, logging to ``NAME.log`` (appended: a restart keeps
        the earlier lines)."""
        with (self.root / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [DEFECTLOOP, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def write(self, name: str, data: bytes) -> None:
        path = self.cam / name
        with path.open("wb") as handle:
            handle.write(data)
        self.written[str(path)] = time.time()

    def predicted(self) -> int:
        with self.sessions() as session:
            return len(session.scalars(select(Prediction.id)).all())

    def wait_predicted(self, n: int, on_progress: Callable[[int], None]) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while (done := self.predicted()) < n:
            on_progress(done)
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{done}/{n} predicted after {DEADLINE_S}s:\n{self.log('worker')[-3000:]}")
            time.sleep(0.05)
        on_progress(n)

    def times(self, paths: set[str]) -> list[tuple[float, float, float]]:
        """(written, row committed, prediction committed) wall times of the files in ``paths``."""
        with self.sessions() as session:
            rows = session.execute(
                select(Image.path, Image.created_at, Prediction.created_at).join(
                    Prediction, Prediction.image_id == Image.id
                )
            ).all()
        return [
            (self.written[path], created.astimezone(UTC).timestamp(), predicted.astimezone(UTC).timestamp())
            for path, created, predicted in rows
            if path in paths
        ]

    def batch_sizes(self) -> list[int]:
        return [int(n) for n in re.findall(r"\(batch of (\d+)\)", self.log("worker"))]


# --- the runs -------------------------------------------------------------------------------------


def run_throughput(dep: Deployment, images: list[bytes], bare: BareForward, quick: bool) -> dict[str, Any]:
    bare_seconds = 1.0 if quick else 4.0
    before = bare.measure(bare_seconds, dep.backend)
    batches_before = len(dep.batch_sizes())
    with progress_bar() as bar:
        task = bar.add_task(f"{dep.broker}/{dep.backend}: burst", total=len(images), info="")
        start = time.time()
        for i, data in enumerate(images):
            dep.write(f"burst_{i:05d}.jpg", data)
        done_before = dep.predicted()
        dep.wait_predicted(
            done_before + len(images),
            lambda d: bar.update(
                task,
                completed=d - done_before,
                info=f"{(d - done_before) / max(time.time() - start, 1e-9):.1f} img/s",
            ),
        )
    paths = {p for p in dep.written if Path(p).name.startswith("burst_")}
    times = dep.times(paths)
    first_write = min(t[0] for t in times)
    last_commit = max(t[2] for t in times)
    after = bare.measure(bare_seconds, dep.backend)
    rate = len(times) / (last_commit - first_write)
    commits = sorted(t[2] for t in times)
    lo, hi = commits[len(commits) // 10], commits[(len(commits) * 9) // 10]
    steady = (len(commits) * 8 // 10) / (hi - lo) if hi > lo else None
    reference = {kind: (before[kind] + after[kind]) / 2 for kind in before}
    batches = dep.batch_sizes()[batches_before:]
    return {
        "images": len(times),
        "seconds": last_commit - first_write,
        "images_per_s": rate,
        "steady_images_per_s_10_90": steady,
        "bare_forward_images_per_s": {
            "before": before["model"],
            "after": after["model"],
            "mean": reference["model"],
        },
        "bare_predictor_images_per_s": {
            "before": before["predictor"],
            "after": after["predictor"],
            "mean": reference["predictor"],
        },
        "ratio": rate / reference["model"],
        "ratio_steady": None if steady is None else steady / reference["model"],
        "ratio_to_predictor": rate / reference["predictor"],
        "mean_batch": statistics.fmean(batches) if batches else None,
        "batches": len(batches),
    }


def run_latency(dep: Deployment, images: list[bytes], rate: float) -> dict[str, Any]:
    batches_before = len(dep.batch_sizes())
    done_before = dep.predicted()
    with progress_bar() as bar:
        task = bar.add_task(f"{dep.broker}/{dep.backend}: {rate:g} img/s", total=len(images), info="")
        start = time.monotonic()
        for i, data in enumerate(images):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            dep.write(f"steady_{i:05d}.jpg", data)
            bar.update(task, completed=i + 1, info=f"{dep.predicted() - done_before} predicted")
        dep.wait_predicted(done_before + len(images), lambda d: None)
    paths = {p for p in dep.written if Path(p).name.startswith("steady_")}
    times = dep.times(paths)
    total = [p - w for w, _, p in times]
    watcher = [c - w for w, c, _ in times]
    worker = [p - c for _, c, p in times]
    batches = dep.batch_sizes()[batches_before:]

    def summary(values: list[float]) -> dict[str, float]:
        return {"p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values)}

    return {
        "images": len(times),
        "rate_per_s": rate,
        "latency_s": summary(total),
        "watcher_file_to_row_s": summary(watcher),
        "worker_row_to_prediction_s": summary(worker),
        "mean_batch": statistics.fmean(batches) if batches else None,
        "batches": len(batches),
    }


def run_deployment(
    broker: str,
    broker_url: str,
    backend: str,
    root: Path,
    champions: list[Champion],
    sets: dict[str, list[bytes]],
    bare: BareForward,
    args: argparse.Namespace,
) -> dict[str, Any]:
    dep = Deployment(root, broker, broker_url, backend, champions, args.batch_timeout_ms, STABLE_S)
    dep.start()
    try:
        with progress_bar() as bar:
            task = bar.add_task(f"{broker}/{backend}: start + warm-up", total=len(sets["warmup"]), info="")
            for i, data in enumerate(sets["warmup"]):
                dep.write(f"warmup_{i:03d}.jpg", data)
            dep.wait_predicted(len(sets["warmup"]), lambda d: bar.update(task, completed=d))
        load_start = os.getloadavg()
        throughput = None if args.latency_only else run_throughput(dep, sets["burst"], bare, args.quick)
        latency = run_latency(dep, sets["steady"], args.rate)
        memory = status_mb(dep.processes["worker"].pid)
        backend_used = re.findall(r"predictor ready \(backend (\w+)", dep.log("worker"))
        return {
            "throughput": throughput,
            "latency": latency,
            "worker_memory_mb": memory,
            "worker_backends": backend_used,
            "load_average": {"before": list(load_start), "after": list(os.getloadavg())},
        }
    finally:
        dep.stop()


# --- report ---------------------------------------------------------------------------------------


def verdicts(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, run in runs.items():
        broker = key.split("/")[0]
        out[key] = {
            "ratio_met": None if run["throughput"] is None else run["throughput"]["ratio"] >= TARGET_RATIO,
            "p95_met": run["latency"]["latency_s"]["p95"] < TARGET_P95_S[broker],
            "rss_met": run["worker_memory_mb"]["VmRSS"] < TARGET_RSS_MB,
        }
    return out


def print_table(runs: dict[str, dict[str, Any]]) -> None:
    table = Table(title="pipeline: file written -> prediction committed")
    for column in (
        "broker/backend",
        "img/s",
        "bare img/s",
        "ratio",
        "vs predictor",
        "p50 s",
        "p95 s",
        "watcher p95",
        "worker p95",
        "RSS MB",
        "load",
    ):
        table.add_column(column, justify="left" if column == "broker/backend" else "right")
    for key, run in runs.items():
        t, lat = run["throughput"], run["latency"]
        table.add_row(
            key,
            "-" if t is None else f"{t['images_per_s']:.1f}",
            "-" if t is None else f"{t['bare_forward_images_per_s']['mean']:.1f}",
            "-" if t is None else f"{t['ratio']:.2f}",
            "-" if t is None else f"{t['ratio_to_predictor']:.2f}",
            f"{lat['latency_s']['p50']:.3f}",
            f"{lat['latency_s']['p95']:.3f}",
            f"{lat['watcher_file_to_row_s']['p95']:.3f}",
            f"{lat['worker_row_to_prediction_s']['p95']:.3f}",
            f"{run['worker_memory_mb']['VmRSS']:.0f}",
            "/".join(f"{v:.1f}" for v in run["load_average"]["after"]),
        )
    console.print(table)


def docs_rows(
    runs: dict[str, dict[str, Any]], machine: dict[str, Any], stable_s: float | None = 0.1
) -> list[tuple[str, str]]:
    """The rows of docs/benchmarks.md (only the latency row for a run without the throughput burst);
    ``stable_s`` is the run's DEFECTLOOP_INGEST_STABLE_SECONDS (None: the default)."""
    load = machine["load_average_at_start"]
    peak = max(
        max(run["load_average"]["after"][0], run["load_average"]["before"][0]) for run in runs.values()
    )
    shared = f" (shared machine: load avg {load[0]:.1f} at start, up to {peak:.1f})"
    models = (
        f"{CHAMPIONS[ModelTask.BINARY]} + {CHAMPIONS[ModelTask.MULTICLASS]} untrained, {SPEC.image_size} px"
    )
    tag = f"[strategy {STRATEGY}, {MC_PASSES} MC-dropout passes] "

    def met(ok: bool, text: str) -> str:
        return "met" if ok else f"NOT met: {text}"

    latency_only = any(run["throughput"] is None for run in runs.values())
    eager = [run["throughput"] for key, run in runs.items() if key.endswith("/eager")]
    mc_share = (
        0.0
        if latency_only
        else statistics.fmean(
            t["bare_predictor_images_per_s"]["mean"] / t["bare_forward_images_per_s"]["mean"]
            for t in (eager or [run["throughput"] for run in runs.values()])
        )
    )
    ratio_parts, latency_parts, memory_parts = [], [], []
    for key, run in runs.items():
        broker = key.split("/")[0]
        t, lat, mem = run["throughput"], run["latency"]["latency_s"], run["worker_memory_mb"]
        if t is not None:
            ratio, short = t["ratio"], TARGET_RATIO - t["ratio"]
            ratio_parts.append(
                f"{key} {t['images_per_s']:.1f} img/s / bare {t['bare_forward_images_per_s']['mean']:.1f} = "
                f"{ratio:.2f} ({met(ratio >= TARGET_RATIO, f'{short:.2f} short')}; "
                f"vs the bare predictor with {MC_PASSES} MC passes {t['ratio_to_predictor']:.2f})"
            )
        target = TARGET_P95_S[broker]
        over = lat["p95"] - target
        latency_parts.append(
            f"{key} p50 {lat['p50']:.2f} s, p95 {lat['p95']:.2f} s (target < {target:g} s: "
            f"{met(over < 0, f'{over:.2f} s over')})"
        )
        memory_parts.append(f"{key} {mem['VmRSS']:.0f} MB (peak {mem['VmHWM']:.0f})")
    rss_ok = all(run["worker_memory_mb"]["VmRSS"] < TARGET_RSS_MB for run in runs.values())
    rate = next(iter(runs.values()))["latency"]["rate_per_s"]
    if stable_s is None:
        watcher, worker = [], []
        for key, run in runs.items():
            part = run["latency"]["watcher_file_to_row_s"]
            watcher.append(f"{key} p50 {part['p50']:.2f} s, p95 {part['p95']:.2f} s")
            part = run["latency"]["worker_row_to_prediction_s"]
            worker.append(f"{key} p50 {part['p50']:.2f} s, p95 {part['p95']:.2f} s")
        latency_row = (
            f"{tag}pipeline latency at a steady {rate:g} img/s, file written -> prediction committed, "
            "default ingest settings (stability wait 1 s; a file closed complete is taken at once), "
            f"{models}{shared}",
            "; ".join(latency_parts)
            + ". The watcher's part (file closed -> row committed): "
            + "; ".join(watcher)
            + ": the files are taken on inotify's close-after-write once their bytes end as their format "
            "says, so the 1 s stability wait no longer adds to the latency. The worker's part (row committed "
            "-> prediction committed): "
            + "; ".join(worker)
            + " (a worker that cannot keep up with the rate makes the images queue: the rest of the latency)",
        )
    else:
        latency_row = (
            f"{tag}pipeline latency at a steady {rate:g} img/s, file written -> prediction committed, "
            f"ingest stable {stable_s} s, {models}{shared}",
            "; ".join(latency_parts)
            + f". The watcher's part is the stability wait ({stable_s} s here): with the default "
            "DEFECTLOOP_INGEST_STABLE_SECONDS=1 every latency was about 0.9 s longer and the targets were "
            "missed (before files closed complete were taken at once: see the default-settings row); the "
            "embedded p95 is met with little margin",
        )
    if latency_only:
        return [latency_row]
    return [
        (
            f"{tag}pipeline throughput (file -> prediction) / bare forward, batch {BATCH}, {models}, "
            f"watch + worker processes{shared}",
            "; ".join(ratio_parts)
            + f"; target >= {TARGET_RATIO}. "
            + (
                f"Strategy {STRATEGY}: the worker also runs {MC_PASSES} MC-dropout passes (improved_cnn's "
                f"layers after its spatial dropout, {MC_PASSES} times), model(x) does not: the predictor "
                f"runs at {mc_share:.0%} of model(x) (eager). "
                if MC_PASSES
                else f"Strategy {STRATEGY} (the default): no MC-dropout passes. "
            )
            + "The rest of the gap is the pipeline itself (the watcher's decoding and database writes on "
            "the same 2 cores, the ramp of the burst)",
        ),
        latency_row,
        (
            f"worker resident memory, both champions loaded ({models})",
            "; ".join(memory_parts) + f" (target < {TARGET_RSS_MB:.0f} MB: {'met' if rss_ok else 'NOT met'})",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few images, nothing written")
    parser.add_argument("--brokers", default="embedded,redis", help="comma-separated: embedded, redis")
    parser.add_argument("--backends", default="eager", help="comma-separated worker backends: eager, auto")
    parser.add_argument("--n", type=int, default=480, help="images in the throughput burst")
    parser.add_argument("--rate", type=float, default=10.0, help="images per second of the latency run")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of the latency run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the bare forward "
                        "(default: torch's default, as the worker uses)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / f"{NAME}.json")
    parser.add_argument("--docs-from", type=Path, help="only write the docs rows of this recorded JSON")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument(
        "--batch-timeout-ms", type=int, default=200, help="the worker's DEFECTLOOP_INFERENCE_BATCH_TIMEOUT_MS"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the deployments (logs, databases) in this new folder"
    )
    parser.add_argument(
        "--strategy",
        choices=["entropy", "bald"],
        default=DEFAULT_STRATEGY,
        help=f"the workers' DEFECTLOOP_STRATEGY: bald makes them run {MC_PASSES_FOR_BALD} MC-dropout passes",
    )
    parser.add_argument(
        "--stable-seconds",
        type=float,
        default=None,
        help="the watcher's DEFECTLOOP_INGEST_STABLE_SECONDS (default: the setting's default)",
    )
    parser.add_argument(
        "--latency-only", action="store_true", help="no throughput burst: the latency run and its row only"
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    global MC_PASSES, STRATEGY, STABLE_S
    STRATEGY = args.strategy
    MC_PASSES = MC_PASSES_FOR_BALD if strategy_spec(STRATEGY).needs_mc_passes else 0
    STABLE_S = args.stable_seconds
    if args.latency_only and args.out == RESULTS_DIR / f"{NAME}.json":
        args.out = RESULTS_DIR / f"{NAME}_latency.json"
    setup_logging(args.verbose)
    if args.docs_from is not None:  # the rows again from a recorded JSON, without running anything
        recorded = json.loads(args.docs_from.read_text())
        stable = recorded["config"].get("ingest_stable_seconds", 0.1)
        rows = docs_rows(recorded["runs"], recorded["machine"], None if stable == "default" else stable)
        write_recorded_docs_rows(rows, "benchmarks/bench_pipeline.py", args.docs_from)
        return
    if args.quick:
        args.n, args.seconds = 32, 3.0
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    machine = machine_info(threads)
    n_steady = max(1, round(args.rate * args.seconds))

    with contextlib.ExitStack() as keep:
        work = work_folder(keep, args.workdir, prefix="defectloop-bench-pipeline-")
        champions = make_champions(work)
        runs: dict[str, dict[str, Any]] = {}
        seed = 0
        bare = BareForward(champions, render_jpegs(BATCH, seed=999), work)
        for backend in backends:
            for broker in brokers:
                seed += 1
                sets = {
                    "warmup": render_jpegs(4 if args.quick else BATCH, seed=100 + seed),
                    "burst": render_jpegs(0 if args.latency_only else args.n, seed=200 + seed),
                    "steady": render_jpegs(n_steady, seed=300 + seed),
                }
                root = work / f"{broker}-{backend}"
                root.mkdir()
                with contextlib.ExitStack() as stack:
                    if broker == "redis":
                        url = stack.enter_context(redis_server(root))
                    elif broker == "embedded":
                        url = f"sqla+sqlite:///{root / 'broker.db'}"
                    else:
                        parser.error(f"unknown broker {broker!r}")
                    runs[f"{broker}/{backend}"] = run_deployment(
                        broker, url, backend, root, champions, sets, bare, args
                    )
    machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print_table(runs)
    report = {
        "benchmark": NAME,
        "command": command_line(),
        "machine": machine,
        "config": {
            "champions": {str(task): arch for task, arch in CHAMPIONS.items()},
            "input": SPEC.to_dict(),
            "images": f"synthetic garment photos, {SPEC.image_size} px JPEG q90",
            "inference_batch_size": BATCH,
            "inference_batch_timeout_ms": args.batch_timeout_ms,
            "strategy": STRATEGY,
            "mc_dropout_passes": MC_PASSES,
            "ingest_stable_seconds": "default" if STABLE_S is None else STABLE_S,
            "burst_images": args.n,
            "steady_rate_per_s": args.rate,
            "steady_images": n_steady,
            "redis": "a redis-server started by the benchmark on a free port, nothing persisted",
            "pool": "solo (one worker process)",
        },
        "bare_forward_images_per_s": bare.measurements,
        "runs": runs,
        "verdicts": verdicts(runs),
    }
    if args.quick:
        console.print("[yellow]--quick: nothing written[/yellow]")
        return
    write_json(args.out, report)
    console.print(f"wrote {relative(args.out)}")
    if not args.no_docs:
        rows = docs_rows(runs, machine, STABLE_S)
        for benchmark, result in rows:
            write_docs_row(benchmark, result, "benchmarks/bench_pipeline.py")
        console.print(f"docs/benchmarks.md: {len(rows)} row(s) written")


if __name__ == "__main__":
    main()
