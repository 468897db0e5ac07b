"""Camera-folder integrity benchmark: recovery after a SIGKILLed worker, worker memory on the largest photo.

Real processes with default settings (embedded broker, ``defectloop worker`` + ``beat`` (+ ``watch`` for
the memory part) with their defaults: sweep every 60 s, stuck after 300 s, backend auto), both champions
registered as in bench_pipeline.py (binary ``resnet18`` + multiclass ``improved_cnn``, untrained, 128 px
RGB), a SQLite registry of its own.

Figures:

- recovery: a worker and beat (no watcher: ``--n`` synthetic garment photos, 128 px JPEG, are recorded
  as the watcher records them and announced as it does, 64 ids per message); once the worker has
  committed its first batch of the burst (and holds the rest of its message), it is SIGKILLed and a new
  worker is started at once (as a supervisor restarts a child); the time from the kill to the last
  prediction committed, the time the new worker took to be ready, and the counts: every image predicted
  exactly once (nothing lost, nothing doubled);
- memory: the worker's peak resident memory (VmHWM) after classifying one photo of the largest size the
  watcher accepts (``--side`` x ``--side`` PNG, 7,999 x 7,999 = 63.98 Mpx by default, under the 64 Mpx
  limit), RGB and RGBA, each in a fresh worker, beside its peak after a warm-up on small photos; the
  watcher's peak too.

Writes benchmarks/results/integrity.json and two rows of docs/benchmarks.md. The recorded run:
``nice -n 19 .venv/bin/python benchmarks/bench_integrity.py`` (about 3 minutes on the shared 2-core
machine; the memory part writes two ~60-190 MB PNGs in a temporary folder); ``--quick`` for a smoke run
(nothing written); ``--only recovery|memory``; ``--docs-from JSON`` writes the rows of a recorded run again.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import signal
import time
from collections import Counter
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
from bench_pipeline import Deployment, make_champions, redis_server, render_jpegs, status_mb, work_folder
from common import (
    RESULTS_DIR,
    command_line,
    console,
    machine_info,
    relative,
    setup_logging,
    write_docs_row,
    write_json,
    write_recorded_docs_rows,
)
from PIL import Image as PILImage
from sqlalchemy import func, select

from db import repositories as repo
from db.schema import Image, ImageStatus, Prediction, SourceKind
from defectloop.settings import DEFAULT_CLASSES as CLASSES
from workers.celery_app import WorkerConfig, create_app, publish_classification, publish_in_batches

NAME = "integrity"
PUBLISH_BATCH = 64  # the watcher's publish_batch_size: ids per message
TARGET_RECOVERY_S = 10.0
TARGET_PEAK_MB = 1536.0
DEADLINE_S = 900.0


def wait(
    what: str, check: Any, dep: Deployment, deadline_s: float = DEADLINE_S, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + deadline_s
    while not check():
        for name, process in dep.processes.items():
            if process.poll() is not None and process.returncode != -signal.SIGKILL:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{dep.log(name)[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}:\n{dep.log('worker')[-3000:]}")
        time.sleep(interval)


def burst_counts(dep: Deployment, prefix: str) -> dict[str, Any]:
    """Rows of the files named ``prefix*``: by status, predictions per image."""
    with dep.sessions() as session:
        rows = session.execute(
            select(Image.id, Image.status).where(Image.original_name.like(f"{prefix}%"))
        ).all()
        ids = [image_id for image_id, _ in rows]
        per_image = Counter(
            session.scalars(select(Prediction.image_id).where(Prediction.image_id.in_(ids))).all()
        )
        last = session.scalar(select(func.max(Prediction.created_at)).where(Prediction.image_id.in_(ids)))
    return {
        "rows": len(rows),
        "by_status": dict(Counter(str(status) for _, status in rows)),
        "predicted_once": sum(1 for n in per_image.values() if n == 1),
        "predicted_twice_or_more": sum(1 for n in per_image.values() if n > 1),
        "without_prediction": len(ids) - len(per_image),
        "last_prediction_at": None if last is None else last.astimezone(UTC).timestamp(),
    }


def record_images(dep: Deployment, prefix: str, images: list[bytes]) -> list[int]:
    """Files in the camera folder and their rows (status new), as the watcher records them."""
    ids = []
    with dep.sessions() as session:
        source = repo.get_or_create_source(session=session, name="camera:bench", kind=SourceKind.CAMERA)
        for i, data in enumerate(images):
            path = dep.cam / f"{prefix}{i:05d}.jpg"
            path.write_bytes(data)
            with PILImage.open(path) as image:
                width, height = image.size
            row, _ = repo.add_image(
                session=session,
                sha256=hashlib.sha256(data).hexdigest(),
                path=str(path),
                source_id=source.id,
                width=width,
                height=height,
                mode="RGB",
                size_bytes=len(data),
                original_name=path.name,
            )
            ids.append(row.id)
        session.commit()
    return ids


def publish_burst(app: Any, dep: Deployment, prefix: str, n: int, *, seed: int, what: str) -> None:
    """Record ``n`` photos named ``prefix*``, publish them as the watcher does (``PUBLISH_BATCH`` ids a
    message) and wait until a worker has committed the first batch of them."""
    publish_in_batches(app, record_images(dep, prefix, render_jpegs(n, seed=seed)), batch_size=PUBLISH_BATCH)

    def first_batch_done() -> bool:
        counts = burst_counts(dep, prefix)
        return bool(counts["predicted_once"] > 0 or counts["predicted_twice_or_more"] > 0)

    wait(f"the first batch of {what}", first_batch_done, dep, interval=0.01)


def run_recovery(work: Path, broker: str, url: str, champions: Any, n: int, backend: str) -> dict[str, Any]:
    """A worker and beat (the watcher's part is played here: rows recorded, then announced in messages of
    64 ids, the watcher's publish batch), the worker killed once it committed its first batch of the
    burst and holds the rest of its message, a new worker started at once."""
    dep = Deployment(work, broker, url, backend, champions, batch_timeout_ms=200)
    app = create_app(
        WorkerConfig(
            broker_url=url,
            database_url=f"sqlite:///{work / 'defectloop.db'}",
            artifacts_dir=work,
            classes=CLASSES,
        )
    )
    dep.start_process("worker", ["worker", f"--inference-backend={backend}"])
    dep.start_process("beat", ["beat"])  # the defaults: sweep every 60 s, stuck after 300 s
    try:
        warmup = record_images(dep, "warmup_", render_jpegs(16, seed=11))
        publish_classification(app, warmup)
        wait("the warm-up", lambda: dep.predicted() >= len(warmup), dep)
        publish_burst(app, dep, "burst_", n, seed=12, what="the burst")
        worker = dep.processes["worker"]
        worker.send_signal(signal.SIGKILL)
        killed_at = time.time()
        worker.wait(timeout=30)
        at_kill = burst_counts(dep, "burst_")
        log_offset = len(dep.log("worker"))
        restarted = dep.start_process("worker", ["worker", f"--inference-backend={backend}"])
        ready_at = None
        deadline = time.monotonic() + DEADLINE_S
        while True:
            counts = burst_counts(dep, "burst_")
            if ready_at is None and " ready." in dep.log("worker")[log_offset:]:
                ready_at = time.time()
            if counts["rows"] == n and counts["without_prediction"] == 0:
                break
            if restarted.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"not recovered: {counts}\n{dep.log('worker')[-3000:]}")
            time.sleep(0.05)
        final = burst_counts(dep, "burst_")
        log = dep.log("worker")[log_offset:]
        models_loaded = re.findall(r"\[[^\]]*?(\d\d:\d\d:\d\d)\] INFO +improved_cnn: predictor ready", log)

        # The control, side by side: the same burst and the same moment, no kill. What the kill costs is
        # the difference (a restart: the new worker's start and its loading of the champions).
        publish_burst(app, dep, "control_", n, seed=13, what="the control burst")
        triggered_at = time.time()
        wait("the control burst", lambda: burst_counts(dep, "control_")["without_prediction"] == 0, dep)
        control_counts = burst_counts(dep, "control_")
        recovery_s = final["last_prediction_at"] - killed_at
        control_s = control_counts["last_prediction_at"] - triggered_at
        return {
            "broker": broker,
            "images": n,
            "at_kill": {k: v for k, v in at_kill.items() if k != "last_prediction_at"},
            "recovery_s": recovery_s,
            "new_worker_ready_s": None if ready_at is None else ready_at - killed_at,
            "champions_loaded_at": models_loaded[-1] if models_loaded else None,
            "control_without_kill_s": control_s,
            "cost_of_the_kill_s": recovery_s - control_s,
            "final": {k: v for k, v in final.items() if k != "last_prediction_at"},
            "control_final": {k: v for k, v in control_counts.items() if k != "last_prediction_at"},
            "republished_log_lines": [line.strip() for line in log.splitlines() if "orphaned" in line][-3:],
            "load_average_after": list(os.getloadavg()),
        }
    finally:
        app.close()
        dep.stop()


def huge_png(side: int, mode: str) -> bytes:
    """A ``side`` x ``side`` PNG in ``mode``: a woven-looking texture with noise (compresses like a photo)."""
    rng = np.random.default_rng(side)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    base = 128 + 40 * np.sin(x / 3.0) * np.cos(y / 4.0)
    channels = 4 if mode == "RGBA" else 3
    pixels = np.empty((side, side, channels), dtype=np.uint8)
    for c in range(3):
        pixels[..., c] = np.clip(base + rng.normal(0, 12, size=(side, side)) + 10 * c, 0, 255).astype(
            np.uint8
        )
    if channels == 4:
        pixels[..., 3] = 255 - (np.arange(side, dtype=np.uint32)[None, :] % 64).astype(np.uint8)
    del x, y, base
    buffer = io.BytesIO()
    PILImage.fromarray(pixels, mode=mode).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def run_memory(work: Path, champions: Any, side: int, backend: str) -> dict[str, Any]:
    url = f"sqla+sqlite:///{work / 'broker.db'}"
    dep = Deployment(work, "embedded", url, backend, champions, batch_timeout_ms=200)
    dep.start()
    out: dict[str, Any] = {"side": side, "megapixels": side * side / 1e6, "photos": {}}
    try:
        done = 0
        for round_, mode in enumerate(("RGB", "RGBA")):
            if round_:  # a fresh worker: VmHWM is the peak of its whole life
                worker = dep.processes["worker"]
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=120)
                dep.start_process("worker", ["worker", f"--inference-backend={backend}"])
            warmup = render_jpegs(16, seed=21 + round_)
            for i, data in enumerate(warmup):
                dep.write(f"warmup{round_}_{i:03d}.jpg", data)
            done += len(warmup)
            wait("the warm-up", lambda n=done: dep.predicted() >= n, dep)
            before = status_mb(dep.processes["worker"].pid)
            data = huge_png(side, mode)
            started = time.time()
            dep.write(f"huge_{mode}.png", data)
            del data
            done += 1
            wait(f"the {mode} photo", lambda n=done: dep.predicted() >= n, dep)
            after = status_mb(dep.processes["worker"].pid)
            with dep.sessions() as session:
                status = session.scalar(select(Image.status).where(Image.original_name == f"huge_{mode}.png"))
            out["photos"][mode] = {
                "file_mb": (dep.cam / f"huge_{mode}.png").stat().st_size / 1e6,
                "status": str(status),
                "worker_after_warmup_mb": before,
                "worker_after_photo_mb": after,
                "worker_peak_mb": after["VmHWM"],
                "photo_added_to_peak_mb": after["VmHWM"] - before["VmHWM"],
                "file_to_prediction_s": time.time() - started,
            }
            assert status is ImageStatus.PREDICTED, status
        out["watcher_peak_mb"] = status_mb(dep.processes["watch"].pid)["VmHWM"]
        return out
    finally:
        dep.stop()


def docs_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    machine = report["machine"]
    load = machine["load_average_at_start"]
    shared = f" (shared machine: load avg {load[0]:.1f} at start)"
    if "memory" in report:
        memory = report["memory"]
        parts = []
        for mode, photo in memory["photos"].items():
            warm = photo["worker_after_warmup_mb"]["VmHWM"]
            parts.append(
                f"{mode} PNG: worker peak {photo['worker_peak_mb']:.0f} MB (after the warm-up {warm:.0f} MB, "
                f"+{photo['photo_added_to_peak_mb']:.0f} MB; {photo['status']})"
            )
        worst = max(photo["worker_peak_mb"] for photo in memory["photos"].values())
        verdict = "met" if worst < TARGET_PEAK_MB else "NOT met"
        side = memory["side"]
        rows.append(
            (
                f"worker peak resident memory on the largest accepted photo ({side} x {side} = "
                f"{memory['megapixels']:.2f} Mpx PNG), default settings, resnet18 + improved_cnn untrained "
                f"128 px, backend {report['config']['backend']}{shared}",
                "; ".join(parts)
                + f"; watcher peak {memory['watcher_peak_mb']:.0f} MB (target worker < {TARGET_PEAK_MB:.0f} "
                f"MB: {verdict}); each photo predicted once, nothing lost",
            )
        )
    if "recovery" in report:
        parts = []
        for run in report["recovery"]:
            final, at_kill = run["final"], run["at_kill"]
            verdict = "met" if run["recovery_s"] < TARGET_RECOVERY_S else "NOT met"
            ready = run["new_worker_ready_s"]
            control = ""
            if run.get("control_without_kill_s") is not None:
                without, cost = run["control_without_kill_s"], run["cost_of_the_kill_s"]
                control = (
                    f"; the same burst from the same moment without a kill: {without:.1f} s, so the kill "
                    f"cost {cost:.1f} s (the new worker's start and its loading of the champions)"
                )
            statuses = at_kill["by_status"]
            parts.append(
                f"{run['broker']}: {run['recovery_s']:.1f} s from the kill to the last prediction "
                f"(target < {TARGET_RECOVERY_S:g} s: {verdict}; the new worker ready and the orphaned images "
                f"published again after {ready or float('nan'):.1f} s{control}); at the kill "
                f"{at_kill['predicted_once']} of {run['images']} predicted ({statuses}); at the end "
                f"{final['predicted_once']} predicted once, {final['predicted_twice_or_more']} twice, "
                f"{final['without_prediction']} lost"
            )
        n = report["recovery"][0]["images"]
        rows.append(
            (
                f"recovery after a SIGKILLed worker mid-burst ({n} photos at once, a new worker started at "
                f"once, as a supervisor does), default settings (sweep 60 s, stuck after 300 s), resnet18 + "
                f"improved_cnn untrained 128 px, backend {report['config']['backend']}{shared}",
                "; ".join(parts),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, nothing written")
    parser.add_argument("--only", choices=["recovery", "memory"], help="run one part")
    parser.add_argument("--brokers", default="embedded", help="recovery: comma-separated embedded, redis")
    parser.add_argument("--n", type=int, default=150, help="recovery: photos in the burst")
    parser.add_argument("--side", type=int, default=7999, help="memory: side of the square PNG")
    parser.add_argument("--backend", default="auto", help="the worker's --inference-backend")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / f"{NAME}.json")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument(
        "--workdir", type=Path, help="keep the deployments (logs, databases) in this new folder"
    )
    parser.add_argument("--docs-from", type=Path, help="only write the docs rows of this recorded JSON")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    setup_logging(args.verbose)
    if args.docs_from is not None:
        rows = docs_rows(json.loads(args.docs_from.read_text()))
        write_recorded_docs_rows(rows, "benchmarks/bench_integrity.py", args.docs_from)
        return
    if args.quick:
        args.n, args.side = 40, 2000
    machine = machine_info(1)
    report: dict[str, Any] = {
        "benchmark": NAME,
        "command": command_line(),
        "machine": machine,
        "config": {
            "backend": args.backend,
            "settings": "defaults (DEFECTLOOP_INGEST_STABLE_SECONDS 1, beat sweep 60 s, stuck after 300 s)",
            "champions": "resnet18 (binary) + improved_cnn (multiclass), untrained, 128 px RGB",
        },
    }
    with contextlib.ExitStack() as keep:
        work = work_folder(keep, args.workdir, prefix="defectloop-bench-integrity-")
        champions = make_champions(work)
        if args.only in (None, "recovery"):
            report["recovery"] = []
            for broker in [b.strip() for b in args.brokers.split(",") if b.strip()]:
                root = work / f"recovery-{broker}"
                root.mkdir()
                with contextlib.ExitStack() as stack:
                    url = (
                        stack.enter_context(redis_server(root))
                        if broker == "redis"
                        else f"sqla+sqlite:///{root / 'broker.db'}"
                    )
                    run = run_recovery(root, broker, url, champions, args.n, args.backend)
                console.print(run)
                report["recovery"].append(run)
        if args.only in (None, "memory"):
            root = work / "memory"
            root.mkdir()
            report["memory"] = run_memory(root, champions, args.side, args.backend)
            console.print(report["memory"])
    machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.quick:
        console.print("[yellow]--quick: nothing written[/yellow]")
        for benchmark, result in docs_rows(report):
            console.print(f"{benchmark}: {result}")
        return
    if args.only is not None and args.out.exists():
        # One part re-measured: the other part's recorded result stays in the file, said to be older.
        kept = {k: v for k, v in json.loads(args.out.read_text()).items() if k in ("recovery", "memory")}
        kept.pop(args.only, None)
        report = {**report, **kept, f"{args.only}_only": True}
    write_json(args.out, report)
    console.print(f"wrote {relative(args.out)}")
    if not args.no_docs:
        for benchmark, result in docs_rows(report):
            write_docs_row(benchmark, result, "benchmarks/bench_integrity.py")
        console.print("docs/benchmarks.md: rows written")


if __name__ == "__main__":
    main()
