#!/usr/bin/env bash
# Idempotent set-up on Debian 12 as root: apt packages for the real parts the
# tests and demo use, then a virtualenv in .venv with layerswarm installed.
# No daemon is started or enabled: the tests and the demo start their own
# dockerd, containerd, docker-registry, redis and redis-sentinel on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(docker.io containerd runc docker-registry skopeo redis-server redis-sentinel aria2 transmission-cli
              mktorrent opentracker wrk hyperfine iproute2 procps python3-venv python3-dev gcc
              ca-certificates tcpdump)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: missing apt packages (${missing[*]}); run as root to install them" >&2
        exit 1
    fi
    echo "setup: installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Do not let package scripts start system services (docker, containerd,
    # redis, opentracker): we run our own instances, and without systemd an
    # init script failing to start would fail the whole install.
    policy_rc=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy_rc=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$policy_rc"
        chmod 755 "$policy_rc"
        trap 'rm -f "$policy_rc"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ -n "$policy_rc" ]; then rm -f "$policy_rc"; trap - EXIT; fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true  # nice to have, not needed
# Quiet unless it fails: setuptools prints deprecation banners while building the editable install.
if ! out=$(.venv/bin/python -m pip install -q -e '.[test]' 2>&1); then
    echo "$out" >&2
    echo "setup: pip install failed" >&2
    exit 1
fi
echo "setup: ready ($(.venv/bin/python --version), layerswarm at .venv/bin/layerswarm)"
