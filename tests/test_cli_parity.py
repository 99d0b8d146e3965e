"""The command line does what the dashboard does: tokens, JSON output, quiet pipes."""

import json
import subprocess
import sys

from conftest import Admin, eventually, fazt, fazt_env, zip_of


def test_token_list_and_revoke_reach_a_running_server(server, db_path):
    token = fazt("token", "create", "--name", "laptop", "--db", str(db_path)).stdout.strip()
    listed = json.loads(fazt("token", "list", "--json", "--db", str(db_path)).stdout)["tokens"]
    assert [t["name"] for t in listed] == ["laptop"]
    assert token not in json.dumps(listed)  # the value is never shown again
    assert "laptop" in fazt("token", "list", "--db", str(db_path)).stdout

    def deploy() -> int:
        return server.request("POST", "/api/deploy?site=tok", data=zip_of({"a.txt": "a"}),
                              headers={"Authorization": f"Bearer {token}"}).status_code

    assert deploy() == 200  # a running server knows the token from its next request
    fazt("token", "revoke", str(listed[0]["id"]), "--db", str(db_path))
    assert deploy() == 401
    assert json.loads(fazt("token", "list", "--json", "--db", str(db_path)).stdout) == {
        "tokens": []}
    again = fazt("token", "revoke", str(listed[0]["id"]), "--db", str(db_path), check=False)
    assert again.returncode == 1 and "no active token" in again.stderr


def test_read_commands_speak_json(db_path, site_dir):
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
    sites = json.loads(fazt("site", "list", "--json", "--db", str(db_path)).stdout)["sites"]
    assert [s["name"] for s in sites] == ["blog"] and sites[0]["files"] == 4
    config = json.loads(fazt("config", "get", "--json", "--db", str(db_path)).stdout)
    assert config["large_file_mb"] == 5 and "admin_assets_sha" not in config
    status = json.loads(fazt("server", "status", "--json", "--db", str(db_path)).stdout)
    assert status["mode"] == "normal"


def test_output_into_a_closed_pipe_ends_quietly(db_path):
    """`fazt config get | head -1`: the reader goes away before fazt writes."""
    for args in (["config", "get"], ["site", "list"], ["--help"], ["token", "list"]):
        proc = subprocess.Popen([sys.executable, "-m", "fazt", *args, "--db", str(db_path)]
                                if args != ["--help"] else [sys.executable, "-m", "fazt", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=fazt_env())
        proc.stdout.close()  # like `head` that has read all it wants
        err = proc.stderr.read().decode()
        proc.wait(timeout=60)
        assert err == "", (args, err)
        assert proc.returncode in (0, 141), (args, proc.returncode)
    piped = subprocess.run(f"{sys.executable} -m fazt config get --db {db_path} | head -1",
                           shell=True, capture_output=True, text=True, env=fazt_env())
    assert piped.stderr == "" and piped.stdout.count("\n") == 1


def test_config_reset_returns_to_what_the_probe_computes(server, db_path):
    probe = json.loads(fazt("server", "probe", "--json", "--memory-mb", "1024", "--cpus",
                            "2").stdout)["thresholds"]
    recommended = probe["vfs_cache_mb"]
    fazt("config", "set", "vfs_cache_mb", str(recommended * 50), "--break-glass", "--db",
         str(db_path))
    fazt("config", "set", "js_timeout_ms", str(probe["js_timeout_ms"] + 1), "--db", str(db_path))
    fazt("config", "set", "keep_versions", "3", "--db", str(db_path))
    status = json.loads(fazt("server", "status", "--json", "--db", str(db_path)).stdout)
    assert [o["key"] for o in status["overrides"]] == ["vfs_cache_mb"]

    out = fazt("config", "reset", "vfs_cache_mb", "--db", str(db_path)).stdout
    assert f"vfs_cache_mb = {json.dumps(recommended)}" in out
    status = json.loads(fazt("server", "status", "--json", "--db", str(db_path)).stdout)
    assert status["overrides"] == [] and "vfs_cache_mb" not in status["owner_keys"]
    assert "js_timeout_ms" in status["owner_keys"]
    admin = Admin(server)
    assert eventually(lambda: admin.get("/api/config").json()["values"]["vfs_cache_mb"]
                      == recommended)

    fazt("config", "reset", "keep_versions", "--db", str(db_path))  # a setting: its default
    assert fazt("config", "get", "keep_versions", "--db", str(db_path)).stdout.strip() == "10"
    fazt("config", "reset", "--all", "--db", str(db_path))
    config = json.loads(fazt("config", "get", "--json", "--db", str(db_path)).stdout)
    assert all(config[k] == v for k, v in probe.items())
    for bad in (["domain"], ["nosuch"], []):
        failed = fazt("config", "reset", *bad, "--db", str(db_path), check=False)
        assert failed.returncode == 1 and failed.stderr.count("\n") == 1, failed.stderr

    # the dashboard's "Reset to recommended", through the API
    r = admin.put("/api/config", json={"js_timeout_ms": probe["js_timeout_ms"] + 5})
    assert r.json()["owner_keys"] == ["js_timeout_ms"]
    r = admin.post("/api/config/reset", json={"keys": ["js_timeout_ms"]})
    assert r.status_code == 200, r.text
    assert r.json()["values"]["js_timeout_ms"] == probe["js_timeout_ms"]
    assert r.json()["owner_keys"] == []
    assert admin.post("/api/config/reset", json={"all": True}).status_code == 200
    assert admin.post("/api/config/reset", json={}).status_code == 400
    both = {"all": True, "keys": ["keep_versions"]}  # the command line takes one or the other
    assert admin.post("/api/config/reset", json=both).status_code == 400
    assert admin.post("/api/config/reset", json={"keys": ["domain"]}).status_code == 400


def test_help_lists_every_command():
    """Each group's --help names all its actions (argparse hides one given no help)."""
    import argparse

    from fazt.cli import parser

    def groups(p: argparse.ArgumentParser, path: tuple[str, ...] = ()):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                yield path, action
                for name, child in action.choices.items():
                    yield from groups(child, (*path, name))

    for path, action in groups(parser()):
        listed = {choice.dest for choice in action._choices_actions}
        assert listed == set(action.choices), (path, set(action.choices) - listed)
    shown = fazt("config", "--help").stdout
    assert all(name in shown for name in ("get", "set", "reset"))
