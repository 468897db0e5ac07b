#!/usr/bin/env bash
# The main job on the embedded default (SQLite + a server-less broker under ./var/demo), from a fresh
# machine: `defectloop demo` runs the whole active-learning loop through the real processes (watcher,
# workers, beat) against a random control arm, and writes var/demo/report.html. Extra arguments go to
# `defectloop demo` (e.g. --fresh, --rounds 8, --dataset ../shared/datasets/aitex-tiles --class-map
# defect=defective); run again, it resumes an unfinished run.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export DEFECTLOOP_DATA_DIR=${DEFECTLOOP_DATA_DIR:-var/demo}
.venv/bin/defectloop db upgrade
exec .venv/bin/defectloop demo "$@"
