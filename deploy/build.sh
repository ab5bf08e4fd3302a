#!/usr/bin/env bash
# Builds the images of the compose stack with no registry: the kernel image (and its local
# Debian base) via kernel_image/build.sh, then the gateway and Redis images FROM that base.
# Python wheels for the gateway are downloaded by the HOST (pip inside a build cannot verify
# TLS here) into deploy/.wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

step "kernel image (and base)"
bash kernel_image/build.sh
BASE="${GATEWAY_BASE:-}"
if [ -z "$BASE" ]; then
    if docker image inspect python:3.11-slim >/dev/null 2>&1; then BASE=python:3.11-slim
    else BASE="${KERNEL_LOCAL_BASE:-exec-gateway-base:bookworm}"; fi
fi

step "gateway wheels (host pip, cp311 manylinux)"
mkdir -p deploy/.wheels
rm -f deploy/.wheels/exec_gateway-*.whl
rm -rf build  # setuptools never removes a stale module from build/lib: the wheel would keep it
python3 -m pip wheel -q --disable-pip-version-check --no-deps -w deploy/.wheels .
wheel=$(ls deploy/.wheels/exec_gateway-*.whl)
# async-timeout by name: redis needs it below python 3.11.3 (Debian bookworm has 3.11.2), and
# pip download does not evaluate python_full_version markers for the target interpreter
python3 -m pip download -q --disable-pip-version-check --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any \
    -d deploy/.wheels "$wheel[docker,redis]" "async-timeout>=4.0.3"

step "docker build exec-gateway:latest (FROM $BASE)"
docker build -q --network none --build-arg BASE="$BASE" -f deploy/gateway.Dockerfile \
    -t exec-gateway:latest .
step "docker build exec-gateway-redis:latest"
docker build -q --build-arg BASE="${KERNEL_LOCAL_BASE:-exec-gateway-base:bookworm}" \
    -f deploy/redis.Dockerfile -t exec-gateway-redis:latest deploy
echo "built: exec-gateway:latest exec-gateway-redis:latest exec-gateway-kernel:latest"
