"""The HTTPS port of a real server: certificates by SNI, redirects, renewal, a crowd.

Certificates come from pebble (Let's Encrypt's test CA on loopback) or are
imported from a trustme CA; every client verifies the chain it is shown.
"""

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import requests
import trustme
from conftest import (
    PASSWORD,
    USERNAME,
    Server,
    configure,
    eventually,
    fazt,
    fazt_env,
    free_port,
    init_db,
)
from pebble_ca import Pebble, available

DOMAIN = "example.test"


class Https:
    """One verified TLS connection to 127.0.0.1 that names `host` by SNI; keep-alive GETs."""

    def __init__(self, port: int, host: str, ca_pem: bytes):
        ctx = ssl.create_default_context(cadata=ca_pem.decode())
        raw = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        self.host = host

    @property
    def serial(self) -> str:
        return self.sock.getpeercert()["serialNumber"]

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict | None = None) -> tuple[http.client.HTTPResponse, bytes]:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}",
                 f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        response = http.client.HTTPResponse(self.sock, method=method)
        response.begin()
        return response, response.read()

    def close(self) -> None:
        self.sock.close()


def certs(db: Path) -> dict[str, dict]:
    return {c["host"]: c for c in json.loads(
        fazt("cert", "list", "--json", "--db", str(db)).stdout)}


def issued(db: Path, *hosts: str) -> bool:
    listed = certs(db)
    return all(h in listed and listed[h]["not_after"] for h in hosts)


class Running:
    """A fazt with https on: its plain port (where pebble sends HTTP-01) and its TLS port."""

    def __init__(self, db: Path, port: int, env: dict | None = None):
        self.https_port = free_port()
        self.server = Server(db, port=port, env=env,
                             args=("--https-port", str(self.https_port)))

    def connect(self, host: str, ca_pem: bytes) -> Https:
        return Https(self.https_port, host, ca_pem)

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def acme(tmp_path: Path, site_dir: Path, request):
    """https on, a site `blog`, pebble aimed at the plain port (validity from the marker)."""
    if not available():
        pytest.skip("pebble is not installed")
    marker = request.node.get_closest_marker("validity")
    db = init_db(tmp_path / "data.db")
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db))
    port = free_port()
    pebble = Pebble(tmp_path / "pebble", port, validity_s=marker.args[0] if marker else None)
    configure(db, https="on", acme_directory=pebble.directory,
              acme_ca_bundle=str(pebble.ca_bundle))
    yield db, port, pebble
    pebble.close()


def test_issued_certificates_are_served_by_sni_and_the_plain_port_redirects(acme):
    db, port, pebble = acme
    srv = Running(db, port)
    try:
        hosts = (DOMAIN, f"admin.{DOMAIN}", f"blog.{DOMAIN}")
        assert eventually(lambda: issued(db, *hosts), timeout=60), srv.server.log()
        root = pebble.root_pem()
        serials = {}
        for host in hosts:
            conn = eventually(lambda h=host: _try(srv, h, root), timeout=10)
            assert conn, f"no verified handshake for {host}"
            r, body = conn.request("GET", "/_fazt/health")
            assert r.status == 200 and json.loads(body)["status"] == "ok"
            assert r.getheader("Strict-Transport-Security") == "max-age=31536000"
            serials[host] = conn.serial
            conn.close()
        blog = srv.connect(f"blog.{DOMAIN}", root)
        r, body = blog.request("GET", "/")
        assert r.status == 200 and b"hello from fazt" in body
        # the plain port: 308 to the same host, path and query on the HTTPS port
        plain = requests.get(srv.server.url("/docs/?q=1&r=%2F"),
                             headers={"Host": f"blog.{DOMAIN}"}, allow_redirects=False)
        assert plain.status_code == 308
        assert plain.headers["Location"] == \
            f"https://blog.{DOMAIN}:{srv.https_port}/docs/?q=1&r=%2F"
        assert srv.server.get("/_fazt/health", host=DOMAIN).status_code == 200
        # an unknown name gets no certificate at all, and orders nothing
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            srv.connect("unknown.org", root)
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            srv.connect(f"nosuchsite.{DOMAIN}", root)
        # the owner signs in over HTTPS: the cookie is Secure
        admin = srv.connect(f"admin.{DOMAIN}", root)
        r, _ = admin.request("POST", "/api/login", json.dumps(
            {"username": USERNAME, "password": PASSWORD}).encode(),
            {"Content-Type": "application/json", "X-Fazt-Request": "1"})
        assert r.status == 200 and "Secure" in r.getheader("Set-Cookie")
    finally:
        srv.stop()
    issued_before = pebble.issued()
    srv = Running(db, port)  # a restart serves the same certificates and orders nothing
    try:
        for host in hosts:
            conn = eventually(lambda h=host: _try(srv, h, root), timeout=10)
            assert conn.serial == serials[host]
            conn.close()
        assert set(certs(db)) == set(hosts)
        assert pebble.issued() == issued_before
    finally:
        srv.stop()


def _try(srv: Running, host: str, root: bytes) -> Https | None:
    try:
        return srv.connect(host, root)
    except (ssl.SSLError, OSError):
        return None


@pytest.mark.validity(6)
def test_renewal_swaps_the_certificate_while_a_keep_alive_connection_stays_open(acme):
    db, port, pebble = acme
    srv = Running(db, port)
    try:
        host = f"blog.{DOMAIN}"
        assert eventually(lambda: issued(db, host), timeout=60), srv.server.log()
        root = pebble.root_pem()
        kept = srv.connect(host, root)
        first = kept.serial
        r, _ = kept.request("GET", "/")
        assert r.status == 200
        # renewal at a third of 6 s left: a new certificate within seconds
        assert eventually(lambda: _serial(srv, host, root) not in (None, first), timeout=30), \
            srv.server.log()
        r, body = kept.request("GET", "/")  # the connection made before the swap carries on
        assert r.status == 200 and b"hello from fazt" in body
        assert kept.serial == first
        kept.close()
    finally:
        srv.stop()


def _serial(srv: Running, host: str, root: bytes) -> str | None:
    conn = _try(srv, host, root)
    if conn is None:
        return None
    serial = conn.serial
    conn.close()
    return serial


# -- imported certificates, custom domains, a handshake flood (no CA needed) ---------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def imported(tmp_path: Path, site_dir: Path, ca: trustme.CA) -> Path:
    """https on, every name covered by imported certificates, so nothing is ordered."""
    db = init_db(tmp_path / "data.db")
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db))
    fazt("config", "set", "acme_directory", f"https://127.0.0.1:{free_port()}/dir",
         "--db", str(db))
    for host, names in ((DOMAIN, (DOMAIN,)), (f"*.{DOMAIN}", (f"*.{DOMAIN}",)),
                        ("www.blog.org", ("www.blog.org",))):
        leaf = ca.issue_cert(*names)
        chain, key = tmp_path / f"{host}.chain", tmp_path / f"{host}.key"
        chain.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        key.write_bytes(leaf.private_key_pem.bytes())
        fazt("cert", "import", host, "--cert", str(chain), "--key", str(key), "--db", str(db))
    fazt("config", "set", "https", "on", "--db", str(db))
    return db


CLIENT_TIMEOUT = 2  # FAZT_CLIENT_TIMEOUT: a silent handshake is closed after 2 s, not 10


@pytest.fixture(scope="module")
def shared(tmp_path_factory, ca):
    """One server with imported certificates, for the tests that change no setting."""
    tmp_path = tmp_path_factory.mktemp("https")
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "index.html").write_text("<h1>hello from fazt</h1>")
    db = imported(tmp_path, site_dir, ca)
    fazt("site", "domain", "add", "blog", "www.blog.org", "--db", str(db))
    srv = Running(db, free_port(), env=fazt_env(FAZT_CLIENT_TIMEOUT=str(CLIENT_TIMEOUT)))
    yield srv
    srv.stop()


def test_an_imported_wildcard_and_a_custom_domain_are_served(shared, ca):
    root = ca.cert_pem.bytes()
    for host in (f"blog.{DOMAIN}", "www.blog.org"):
        conn = shared.connect(host, root)
        r, body = conn.request("GET", "/")
        assert r.status == 200 and b"hello from fazt" in body, host
        conn.close()
    assert all(c["source"] == "import" for c in certs(shared.server.db).values())


def test_a_warm_file_and_a_refusal_keep_https_rules(shared, ca):
    """The loop answers files already in RAM and refuses some requests itself: both must
    keep HTTPS's rules (redirect on the plain port, HSTS over TLS)."""
    srv = shared
    conn = srv.connect(f"blog.{DOMAIN}", ca.cert_pem.bytes())
    for _ in range(5):  # the first answer warms the cache; the next come from the loop
        r, body = conn.request("GET", "/index.html")
        assert r.status == 200 and b"hello from fazt" in body
        assert r.getheader("Strict-Transport-Security") == "max-age=31536000"
    r, _ = conn.request("POST", "/index.html", b"x")  # refused by the loop itself
    assert r.status == 405
    assert r.getheader("Strict-Transport-Security") == "max-age=31536000"
    conn.close()
    for _ in range(3):
        r = requests.get(f"http://127.0.0.1:{srv.server.port}/index.html?a=%20b",
                         headers={"Host": f"blog.{DOMAIN}"}, allow_redirects=False)
        assert r.status_code == 308
        assert r.headers["Location"] == \
            f"https://blog.{DOMAIN}:{srv.https_port}/index.html?a=%20b"
    # any method: 308 keeps it and the body (the HTTPS side decides what it allows)
    r = requests.post(f"http://127.0.0.1:{srv.server.port}/form?x=1", data=b"a=b",
                      headers={"Host": f"blog.{DOMAIN}"}, allow_redirects=False)
    assert r.status_code == 308, r.text
    assert r.headers["Location"] == f"https://blog.{DOMAIN}:{srv.https_port}/form?x=1"


@pytest.mark.parametrize("method,target", [("GET", "*"), ("OPTIONS", "*"), ("GET", "?a=1"),
                                           ("GET", "#top"), ("GET", "index.html")])
def test_a_request_target_that_is_not_a_path_is_a_400_not_a_redirect(shared, ca, method,
                                                                      target):
    """`GET *` names no path any host serves: the plain port answered it with a 308 to
    "https://host:port%2A", and `GET ?a=1` was served as `/`. nginx answers 400; so does
    fazt, on both ports."""
    request = f"{method} {target} HTTP/1.1\r\nHost: blog.{DOMAIN}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", shared.server.port), timeout=15) as s:
        s.sendall(request)
        r = http.client.HTTPResponse(s, method=method)
        r.begin()
        body = r.read()
    assert r.status == 400 and r.getheader("Location") is None, r.getheader("Location")
    assert json.loads(body)["error"] == {
        "code": "bad_request",
        "message": "Bad Request: the request target is not a path (such as /index.html)."}
    conn = shared.connect(f"blog.{DOMAIN}", ca.cert_pem.bytes())
    r, body = conn.request(method, target)
    assert r.status == 400 and json.loads(body)["error"]["code"] == "bad_request"
    conn.close()


def test_an_absolute_form_target_is_served_as_its_path(shared, ca):
    """Absolute-form (RFC 9112 3.2.2) names the path after the authority; an empty path
    is "/", so `GET http://host` is not the bare query refused above."""
    conn = shared.connect(f"blog.{DOMAIN}", ca.cert_pem.bytes())
    for target in (f"https://blog.{DOMAIN}", f"https://blog.{DOMAIN}/index.html"):
        r, body = conn.request("GET", target)
        assert r.status == 200, (target, r.status, body[:200])
    conn.close()


def store_certificate(db: Path, host: str, leaf: trustme.LeafCert, source: str) -> None:
    """Written straight into the database: `fazt cert import` refuses an expired one, but
    one imported long ago (or an ACME certificate whose renewals failed) expires in place."""
    from fazt.pem import read_chain
    from fazt.store import certs as store
    from fazt.store import open_database

    chain = b"".join(b.bytes() for b in leaf.cert_chain_pems)
    info = read_chain(chain)
    database = open_database(str(db))
    try:
        with database.write() as conn:
            store.save_certificate(conn, host, chain, leaf.private_key_pem.bytes(),
                                   issuer=info.issuer, not_before=info.not_before,
                                   not_after=info.not_after, source=source)
    finally:
        database.close()


def test_a_host_whose_certificate_expired_is_served_plainly(tmp_path, site_dir, ca):
    """Redirected to HTTPS, a browser would only meet an expired certificate: the plain
    port serves that host as one still waiting for its certificate (its renewal is
    ordered meanwhile; here the CA is unreachable, so it stays expired)."""
    import datetime

    db = imported(tmp_path, site_dir, ca)
    fazt("site", "domain", "add", "blog", "old.blog.org", "--db", str(db))
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    store_certificate(db, "old.blog.org", ca.issue_cert(
        "old.blog.org", not_before=past, not_after=past + datetime.timedelta(days=90)),
        "import")
    srv = Running(db, free_port())
    try:
        plain = f"http://127.0.0.1:{srv.server.port}/index.html"
        r = requests.get(plain, headers={"Host": "old.blog.org"}, allow_redirects=False)
        assert r.status_code == 200 and "hello from fazt" in r.text
        # a method the static site refuses is refused here, not sent on to HTTPS
        r = requests.post(plain, data=b"a=b", headers={"Host": "old.blog.org"},
                          allow_redirects=False)
        assert r.status_code == 405, r.text
        # a host with a valid certificate still goes to HTTPS
        r = requests.get(plain, headers={"Host": "www.blog.org"}, allow_redirects=False)
        assert r.status_code == 308
    finally:
        srv.stop()


def test_a_valid_wildcard_is_shown_where_the_hosts_own_certificate_expired(tmp_path,
                                                                           site_dir, ca):
    """blog.D's own certificate lapsed while *.D is valid: the TLS port shows the wildcard
    (not the expired one a browser would refuse), and so the plain port redirects."""
    import datetime

    db = imported(tmp_path, site_dir, ca)
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    store_certificate(db, f"blog.{DOMAIN}", ca.issue_cert(
        f"blog.{DOMAIN}", not_before=past, not_after=past + datetime.timedelta(days=90)),
        "import")
    srv = Running(db, free_port())
    try:
        conn = srv.connect(f"blog.{DOMAIN}", ca.cert_pem.bytes())  # verified: not expired
        names = [v for k, v in conn.sock.getpeercert()["subjectAltName"] if k == "DNS"]
        assert names == [f"*.{DOMAIN}"]
        r, body = conn.request("GET", "/")
        assert r.status == 200 and b"hello from fazt" in body
        conn.close()
        plain = f"http://127.0.0.1:{srv.server.port}/index.html"
        r = requests.get(plain, headers={"Host": f"blog.{DOMAIN}"}, allow_redirects=False)
        assert r.status_code == 308
    finally:
        srv.stop()


def test_a_removed_domain_or_site_is_no_longer_shown_a_certificate(tmp_path, site_dir, ca):
    """Their certificates went with them: a handshake for those names is refused, as for
    any name fazt does not serve."""
    db = imported(tmp_path, site_dir, ca)
    fazt("deploy", str(site_dir), "--site", "shop", "--db", str(db))
    fazt("site", "domain", "add", "blog", "www.blog.org", "--db", str(db))
    fazt("site", "domain", "add", "shop", "www.shop.org", "--db", str(db))
    store_certificate(db, "www.shop.org", ca.issue_cert("www.shop.org"), "acme")
    root = ca.cert_pem.bytes()
    srv = Running(db, free_port())
    try:
        for host in ("www.blog.org", "www.shop.org"):
            srv.connect(host, root).close()

        def refused(host: str) -> bool:
            try:
                srv.connect(host, root).close()
            except ssl.SSLError as exc:
                return "UNRECOGNIZED_NAME" in str(exc)
            return False

        # by another process (the server sees it through its watch of the database)
        fazt("site", "domain", "remove", "blog", "www.blog.org", "--db", str(db))
        assert eventually(lambda: refused("www.blog.org"), timeout=10)
        # through the server's own API, over HTTPS
        admin = srv.connect(f"admin.{DOMAIN}", root)
        r, body = admin.request("POST", "/api/login", json.dumps(
            {"username": USERNAME, "password": PASSWORD}).encode(),
            {"Content-Type": "application/json", "X-Fazt-Request": "1"})
        assert r.status == 200, body
        cookie = r.getheader("Set-Cookie").split(";")[0]
        r, body = admin.request("DELETE", "/api/sites/shop",
                                headers={"Cookie": cookie, "X-Fazt-Request": "1"})
        assert r.status == 200, body
        admin.close()
        assert eventually(lambda: refused("www.shop.org"), timeout=10)
        assert set(certs(db)) == {DOMAIN, f"*.{DOMAIN}"}
        assert srv.connect(f"blog.{DOMAIN}", root).request("GET", "/")[0].status == 200
    finally:
        srv.stop()


def import_cert(db: Path, folder: Path, host: str, leaf: trustme.LeafCert) -> None:
    chain, key = folder / f"{host}.chain", folder / f"{host}.key"
    chain.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    fazt("cert", "import", host, "--cert", str(chain), "--key", str(key), "--db", str(db))


def test_a_certificate_imported_by_another_process_is_shown_at_the_next_handshake(
        tmp_path, site_dir, ca):
    """`fazt cert import` while the server runs: the very next handshake shows it, as the
    next request serves a deploy (no wait for the certificate keeper's next look), and a
    custom domain removed is refused at the next handshake."""
    db = imported(tmp_path, site_dir, ca)
    root = ca.cert_pem.bytes()
    srv = Running(db, free_port())

    def shown(host: str) -> str:
        try:
            conn = srv.connect(host, root)
        except ssl.SSLError as exc:
            return exc.reason or str(exc)
        serial = conn.serial
        conn.close()
        return serial

    try:
        seen = [shown(f"blog.{DOMAIN}")]  # the wildcard's
        for _ in range(3):
            import_cert(db, tmp_path, f"blog.{DOMAIN}", ca.issue_cert(f"blog.{DOMAIN}"))
            seen.append(shown(f"blog.{DOMAIN}"))
            assert seen[-1] not in seen[:-1], seen
        fazt("site", "domain", "add", "blog", "shop.example.org", "--db", str(db))
        import_cert(db, tmp_path, "shop.example.org", ca.issue_cert("shop.example.org"))
        conn = srv.connect("shop.example.org", root)
        r, body = conn.request("GET", "/")
        assert r.status == 200 and b"hello from fazt" in body
        conn.close()
        fazt("site", "domain", "remove", "blog", "shop.example.org", "--db", str(db))
        assert shown("shop.example.org") == "TLSV1_UNRECOGNIZED_NAME"
    finally:
        srv.stop()


def test_the_owners_status_read_keeps_https_rules(shared, ca):
    """The loop answers a signed-in status read itself (server/statuspath.py): over TLS
    with HSTS, as the cockpit's thread does; the plain port still redirects."""
    srv = shared
    admin = srv.connect(f"admin.{DOMAIN}", ca.cert_pem.bytes())
    r, body = admin.request("POST", "/api/login", json.dumps(
        {"username": USERNAME, "password": PASSWORD}).encode(),
        {"Content-Type": "application/json", "X-Fazt-Request": "1"})
    assert r.status == 200, body
    cookie = r.getheader("Set-Cookie").split(";")[0]
    counts = []
    for _ in range(3):
        r, body = admin.request("GET", "/api/system/status", headers={"Cookie": cookie})
        assert r.status == 200, body
        assert r.getheader("Strict-Transport-Security") == "max-age=31536000"
        assert r.getheader("Cache-Control") == "no-store"
        counts.append(json.loads(body)["connections"]["status_loop_answers"])
    assert counts[2] == counts[1] + 1  # the second read came from the loop
    admin.close()
    r = requests.get(f"http://127.0.0.1:{srv.server.port}/api/system/status",
                     headers={"Host": f"admin.{DOMAIN}", "Cookie": cookie},
                     allow_redirects=False)
    assert r.status_code == 308
    assert r.headers["Location"] == f"https://admin.{DOMAIN}:{srv.https_port}/api/system/status"


def test_the_owner_signs_in_over_https_while_a_crowd_is_handshaking(shared, ca):
    srv = shared
    root = ca.cert_pem.bytes()
    stop = threading.Event()
    handshakes = []

    def crowd() -> None:
        ctx = ssl.create_default_context(cadata=root.decode())
        ctx.options |= ssl.OP_NO_TICKET
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", srv.https_port), timeout=10) as raw:
                    with ctx.wrap_socket(raw, server_hostname=f"blog.{DOMAIN}"):
                        handshakes.append(1)
            except OSError:
                pass  # turned away by admission: the crowd keeps trying

    threads = [threading.Thread(target=crowd, daemon=True) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        assert eventually(lambda: len(handshakes) > 50, timeout=30)
        for _ in range(3):
            admin = srv.connect(f"admin.{DOMAIN}", root)
            r, body = admin.request("POST", "/api/login", json.dumps(
                {"username": USERNAME, "password": PASSWORD}).encode(),
                {"Content-Type": "application/json", "X-Fazt-Request": "1"})
            assert r.status == 200, body
            admin.close()
        assert not stop.is_set()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)


def test_a_tls_connection_is_charged_as_two_against_the_connection_limit(tmp_path, site_dir,
                                                                         ca):
    db = imported(tmp_path, site_dir, ca)
    for key, value in (("connection_limit", "64"), ("address_connections", "1000")):
        fazt("config", "set", key, value, "--break-glass", "--db", str(db))
    srv = Running(db, free_port())
    root = ca.cert_pem.bytes()
    held = []
    try:
        # 80 connections' worth: 32 stay open (those used a moment ago are not closed to
        # make room: the newcomers past them get 503 and are closed)
        for _ in range(40):
            conn = srv.connect(f"blog.{DOMAIN}", root)
            conn.request("GET", "/_fazt/health")
            held.append(conn)

        def closed(conn: Https) -> bool:
            conn.sock.settimeout(0)  # no waiting: `eventually` asks again
            try:
                return conn.sock.recv(1) == b""
            except (TimeoutError, ssl.SSLWantReadError):
                return False
            except OSError:
                return True

        assert eventually(lambda: sum(closed(c) for c in held) >= 40 - 32, timeout=10)
        assert sum(not closed(c) for c in held) == 32
    finally:
        for conn in held:
            conn.close()
        srv.stop()


def test_a_client_that_never_finishes_its_handshake_is_closed(shared, ca):
    with socket.create_connection(("127.0.0.1", shared.https_port), timeout=5) as silent:
        silent.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
        silent.settimeout(CLIENT_TIMEOUT + 10)
        began = time.monotonic()
        assert silent.recv(1) == b""  # closed by the server's sweep (about once a second)
        assert time.monotonic() - began >= CLIENT_TIMEOUT - 1
    conn = shared.connect(f"blog.{DOMAIN}", ca.cert_pem.bytes())  # others are unaffected
    assert conn.request("GET", "/")[0].status == 200
    conn.close()


def _closed_within(sock: socket.socket) -> tuple[float, bytes]:
    """Seconds until the server closed `sock`, and everything it sent before."""
    sock.settimeout(CLIENT_TIMEOUT + 10)
    began = time.monotonic()
    answer = b""
    while piece := sock.recv(65536):
        answer += piece
    return time.monotonic() - began, answer


def test_a_failed_handshake_is_closed_at_once(shared, ca):
    """Garbage, plain HTTP or a forged record on the TLS port can never become a request:
    the connection closes at once, not when the handshake (or header) timeout passes."""
    port = shared.https_port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as garbage:
        garbage.sendall(b"\x00" * 64)
        took, _ = _closed_within(garbage)
        assert took < CLIENT_TIMEOUT / 2, took
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
        plain.sendall(f"GET / HTTP/1.1\r\nHost: blog.{DOMAIN}\r\n\r\n".encode())
        took, answer = _closed_within(plain)
        assert took < CLIENT_TIMEOUT / 2, took
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
        assert answer.endswith(b"\r\n\r\nThe plain HTTP request was sent to the HTTPS port: "
                               b"use https:// instead.\n"), answer
    # after the handshake, half a request, then a record that fails its integrity check
    client = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client.wrap_bio(incoming, outgoing, server_hostname=f"blog.{DOMAIN}")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as forged:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                forged.sendall(outgoing.read())
                incoming.write(forged.recv(65536))
        tls.write(f"GET / HTTP/1.1\r\nHost: blog.{DOMAIN}\r\n".encode())
        forged.sendall(outgoing.read())
        forged.sendall(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # application data, forged
        took, _ = _closed_within(forged)
        assert took < CLIENT_TIMEOUT / 2, took
    conn = shared.connect(f"blog.{DOMAIN}", ca.cert_pem.bytes())  # others are unaffected
    assert conn.request("GET", "/")[0].status == 200
    conn.close()
    assert "Traceback" not in shared.server.log()


def test_a_plain_request_on_the_https_port_has_its_log_line(shared):
    """It is a request, answered 400: one line in the request log, fields escaped."""
    with socket.create_connection(("127.0.0.1", shared.https_port), timeout=5) as plain:
        plain.sendall(f'POST /plain"probe%0a HTTP/1.1\r\nHost: blog.{DOMAIN}\r\n\r\n'.encode())
        assert _closed_within(plain)[1].startswith(b"HTTP/1.1 400 Bad Request\r\n")
    expected = f'127.0.0.1 blog.{DOMAIN} "POST /plain\\x22probe%0a" 400 '
    assert eventually(lambda: expected in shared.server.log()), shared.server.log()[-2000:]


def test_a_close_notify_closes_at_once_and_a_request_sent_with_one_is_answered(shared, ca):
    """A client's close_notify is its goodbye: half a request then close_notify, or none at
    all, was held until the header timeout, and then sent a 408 after the goodbye
    (SSLObject.read returns b"" for it, which the transport did not take as the end). A
    request and its close_notify in one write are still answered."""
    port, host = shared.https_port, f"blog.{DOMAIN}"
    client = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    for before in (b"", f"GET / HTTP/1.1\r\nHost: {host}\r\n".encode(),
                   f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client.wrap_bio(incoming, outgoing, server_hostname=host)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    sock.sendall(outgoing.read())
                    incoming.write(sock.recv(65536))
            sock.sendall(outgoing.read())
            if before:
                tls.write(before)
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.unwrap()
            sock.sendall(outgoing.read())  # what it had to say, and goodbye, in one write
            if before.endswith(b"\r\n\r\n"):
                sock.settimeout(CLIENT_TIMEOUT + 10)
                while b"hello from fazt" not in tls_read(tls, incoming, sock):
                    pass
                continue
            took, answer = _closed_within(sock)
            assert took < CLIENT_TIMEOUT / 2, (before, took)
            incoming.write(answer)
            with contextlib.suppress(ssl.SSLError):
                assert b"408" not in tls.read(65536)
    assert "Traceback" not in shared.server.log()


def tls_read(tls: ssl.SSLObject, incoming: ssl.MemoryBIO, sock: socket.socket) -> bytes:
    try:
        return tls.read(65536)
    except ssl.SSLWantReadError:
        data = sock.recv(65536)
        assert data, "closed before the answer"
        incoming.write(data)
        return b""


def test_a_host_that_is_not_a_dns_name_is_not_redirected(shared):
    """The plain port writes the Host into its 308's Location, and the imported wildcard
    covers any one label: "evil%2ecom/.example.test" was sent to
    "https://evil%2ecom/.example.test:PORT/p", which a browser reads as evil.com."""
    for host in (f"evil%2ecom/.{DOMAIN}", f"a@blog.{DOMAIN}", f"x y.{DOMAIN}",
                 f"evil%2ecom?.{DOMAIN}"):
        with socket.create_connection(("127.0.0.1", shared.server.port), timeout=15) as s:
            s.sendall(f"GET /p HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            r = http.client.HTTPResponse(s, method="GET")
            r.begin()
            r.read()
        assert r.status != 308 and r.getheader("Location") is None, (host, r.getheader("Location"))
    r = requests.get(f"http://127.0.0.1:{shared.server.port}/p", allow_redirects=False,
                     headers={"Host": f"blog.{DOMAIN}"}, timeout=15)
    assert r.status_code == 308  # a real name still is
    assert r.headers["Location"] == f"https://blog.{DOMAIN}:{shared.https_port}/p"
