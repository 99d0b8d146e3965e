#!/usr/bin/env bash
# Builds the single-file binary dist/fazt from fazt.spec (PyInstaller, one-file).
# Work files go to build/work/ (git-ignored). Installs PyInstaller with pip when
# it is missing. Usage: build/binary.sh   (env PYTHON=python3.11 to pick one)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import PyInstaller' 2>/dev/null; then
    echo "Installing PyInstaller with pip..."
    "$python" -m pip install --quiet --disable-pip-version-check 'pyinstaller>=6.0'
fi

"$python" -m PyInstaller --noconfirm --clean --log-level WARN \
    --workpath build/work --distpath dist fazt.spec

size=$(stat -c %s dist/fazt)
echo "Built dist/fazt: $((size / 1024 / 1024)) MB ($size bytes)"
echo "PyInstaller's warnings: build/work/fazt/warn-fazt.txt"
