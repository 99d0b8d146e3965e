"""docs/API.md runs: every shell example, in order, against a real server; the outputs it
shows are the outputs it gets; and every admin API route and method has an example."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PASSWORD, ROOT, USERNAME, Server

DOC = ROOT / "docs" / "API.md"
BLOCK = re.compile(r"```(sh|text)\n(.*?)```", re.S)
pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("curl", "jq", "zip", "sqlite3")),
                                reason="the examples need curl, jq, zip and sqlite3")


def examples() -> list[tuple[str, str | None]]:
    """(shell code, the output the page shows for it or None), in the page's order."""
    found: list[tuple[str, str | None]] = []
    for kind, body in BLOCK.findall(DOC.read_text()):
        if kind == "sh":
            found.append((body, None))
        else:
            assert found and found[-1][1] is None, "an output block must follow a shell block"
            found[-1] = (found[-1][0], body)
    return found


def test_every_example_runs_against_a_real_server(db_path: Path, tmp_path: Path):
    blocks = examples()
    assert "FAZT=" in blocks[0][0]  # the page's setup; the test supplies its own values
    work = tmp_path / "reader"
    work.mkdir()
    with Server.running(db_path) as srv:
        script = ["set -eo pipefail",
                  f"FAZT=http://admin.localhost:{srv.port}",
                  f"OWNER='{USERNAME}'", f"PASSWORD='{PASSWORD}'"]
        for n, (code, _) in enumerate(blocks[1:], start=1):
            script += [f"printf '\\n@@ {n}\\n'", code]
        run = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, capture_output=True,
                             text=True, timeout=300)
        log = srv.log()
    parts = re.split(r"\n@@ (\d+)\n", run.stdout)
    outputs = {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    last = max(outputs, default=0)
    assert run.returncode == 0, (f"example {last} failed:\n{blocks[last][0]}\n"
                                 f"stdout: {outputs.get(last)}\nstderr: {run.stderr}\n{log}")
    assert last == len(blocks) - 1, run.stdout[-3000:]
    for n, (code, shown) in enumerate(blocks[1:], start=1):
        if shown is not None:
            assert outputs[n] == shown, f"example {n} printed {outputs[n]!r}:\n{code}"


def documented_calls() -> set[tuple[str, str]]:
    """(METHOD, path) of every curl in the page, variables left as they are written."""
    calls = set()
    for code, _ in examples():
        for command in re.split(r"\n(?!\s)|\|", code.replace("\\\n", " ")):
            if "curl" not in command:
                continue
            url = re.search(r'"\$FAZT(/api/[^"?]*)', command)
            if url is None:
                continue
            method = re.search(r"-X (\w+)", command)
            sends = re.search(r"(^|\s)(-d|--data-binary|--data|-F)\s", command)
            calls.add((method.group(1) if method else "POST" if sends else "GET", url.group(1)))
    return calls


def test_every_admin_route_and_method_has_an_example(instance):
    from falcon import inspect

    from fazt.cockpit.app import cockpit_app

    calls = documented_calls()
    missing = []
    for route in inspect.inspect_routes(cockpit_app(instance)):
        if not route.path.startswith("/api/"):
            continue
        pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", route.path) + "$")
        for method in route.methods:
            if method.internal or method.method in ("OPTIONS", "HEAD"):  # HEAD is GET, no body
                continue
            if not any(m == method.method and pattern.match(p) for m, p in calls):
                missing.append(f"{method.method} {route.path}")
    assert not missing, f"docs/API.md has no example of: {', '.join(missing)}"
