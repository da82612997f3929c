#!/usr/bin/env bash
# Idempotent set-up on Debian as root: apt packages for the real parts the
# tests and demo use, then a virtualenv in .venv with layerswarm installed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(docker.io containerd docker-registry skopeo redis-server aria2 transmission-cli
              mktorrent opentracker wrk hyperfine iproute2 python3-venv python3-dev gcc ca-certificates)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup: ready ($(.venv/bin/python --version), layerswarm at .venv/bin/layerswarm)"
