#!/usr/bin/env bash
# Installs or starts what the test suite needs that pip cannot provide.
# In CI (CI=true) anything missing is a failure, never a skip.
set -euo pipefail
echo "test-deps: nothing beyond the Python packages yet"
