"""Intervals the environment fazt starts with may change (the tests shorten them).

Each is read once, when fazt starts; a bad value is one sentence, never a traceback.
"""

import os

from fazt.errors import FaztError


def seconds_from_env(name: str, default: float, low: float, high: float,
                     environ: dict | None = None) -> float:
    """`name` from the environment as seconds from `low` to `high`; `default` when unset."""
    environ = os.environ if environ is None else environ
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not low <= seconds <= high:
        raise FaztError(f"{name} must be a number of seconds from {low:g} to {high:g}, "
                        f"not {text!r}.")
    return seconds
