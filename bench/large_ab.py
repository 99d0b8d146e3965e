"""Side by side: large-file downloads from fazt source trees and WhiteNoise, alternated.

    python3 bench/large_ab.py --src main=/tmp/main/src --src new=src [--mb 1024] [--rounds 8]

Section 2 of bench.py measures one tree against its peers in two rounds; a change to the
streaming path needs more: the same download from each tree and from WhiteNoise in every
round, the order rotated each round, many rounds (this machine is shared, and one
download's speed moves by a third from run to run). Each server gets a copy of one
database, removed at the end.
Reported per server: MB/s (median and range), the ratio of each round's fazt MB/s to
that round's WhiteNoise MB/s, and RSS growth: the peak over all rounds (the RSS of the
process and its children, sampled every 50 ms) minus the RSS before the first
download, as section 2 reports it.
"""

import argparse
import os
import shutil
import tempfile
import time

import common as c
import peers
import psutil

from bench import RssSampler, download


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", action="append", required=True, metavar="NAME=DIR",
                   help="a fazt source tree (its src/), named; give two or more")
    p.add_argument("--mb", type=int, default=1024, help="size of the file")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--no-whitenoise", action="store_true")
    p.add_argument("--tmp", help="work here (kept, and reused: the file and the database)")
    p.add_argument("--quiet-wait", type=float, default=120, metavar="S",
                   help="before each round, wait up to S seconds for a second in which the "
                        "CPUs are at least 90%% idle (others' work on a shared machine)")
    args = p.parse_args()
    trees = dict(s.split("=", 1) for s in args.src)
    tmp = args.tmp or tempfile.mkdtemp(prefix="fazt-large-ab-")
    os.makedirs(tmp, exist_ok=True)
    size = args.mb * c.MB
    site = os.path.join(tmp, "site")
    big = os.path.join(site, "big.bin")
    if not os.path.exists(big) or os.path.getsize(big) != size:
        c.write_file(big, size)
    first_src = os.path.abspath(next(iter(trees.values())))
    db = os.path.join(tmp, f"bench-{args.mb}.db")
    if not os.path.exists(db):
        os.environ["FAZT_SRC"] = first_src
        c.fazt("server", "init", "--domain", "example.test", "--username", c.USERNAME,
               "--password", c.PASSWORD, db=db + ".new")
        c.fazt("deploy", site, "--site", "bench", db=db + ".new")
        c.lift_address_limits(db + ".new")
        os.rename(db + ".new", db)
    servers: dict[str, tuple[int, str, object]] = {}
    copies: list[str] = []
    try:
        for name, src in trees.items():  # a copy each: one server per database
            copy = os.path.join(tmp, f"{name}.db")
            copies.append(copy)
            shutil.copyfile(db, copy)
            os.environ["FAZT_SRC"] = os.path.abspath(src)
            port = c.free_port()
            servers[name] = (port, c.SITE_HOST,
                             c.start_fazt(copy, port, os.path.join(tmp, f"{name}.log")))
        if not args.no_whitenoise:
            port = c.free_port()
            servers["WhiteNoise"] = (port, "localhost", peers.start_python_peer(
                "whitenoise", site, port, 4, os.path.join(tmp, "whitenoise.log")))
        names = list(servers)
        base = {n: RssSampler(proc.pid).rss() for n, (_, _, proc) in servers.items()}
        speeds: dict[str, list[float]] = {n: [] for n in names}
        peaks: dict[str, list[int]] = {n: [] for n in names}
        for r in range(args.rounds):
            waited = quiet(args.quiet_wait)
            order = names[r % len(names):] + names[:r % len(names)]
            line = []
            for name in order:
                port, host, proc = servers[name]
                with RssSampler(proc.pid) as sampler:
                    code, got, speed = download(port, host, "/big.bin", 600)
                if code != 200 or got != size:
                    raise RuntimeError(f"{name}: {code} with {got} of {size} bytes")
                speeds[name].append(speed / c.MB)
                peaks[name].append(sampler.peak)
                line.append(f"{name} {speed / c.MB:,.0f}")
            print(f"round {r + 1} (after {waited:.0f} s for quiet): " + ", ".join(line),
                  flush=True)
        wn = speeds.get("WhiteNoise")
        rows = []
        for name in names:
            s = speeds[name]
            ratios = [a / b for a, b in zip(s, wn, strict=True)] if wn else []
            growth = (max(peaks[name]) - base[name]) / c.MB
            rows.append([name, f"{c.median(s):,.0f}", f"{min(s):,.0f}–{max(s):,.0f}",
                         f"{c.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
                         if ratios else "–",
                         f"{base[name] / c.MB:.0f}", f"{growth:+.1f}"])
        print(c.table(["server", "MB/s median", "range", "÷ WhiteNoise, per round",
                       "RSS before MB", "RSS growth MB"], rows))
    finally:
        for _, _, proc in servers.values():
            c.stop(proc)
        for copy in copies:  # a GB each
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(copy + suffix):
                    os.remove(copy + suffix)
        if not args.tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def quiet(most: float) -> float:
    """Seconds waited (at most `most`) for a second with the CPUs 90% idle."""
    began = time.monotonic()
    while psutil.cpu_percent(interval=1) > 10 and time.monotonic() - began < most:
        pass
    return time.monotonic() - began


if __name__ == "__main__":
    main()
