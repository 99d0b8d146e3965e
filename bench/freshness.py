"""What it costs to notice, on every request, that another process wrote to the database.

fazt reads the WAL index header (48 bytes of shared memory) before each request;
the alternatives are SQLite's `PRAGMA data_version` (a read transaction each time)
and re-reading the change stamps (three small aggregate queries). Printed side
by side, in one run, with a whole in-process request for scale.

    python3 bench/freshness.py [--rounds N]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from falcon import testing  # noqa: E402

from fazt.app import Router  # noqa: E402
from fazt.instance import Instance, _stamps  # noqa: E402


def per_call(fn, rounds: int) -> float:
    """Microseconds per call, the median of five batches."""
    batches = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            fn()
        batches.append((time.perf_counter() - started) / rounds * 1e6)
    return statistics.median(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db_path = os.path.join(tmp, "data.db")
        site = os.path.join(tmp, "site")
        os.makedirs(site)
        with open(os.path.join(site, "index.html"), "w") as f:
            f.write("x" * 4096)
        env = {**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(__file__), "..", "src")}
        fazt = [sys.executable, "-m", "fazt"]
        subprocess.run(fazt + ["server", "init", "--db", db_path, "--domain", "localhost",
                               "--username", "owner", "--password", "bench-password"],
                       check=True, env=env, capture_output=True)
        subprocess.run(fazt + ["deploy", site, "--site", "bench", "--db", db_path],
                       check=True, env=env, capture_output=True)
        instance = Instance(db_path).boot()
        client = testing.TestClient(Router(instance))
        db = instance.db

        def request():
            assert client.simulate_get("/", host="bench.localhost").status_code == 200

        def data_version():
            with db.read() as conn:
                conn.execute("PRAGMA data_version").fetchone()

        def stamps():
            with db.read() as conn:
                _stamps(conn)

        rows = [
            ("WAL index header (what fazt does)", per_call(db.wal_header, args.rounds * 10)),
            ("PRAGMA data_version", per_call(data_version, args.rounds)),
            ("re-read the change stamps", per_call(stamps, args.rounds)),
            ("instance.refresh(), nothing changed", per_call(instance.refresh, args.rounds * 10)),
        ]
        whole = per_call(request, args.rounds // 4)
        instance.close()
    print(f"A cached 4 KiB static GET through the Router, in process: {whole:.1f} µs\n")
    print("| way to notice a write | µs per request | × the header | share of the GET |")
    print("| --- | ---: | ---: | ---: |")
    base = rows[0][1]
    for name, cost in rows:
        print(f"| {name} | {cost:.2f} | {cost / base:.1f}× | {cost / whole * 100:.2f} % |")


if __name__ == "__main__":
    main()
