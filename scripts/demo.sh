#!/usr/bin/env bash
# The main job on the embedded default (SQLite + a server-less broker under ./var), from a fresh
# machine. For now: migrate the database, generate a synthetic camera batch, show status and
# which services are reachable. Later issues grow this into `defectloop demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export DEFECTLOOP_DATA_DIR=${DEFECTLOOP_DATA_DIR:-var}
dl=.venv/bin/defectloop

$dl --help
$dl db upgrade
out="$DEFECTLOOP_DATA_DIR/synth-demo"
rm -rf "$out"
$dl synth "$out" --n 60 --seed 0
$dl status
$dl doctor || echo "(doctor: a required service is missing, see above)"
