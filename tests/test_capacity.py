"""The shared capacity formula: the memory-budget invariant, ranges, engines, checks."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from importlib.resources import files

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fazt.stability import thresholds
from fazt.stability.probe import Machine
from fazt.vfs import FOUND_SHARE

LEDGER_ITEMS = ["baseline", "pinned", "vfs_cache", "sqlite", "js", "threads", "buffers"]
KEYS = [
    "vfs_cache_mb", "large_file_mb", "max_upload_mb", "max_concurrent_js", "js_memory_mb",
    "js_warm_mb", "js_timeout_ms", "sqlite_cache_mb", "user_threads", "cockpit_threads",
    "maintenance_ratio", "connection_limit", "address_connections", "address_requests_per_s",
    "max_streams",
    "zip_max_unpacked_mb", "zip_max_ratio", "zip_max_entry_ratio", "zip_max_entries",
    "zip_max_path",
]  # fmt: skip
GB_HOST = {"ram_mb": 1024, "cpus": 1, "disk_gb": 25}

# RAM log-uniform from 64 MB to 1 TB, CPUs 1..128 (fractional quotas too), disk 0..20 TB.
log_ram = st.floats(min_value=math.log2(64), max_value=math.log2(1024 * 1024)).map(
    lambda x: min(1024 * 1024, max(64, round(2**x, 2)))
)
cpu_counts = st.one_of(st.integers(1, 128), st.floats(1, 128).map(lambda x: round(x, 2)))
disks = st.floats(0, 20480).map(lambda x: round(x, 2))


@st.composite
def machines(draw) -> dict:
    return {"ram_mb": draw(log_ram), "cpus": draw(cpu_counts), "disk_gb": draw(disks)}


SCHEMA = {entry["key"]: entry for entry in thresholds.schema()}


def test_schema_names_every_threshold_once():
    assert thresholds.keys() == KEYS
    for entry in thresholds.schema():
        assert set(entry) == {
            "key", "unit", "label", "description", "default", "min", "max", "integer"
        }  # fmt: skip
        assert entry["min"] <= entry["default"] <= entry["max"]
        assert entry["label"] and entry["unit"] and len(entry["description"]) > 40
    assert thresholds.defaults()["large_file_mb"] == 5
    assert thresholds.defaults()["maintenance_ratio"] == 100


def test_defaults_are_the_formula_for_the_reference_machine():
    assert thresholds.defaults() == thresholds.thresholds_for(GB_HOST)


@settings(max_examples=400, deadline=None)
@given(machines())
def test_ledger_fits_budget_and_every_value_is_in_range(machine):
    result = thresholds.compute(machine)
    assert set(result) == set(KEYS) | {"ledger", "safe", "capabilities"}
    ledger = result["ledger"]
    assert ledger["total_mb"] <= ledger["usable_mb"]
    assert ledger["total_mb"] == pytest.approx(sum(ledger[item] for item in LEDGER_ITEMS))
    assert ledger["usable_mb"] == pytest.approx(
        (machine["ram_mb"] - ledger["os_overhead_mb"]) * 0.7, abs=0.01
    )
    assert ledger == thresholds.ledger({k: result[k] for k in KEYS}, machine)
    for key in KEYS:
        value, entry = result[key], SCHEMA[key]
        assert entry["min"] <= value <= entry["max"], key
        low, high = result["safe"][key]
        assert low <= value <= high, key
        assert entry["min"] <= low and high <= entry["max"], key
        if entry["integer"]:
            assert isinstance(value, int), key
    assert result["capabilities"]["within_budget"] is True


@settings(max_examples=200, deadline=None)
@given(machines(), st.floats(1.01, 8))
def test_more_ram_never_gives_less(machine, factor):
    bigger = dict(machine, ram_mb=min(1024 * 1024, machine["ram_mb"] * factor))
    small, large = thresholds.compute(machine), thresholds.compute(bigger)
    for key in ("vfs_cache_mb", "user_threads", "js_memory_mb", "max_upload_mb"):
        assert large[key] >= small[key], key
    assert large["ledger"]["usable_mb"] >= small["ledger"]["usable_mb"]


def test_more_ram_never_gives_less_on_a_fine_sweep():
    """Hypothesis samples; the steps of the formulas (a thread more, warm contexts, the
    read-ahead) sit at particular sizes, so walk small hosts in 0.5 MB steps as well."""
    for cpus in (1, 2, 4):
        previous = None
        for half in range(64 * 2, 1024 * 2):
            t = thresholds.compute({"ram_mb": half / 2, "cpus": cpus, "disk_gb": 0.0})
            if previous is not None:
                for key in ("vfs_cache_mb", "user_threads", "js_memory_mb", "js_warm_mb"):
                    assert t[key] >= previous[key], (key, half / 2, cpus)
            previous = t


def test_a_small_vps_gets_sensible_numbers():
    t = thresholds.compute(GB_HOST)
    # one CPU: one JS slot, and site threads for it plus one per CPU for files
    assert t["max_concurrent_js"] == 1 and t["user_threads"] == 2
    assert t["cockpit_threads"] == 2  # a backup on one still leaves one for a sign-in
    assert 32 <= t["js_memory_mb"] <= 64
    assert 10 <= t["vfs_cache_mb"] < 100
    tiny = thresholds.compute({"ram_mb": 64, "cpus": 1, "disk_gb": 1})
    assert (tiny["user_threads"], tiny["cockpit_threads"], tiny["max_concurrent_js"]) == (2, 2, 1)
    # a slot for every CPU but the event loop's, and site threads for them and the files
    big = thresholds.compute({"ram_mb": 1024 * 1024, "cpus": 4, "disk_gb": 1000})
    assert big["user_threads"] == 7 and big["max_concurrent_js"] == 3
    two = thresholds.compute({"ram_mb": 8192, "cpus": 2, "disk_gb": 100})
    assert two["max_concurrent_js"] == 1 and two["user_threads"] == 3


def test_maintenance_threshold_is_ram_times_ratio():
    caps = thresholds.compute({"ram_mb": 2048, "cpus": 2, "disk_gb": 50})["capabilities"]
    assert caps["maintenance_db_gb"] == 200


def test_accepts_a_probe_machine():
    machine = Machine(ram_mb=1024, cpus=1, disk_gb=25, source={"ram": "test"})
    assert thresholds.thresholds_for(machine) == thresholds.thresholds_for(GB_HOST)


def test_rejects_a_nonsense_machine():
    with pytest.raises(ValueError, match="ram_mb"):
        thresholds.compute({"ram_mb": -1, "cpus": 1, "disk_gb": 1})


TABLE = [
    {"ram_mb": ram, "cpus": cpus, "disk_gb": disk}
    for ram, cpus, disk in [
        (64, 1, 1), (100, 1, 2.5), (256, 1, 10), (512, 1, 20), (1000, 1.5, 25), (1024, 1, 25),
        (3000, 3, 0), (4096, 2, 80), (24105.56, 2, 79.05), (65536, 16, 1000),
        (1048576, 128, 20480), (777.77, 0.5, 7.3),
    ]
]  # fmt: skip

NODE_SCRIPT = """
const fs = require("fs"), vm = require("vm");
const context = {};
vm.createContext(context);
vm.runInContext(fs.readFileSync(process.argv[1], "utf8"), context);
const table = JSON.parse(process.argv[2]);
process.stdout.write(JSON.stringify({
  results: table.map((m) => context.fazt_thresholds(m)),
  schema: context.FAZT_SCHEMA,
}));
"""


def test_node_and_quickjs_agree():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    path = files("fazt") / "web_simulator" / "capacity.js"
    out = subprocess.run(
        [node, "-e", NODE_SCRIPT, str(path), json.dumps(TABLE)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    from_node = json.loads(out.stdout)
    assert from_node["schema"] == thresholds.schema()
    for machine, node_result in zip(TABLE, from_node["results"], strict=True):
        assert node_result == thresholds.compute(machine), machine


def test_seed_example_500_mb_upload_on_1_gb_needs_break_glass():
    current = thresholds.thresholds_for(GB_HOST)
    verdict = thresholds.check("max_upload_mb", "500", current, GB_HOST)
    assert verdict.value == 500 and isinstance(verdict.value, int)
    assert verdict.needs_break_glass and not verdict.ok and not verdict.invalid
    safe_max = thresholds.compute(GB_HOST)["safe"]["max_upload_mb"][1]
    assert f"{safe_max} MB" in verdict.message
    over = round((500 - safe_max) / safe_max * 100)
    assert f"{over}% over" in verdict.message


def test_check_names_the_memory_overshoot():
    current = thresholds.thresholds_for(GB_HOST)
    verdict = thresholds.check("vfs_cache_mb", 600, current, GB_HOST)
    assert verdict.needs_break_glass
    assert verdict.ledger_total_mb > verdict.usable_mb
    js_round = lambda x: int(x + 0.5)  # noqa: E731 - Math.round, not banker's rounding
    assert f"allows {js_round(verdict.ledger_total_mb)} MB" in verdict.message
    assert f"budget of {js_round(verdict.usable_mb)} MB" in verdict.message
    assert "killed for lack of memory" in verdict.message


def test_check_accepts_a_value_inside_the_safe_range():
    current = thresholds.thresholds_for(GB_HOST)
    verdict = thresholds.check("vfs_cache_mb", "100", current, GB_HOST)
    assert verdict.ok and not verdict.needs_break_glass and not verdict.invalid
    grown = 100 - current["vfs_cache_mb"]
    # the cache is charged FOUND_SHARE on top for the file locations it remembers (vfs.py)
    assert verdict.ledger_total_mb == pytest.approx(
        thresholds.ledger(current, GB_HOST)["total_mb"] + grown * (1 + FOUND_SHARE), abs=0.02)
    assert thresholds.check("sqlite_cache_mb", "2.5", current, GB_HOST).ok


def test_lowering_a_value_never_needs_break_glass_even_over_budget():
    current = dict(thresholds.thresholds_for(GB_HOST), vfs_cache_mb=900)
    assert thresholds.ledger(current, GB_HOST)["total_mb"] > 645
    assert not thresholds.check("js_memory_mb", 32, current, GB_HOST).needs_break_glass
    assert thresholds.check("js_memory_mb", 65, current, GB_HOST).needs_break_glass


@pytest.mark.parametrize(
    "key, value",
    [
        ("max_upload_mb", -1),
        ("max_upload_mb", "-1"),
        ("user_threads", 2.5),
        ("user_threads", "many"),
        ("user_threads", True),
        ("js_memory_mb", 10**9),
        ("js_timeout_ms", float("nan")),
        ("sqlite_cache_mb", "inf"),
        ("connection_limit", None),
        ("no_such_threshold", 1),
    ],
)
def test_check_refuses_invalid_values(key, value):
    verdict = thresholds.check(key, value, thresholds.thresholds_for(GB_HOST), GB_HOST)
    assert verdict.invalid and not verdict.ok and not verdict.needs_break_glass
    assert verdict.message


def test_the_connection_ledger_charges_the_servers_own_buffer_sizes():
    """capacity.js also runs in a browser, so it copies the sizes the server uses: a copy
    that drifts from the code would charge what the code no longer holds."""
    import quickjs

    from fazt.server import admission, connection
    from fazt.store.files import CHUNK_SIZE
    from fazt.vfs import FOUND_ENTRIES, FOUND_ENTRY_BYTES, FOUND_SHARE, READ_AHEAD_MB

    js = quickjs.Context()
    js.eval(thresholds.source())
    assert js.eval("FAZT_CHUNK_KB") * 1024 == CHUNK_SIZE
    assert js.eval("FAZT_STREAM_SNDBUF_KB") * 1024 == connection.STREAM_SNDBUF
    assert js.eval("FAZT_READ_AHEAD_MB") == READ_AHEAD_MB
    assert js.eval("FAZT_BODY_KB") * 1024 == connection.SPOOL_MEMORY
    assert js.eval("FAZT_BODIES_MIN") == admission.BODIES_MIN
    assert js.eval("FAZT_FOUND_SHARE") == FOUND_SHARE
    # the fewest locations remembered fit the share of the smallest cache (1 MB)
    assert FOUND_ENTRIES * FOUND_ENTRY_BYTES <= FOUND_SHARE * 1024 * 1024
    # a download: its chunk and the next, and its send buffer (booked twice by the kernel)
    assert js.eval("FAZT_STREAM_MB") * 1024 * 1024 == 2 * CHUNK_SIZE + 2 * connection.STREAM_SNDBUF
    for ram in (64, 200, 1024, 65536):
        assert 0.5 <= thresholds.read_ahead_mb({"ram_mb": ram, "cpus": 1, "disk_gb": 10}) \
            <= READ_AHEAD_MB


def test_a_200_mb_host_holds_a_thousand_connections():
    t = thresholds.compute({"ram_mb": 200, "cpus": 2, "disk_gb": 25})
    assert t["connection_limit"] >= 1000 and t["max_streams"] >= 1
    assert t["ledger"]["total_mb"] <= t["ledger"]["usable_mb"]
    assert t["capabilities"]["concurrent_users"] == t["connection_limit"] // 2
