#!/usr/bin/env bash
# The main job on the embedded default (SQLite + a server-less broker under ./var), from a fresh
# machine: migrate the database, make a labelled batch of synthetic garment photos and import it, then
# one champion/challenger round (frozen evaluation sets, the four architectures trained on the labels
# outside them, compared on the same images) and the registry it leaves. `defectloop demo` (the whole
# loop with a simulated annotator and an HTML report) is planned.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export DEFECTLOOP_DATA_DIR=${DEFECTLOOP_DATA_DIR:-var}
# Small enough for a laptop CPU in a few minutes; set them for the real thing (128 px, 15 epochs).
export DEFECTLOOP_IMAGE_SIZE=${DEFECTLOOP_IMAGE_SIZE:-64}
export DEFECTLOOP_TRAIN_EPOCHS=${DEFECTLOOP_TRAIN_EPOCHS:-3}
export COLUMNS=${COLUMNS:-150}  # the registry's tables are wide; a log file is no terminal
dl=.venv/bin/defectloop

$dl --help
$dl db upgrade
out="$DEFECTLOOP_DATA_DIR/synth-demo"
rm -rf "$out"
$dl synth "$out" --n 240 --seed 0 --size 64
$dl import "$out"
$dl retrain --actor demo
$dl versions
$dl status
$dl doctor || echo "(doctor: a required service is missing, see above)"
