#!/usr/bin/env bash
# Installs fazt with its test dependencies and runs the whole test suite.
# Quick suite only: ./test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install --quiet --disable-pip-version-check -e '.[test,build,bench]'
python3 -m ruff check src tests bench build
python3 -m pytest "$@"
