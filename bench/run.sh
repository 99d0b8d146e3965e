#!/usr/bin/env bash
# fazt's benchmark: a Markdown table per section, bench/results.png, bench/RESULTS.md.
#   bench/run.sh            the full run (about 25 minutes; root for the cgroup soak)
#   bench/run.sh --smoke    every section in a tiny form, under 3 minutes (CI)
# Other options: bench/run.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/bench.py "$@"
