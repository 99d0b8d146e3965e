"""Measurements behind the runtime's design choices (in-process, no HTTP).

    PYTHONPATH=src python bench/js_bench.py

1. Fresh context per request vs a context kept alive: the cost a pool could save.
2. The CPU-clock timeout: when `while(true){}` ends alone and beside other
   spinning scripts and a spinning Python thread, and whether a script that
   works for half the timeout (wall clock) survives beside two spinners.
"""

import json
import os
import tempfile
import threading
import time

import quickjs

from fazt.runtime import Runtime
from fazt.runtime.prelude import PRELUDE
from fazt.store.database import create_database

REQUEST = {"method": "GET", "path": "/api/x", "query": {}, "headers": {}, "body": ""}
TRIVIAL = "function handler(r) {\n  return {body: 'hello ' + r.path};\n}"
SPIN = "function handler() { while (true) {} }"


def per_call_ms(fn, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1000


def fresh_vs_kept(rt: Runtime, n: int = 2000) -> None:
    fresh = per_call_ms(lambda: rt.handle("bench", "sha", TRIVIAL, REQUEST), n)
    bare = per_call_ms(quickjs.Context, n)
    ctx = quickjs.Context()
    ctx.add_callable("__fazt_bridge", lambda op, args: "{}")
    step = ctx.eval(PRELUDE)
    ctx.eval(TRIVIAL)
    text = json.dumps(REQUEST)
    kept = per_call_ms(lambda: step(text), n)
    print(f"Runtime.handle, fresh context: {fresh:.3f} ms/request "
          f"(bare context creation {bare:.3f} ms); kept context: {kept:.4f} ms/request")


def timeouts(rt: Runtime, timeout_ms: int) -> None:
    def timed(source: str) -> tuple[int, float]:
        started = time.perf_counter()
        status = rt.handle("bench", "sha", source, REQUEST).status
        return status, round(time.perf_counter() - started, 3)

    print(f"timeout {timeout_ms} ms, CPU budget {rt.stats()['cpu_budget_s']} s")
    print("  while(true) alone:", timed(SPIN))
    stop = threading.Event()
    results: dict[str, tuple[int, float]] = {}

    def burn() -> None:
        while not stop.is_set():
            sum(range(1000))

    def run(name: str, source: str) -> None:
        results[name] = timed(source)

    legit = (f"function handler() {{ const end = Date.now() + {timeout_ms // 2}; "
             "while (Date.now() < end) {} return {body: 'ok'}; }")
    burner = threading.Thread(target=burn)
    burner.start()
    threads = [threading.Thread(target=run, args=(f"spin{i}", SPIN)) for i in range(2)]
    threads.append(threading.Thread(target=run, args=("legit (half the timeout)", legit)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    burner.join()
    print("  beside 2 spinners and a Python thread:", results)


def main() -> None:
    folder = tempfile.mkdtemp()
    db = create_database(os.path.join(folder, "bench.db"))
    rt = Runtime(db, slots=3, memory_mb=32, timeout_ms=400)
    print(f"CPUs usable: {len(os.sched_getaffinity(0))}, quickjs from {quickjs.__file__}")
    fresh_vs_kept(rt)
    timeouts(rt, 400)


if __name__ == "__main__":
    main()
