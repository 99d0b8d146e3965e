"""Headless Chromium on the dashboard's HTTPS page: import a certificate, add a domain."""

import datetime
from pathlib import Path

import pytest
import trustme
from conftest import Server, fazt
from test_cockpit_browser import sign_in
from test_https_serving import store_certificate

pytestmark = pytest.mark.browser


def test_the_https_page_imports_a_certificate_and_manages_domains(new_page, db_path, site_dir,
                                                                  tmp_path: Path):
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
    leaf = trustme.CA().issue_cert("www.blog.org")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    chain.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    store_certificate(db_path, "old.org", trustme.CA().issue_cert(
        "old.org", not_before=past, not_after=past + datetime.timedelta(days=30)), "import")
    problems = []
    with Server.running(db_path) as server:
        page = new_page()
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        sign_in(page, f"http://admin.localhost:{server.port}")
        # the status card is filled by the dashboard's first poll, which may come after sign_in
        page.wait_for_function(
            "document.querySelector('#status-https').textContent.trim() !== '–'")
        assert page.text_content("#status-https").strip() == "off"
        page.click("[data-nav=https]")
        # an import left to lapse says so (it read like any other expiry date)
        old = page.wait_for_selector("#certs-body tr[data-host='old.org']")
        assert "expired" in old.text_content()
        page.fill("#domain-site", "blog")
        page.fill("#domain-host", "www.blog.org")
        page.click("#domain-add")
        page.wait_for_selector("#domains-body tr[data-host='www.blog.org']")
        page.fill("#import-host", "www.blog.org")
        page.set_input_files("#import-cert", str(chain))
        page.set_input_files("#import-key", str(key))
        page.click("#import-submit")
        row = page.wait_for_selector("#certs-body tr[data-host='www.blog.org']")
        assert "import" in row.text_content()
        assert "PRIVATE KEY" not in page.content()
        page.click("#domains-body tr[data-host='www.blog.org'] button")
        page.wait_for_selector("#domains-body tr[data-host='www.blog.org']", state="detached")
    assert problems == []
    assert fazt("site", "domain", "list", "blog", "--db", str(db_path)).stdout == ""
