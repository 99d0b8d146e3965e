"""Settings that are not thresholds: one schema, read and written by the CLI and the API."""

import json
from pathlib import Path

import pytest
from conftest import fazt
from test_cockpit import call, sign_in

from fazt import settings
from fazt.errors import FaztError


def test_every_setting_is_declared_with_a_valid_default():
    for entry in settings.schema():
        assert entry["type"] in settings.TYPES
        assert entry["label"] and entry["description"]
        assert settings.parse(entry["key"], entry["default"]) == entry["default"]
    d = settings.defaults()
    assert d["trusted_proxies"] == [] and d["keep_versions"] == 10 and d["https"] == "off"
    assert d["acme_directory"] == "https://acme-v02.api.letsencrypt.org/directory"
    assert d["hsts_max_age"] == 31536000 and d["acme_ca_bundle"] == ""


@pytest.mark.parametrize("key,text,value", [
    ("trusted_proxies", "10.0.0.1, 192.168.0.0/16", ["10.0.0.1", "192.168.0.0/16"]),
    ("trusted_proxies", '["::1"]', ["::1"]),
    ("trusted_proxies", "", []),
    ("keep_versions", "25", 25),
    ("https", "on", "on"),
    ("acme_email", "me@example.org", "me@example.org"),
])
def test_command_line_text_becomes_the_settings_type(key, text, value):
    assert settings.parse(key, text) == value


@pytest.mark.parametrize("key,value,words", [
    ("trusted_proxies", "10.0.0.300", "not an IP address"),
    ("keep_versions", "0", "between 1 and 1000"),
    ("keep_versions", "ten", "whole number"),
    ("https", "maybe", "one of off, on"),
    ("acme_directory", "ftp://x", "not an http(s) URL"),
    ("acme_directory", "https://", "not an http(s) URL"),
    ("acme_ca_bundle", "/nonexistent/ca.pem", "cannot read /nonexistent/ca.pem"),
    ("acme_ca_bundle", __file__, "holds no PEM certificate"),
    ("acme_email", "nobody", "not an email"),
    ("nonsense", "1", "Unknown setting"),
])
def test_bad_values_get_one_sentence(key, value, words):
    with pytest.raises(FaztError) as caught:
        settings.parse(key, value)
    assert words in caught.value.message and "\n" not in caught.value.message


def test_config_set_and_get_settings_from_the_command_line(db_path):
    assert json.loads(fazt("config", "get", "keep_versions", "--db", str(db_path)).stdout) == 10
    fazt("config", "set", "trusted_proxies", "10.0.0.0/8,127.0.0.1", "--db", str(db_path))
    got = fazt("config", "get", "trusted_proxies", "--db", str(db_path)).stdout
    assert json.loads(got) == ["10.0.0.0/8", "127.0.0.1"]
    listing = fazt("config", "get", "--db", str(db_path)).stdout
    assert "acme_directory" in listing and "vfs_cache_mb" in listing
    bad = fazt("config", "set", "keep_versions", "5000", "--db", str(db_path), check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "keep_versions must be between 1 and 1000" in bad.stderr
    # a setting is not a threshold: recalibrating does not mark it as the owner's
    status = json.loads(fazt("server", "status", "--json", "--db", str(db_path)).stdout)
    assert "trusted_proxies" not in status["owner_keys"]


def test_api_shows_and_changes_settings_beside_thresholds(client, instance):
    session = sign_in(client)
    view = call(client, "GET", "/api/config", session).json
    assert {e["key"] for e in view["settings"]} == set(settings.keys())
    assert view["values"]["keep_versions"] == 10 and "vfs_cache_mb" in view["values"]
    changed = call(client, "PUT", "/api/config", session,
                   json={"keep_versions": 3, "trusted_proxies": ["10.1.2.3"]})
    assert changed.status_code == 200, changed.text
    assert changed.json["values"]["trusted_proxies"] == ["10.1.2.3"]
    assert instance.config["keep_versions"] == 3
    wrong = call(client, "PUT", "/api/config", session, json={"https": True})
    assert wrong.status_code == 400
    assert wrong.json["error"]["message"] == "https must be one of off, on, not true."


def test_the_readme_documents_every_setting():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [key for key in settings.keys() if f"| `{key}` |" not in readme]
    assert not missing, f"README's settings table lacks {missing}"


@pytest.mark.parametrize("text,value", [
    ("Example.ORG.", "example.org"),  # as Host headers and SNI carry it
    ("Bücher.test", "xn--bcher-kva.test"),  # an IDN as browsers send it
    ("localhost", "localhost"),
    ("127.0.0.1", "127.0.0.1"),
])
def test_the_domain_is_kept_as_clients_send_it(text, value):
    """With https on, fazt orders certificates for D and admin.D: 'Example.ORG.' was kept
    as typed and ordered as such (never matched by the plain port's redirect), and
    'a..b' or '*.test' were taken and failed at the CA."""
    assert settings.parse("domain", text) == value


@pytest.mark.parametrize("text", ["a..b", "*.test", "☃.net", "-x.test", "x y", "a:80", "a/b",
                                  ""])
def test_a_domain_no_client_could_ask_for_is_refused(text):
    with pytest.raises(FaztError, match="not a valid domain"):
        settings.parse("domain", text)


def test_server_init_and_config_set_keep_the_domain_as_clients_send_it(tmp_path):
    db = tmp_path / "d.db"
    fazt("server", "init", "--domain", "Bücher.Example.", "--username", "o", "--password",
         "correct horse battery", "--db", str(db))
    assert json.loads(fazt("config", "get", "domain", "--db", str(db)).stdout) == \
        "xn--bcher-kva.example"
    fazt("config", "set", "domain", "Fazt.EXAMPLE.", "--db", str(db))
    assert json.loads(fazt("config", "get", "domain", "--db", str(db)).stdout) == "fazt.example"
    bad = fazt("config", "set", "domain", "fazt..example", "--db", str(db), check=False)
    assert bad.returncode == 1 and "not a valid domain" in bad.stderr


@pytest.mark.parametrize("port", ["0", "-1", "70000", "99999999999999999999999"])
def test_server_init_refuses_a_port_config_set_would_refuse(tmp_path, port):
    """Stored as given, it made every later `server start` fail over a --port never given."""
    db = tmp_path / "d.db"
    bad = fazt("server", "init", "--domain", "localhost", "--username", "o", "--password",
               "correct horse battery", "--port", port, "--db", str(db), check=False)
    assert bad.returncode == 1 and "port must be between 1 and 65535" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and not db.exists()
