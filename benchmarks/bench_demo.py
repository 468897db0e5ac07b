"""The main job's duration and outcome: `defectloop demo` at its defaults, as `scripts/demo.sh` runs it.

Runs ``defectloop demo --fresh`` (a real process, with its real `up` child) in an empty data directory,
then reads the run's rounds from its database: the total wall time, the seconds of each stage summed
over the rounds (the active arm's loop stages; the random arm's in-process training and scoring apart),
both arms' frozen-set macro-F1, defect recall and defects found per round, and the verdict at equal
labels. Writes ``benchmarks/results/demo.json`` and the ``demo`` row of ``docs/benchmarks.md``, with the
machine and its load average (the machine may be shared: the figure is then pessimistic).

Run (from the repository root): ``.venv/bin/python benchmarks/bench_demo.py`` (about 5-10 min on 2
cores); extra arguments go to ``defectloop demo`` (e.g. ``-- --rounds 3``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import RESULTS_DIR, command_line, machine_info, relative, write_docs_row, write_json

from db import repositories as repo
from db.session import create_engine_for, make_session_factory, session_scope

DEFECTLOOP = str(Path(sys.executable).parent / "defectloop")
STAGES = ("ingest", "predict", "rank", "label", "train", "compare", "rescore")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "demo.json")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a new temporary folder")
    parser.add_argument("demo_args", nargs="*", help="passed to `defectloop demo`")
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="defectloop-bench-demo-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTLOOP_")}
    env["DEFECTLOOP_DATA_DIR"] = str(data_dir)
    machine = machine_info(threads=os.cpu_count() or 1)
    started = time.perf_counter()
    result = subprocess.run(
        [DEFECTLOOP, "demo", "--fresh", f"--out={data_dir / 'report.html'}", *args.demo_args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    total_s = time.perf_counter() - started
    sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
    if result.returncode != 0:
        print(f"defectloop demo failed with {result.returncode}", file=sys.stderr)
        return 1
    try:
        load_end = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load_end = []

    sessions = make_session_factory(create_engine_for(f"sqlite:///{data_dir / 'defectloop.db'}"))
    with session_scope(sessions) as session:
        run = repo.latest_demo_run(session=session)
        assert run is not None
        rows = repo.list_demo_rounds(session=session, run_id=run.id)
        rounds: dict[str, list[dict[str, Any]]] = {"active": [], "random": []}
        stages = dict.fromkeys(STAGES, 0.0)
        random_stages = {"train": 0.0, "compare": 0.0}
        for row in rows:
            arm = row.arm.value
            rounds[arm].append(
                {
                    "round": row.round,
                    "labels": row.labels_used,
                    "defects_found": row.defects_found,
                    "macro_f1": row.metrics.get("macro_f1"),
                    "defect_recall": row.metrics.get("defect_recall"),
                    "multiclass_macro_f1": row.metrics.get("multiclass_macro_f1"),
                    "binary_version": row.binary_version,
                }
            )
            if arm == "active":
                for stage in STAGES:
                    stages[stage] += float(row.timings.get(stage, 0.0))
            elif row.round > 0:
                for stage in random_stages:
                    random_stages[stage] += float(row.timings.get(stage, 0.0))
        options = dict(run.settings.get("demo", {}))
        name = run.name
    verdict = next((line for line in result.stdout.splitlines() if line.startswith("verdict:")), "")
    active, random = rounds["active"][-1], rounds["random"][-1]
    data = {
        "benchmark": "demo",
        "description": "defectloop demo at its defaults: total time, time per stage summed over rounds, "
        "both arms",
        "command": command_line(),
        "machine": {**machine, "load_average_at_end": load_end},
        "run": name,
        "options": options,
        "total_s": round(total_s, 1),
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
        "random_arm_s": {k: round(v, 1) for k, v in random_stages.items()},
        "rounds": rounds,
        "final": {
            "labels": {"active": active["labels"], "random": random["labels"]},
            "macro_f1": {"active": active["macro_f1"], "random": random["macro_f1"]},
            "defects_found": {"active": active["defects_found"], "random": random["defects_found"]},
        },
        "verdict": verdict.removeprefix("verdict:").strip(),
        "data_dir": str(data_dir),
    }
    write_json(args.out, data)
    curve = " -> ".join(f"{r['macro_f1']:.2f}" for r in rounds["active"])
    random_curve = " -> ".join(f"{r['macro_f1']:.2f}" for r in rounds["random"])
    stage_text = ", ".join(f"{k} {v:.0f}" for k, v in stages.items())
    load = machine.get("load_average_at_start") or []
    write_docs_row(
        "demo: `defectloop demo` defaults (synthetic garments, improved_cnn 64 px, 5 rounds, random arm)",
        f"total {total_s / 60:.1f} min (target <= 10 min: {'met' if total_s <= 600 else 'NOT met'}; "
        f"load average {load[0] if load else '?'} at start, {load_end[0] if load_end else '?'} at end); "
        f"stages (s, summed over rounds): {stage_text}; random arm training "
        f"{random_stages['train']:.0f} s; "
        "champion "
        f"macro-F1 by round: active {curve}, random {random_curve} at {active['labels']} labels each; "
        f"defects found {active['defects_found']} vs {random['defects_found']}",
        "benchmarks/bench_demo.py",
    )
    print(f"wrote {relative(args.out)}: total {total_s:.0f} s; {data['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
