"""The command line does what the dashboard does: tokens, JSON output, quiet pipes."""

import json
import subprocess
import sys

from conftest import eventually, fazt, fazt_env, zip_of


def test_token_list_and_revoke_reach_a_running_server(server, db_path):
    token = fazt("token", "create", "--name", "laptop", "--db", str(db_path)).stdout.strip()
    listed = json.loads(fazt("token", "list", "--json", "--db", str(db_path)).stdout)["tokens"]
    assert [t["name"] for t in listed] == ["laptop"]
    assert token not in json.dumps(listed)  # the value is never shown again
    assert "laptop" in fazt("token", "list", "--db", str(db_path)).stdout

    def deploy() -> int:
        return server.request("POST", "/api/deploy?site=tok", data=zip_of({"a.txt": "a"}),
                              headers={"Authorization": f"Bearer {token}"}).status_code

    assert eventually(lambda: deploy() == 200)
    fazt("token", "revoke", str(listed[0]["id"]), "--db", str(db_path))
    assert eventually(lambda: deploy() == 401)
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
