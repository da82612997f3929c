#!/usr/bin/env bash
# Set up (idempotent), then run the whole test suite, slow end-to-end tests included.
# Pass pytest arguments to narrow it, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest --durations=15 "$@"
