"""Headless Chromium drives the owner's toolkit panels: versions with rollback, secrets,
and "Reset to recommended"."""

import json

import pytest
from conftest import Admin, Server, fazt, zip_of

pytestmark = pytest.mark.browser
HANDLER = "function handler() { return {body: {token: fazt.env.TOKEN || null}}; }"
VALUE = "tok_9f8e7d6c5b4a"


def test_versions_rollback_secrets_and_reset_in_the_dashboard(new_page, server: Server, db_path,
                                                              tmp_path):
    admin = Admin(server)
    for n in (1, 2):
        admin.post("/api/deploy?site=shop", data=zip_of({"index.html": f"v{n}",
                                                         "api/main.js": HANDLER}))
    probe = json.loads(fazt("server", "probe", "--json", "--memory-mb", "1024", "--cpus",
                            "2").stdout)["thresholds"]
    admin.put("/api/config", json={"js_timeout_ms": probe["js_timeout_ms"] + 7})
    base = f"http://admin.localhost:{server.port}"
    problems: list[str] = []
    page = new_page(viewport={"width": 1280, "height": 900})
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: msg.type == "error" and not msg.text.startswith(
        "Failed to load resource") and problems.append(f"console: {msg.text}"))
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(base + "/")
    page.fill("#login-username", "owner")
    page.fill("#login-password", "correct horse battery")
    page.click("#login-submit")
    page.wait_for_selector("body[data-view=status]")

    # Versions: the list, the live one marked, a rollback button on the others.
    page.click("[data-nav=sites]")
    page.click("tr[data-site=shop] [data-action=versions]")
    page.wait_for_selector("tr[data-version='2'][data-live=true]")
    assert page.locator("#versions-body tr").count() == 2
    assert page.locator("tr[data-version='2'] [data-action=rollback]").count() == 0
    # where a rollback without a version goes: the older version live most recently
    assert page.locator("tr[data-version='1'][data-previous=true]").count() == 1
    page.click("tr[data-version='1'] [data-action=rollback]")
    page.wait_for_selector("tr[data-version='1'][data-live=true]")
    assert page.locator("#versions-body tr[data-previous=true]").count() == 0  # none older
    assert server.get("/", host="shop.localhost").text == "v1"
    page.screenshot(path=str(tmp_path / "cockpit-versions.png"), full_page=True)

    # Secrets: set one, the handler reads it, the page never shows it again.
    page.click("[data-nav=sites]")
    page.click("tr[data-site=shop] [data-action=env]")
    page.wait_for_selector("body[data-view=env]")
    page.fill("#env-key", "TOKEN")
    page.fill("#env-value", VALUE)
    page.click("#env-save")
    page.wait_for_selector("#env-body tr[data-key=TOKEN]")
    assert server.get("/api/x", host="shop.localhost").json() == {"token": VALUE}
    assert page.input_value("#env-value") == ""
    page.reload()
    page.wait_for_selector("#env-body tr[data-key=TOKEN]")
    assert VALUE not in page.content()
    page.screenshot(path=str(tmp_path / "cockpit-secrets.png"), full_page=True)
    page.click("#env-body tr[data-key=TOKEN] [data-action=unset]")
    page.wait_for_selector("#env-empty:not([hidden])")
    assert server.get("/api/x", host="shop.localhost").json() == {"token": None}

    # Reset to recommended: only on values the owner set; back to the probe's value.
    page.click("[data-nav=settings]")
    button = "[data-key=js_timeout_ms] [data-action=reset]"
    page.wait_for_selector(button)
    assert page.locator("[data-key=vfs_cache_mb] [data-action=reset]").count() == 0
    page.click(button)
    page.wait_for_selector("#notice:has-text('recommended')")
    assert page.locator(button).count() == 0
    assert page.input_value("#setting-js_timeout_ms") == str(probe["js_timeout_ms"])
    page.click("#settings-reset-all")
    page.wait_for_selector("#notice:has-text('Every limit')")
    assert problems == []
    assert admin.get("/api/config").json()["owner_keys"] == []
