"""The thresholds, computed by the same capacity.js the simulator page runs.

The formula lives in one JavaScript file so that the landing-page simulator,
the CLI and the server can never disagree: Python evaluates that file in
QuickJS and exchanges JSON with it. One context is created lazily and guarded
by a lock, because a QuickJS context must not be used by two threads at once.
"""

from __future__ import annotations

import copy
import functools
import json
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib.resources import files
from typing import Any

import quickjs

from fazt.stability.probe import Machine

_lock = threading.Lock()
_context: quickjs.Context | None = None

# Calls a global function with JSON arguments and returns JSON, so only
# strings cross the Python/JavaScript boundary.
_BRIDGE = """
function __fazt_call(name, args_json) {
  return JSON.stringify(globalThis[name].apply(null, JSON.parse(args_json)));
}
function __fazt_schema() {
  return FAZT_SCHEMA;
}
"""


def source() -> str:
    """The text of capacity.js as shipped inside the package."""
    return (files("fazt") / "web_simulator" / "capacity.js").read_text(encoding="utf-8")


def _call(name: str, *args: Any) -> Any:
    """Call a capacity.js global in the shared context (created on first use)."""
    global _context
    with _lock:
        if _context is None:
            context = quickjs.Context()
            context.eval(source())
            context.eval(_BRIDGE)
            _context = context
        try:
            answer = _context.get("__fazt_call")(name, json.dumps(list(args)))
        except quickjs.JSException as error:
            raise ValueError(str(error).strip()) from None
    return json.loads(answer)


def _machine(machine: Machine | Mapping[str, Any]) -> dict[str, Any]:
    """What the formula needs, from a Machine or a plain mapping: three numbers and
    whether Litestream runs beside fazt (its memory is charged to the same budget)."""
    if isinstance(machine, Machine):
        return {"ram_mb": machine.ram_mb, "cpus": machine.cpus, "disk_gb": machine.disk_gb,
                "replica": machine.replica}
    m = {key: machine[key] for key in ("ram_mb", "cpus", "disk_gb")}
    return {**m, "replica": bool(machine.get("replica", False))}


def replica_gomemlimit_mb(machine: Machine | Mapping[str, Any]) -> int:
    """Litestream's Go heap goal on this machine (its GOMEMLIMIT), from capacity.js."""
    return int(_call("fazt_replica_gomemlimit_mb", _machine(machine)["ram_mb"]))


def read_ahead_mb(machine: Machine | Mapping[str, Any]) -> float:
    """What all large downloads together may hold read ahead (the ledger charges it)."""
    return float(_call("fazt_read_ahead_mb", _machine(machine)["ram_mb"]))


@functools.cache
def _schema() -> list[dict[str, Any]]:
    """The schema never changes while the process runs: read it once."""
    return _call("__fazt_schema")


def schema() -> list[dict[str, Any]]:
    """One entry per threshold: key, unit, label, description, default, min, max, integer.

    min/max is the hard range: values outside it are refused even with break glass.
    """
    return copy.deepcopy(_schema())


def keys() -> list[str]:
    """The threshold names, in schema order (the keys of the `config` table)."""
    return [entry["key"] for entry in _schema()]


def defaults() -> dict[str, Any]:
    """The schema defaults: the formula's values for a 1 GB, 1 CPU reference machine."""
    return {entry["key"]: entry["default"] for entry in _schema()}


def compute(machine: Machine | Mapping[str, Any]) -> dict[str, Any]:
    """The full fazt_thresholds result: thresholds plus ledger, safe and capabilities."""
    return _call("fazt_thresholds", _machine(machine))


def thresholds_for(machine: Machine | Mapping[str, Any]) -> dict[str, Any]:
    """Only the threshold keys, as the `config` table stores them."""
    full = compute(machine)
    return {key: full[key] for key in keys()}


def ledger(thresholds: Mapping[str, Any], machine: Machine | Mapping[str, Any]) -> dict[str, Any]:
    """The memory these thresholds allow on this machine, itemised in MB against the budget."""
    m = _machine(machine)
    return copy.deepcopy(_ledger(tuple(sorted(thresholds.items())), tuple(sorted(m.items()))))


@functools.lru_cache(maxsize=8)
def _ledger(thresholds: tuple, machine: tuple) -> dict[str, Any]:
    # The status page asks every few seconds; the answer changes only with the thresholds.
    return _call("fazt_ledger", dict(thresholds), dict(machine))


def safe(thresholds: Mapping[str, Any], machine: Machine | Mapping[str, Any]) -> dict[str, Any]:
    """The safe range of every threshold given the *current* values: what check() enforces."""
    return _call("fazt_safe", dict(thresholds), _machine(machine))


@dataclass(frozen=True)
class Check:
    """The verdict on one proposed threshold value (mirrors fazt_check in capacity.js)."""

    key: str
    value: Any
    ok: bool
    needs_break_glass: bool
    invalid: bool
    message: str
    ledger_total_mb: float
    usable_mb: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(key: str, value: Any) -> Any:
    """Turn a CLI string such as "64" into the number type the schema expects.

    Anything that is not a clean number is passed on unchanged, so capacity.js
    refuses it with its own message.
    """
    if isinstance(value, bool):
        return str(value)
    entry = next((e for e in _schema() if e["key"] == key), None)
    if entry is None:
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            return value
        value = number
    if isinstance(value, float) and entry["integer"] and value.is_integer():
        return int(value)
    return value


def check(
    key: str, value: Any, thresholds: Mapping[str, Any], machine: Machine | Mapping[str, Any]
) -> Check:
    """Whether `key` may be set to `value`: ok, needs break glass, or invalid (never allowed)."""
    value = _coerce(key, value)
    try:
        json.dumps(value, allow_nan=False)
        sendable = value
    except (TypeError, ValueError):
        sendable = str(value)
    verdict = _call("fazt_check", key, sendable, dict(thresholds), _machine(machine))
    return Check(key=key, value=value, **verdict)
