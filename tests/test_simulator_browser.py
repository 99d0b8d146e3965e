"""The simulator page in headless Chromium agrees with the Python side of capacity.js."""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path

import pytest

from fazt.stability import thresholds

pytestmark = pytest.mark.browser

PAGE = Path(str(files("fazt") / "web_simulator" / "index.html"))
THRESHOLD_OUTPUTS = [
    "max_upload_mb", "vfs_cache_mb", "max_concurrent_js", "js_memory_mb", "sqlite_cache_mb",
    "user_threads", "cockpit_threads",
]  # fmt: skip
CAPABILITY_OUTPUTS = ["concurrent_users", "small_file_rps", "maintenance_db_gb"]


@pytest.fixture
def page(browser):
    """A fresh page on index.html from file://, collecting console errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors: list[str] = []

    def on_console(message) -> None:
        if message.type == "error":
            errors.append(message.text)

    tab.on("console", on_console)
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on("requestfailed", lambda request: errors.append(f"failed: {request.url}"))
    tab.goto(PAGE.as_uri())
    tab.errors = errors
    yield tab
    context.close()


def machine_on(page) -> dict:
    return {
        "ram_mb": float(page.input_value("#ram-input")),
        "cpus": float(page.input_value("#cpus-input")),
        "disk_gb": float(page.input_value("#disk-input")),
    }


def shown(page, key: str) -> float:
    return float(page.get_attribute(f"#out-{key}", "data-value"))


def assert_page_matches_python(page) -> dict:
    machine = machine_on(page)
    expected = thresholds.compute(machine)
    for key in THRESHOLD_OUTPUTS:
        assert shown(page, key) == expected[key], key
        assert page.text_content(f"#out-{key}").strip(), key
    for key in CAPABILITY_OUTPUTS:
        assert shown(page, key) == expected["capabilities"][key], key
    legend = {"vfs_cache": "vfs_cache", "sqlite": "sqlite", "js": "js",
              "os_overhead": "os_overhead_mb", "safety_margin": "safety_margin_mb"}  # fmt: skip
    for item, ledger_key in legend.items():
        value = float(page.get_attribute(f"#legend-{item}", "data-value"))
        assert value == expected["ledger"][ledger_key], item
    return expected


def test_default_machine_shows_its_values(page):
    assert machine_on(page) == {"ram_mb": 1024, "cpus": 1, "disk_gb": 25}
    expected = assert_page_matches_python(page)
    assert page.text_content("#out-vfs_cache_mb").strip() == f"{expected['vfs_cache_mb']} MB"
    assert page.locator("#threshold-rows tr").count() == len(thresholds.keys())
    assert page.errors == []


def test_ram_slider_by_keyboard_changes_outputs(page):
    before = shown(page, "vfs_cache_mb")
    page.focus("#ram-slider")
    for _ in range(8):
        page.keyboard.press("ArrowRight")
    assert float(page.input_value("#ram-input")) == 2048
    assert page.get_attribute("#ram-slider", "aria-valuetext") == "2 GB"
    expected = assert_page_matches_python(page)
    assert expected["vfs_cache_mb"] > before
    page.keyboard.press("Home")
    assert float(page.input_value("#ram-input")) == 128
    assert_page_matches_python(page)
    assert page.errors == []


def test_ram_slider_set_and_dispatched(page):
    page.eval_on_selector(
        "#ram-slider",
        "el => { el.value = '45'; el.dispatchEvent(new Event('input', {bubbles: true})); }",
    )
    assert float(page.input_value("#ram-input")) == 128 * 32 * (1 + 5 / 8)
    assert_page_matches_python(page)


def test_typed_value_moves_the_slider(page):
    page.fill("#ram-input", "300")
    assert page.input_value("#ram-slider") == "9"  # 256 * (1 + 1/8) = 288 is the nearest stop
    assert_page_matches_python(page)
    page.fill("#ram-input", "12")  # below the invariant's floor: refused, outputs kept
    assert page.get_attribute("#ram-input", "aria-invalid") == "true"
    assert page.is_visible("#input-error")
    assert page.errors == []


def test_presets_set_all_three_sliders(page):
    page.click("button[data-preset='4gb']")
    assert machine_on(page) == {"ram_mb": 4096, "cpus": 2, "disk_gb": 80}
    assert page.input_value("#ram-slider") == "40"
    assert page.input_value("#cpus-slider") == "2"
    assert page.get_attribute("button[data-preset='4gb']", "aria-pressed") == "true"
    assert_page_matches_python(page)
    page.click("button[data-preset='256mb']")
    assert machine_on(page) == {"ram_mb": 256, "cpus": 1, "disk_gb": 10}
    assert page.input_value("#ram-slider") == "8"
    assert_page_matches_python(page)
    assert page.errors == []


def test_every_input_has_a_label(page):
    unlabelled = page.eval_on_selector_all(
        "input, button, select",
        "els => els.filter(e => !(e.labels && e.labels.length) && !e.textContent.trim())"
        ".map(e => e.id)",
    )
    assert unlabelled == []


def test_screenshots_at_desktop_and_phone_width(page, tmp_path):
    page.click("button[data-preset='1gb']")
    wide = tmp_path / "simulator-1280.png"
    page.screenshot(path=str(wide), full_page=True)
    page.set_viewport_size({"width": 360, "height": 740})
    overflow = page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= 360, "the page scrolls sideways at 360 px"
    narrow = tmp_path / "simulator-360.png"
    page.screenshot(path=str(narrow), full_page=True)
    print(f"\nscreenshots: {wide} {narrow}")
    assert wide.stat().st_size > 10_000 and narrow.stat().st_size > 10_000
    assert page.errors == []


class StrictHandler(SimpleHTTPRequestHandler):
    """Serves the simulator folder under the strict policy the server will use."""

    def end_headers(self) -> None:
        self.send_header("Content-Security-Policy", "default-src 'self'")
        super().end_headers()

    def do_GET(self) -> None:
        if self.path == "/favicon.ico":  # the browser's own request, not the page's
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


def test_page_runs_under_a_strict_content_security_policy(browser):
    """No inline script or style: a violation would show up as a console error."""
    handler = functools.partial(StrictHandler, directory=str(PAGE.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    context = browser.new_context()
    try:
        tab = context.new_page()
        errors: list[str] = []
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.goto(f"http://127.0.0.1:{server.server_port}/index.html")
        tab.click("button[data-preset='512mb']")
        assert shown(tab, "user_threads") == thresholds.compute(machine_on(tab))["user_threads"]
        assert errors == []
    finally:
        context.close()
        server.shutdown()
        server.server_close()


def test_replication_charges_litestream_to_the_budget(page):
    page.click("button[data-preset='256mb']")
    assert float(page.get_attribute("#legend-replica", "data-value")) == 0
    before = shown(page, "vfs_cache_mb")
    page.check("#replica-input")
    expected = thresholds.compute({**machine_on(page), "replica": True})
    assert float(page.get_attribute("#legend-replica", "data-value")) == \
        expected["ledger"]["replica"] > 0
    assert shown(page, "vfs_cache_mb") == expected["vfs_cache_mb"] < before
    assert page.errors == []
