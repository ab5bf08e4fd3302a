#!/usr/bin/env bash
# Installs or builds what the test suite needs that pip cannot provide: redis-server, a headless
# Chromium with its driver, the kernel image and the local kernels' environment. Idempotent
# and quick when all is present.
# In CI (CI=true) anything that cannot be had is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

apt_install() {  # apt_install COMMAND PACKAGE...
    local cmd=$1; shift
    if command -v "$cmd" >/dev/null 2>&1; then return 0; fi
    echo "test-deps: installing $* (apt-get)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

apt_install redis-server redis-server
# an S3-compatible server for the snapshot store's tests (tests/test_snapshots.py), built once
# into ~/.cargo/bin (about two minutes)
export PATH="$PATH:$HOME/.cargo/bin"
if ! command -v s3s-fs >/dev/null 2>&1; then
    if command -v cargo >/dev/null 2>&1; then
        echo "test-deps: building s3s-fs (cargo install)"
        cargo install s3s-fs@0.14.1 --features binary --locked
    elif [ "${CI:-}" = "true" ]; then
        echo "test-deps: s3s-fs is missing and cargo is not installed; CI needs it" >&2
        exit 1
    else
        echo "test-deps: no cargo: the S3 snapshot tests will be skipped (they fail in CI)"
    fi
fi
if [ -x scripts/install-browser.sh ] || [ -f scripts/install-browser.sh ]; then
    bash scripts/install-browser.sh
fi
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    bash deploy/build.sh  # the kernel image, and the gateway and redis images of the compose stack
elif [ "${CI:-}" = "true" ]; then
    echo "test-deps: the Docker engine is not reachable; CI needs it" >&2
    exit 1
else
    echo "test-deps: no Docker engine: the docker-launcher tests will be skipped (they fail in CI)"
fi
# the local kernels' environment (`make run` uses it; tests/test_kernel_env.py checks it)
make -s kernel-env
echo "test-deps: ready"
