"""Webhook receiver latency: how fast `defectloop serve` answers Label Studio's annotation webhooks.

Label Studio sends a webhook inside the annotator's request, waits at most one second and never retries,
so the receiver must answer well within that (issue #5: within 100 ms). This starts the real
`defectloop serve` process on a fresh SQLite registry with pushed label tasks, on the embedded broker and
on Redis (its own database number), and sends authenticated ANNOTATION_CREATED webhooks: one client in
sequence, then 8 at once. The time measured is the HTTP round trip from a client on the same machine:
authentication, validation, the known-task lookup and publishing the event to the `labelling` queue.
No worker runs (recording is the worker's job, after the answer).

    python benchmarks/bench_webhook.py [--requests 400] [--quick]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from common import console, machine_info, progress_bar, relative, write_docs_row, write_json

from db import repositories as repo
from db.migrate import upgrade
from db.schema import SourceKind
from db.session import create_engine_for, make_session_factory
from labelling.names import IMAGE_ID_KEY, SECRET_HEADER

RESULT = Path(__file__).resolve().parent / "results" / "webhook.json"
DEFECTLOOP = str(Path(sys.executable).parent / "defectloop")
REDIS_URL = "redis://127.0.0.1:6379/11"
SECRET = "bench-webhook-secret-0123456789abcdef"  # noqa: S105  # a throw-away secret of this run
PROJECT_ID = 1
TASKS = 200
TARGET_MS = 100.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _registry(root: Path) -> str:
    url = f"sqlite:///{root / 'defectloop.db'}"
    upgrade(url)
    engine = create_engine_for(url)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        source = repo.get_or_create_source(session=session, name="cam", kind=SourceKind.CAMERA)
        for n in range(TASKS):
            image, _ = repo.add_image(
                session=session,
                sha256=f"{n:064x}",
                path=f"/cam/{n}.png",
                source_id=source.id,
                width=64,
                height=64,
                mode="L",
                size_bytes=100,
            )
            task, _ = repo.add_label_task(
                session=session,
                image_id=image.id,
                ls_project_id=PROJECT_ID,
                informativeness=0.5,
                strategy="entropy",
            )
            repo.mark_label_task_pushed(session=session, label_task_id=task.id, ls_task_id=10_000 + n)
    engine.dispose()
    return url


def _body(n: int) -> dict[str, Any]:
    task_id = 10_000 + n % TASKS
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {
            "id": 500_000 + n,
            "task": task_id,
            "project": PROJECT_ID,
            "result": [
                {"from_name": "defect", "to_name": "image", "type": "choices", "value": {"choices": ["hole"]}}
            ],
            "completed_by": {"id": 1, "email": "annotator@factory.example"},
            "was_cancelled": False,
            "created_at": "2026-11-25T12:00:00Z",
            "updated_at": "2026-11-25T12:00:00Z",
        },
        "task": {"id": task_id, "project": PROJECT_ID, "data": {IMAGE_ID_KEY: n % TASKS + 1}},
        "project": {"id": PROJECT_ID, "token": "not-logged"},
    }


def _percentiles(ms: list[float]) -> dict[str, float]:
    arr = np.asarray(ms)
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p95_ms": round(float(np.percentile(arr, 95)), 2),
        "p99_ms": round(float(np.percentile(arr, 99)), 2),
        "max_ms": round(float(arr.max()), 2),
    }


def _measure(broker: str, broker_url: str, n_requests: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as tmp:
        root = Path(tmp)
        database_url = _registry(root)
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTLOOP_")}
        env.update(
            DEFECTLOOP_DATA_DIR=str(root),
            DEFECTLOOP_DATABASE_URL=database_url,
            DEFECTLOOP_BROKER_URL=broker_url,
            DEFECTLOOP_LABEL_STUDIO_API_KEY="unused-by-the-receiver",
            DEFECTLOOP_WEBHOOK_SECRET=SECRET,
            DEFECTLOOP_HTTP_PORT=str(port),
            DEFECTLOOP_LOG_LEVEL="WARNING",
        )
        log = (root / "serve.log").open("wb")
        process = subprocess.Popen([DEFECTLOOP, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"defectloop serve did not start:\n{(root / 'serve.log').read_text()[-2000:]}"
                    )
                time.sleep(0.2)
            headers = {SECRET_HEADER: SECRET}
            with httpx.Client(timeout=5) as client:
                for n in range(20):  # warm-up: first publish opens the broker connection
                    client.post(f"{url}/webhooks/label-studio", json=_body(n), headers=headers)

                def send(n: int) -> float:
                    start = time.perf_counter()
                    answer = client.post(f"{url}/webhooks/label-studio", json=_body(n), headers=headers)
                    elapsed = (time.perf_counter() - start) * 1000
                    if answer.status_code != 200:
                        raise SystemExit(f"webhook answered {answer.status_code}: {answer.text}")
                    return elapsed

                sequential: list[float] = []
                with progress_bar() as bar:
                    job = bar.add_task(f"{broker}: sequential", total=n_requests, info="")
                    for n in range(n_requests):
                        sequential.append(send(20 + n))
                        bar.advance(job)
                with ThreadPoolExecutor(max_workers=8) as pool:
                    concurrent = list(pool.map(send, range(20 + n_requests, 20 + 2 * n_requests)))
        finally:
            process.terminate()
            process.wait(timeout=30)
            log.close()
    return {"sequential": _percentiles(sequential), "concurrent_8": _percentiles(concurrent)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400, help="webhooks per mode and broker")
    parser.add_argument("--quick", action="store_true", help="50 webhooks per mode: a smoke run")
    args = parser.parse_args()
    n = 50 if args.quick else args.requests
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        raise SystemExit(f"this benchmark needs Redis at {REDIS_URL}: {exc}") from exc
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-webhook-broker-") as broker_dir:
        results["embedded"] = _measure("embedded", f"sqla+sqlite:///{Path(broker_dir) / 'broker.db'}", n)
    client.flushdb()  # this benchmark's own database number
    results["redis"] = _measure("redis", REDIS_URL, n)
    client.flushdb()
    data = {
        "machine": machine_info(threads=1),
        "target_ms": TARGET_MS,
        "requests_per_mode": n,
        "results": results,
    }
    write_json(RESULT, data)
    parts = []
    for broker, modes in results.items():
        seq, con = modes["sequential"], modes["concurrent_8"]
        parts.append(
            f"{broker}: p50 {seq['p50_ms']:.1f} / p95 {seq['p95_ms']:.1f} ms sequential, "
            f"p95 {con['p95_ms']:.1f} ms with 8 at once"
        )
    worst = max(modes["sequential"]["p95_ms"] for modes in results.values())
    verdict = "met" if worst < TARGET_MS else "NOT met"
    summary = "; ".join(parts) + f" (target p95 < {TARGET_MS:.0f} ms sequential: {verdict})"
    console.print(summary)
    if not args.quick:
        write_docs_row(
            f"webhook receiver: `defectloop serve` answering ANNOTATION_CREATED, {n} requests per mode",
            summary,
            relative(Path(__file__)),
        )
        console.print(f"wrote {relative(RESULT)} and a row of docs/benchmarks.md")


if __name__ == "__main__":
    main()
