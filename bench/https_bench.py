"""8. HTTPS beside HTTP in one run, and beside nginx with TLS on the same certificate.

Two fazt servers on the same site: one plain (https off), one with https on
and an imported ECDSA P-256 certificate (so nothing is ordered from a CA).
nginx (one worker) serves the same files on a plain and a TLS port with the
same certificate and key. Rows, alternated round by round:

- 4 KiB over keep-alive connections (wrk): req/s over HTTPS as a share of
  plain HTTP; the goal is at least 0.7x.
- Full handshakes (no resumption) from client processes: handshakes per
  second of the server's own CPU time.
- A large file (curl, to /dev/null): MB/s over HTTPS and plain.
- Idle connections: the server's RSS growth per 1,000 connections held open
  after their handshake, TLS and plain.

    python bench/https_bench.py [--smoke]      # or through bench/run.sh --only https
"""

import argparse
import http.client
import json
import os
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

import common as c
import psutil

DOMAIN = "bench.test"
HOST = f"bench.{DOMAIN}"
NGINX_CONF = """\
{user}
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets off;
    ssl_session_cache off;
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {dir}/chain.pem;
        ssl_certificate_key {dir}/key.pem;
        root {root};
    }}
}}
"""


def certificate(work: str) -> tuple[str, str]:
    """An ECDSA P-256 certificate for D and *.D from a throwaway CA (trustme)."""
    import trustme

    leaf = trustme.CA().issue_cert(DOMAIN, f"*.{DOMAIN}")
    chain, key = os.path.join(work, "chain.pem"), os.path.join(work, "key.pem")
    with open(chain, "wb") as f:
        f.write(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    with open(key, "wb") as f:
        f.write(leaf.private_key_pem.bytes())
    return chain, key


def new_db(path: str, site: str, https: tuple[str, str] | None) -> str:
    c.fazt("server", "init", "--domain", DOMAIN, "--username", c.USERNAME,
           "--password", c.PASSWORD, db=path)
    c.fazt("deploy", site, "--site", "bench", db=path)
    # One client address makes every request here: lift the per-address limits.
    for key, value in (("address_connections", "100000"), ("address_requests_per_s", "1000000")):
        try:
            c.fazt("config", "set", key, value, "--break-glass", db=path)
        except RuntimeError:
            pass  # a fazt without that limit
    if https:
        for host in (DOMAIN, f"*.{DOMAIN}"):
            c.fazt("cert", "import", host, "--cert", https[0], "--key", https[1], db=path)
        c.fazt("config", "set", "https", "on", db=path)
    return path


def start_fazt(db: str, port: int, https_port: int | None, log: str):
    cmd = [sys.executable, "-m", "fazt", "server", "start", "--db", db, "--host", "127.0.0.1",
           "--port", str(port)] + (["--https-port", str(https_port)] if https_port else [])
    proc = c.start(cmd, log, env=c.fazt_env())
    c.wait_ready(f"http://127.0.0.1:{port}/_fazt/health", HOST, proc, log)
    return proc


def start_nginx(root: str, port: int, tls_port: int, work: str, chain: str, key: str):
    nginx = c.need("nginx")
    shutil.copyfile(chain, os.path.join(work, "chain.pem"))
    shutil.copyfile(key, os.path.join(work, "key.pem"))
    conf = os.path.join(work, "nginx.conf")
    user = "user root;" if os.geteuid() == 0 else ""
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(user=user, dir=work, port=port, tls_port=tls_port, root=root))
    err = os.path.join(work, "nginx-error.log")
    check = subprocess.run([nginx, "-t", "-q", "-p", work, "-c", conf, "-e", err],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise c.Skip(f"nginx refuses the TLS config: {check.stderr.strip()[:300]}")
    proc = c.start([nginx, "-p", work, "-c", conf, "-e", err], os.path.join(work, "nginx.out"))
    c.wait_ready(f"http://127.0.0.1:{port}/4k.bin", "localhost", proc, err)
    return proc


def serving(proc) -> list[psutil.Process]:
    """The processes that do the serving: fazt itself, or nginx's worker."""
    me = psutil.Process(proc.pid)
    return me.children() or [me]


def cpu_seconds(procs: list[psutil.Process]) -> float:
    return sum(p.cpu_times().user + p.cpu_times().system for p in procs)


def rss(procs: list[psutil.Process]) -> int:
    return sum(p.memory_info().rss for p in procs)


# -- clients (run in processes of their own, so they do not share our CPU lock) --------


def _client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def handshake_client(port: int, seconds: float) -> None:
    """Full handshakes, one after another, for `seconds`; prints how many."""
    ctx = _client_context()
    ctx.options |= ssl.OP_NO_TICKET  # no resumption: every handshake is a full one
    done, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with ctx.wrap_socket(raw, server_hostname=HOST):
                done += 1
    print(done)


def idle_client(port: int, count: int, tls: bool) -> None:
    """Opens `count` connections (TLS: handshake done), says "ready", holds until stdin ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 64)), hard))
    ctx = _client_context()
    held = []
    for _ in range(count):
        raw = socket.create_connection(("127.0.0.1", port))
        held.append(ctx.wrap_socket(raw, server_hostname=HOST) if tls else raw)
    print("ready", flush=True)
    sys.stdin.read()


def _client(*args: str, stdin=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *args],
                            stdout=subprocess.PIPE, stdin=stdin, text=True)


def handshakes_per_cpu_second(proc, port: int, seconds: float, clients: int = 2) -> float:
    procs = serving(proc)
    before = cpu_seconds(procs)
    runs = [_client("handshakes", str(port), str(seconds)) for _ in range(clients)]
    total = sum(int(r.communicate(timeout=seconds + 60)[0]) for r in runs)
    used = cpu_seconds(procs) - before
    return total / used if used else float("nan")


def https_login(port: int) -> float:
    """One sign-in over a new TLS connection to admin.D (handshake included): seconds."""
    body = json.dumps({"username": c.USERNAME, "password": c.PASSWORD}).encode()
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with _client_context().wrap_socket(raw, server_hostname=f"admin.{DOMAIN}") as tls:
            tls.sendall(b"POST /api/login HTTP/1.1\r\nHost: admin." + DOMAIN.encode() +
                        b"\r\nContent-Type: application/json\r\nX-Fazt-Request: 1\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            response = http.client.HTTPResponse(tls)
            response.begin()
            response.read()
    if response.status != 200:
        raise RuntimeError(f"sign-in over HTTPS answered {response.status}")
    return time.perf_counter() - began


def logins_under_flood(port: int, count: int, seconds: float) -> tuple[list, list]:
    """Sign-ins idle, then while 2 client processes make full handshakes flat out."""
    idle = [https_login(port) for _ in range(count)]
    flood = [_client("handshakes", str(port), str(seconds)) for _ in range(2)]
    try:
        time.sleep(0.5)  # the flood is under way
        loaded = [https_login(port) for _ in range(count)]
    finally:
        for proc in flood:
            proc.communicate(timeout=seconds + 60)
    return idle, loaded


def rss_per_thousand(proc, port: int, count: int, tls: bool) -> float:
    procs = serving(proc)
    before = rss(procs)
    client = _client("idle", str(port), str(count), "tls" if tls else "plain",
                     stdin=subprocess.PIPE)
    try:
        assert client.stdout.readline().strip() == "ready"
        time.sleep(1)  # let the server finish its side of the last handshakes
        grown = rss(procs) - before
    finally:
        client.stdin.close()
        client.wait(30)
    return grown / count * 1000


def download(scheme: str, port: int, proc) -> tuple[float, float]:
    """One download of the large file to /dev/null (curl names HOST by SNI too):
    MB/s, and MB per second of the server's own CPU time."""
    cmd = [c.need("curl"), "-sk", "-o", "/dev/null", "-w",
           "%{speed_download} %{size_download} %{http_code}",
           "--resolve", f"{HOST}:{port}:127.0.0.1", f"{scheme}://{HOST}:{port}/large.bin"]
    procs = serving(proc)
    before = cpu_seconds(procs)
    speed, size, code = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                                       check=True).stdout.split()
    used = cpu_seconds(procs) - before
    if code != "200":
        raise RuntimeError(f"{scheme}://{HOST}:{port}/large.bin answered {code}")
    return float(speed) / c.MB, float(size) / c.MB / used if used else float("nan")


# -- the section ------------------------------------------------------------------


def section_https(tmp: str, plan) -> c.Section:
    sec = c.Section("8. HTTPS")
    c.need("wrk")
    work = os.path.join(tmp, "https")
    site = os.path.join(work, "site")
    c.write_file(os.path.join(site, "4k.bin"), 4096)
    large_mb = 32 if plan.smoke else 256
    c.write_file(os.path.join(site, "large.bin"), large_mb * c.MB)
    chain, key = certificate(work)
    idle = 100 if plan.smoke else 1000
    ports = {name: c.free_port() for name in ("plain", "tls_plain", "tls", "nginx", "nginx_tls")}
    procs = {}
    try:
        procs["plain"] = start_fazt(new_db(os.path.join(work, "plain.db"), site, None),
                                    ports["plain"], None, os.path.join(work, "plain.log"))
        procs["tls"] = start_fazt(new_db(os.path.join(work, "tls.db"), site, (chain, key)),
                                  ports["tls_plain"], ports["tls"], os.path.join(work, "tls.log"))
        try:
            nginx_dir = os.path.join(work, "nginx")
            os.makedirs(nginx_dir)
            procs["nginx"] = start_nginx(site, ports["nginx"], ports["nginx_tls"], nginx_dir,
                                         chain, key)
        except c.Skip as exc:
            sec.notes.append(f"nginx skipped: {exc}.")
        targets = {("fazt", "HTTP"): ("plain", f"http://127.0.0.1:{ports['plain']}/4k.bin"),
                   ("fazt", "HTTPS"): ("tls", f"https://127.0.0.1:{ports['tls']}/4k.bin")}
        if "nginx" in procs:
            targets[("nginx", "HTTP")] = ("nginx", f"http://127.0.0.1:{ports['nginx']}/4k.bin")
            targets[("nginx", "HTTPS")] = ("nginx",
                                           f"https://127.0.0.1:{ports['nginx_tls']}/4k.bin")
        wrks: dict[tuple, list[dict]] = {}
        for _ in range(plan.rounds):
            for label, (key, url) in targets.items():
                procs_now = serving(procs[key])
                before = cpu_seconds(procs_now)
                run = c.wrk(url, HOST, plan.wrk_threads, plan.connections, plan.seconds)
                run["cpu_us"] = (cpu_seconds(procs_now) - before) / max(run["requests"], 1) * 1e6
                wrks.setdefault(label, []).append(run)
        rows = []
        for server in ("fazt", "nginx"):
            if (server, "HTTP") not in targets:
                continue
            plain = c.median([r["rps"] for r in wrks[(server, "HTTP")]])
            for scheme in ("HTTP", "HTTPS"):
                runs = wrks[(server, scheme)]
                rps = c.median([r["rps"] for r in runs])
                sec.chart[f"{server} {scheme}"] = rps
                rows.append([server, scheme, f"{rps:,.0f}", f"{rps / plain:.2f}",
                             f"{c.median([r['cpu_us'] for r in runs]):,.0f}",
                             c.ms(c.median([r["p99"] for r in runs])),
                             sum(r["errors"] + r["non2xx"] for r in runs)])
        sec.tables.append(c.table(["server", "scheme", "4 KiB req/s (median)", "× its HTTP",
                                   "server CPU µs per request", "p99 ms", "errors + non-2xx"],
                                  rows))

        tls_ports = {"fazt": ports["tls"], "nginx": ports["nginx_tls"]}
        plain_ports = {"fazt": ports["plain"], "nginx": ports["nginx"]}
        servers = {"fazt": procs["tls"], **({"nginx": procs["nginx"]} if "nginx" in procs else {})}
        rows = []
        for name, proc in servers.items():
            shakes = handshakes_per_cpu_second(proc, tls_ports[name], plan.seconds)
            plain_proc = procs["plain"] if name == "fazt" else proc
            secure = [download("https", tls_ports[name], proc) for _ in range(plan.rounds)]
            clear = [download("http", plain_ports[name], plain_proc) for _ in range(plan.rounds)]
            tls_rss = rss_per_thousand(proc, tls_ports[name], idle, True)
            plain_rss = rss_per_thousand(plain_proc, plain_ports[name], idle, False)
            rows.append([name, f"{shakes:,.0f}",
                         f"{c.median([d[0] for d in secure]):,.0f}",
                         f"{c.median([d[1] for d in secure]):,.0f}",
                         f"{c.median([d[0] for d in clear]):,.0f}",
                         f"{c.median([d[1] for d in clear]):,.0f}",
                         f"{tls_rss / c.MB:.1f}", f"{plain_rss / c.MB:.1f}"])
        idle_logins, flood_logins = logins_under_flood(ports["tls"], 10 if plan.smoke else 40,
                                                       plan.seconds * 3)
        sec.chart["login idle p99"] = c.percentile(idle_logins, 99)
        sec.chart["login flood p99"] = c.percentile(flood_logins, 99)
        sec.tables.append(c.table(
            ["fazt sign-in over HTTPS (new connection)", "p50 ms", "p99 ms"],
            [["idle", c.ms(c.percentile(idle_logins, 50)), c.ms(c.percentile(idle_logins, 99))],
             ["during a handshake flood", c.ms(c.percentile(flood_logins, 50)),
              c.ms(c.percentile(flood_logins, 99))]]))
        sec.tables.append(c.table(
            ["server", "full handshakes per server CPU-second", "large file MB/s, HTTPS",
             "… per server CPU-second", "large file MB/s, HTTP", "… per server CPU-second",
             "RSS MB per 1,000 idle TLS connections", "RSS MB per 1,000 idle plain connections"],
            rows))
    finally:
        for proc in procs.values():
            c.stop(proc)
    sec.notes.append(f"wrk -t{plan.wrk_threads} -c{plan.connections} -d{plan.seconds:g}s with "
                     f"keep-alive, {plan.rounds} round(s) alternated; TLS 1.3, an ECDSA P-256 "
                     "certificate imported into fazt and given to nginx (one worker).")
    sec.notes.append(f"Handshakes: 2 client processes making full handshakes (no tickets, no "
                     f"cache) for {plan.seconds:g} s; the count over the CPU time the server "
                     f"(fazt, or nginx's worker) spent meanwhile. Large file: {large_mb} MiB "
                     f"with curl; idle connections: {idle} held by one client, the server's "
                     "RSS growth scaled to 1,000.")
    sec.notes.append("Sign-in: POST /api/login to admin.D on a new TLS connection each time "
                     "(handshake included), idle and then while 2 client processes make full "
                     "handshakes as fast as they can.")
    return sec


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "handshakes":
        return handshake_client(int(sys.argv[2]), float(sys.argv[3]))
    if len(sys.argv) > 1 and sys.argv[1] == "idle":
        return idle_client(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "tls")
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()

    class Plan:
        smoke = args.smoke
        rounds = 1 if args.smoke else 3
        seconds = 2 if args.smoke else 10
        wrk_threads = 2
        connections = 8 if args.smoke else 32

    tmp = tempfile.mkdtemp(prefix="fazt-https-")
    try:
        print(section_https(tmp, Plan).markdown())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
