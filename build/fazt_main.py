"""Entry point of the single-file binary (fazt.spec): the frozen-build checks, then the CLI.

Kept out of the package so that `python -m fazt` never runs frozen-only code.
"""

import sys

from fazt.frozen import prepare

prepare(sys.argv[1:])

from fazt.cli import main  # noqa: E402  (after prepare: stale folders go first)

raise SystemExit(main())
