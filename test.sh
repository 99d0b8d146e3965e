#!/usr/bin/env bash
# Installs fazt with its test dependencies and runs the whole test suite.
# Quick suite only: ./test.sh -m "not slow"; one file serially: python3 -m pytest tests/test_x.py
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install --quiet --disable-pip-version-check -e '.[test,build,bench]'
python3 -m ruff check src tests bench build
# Two workers, a test file each at a time: most tests wait on servers and sockets, so the
# suite takes about half the time on two cores (tests/binary_build.py builds dist/fazt once).
python3 -m pytest -n 2 --dist loadfile "$@"
