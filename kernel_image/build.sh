#!/usr/bin/env bash
# Build the exec-gateway kernel image.
#
#   kernel_image/build.sh            # -> exec-gateway-kernel:latest
#   kernel_image/build.sh --no-cache # extra arguments go to `docker build`
#
# Environment:
#   KERNEL_IMAGE       tag to build                 (default exec-gateway-kernel:latest)
#   KERNEL_BASE        base image to build FROM     (default: python:3.11-slim if it is
#                      present locally, else a local Debian bookworm base built here)
#   KERNEL_LOCAL_BASE  tag of that local base       (default exec-gateway-base:bookworm)
#   KERNEL_CACHE_TAG   tag kept on the venv build stage, the cache of the slow
#                      step                         (default exec-gateway-kernel-build:venv)
#   KERNEL_APT_SOURCES space-separated apt sources files for mmdebstrap
#                      (default: this machine's own, from /etc/apt)
#   PYTHON             host interpreter whose pip downloads the wheels (default python3)
#
# Steps: (1) pick or build the base, (2) download the wheels on the host into
# kernel_image/.wheels (skipped when already complete), (3) docker build with
# no network inside the build. A rebuild with nothing changed takes seconds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KERNEL_IMAGE="${KERNEL_IMAGE:-exec-gateway-kernel:latest}"
KERNEL_LOCAL_BASE="${KERNEL_LOCAL_BASE:-exec-gateway-base:bookworm}"
KERNEL_CACHE_TAG="${KERNEL_CACHE_TAG:-exec-gateway-kernel-build:venv}"
PYTHON="${PYTHON:-python3}"
WHEELS="$here/.wheels"
SUITE=bookworm          # the base's Debian release: its python3 is 3.11

t0=$SECONDS
step() { printf '==> [%3ss] %s\n' "$((SECONDS - t0))" "$*"; }
info() { printf '    %s\n' "$*"; }
die()  { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

command -v docker >/dev/null || die "docker not found"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine (docker info failed)"

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# The machine's own apt sources for the bookworm base, printed one file a
# line. Only files that name the suite are taken (third-party repositories
# like "nodistro" or "cloud-sdk-bookworm" are left out); when the host runs
# another Debian release its codename is replaced by bookworm in a copy.
apt_sources() {
    if [ -n "${KERNEL_APT_SOURCES:-}" ]; then
        # shellcheck disable=SC2086  # a space-separated list, split on purpose
        printf '%s\n' $KERNEL_APT_SOURCES
        return
    fi
    local host_codename="" f out=()
    if [ -r /etc/os-release ]; then
        # shellcheck disable=SC1091
        host_codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    fi
    local candidates=()
    [ -s /etc/apt/sources.list ] && candidates+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        [ -s "$f" ] && candidates+=("$f")
    done
    for f in "${candidates[@]}"; do
        if grep -Eq "(^|[[:space:]])${SUITE}(-[a-z]+)?([[:space:]]|\$)" "$f"; then
            out+=("$f")
        elif [ -n "$host_codename" ] && [ "$host_codename" != "$SUITE" ] &&
             grep -Eq "(^|[[:space:]])${host_codename}(-[a-z]+)?([[:space:]]|\$)" "$f"; then
            local copy
            copy="$tmpdir/$(basename "$f")"
            sed -E -e ':a' -e "s/(^|[[:space:]])${host_codename}(-[a-z]+)?([[:space:]]|\$)/\\1${SUITE}\\2\\3/" -e 'ta' "$f" > "$copy"
            out+=("$copy")
        fi
    done
    [ "${#out[@]}" -gt 0 ] || die "no Debian apt sources for $SUITE found in /etc/apt; set KERNEL_APT_SOURCES or KERNEL_BASE"
    printf '%s\n' "${out[@]}"
}

build_local_base() {
    if ! command -v mmdebstrap >/dev/null; then
        step "installing mmdebstrap (apt-get)"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
    fi
    local hookdir=/usr/share/mmdebstrap/hooks/merged-usr
    [ -d "$hookdir" ] || die "mmdebstrap hook dir $hookdir missing"
    local sources=()
    mapfile -t sources < <(apt_sources)
    [ "${#sources[@]}" -gt 0 ] || die "no apt sources for $SUITE (see above); set KERNEL_APT_SOURCES or KERNEL_BASE"
    info "apt sources: ${sources[*]}"
    # python3 + python3-venv is all the kernel needs from Debian: ipykernel and
    # the rest come as wheels into a venv (debugpy from a wheel needs no gdb).
    local log="$tmpdir/mmdebstrap.log"
    # shellcheck disable=SC2016  # "$1" in the hook is expanded by mmdebstrap's shell
    if ! as_root mmdebstrap \
        --quiet \
        --variant=apt \
        --hook-dir="$hookdir" \
        --include=python3,python3-venv \
        --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/lintian/*' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        "$SUITE" - "${sources[@]}" 2>"$log" \
    | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "Debian $SUITE + python3, python3-venv (mmdebstrap, exec-gateway kernel_image/build.sh)" \
        - "$KERNEL_LOCAL_BASE" >/dev/null
    then
        tail -n 30 "$log" >&2
        die "building the base with mmdebstrap failed (log above)"
    fi
}

tmpdir="$(mktemp -d)"
trap 'rm -rf "$tmpdir"' EXIT

# --- 1. base ----------------------------------------------------------------
step "1/3 base image"
if [ -n "${KERNEL_BASE:-}" ]; then
    base="$KERNEL_BASE"
    info "using KERNEL_BASE=$base"
elif image_exists python:3.11-slim; then
    base=python:3.11-slim
    info "using local python:3.11-slim"
elif image_exists "$KERNEL_LOCAL_BASE"; then
    base="$KERNEL_LOCAL_BASE"
    info "reusing local base $base"
else
    base="$KERNEL_LOCAL_BASE"
    info "no python:3.11-slim here: building $base from Debian $SUITE packages (mmdebstrap)"
    build_local_base
    info "built $base ($(docker image inspect -f '{{.Size}}' "$base" | awk '{printf "%.0f MB", $1/1e6}'))"
fi

# --- 2. wheels (on the host: pip inside the build has no network) -----------
step "2/3 wheels -> ${WHEELS#"$here"/}"
pip_args=(--only-binary=:all: --python-version 3.11
          --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
          --implementation cp --abi cp311)
stamp_key="$( { cat "$here/requirements.txt"; printf '%s\n' "${pip_args[@]}"; } | sha256sum | cut -d' ' -f1)"
wheels_complete() {
    [ -f "$WHEELS/.complete" ] || return 1
    [ "$(head -n1 "$WHEELS/.complete")" = "$stamp_key" ] || return 1
    local w
    while read -r w; do [ -f "$WHEELS/$w" ] || return 1; done < <(tail -n +2 "$WHEELS/.complete")
}
if wheels_complete; then
    info "up to date ($(($(wc -l < "$WHEELS/.complete") - 1)) wheels)"
else
    "$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip (set PYTHON=... to an interpreter with pip)"
    rm -rf "$WHEELS.new"
    mkdir -p "$WHEELS"
    # Wheels already in .wheels are reused; ones no longer needed are dropped.
    "$PYTHON" -m pip download --quiet --disable-pip-version-check \
        "${pip_args[@]}" --find-links "$WHEELS" \
        -r "$here/requirements.txt" -d "$WHEELS.new"
    # Every requirement must have resolved to a wheel for cp311/manylinux/any.
    n=0
    for w in "$WHEELS.new"/*; do
        case "$w" in
            *-py3-none-any.whl|*-py2.py3-none-any.whl|*-cp311-cp311-manylinux*_x86_64.whl|*-abi3-manylinux*_x86_64.whl) n=$((n + 1)) ;;
            *) die "unexpected file from pip download: $(basename "$w")" ;;
        esac
    done
    { echo "$stamp_key"; (cd "$WHEELS.new" && ls -1 -- *.whl); } > "$WHEELS.new/.complete"
    rm -rf "$WHEELS"
    mv "$WHEELS.new" "$WHEELS"
    info "downloaded $n wheels ($(du -sh "$WHEELS" | cut -f1))"
fi

# --- 3. docker build (offline) ----------------------------------------------
[ -x "$here/kernel-entry" ] || die "kernel_image/kernel-entry is not executable (chmod 0755 it)"
step "3/3 docker build $KERNEL_IMAGE (FROM $base, --network none)"
# the kernel's entry modules have one source, in the gateway package: copy them into the context
for module in kernel_boot.py kernel_tuning.py kernel_iopub.py kernel_pip.py; do
    cp -p "$here/../gateway/$module" "$here/$module"
done
log="$tmpdir/docker-build.log"
if ! docker build --network none \
        --build-arg BASE="$base" \
        -t "$KERNEL_IMAGE" \
        "$@" \
        -f "$here/Dockerfile" "$here" 2>&1 \
    | tee "$log" | sed -un -E '/^(Step |Successfully)/{s/^(.{100}).+/\1 .../;s/^/    /p}'
then
    st="${PIPESTATUS[*]}"
    tail -n 40 "$log" >&2
    die "docker build failed (log above; exit statuses docker|tee|sed: $st)"
fi

# Tag the venv stage too: it is the build cache of the slow step, and as an
# untagged image `docker image prune` would delete it.
docker build --network none --build-arg BASE="$base" --target venv \
    -t "$KERNEL_CACHE_TAG" -f "$here/Dockerfile" "$here" >/dev/null 2>&1 || :

size="$(docker image inspect -f '{{.Size}}' "$KERNEL_IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
step "done: $KERNEL_IMAGE ($size) in $((SECONDS - t0))s"
