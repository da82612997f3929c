#!/usr/bin/env bash
# Set up (idempotent), then run the embedded local stack: tracker, bridge, a
# demo origin registry with a generated image, and a real dockerd pulling it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/layerswarm demo "$@"
