#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, services, quality gates, then pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k settings`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
bash scripts/services.sh
bash scripts/browser.sh

echo "== ruff (lint and format) =="
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy =="
.venv/bin/mypy
echo "== import-linter (dependency direction) =="
.venv/bin/lint-imports
echo "== Label Studio (own venv + migrated template database; once, outside pytest's timeouts) =="
.venv/bin/python -m labelling.devserver ensure
echo "== pytest =="
.venv/bin/pytest "$@"
