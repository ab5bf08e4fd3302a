#!/usr/bin/env bash
# Installs headless Chromium and its WebDriver (Debian's chromium + chromium-driver) for
# tests/test_page.py. Idempotent: silent when both are already present.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if have chromium && have chromedriver; then
    exit 0
fi
if ! have apt-get; then
    echo "install-browser: no apt-get here; install chromium and chromedriver by hand" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif have sudo && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "install-browser: chromium/chromedriver missing; run as root (or with sudo):" \
         "apt-get install chromium chromium-driver" >&2
    exit 1
fi

echo "install-browser: installing chromium and chromium-driver with apt-get"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { "${as_root[@]}" apt-get update -q \
        && "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
           apt-get install -y -q --no-install-recommends chromium chromium-driver; } >"$log" 2>&1
then
    cat "$log" >&2
    echo "install-browser: apt-get failed" >&2
    exit 1
fi
if ! { have chromium && have chromedriver; }; then
    echo "install-browser: installed, but chromium or chromedriver is still not on PATH" >&2
    exit 1
fi
echo "install-browser: $(chromium --version 2>/dev/null) / $(chromedriver --version | cut -d' ' -f1-2)"
