"""The peers fazt is compared with: a bare WSGI callable, WhiteNoise, nginx, and a
canned-response asyncio loop (what Python itself can do here: no parsing at all).

Run as a script to serve one of the Python peers:
    python bench/peers.py bare FILE PORT THREADS        # FILE's bytes from memory, any path
    python bench/peers.py whitenoise ROOT PORT THREADS  # ROOT's files from disk
    python bench/peers.py asyncio FILE PORT 1           # FILE's bytes to every request
"""

import os
import subprocess
import sys

from common import Skip, need, start, stop, wait_ready


def bare_app(data: bytes):
    """The ceiling of this stack: the same bytes from memory, no routing, no lookups."""
    headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(data)))]

    def app(environ, start_response):
        start_response("200 OK", headers)
        return [data]

    return app


def whitenoise_app(root: str):
    from whitenoise import WhiteNoise

    def not_found(environ, start_response):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]

    return WhiteNoise(not_found, root=root, prefix="/")


def serve_canned(data: bytes, port: int) -> None:
    """Python's ceiling: an asyncio protocol that answers every request it sees with the
    same pre-rendered response. It only counts blank lines (the end of a request's
    headers), so pipelining and keep-alive work and nothing is parsed."""
    import asyncio

    response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\n\r\n" % len(data)) + data

    class Canned(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.tail = b""

        def data_received(self, chunk):
            text = self.tail + chunk
            count = text.count(b"\r\n\r\n")
            self.tail = text[text.rfind(b"\r\n\r\n") + 4:] if count else text[-3:]
            if count:
                self.transport.write(response * count)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Canned, "127.0.0.1", port,
                                                                backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def start_python_peer(kind: str, path: str, port: int, threads: int, log_path: str):
    """A peer on Waitress in its own process, ready to answer."""
    if kind == "whitenoise":
        try:
            import whitenoise  # noqa: F401
        except ImportError:
            raise Skip("WhiteNoise is not installed (pip install whitenoise)") from None
    cmd = [sys.executable, os.path.abspath(__file__), kind, path, str(port), str(threads)]
    return _start_ready(cmd, log_path, port)


NGINX_CONF = """\
{user}
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def start_nginx(root: str, port: int, workdir: str):
    """nginx from a temporary config: one worker, loopback, our own pid and log paths."""
    nginx = need("nginx")
    os.makedirs(workdir, exist_ok=True)
    conf = os.path.join(workdir, "nginx.conf")
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read our temp files
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(user=user, dir=workdir, port=port, root=root))
    log_path = os.path.join(workdir, "nginx.out")
    check = subprocess.run([nginx, "-t", "-q", "-p", workdir, "-c", conf, "-e",
                            os.path.join(workdir, "nginx-error.log")],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise Skip(f"nginx refuses the temporary config: {check.stderr.strip()[:300]}")
    return _start_ready([nginx, "-p", workdir, "-c", conf, "-e",
                         os.path.join(workdir, "nginx-error.log")], log_path, port)


def _start_ready(cmd: list[str], log_path: str, port: int):
    """Start a peer and wait until it answers on `port`; never leave it running on failure."""
    proc = start(cmd, log_path)
    try:
        wait_ready(f"http://127.0.0.1:{port}/", "localhost", proc, log_path)
    except BaseException:
        stop(proc)
        raise
    return proc


def main() -> None:
    from waitress import serve

    kind, path, port, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if kind == "asyncio":
        with open(path, "rb") as f:
            return serve_canned(f.read(), port)
    if kind == "bare":
        with open(path, "rb") as f:
            app = bare_app(f.read())
    else:
        app = whitenoise_app(path)
    serve(app, host="127.0.0.1", port=port, threads=threads, ident="peer",
          connection_limit=1000, asyncore_use_poll=True)


if __name__ == "__main__":
    main()
