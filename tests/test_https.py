"""HTTPS end to end against Let's Encrypt's test CA (pebble) on loopback.

fazt runs as a real server; pebble sends its HTTP-01 checks to fazt's plain
port and its DNS questions to a dnslib server that answers 127.0.0.1.
"""

import json
import os
import stat
import time
from pathlib import Path

import pytest
import trustme
from conftest import Server, configure, eventually, fazt, free_port, init_db
from pebble_ca import Pebble, available

pytestmark = pytest.mark.skipif(not available(), reason="pebble is not installed")

DOMAIN = "example.test"


def certs(db: Path) -> dict[str, dict]:
    out = fazt("cert", "list", "--json", "--db", str(db)).stdout
    return {c["host"]: c for c in json.loads(out)}


def issued(db: Path, *hosts: str) -> bool:
    listed = certs(db)
    return all(h in listed and listed[h]["not_after"] for h in hosts)


def https_on(db: Path, pebble: Pebble) -> None:
    configure(db, https="on", acme_directory=pebble.directory,
              acme_ca_bundle=str(pebble.ca_bundle), acme_email="owner@example.org")


@pytest.fixture
def setup(tmp_path: Path, site_dir: Path):
    """A database with https on and a site `blog`, and pebble aimed at its plain port."""
    db = init_db(tmp_path / "data.db")
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db))
    port = free_port()
    pebble = Pebble(tmp_path / "pebble", port)
    https_on(db, pebble)
    yield db, port, pebble
    pebble.close()


def start(db: Path, port: int):
    return Server.running(db, port=port, args=("--https-port", str(free_port())))


def test_certificates_for_the_domain_the_cockpit_and_each_site_survive_a_restart(setup, site_dir):
    db, port, pebble = setup
    with start(db, port) as srv:
        assert eventually(lambda: issued(db, DOMAIN, f"admin.{DOMAIN}", f"blog.{DOMAIN}"),
                          timeout=60), srv.log() + pebble.log()
        listed = certs(db)
        assert listed[DOMAIN]["issuer"].startswith("Pebble Intermediate")
        assert all(c["last_error"] is None and c["source"] == "acme" for c in listed.values())
        assert set(listed) == {DOMAIN, f"admin.{DOMAIN}", f"blog.{DOMAIN}"}  # nothing else
        # a site deployed while running gets its certificate too (another process deploys)
        fazt("deploy", str(site_dir), "--site", "shop", "--db", str(db))
        assert eventually(lambda: issued(db, f"shop.{DOMAIN}"), timeout=60), srv.log()
    issued_before = pebble.issued()
    before = {h: c["not_after"] for h, c in certs(db).items()}
    with start(db, port) as srv:
        # the restart orders only what is new: one more site, one more order
        fazt("deploy", str(site_dir), "--site", "news", "--db", str(db))
        assert eventually(lambda: issued(db, f"news.{DOMAIN}"), timeout=60), srv.log()
    assert pebble.issued() == issued_before + 1
    after = certs(db)
    assert all(after[h]["not_after"] == t for h, t in before.items())


def test_an_account_the_ca_forgot_is_registered_again(setup, site_dir):
    db, port, pebble = setup
    with start(db, port) as srv:
        assert eventually(lambda: issued(db, DOMAIN), timeout=60), srv.log()
        pebble.restart()  # a new pebble knows no account
        fazt("deploy", str(site_dir), "--site", "later", "--db", str(db))
        assert eventually(lambda: issued(db, f"later.{DOMAIN}"), timeout=60), srv.log()
    assert certs(db)[f"later.{DOMAIN}"]["last_error"] is None


def test_an_unreachable_ca_is_a_visible_error_and_plain_http_keeps_serving(tmp_path, site_dir):
    db = init_db(tmp_path / "data.db")
    configure(db, https="on", acme_directory=f"https://127.0.0.1:{free_port()}/dir")
    with start(db, free_port()) as srv:
        assert eventually(lambda: DOMAIN in certs(db), timeout=30), srv.log()
        error = certs(db)[DOMAIN]["last_error"]
        assert "Cannot reach the ACME server" in error and "Connection refused" in error
        assert srv.get("/_fazt/health").status_code == 200
        status = fazt("server", "status", "--db", str(db)).stdout
        assert "failing" in status and "Cannot reach the ACME server" in status
        as_json = json.loads(fazt("server", "status", "--json", "--db", str(db)).stdout)
        assert as_json["https"]["certificates"][0]["last_error"] == error


def test_a_host_that_fails_validation_is_retried_later_and_says_why(tmp_path):
    db = init_db(tmp_path / "data.db")
    pebble = Pebble(tmp_path / "pebble", free_port())  # its checks go to a closed port
    try:
        https_on(db, pebble)
        with start(db, free_port()) as srv:
            assert eventually(lambda: DOMAIN in certs(db), timeout=60), srv.log()
            failed = certs(db)[DOMAIN]
            assert failed["last_error"].startswith(f"The CA could not validate {DOMAIN}:")
            assert failed["not_after"] is None  # nothing was installed
            assert failed["next_attempt"] > time.time() + 30  # backoff, not a busy retry
    finally:
        pebble.close()


def test_the_plain_port_answers_only_known_challenges(setup):
    db, port, pebble = setup
    with start(db, port) as srv:
        r = srv.get("/.well-known/acme-challenge/not-a-token", host=DOMAIN)
        assert r.status_code == 404


# -- the owner's commands ----------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_pair(folder: Path, cert: trustme.LeafCert) -> tuple[str, str]:
    chain, key = folder / "chain.pem", folder / "key.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    return str(chain), str(key)


def test_cert_import_checks_everything_before_writing(db_path, tmp_path, ca):
    import datetime

    good = write_pair(tmp_path, ca.issue_cert("*.other.org"))
    r = fazt("cert", "import", "*.other.org", "--cert", good[0], "--key", good[1],
             "--db", str(db_path))
    assert "valid until" in r.stdout
    listed = certs(db_path)
    assert listed["*.other.org"]["source"] == "import"
    assert set(listed["*.other.org"]) == {"host", "issuer", "not_before", "not_after", "source",
                                          "last_error", "next_attempt"}  # never a key

    other = tmp_path / "other"
    other.mkdir()
    mismatched = (good[0], write_pair(other, ca.issue_cert("*.other.org"))[1])
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    huge = tmp_path / "huge.pem"  # a certificate followed by 2 MB of anything
    huge.write_bytes(Path(good[0]).read_bytes() + b"x" * (2 << 20))
    expired_dir = tmp_path / "expired"
    expired_dir.mkdir()
    expired = write_pair(expired_dir, ca.issue_cert(
        "old.org", not_before=past, not_after=past + datetime.timedelta(days=30)))
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=10)
    future_dir = tmp_path / "future"
    future_dir.mkdir()
    not_yet = write_pair(future_dir, ca.issue_cert(
        "new.org", not_before=future, not_after=future + datetime.timedelta(days=30)))
    for host, (cert, key), message in (
            ("*.other.org", mismatched, "does not match"),
            ("old.org", expired, "expired"),
            ("new.org", not_yet, "not valid before"),
            ("www.other.com", good, "not www.other.com"),
            ("bad host", good, "not a host name"),
            ("x.org", (str(tmp_path / "missing.pem"), good[1]), "Cannot read --cert"),
            ("x.org", (good[1], good[1]), "no PEM certificate"),
            ("*.other.org", (str(huge), good[1]), "is larger than 1 MB")):
        r = fazt("cert", "import", host, "--cert", cert, "--key", key, "--db", str(db_path),
                 check=False)
        assert r.returncode == 1 and message in r.stderr, (host, r.stderr)
        assert "Traceback" not in r.stderr
    assert set(certs(db_path)) == {"*.other.org"}  # nothing else was written


def test_cert_import_serves_a_chain_given_in_any_order(db_path, tmp_path):
    """A bundle listing the intermediate before the certificate (or with openssl's 'Bag
    Attributes' text, or the certificate pasted into the key file) was refused with 'The
    key does not match the certificate', though key and certificate matched: TLS sends
    the first certificate as the host's. It is now stored leaf first, then its issuers."""
    import sqlite3
    import ssl

    from cryptography import x509

    from fazt.server.tls import context_from_pem

    root = trustme.CA()
    intermediate = root.create_child_ca()
    leaf = intermediate.issue_cert("www.chain.org")
    blocks = [blob.bytes() for blob in leaf.cert_chain_pems]  # leaf, intermediate
    (tmp_path / "reversed.pem").write_bytes(b"Bag Attributes\n    localKeyID: 01\n"
                                            + blocks[1] + blocks[0])
    (tmp_path / "key.pem").write_bytes(blocks[0] + leaf.private_key_pem.bytes())
    fazt("cert", "import", "www.chain.org", "--cert", str(tmp_path / "reversed.pem"),
         "--key", str(tmp_path / "key.pem"), "--db", str(db_path))
    with sqlite3.connect(db_path) as conn:
        chain, key = conn.execute("SELECT chain_pem, key_pem FROM certificates").fetchone()
    served = x509.load_pem_x509_certificates(chain.encode())
    assert [c.subject for c in served] == [
        x509.load_pem_x509_certificate(b).subject for b in blocks]
    assert "CERTIFICATE" not in key
    # a client that trusts only the root verifies the chain the TLS port sends
    client_ctx = ssl.create_default_context(cadata=root.cert_pem.bytes().decode())
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="www.chain.org")
    server = context_from_pem(chain.encode(), key.encode()).wrap_bio(s_in, s_out,
                                                                    server_side=True)
    for _ in range(4):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    client.do_handshake()  # raises SSLCertVerificationError on a chain the root cannot reach
    # a key that matches no certificate in the file is still refused
    other = trustme.CA().issue_cert("www.chain.org").private_key_pem.bytes()
    (tmp_path / "other.pem").write_bytes(other)
    r = fazt("cert", "import", "www.chain.org", "--cert", str(tmp_path / "reversed.pem"),
             "--key", str(tmp_path / "other.pem"), "--db", str(db_path), check=False)
    assert r.returncode == 1 and "does not match" in r.stderr
    # a key with a passphrase is named as such (it was 'holds no unencrypted PEM key')
    from cryptography.hazmat.primitives import serialization
    locked = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    (tmp_path / "locked.pem").write_bytes(locked.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    r = fazt("cert", "import", "www.chain.org", "--cert", str(tmp_path / "reversed.pem"),
             "--key", str(tmp_path / "locked.pem"), "--db", str(db_path), check=False)
    assert r.returncode == 1 and "The key is encrypted" in r.stderr, r.stderr


@pytest.mark.parametrize("kind, says", [("rsa1024", "RSA of 1024 bits"),
                                         ("ed25519", "Ed25519PrivateKey"),
                                         ("dsa", "DSAPrivateKey")])
def test_cert_import_refuses_a_key_the_tls_port_could_not_serve(db_path, tmp_path, kind,
                                                                says):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import dsa, ed25519, rsa
    from cryptography.x509.oid import NameOID

    key = {"rsa1024": lambda: rsa.generate_private_key(65537, 1024),
           "ed25519": ed25519.Ed25519PrivateKey.generate,
           "dsa": lambda: dsa.generate_private_key(2048)}[kind]()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak.org")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("weak.org")]), False)
            .sign(key, None if kind == "ed25519" else hashes.SHA256()))
    (tmp_path / "weak.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "weak.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    r = fazt("cert", "import", "weak.org", "--cert", str(tmp_path / "weak.pem"), "--key",
             str(tmp_path / "weak.key"), "--db", str(db_path), check=False)
    assert r.returncode == 1 and says in r.stderr, r.stderr
    assert certs(db_path) == {}


def test_site_domains_are_checked_listed_and_served(db_path, site_dir, instance, client):
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
    fazt("site", "domain", "add", "blog", "www.blog.org", "--db", str(db_path))
    assert json.loads(fazt("site", "domain", "list", "blog", "--json", "--db",
                           str(db_path)).stdout) == ["www.blog.org"]
    for args, message in ((("nosuch", "a.org"), "no site named"),
                          (("blog", f"x.{DOMAIN}"), "already one of fazt's own hosts"),
                          (("blog", "not a host"), "not a host name"),
                          (("blog", "192.0.2.7"), "IP address"),
                          (("blog", "0x7f.1"), "IP address")):
        r = fazt("site", "domain", "add", *args, "--db", str(db_path), check=False)
        assert r.returncode == 1 and message in r.stderr, r.stderr
    for action in (("list", "nosuch"), ("remove", "nosuch", "www.blog.org")):
        r = fazt("site", "domain", *action, "--db", str(db_path), check=False)
        assert r.returncode == 1 and "no site named 'nosuch'" in r.stderr, r.stderr
    instance.reload_if_changed()
    r = client.simulate_get("/", headers={"Host": "www.blog.org"})
    assert r.status_code == 200 and "hello from fazt" in r.text
    fazt("site", "domain", "remove", "blog", "www.blog.org", "--db", str(db_path))
    r = fazt("site", "domain", "remove", "blog", "www.blog.org", "--db", str(db_path),
             check=False)
    assert r.returncode == 1 and "has no domain" in r.stderr
    instance.reload_if_changed()
    assert client.simulate_get("/", headers={"Host": "www.blog.org"}).status_code == 404


def test_a_removed_site_frees_its_domains(db_path, site_dir):
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
    fazt("deploy", str(site_dir), "--site", "shop", "--db", str(db_path))
    fazt("site", "domain", "add", "blog", "WWW.Blog.org.", "--db", str(db_path))
    fazt("site", "remove", "blog", "--db", str(db_path))
    fazt("site", "domain", "add", "shop", "www.blog.org", "--db", str(db_path))
    assert json.loads(fazt("site", "domain", "list", "shop", "--json", "--db",
                           str(db_path)).stdout) == ["www.blog.org"]


def test_a_custom_domain_or_an_import_may_name_an_idn_as_the_owner_writes_it(
        db_path, site_dir, tmp_path, ca, instance, client):
    """'bücher.example' was refused as 'not a host name': the owner had to find its xn--
    form, the one browsers send in Host and SNI, which fazt now works out itself."""
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
    r = fazt("site", "domain", "add", "blog", "Bücher.Example.", "--db", str(db_path))
    assert "xn--bcher-kva.example" in r.stdout
    assert json.loads(fazt("site", "domain", "list", "blog", "--json", "--db",
                           str(db_path)).stdout) == ["xn--bcher-kva.example"]
    instance.reload_if_changed()
    r = client.simulate_get("/", headers={"Host": "xn--bcher-kva.example"})
    assert r.status_code == 200 and "hello from fazt" in r.text
    chain, key = write_pair(tmp_path, ca.issue_cert("*.xn--bcher-kva.example"))
    r = fazt("cert", "import", "*.bücher.example", "--cert", chain, "--key", key, "--db",
             str(db_path))
    assert set(certs(db_path)) == {"*.xn--bcher-kva.example"}
    fazt("site", "domain", "remove", "blog", "bücher.example", "--db", str(db_path))
    assert json.loads(fazt("site", "domain", "list", "blog", "--json", "--db",
                           str(db_path)).stdout) == []
    r = fazt("site", "domain", "add", "blog", "☃.net", "--db", str(db_path), check=False)
    assert r.returncode == 1 and "not a host name" in r.stderr


def import_cert(db: Path, folder: Path, ca: trustme.CA, host: str) -> None:
    folder.mkdir()
    chain, key = write_pair(folder, ca.issue_cert(host))
    fazt("cert", "import", host, "--cert", chain, "--key", key, "--db", str(db))


def test_removing_a_domain_or_a_site_removes_the_certificates_it_freed(db_path, tmp_path,
                                                                        site_dir, ca):
    """A certificate left behind was still listed, and served on SNI, for a name fazt no
    longer answers. A wildcard and the domain's own certificate stay."""
    for site in ("blog", "shop"):
        fazt("deploy", str(site_dir), "--site", site, "--db", str(db_path))
    fazt("site", "domain", "add", "blog", "www.blog.org", "--db", str(db_path))
    fazt("site", "domain", "add", "shop", "www.shop.org", "--db", str(db_path))
    for n, host in enumerate(("www.blog.org", "www.shop.org", f"shop.{DOMAIN}", DOMAIN,
                              f"*.{DOMAIN}")):
        import_cert(db_path, tmp_path / f"pair{n}", ca, host)
    fazt("site", "domain", "remove", "blog", "www.blog.org", "--db", str(db_path))
    assert set(certs(db_path)) == {"www.shop.org", f"shop.{DOMAIN}", DOMAIN, f"*.{DOMAIN}"}
    fazt("site", "remove", "shop", "--db", str(db_path))
    assert set(certs(db_path)) == {DOMAIN, f"*.{DOMAIN}"}
    fazt("site", "remove", "blog", "--db", str(db_path))
    assert set(certs(db_path)) == {DOMAIN, f"*.{DOMAIN}"}


def test_a_certificate_whose_host_was_removed_during_its_order_is_not_kept(db_path,
                                                                          site_dir):
    """An order takes seconds: the site or domain may go meanwhile (another process, the
    dashboard). Stored then, its certificate would be served and never removed."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    from fazt import autocert
    from fazt.server.tls import Certificates
    from fazt.store import open_database

    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
    fazt("site", "domain", "add", "blog", "www.blog.org", "--db", str(db_path))

    def issue(host: str, key_pem: bytes, config: dict) -> bytes:
        """The CA's part, signed here; the domain is removed while it runs."""
        fazt("site", "domain", "remove", "blog", host, "--db", str(db_path))
        key = serialization.load_pem_private_key(key_pem, password=None)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=90))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), False)
                .sign(key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM)

    db = open_database(str(db_path))
    settings = {"https": "on", "domain": "localhost", "acme_directory": "http://127.0.0.1:9/"}
    sink = Certificates()
    running = autocert.AutoCert(db, sink, lambda: settings)
    running._issue = issue
    try:
        running.run_once(time.time())  # orders www.blog.org: the only name it may order
    finally:
        db.close()
    assert sink.hosts() == []
    assert certs(db_path) == {}


def test_a_backup_is_readable_by_its_owner_only(db_path, tmp_path):
    out = tmp_path / "backup.db"
    fazt("backup", str(out), "--db", str(db_path))
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600


def test_the_admin_api_imports_lists_and_manages_domains_without_showing_keys(
        db_path, tmp_path, site_dir, ca):
    from conftest import Admin

    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
    cert = ca.issue_cert("www.blog.org")
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems).decode()
    key = cert.private_key_pem.bytes().decode()
    with Server.running(db_path) as srv:
        admin = Admin(srv)
        r = admin.post("/api/sites/blog/domains", json={"host": "www.blog.org"})
        assert r.status_code == 201, r.text
        assert srv.get("/", host="www.blog.org").status_code == 200  # routed at once
        assert admin.get("/api/domains").json() == {
            "domains": [{"host": "www.blog.org", "site": "blog"}]}
        r = admin.post("/api/certificates", json={"host": "www.blog.org", "cert": chain,
                                                  "key": key})
        assert r.status_code == 201, r.text
        wrong = admin.post("/api/certificates", json={"host": "www.blog.org", "cert": chain,
                                                      "key": ca.issue_cert("x.org")
                                                      .private_key_pem.bytes().decode()})
        assert wrong.status_code == 400
        assert wrong.json()["error"]["message"] == "The key does not match the certificate."
        listed = admin.get("/api/certificates").json()
        assert [c["host"] for c in listed["certificates"]] == ["www.blog.org"]
        assert listed["enabled"] is False
        for path in ("/api/certificates", "/api/domains", "/api/system/status"):
            assert "PRIVATE KEY" not in admin.get(path).text
        r = admin.session.delete(srv.url("/api/sites/blog/domains/www.blog.org"), timeout=10)
        assert r.status_code == 200, r.text
        assert srv.get("/", host="www.blog.org").status_code == 404
        r = admin.post("/api/sites/nosuch/domains", json={"host": "a.org"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# -- the plain port with HTTPS on (in-process: the same Router the server runs) --------


class Challenges:
    """What the plain port asks of AutoCert: challenge answers, and which hosts have
    a certificate."""

    def __init__(self, answers: dict[str, str], hosts: tuple[str, ...] = ()):
        self.answers = answers
        self.hosts = hosts

    def challenge(self, token: str) -> str | None:
        return self.answers.get(token)

    def serves(self, host: str) -> bool:
        return host in self.hosts


def test_the_plain_port_redirects_with_path_and_query_and_keeps_health_and_challenges(
        instance, client):
    instance.https_port = 8443
    instance.autocert = Challenges({"tok": "tok.thumbprint"},
                                   ("blog.localhost", "admin.localhost", "example.test"))
    waiting = client.simulate_get("/", headers={"Host": "shop.localhost"})
    assert waiting.status_code != 308  # no certificate yet: served plainly meanwhile
    r = client.simulate_get("/docs/a b", query_string="x=1&y=%2F",
                            headers={"Host": "blog.localhost:4698"})
    assert r.status_code == 308
    assert r.headers["Location"] == "https://blog.localhost:8443/docs/a%20b?x=1&y=%2F"
    raw = client.simulate_post("/api/login", headers={"Host": "admin.localhost"},
                               extras={"REQUEST_URI": "/api/login?next=%2Fsites%3Fa"})
    assert raw.status_code == 308  # keeps the method and body, unlike 301/302
    assert raw.headers["Location"] == "https://admin.localhost:8443/api/login?next=%2Fsites%3Fa"
    instance.https_port = 443
    r = client.simulate_get("/", headers={"Host": "example.test"})
    assert r.headers["Location"] == "https://example.test/"
    health = client.simulate_get("/_fazt/health", headers={"Host": "example.test"})
    assert health.status_code == 200 and "Strict-Transport-Security" not in health.headers
    answer = client.simulate_get("/.well-known/acme-challenge/tok",
                                 headers={"Host": "example.test"})
    assert answer.status_code == 200 and answer.text == "tok.thumbprint"
    assert client.simulate_get("/.well-known/acme-challenge/other",
                               headers={"Host": "example.test"}).status_code == 404
    # a port that is not a number (anyone can send one) is no server error
    for host in ("blog.localhost:abc", "blog.localhost:1@evil.org"):
        r = client.simulate_get("/x", headers={"Host": host})
        assert r.status_code == 308 and r.headers["Location"] == "https://blog.localhost/x"


def test_https_responses_carry_hsts_and_plain_ones_do_not(instance, client):
    instance.https_port = 443
    r = client.simulate_get("/_fazt/health", headers={"Host": "localhost"}, protocol="https")
    assert r.status_code == 200
    assert r.headers["Strict-Transport-Security"] == "max-age=31536000"
    missing = client.simulate_get("/nothing", headers={"Host": "admin.localhost"},
                                  protocol="https")
    assert missing.headers["Strict-Transport-Security"] == "max-age=31536000"  # errors too
    instance.config["hsts_max_age"] = 0
    r = client.simulate_get("/_fazt/health", headers={"Host": "localhost"}, protocol="https")
    assert "Strict-Transport-Security" not in r.headers
    instance.https_port = None  # HTTPS off: no redirect, no HSTS
    r = client.simulate_get("/_fazt/health", headers={"Host": "localhost"})
    assert r.status_code == 200


def test_the_session_cookie_is_secure_over_https_only(instance, client):
    from conftest import PASSWORD, USERNAME

    body = {"username": USERNAME, "password": PASSWORD}
    headers = {"Host": "admin.localhost", "X-Fazt-Request": "1"}
    plain = client.simulate_post("/api/login", json=body, headers=headers)
    assert "Secure" not in plain.headers["Set-Cookie"]
    instance.https_port = 443
    tls = client.simulate_post("/api/login", json=body, headers=headers, protocol="https")
    assert tls.status_code == 200, tls.text
    assert "Secure" in tls.headers["Set-Cookie"]


def test_a_port_out_of_range_is_one_sentence(db_path):
    fazt("config", "set", "https", "on", "--db", str(db_path))
    for args in (("--port", "99999"), ("--port", str(free_port()), "--https-port", "70000")):
        r = fazt("server", "start", *args, "--db", str(db_path), check=False)
        assert r.returncode == 1 and "is not a port number" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def _failing(db, tried: list):
    """An AutoCert over `db` with the live settings (as the server reads them), whose
    every order fails as a wrong or unreachable CA makes it fail."""
    from fazt import autocert
    from fazt.acme_client import AcmeError
    from fazt.instance import read_config
    from fazt.server.tls import Certificates

    def settings() -> dict:
        with db.read() as conn:
            return read_config(conn)

    def issue(host: str, key_pem: bytes, config: dict) -> bytes:
        tried.append((host, config["acme_directory"]))
        raise AcmeError(f"Cannot reach the ACME server at {config['acme_directory']}.")

    running = autocert.AutoCert(db, Certificates(), settings)
    running._issue = issue
    return running


def test_fixing_a_ca_setting_ends_the_backoff_at_once(db_path):
    """A typo in acme_directory made every order fail; its fix must not wait out the
    hours of backoff earned against the typo."""
    from fazt.store import certs as store
    from fazt.store import open_database

    configure(db_path, https="on", acme_directory="https://ca.invalid/typo")
    db = open_database(str(db_path))
    try:
        tried: list = []
        running = _failing(db, tried)
        now = time.time()
        running.run_once(now)
        running.run_once(now)
        assert sorted(h for h, _ in tried) == [f"admin.{DOMAIN}", DOMAIN]
        running.run_once(now + 30)
        assert len(tried) == 2  # backing off
        configure(db_path, hsts_max_age="600")  # not a CA setting: the backoff stays
        running.run_once(now + 30)
        assert len(tried) == 2
        configure(db_path, acme_directory="https://ca.example/directory")
        with db.read() as conn:
            assert store.order_failures(conn) == {}
        running.run_once(now + 30)  # the next look (within WATCH seconds) orders
        assert tried[-1] == (f"admin.{DOMAIN}", "https://ca.example/directory")

        def orders_again(change) -> bool:
            for _ in range(3):  # both hosts fail (again), then back off
                running.run_once(now + 30)
            count = len(tried)
            change()
            running.run_once(now + 30)
            return len(tried) == count + 1

        assert orders_again(lambda: configure(db_path, acme_email="me@example.org"))
        bundle = db_path.parent / "bundle.pem"
        trustme.CA().cert_pem.write_to_path(str(bundle))
        assert orders_again(lambda: configure(db_path, acme_ca_bundle=str(bundle)))
        from fazt.instance import machine_for, reset_config
        assert orders_again(lambda: reset_config(db, machine_for({}, db.path),
                                                 ["acme_directory"]))
        assert tried[-1][1] == "https://acme-v02.api.letsencrypt.org/directory"
        assert not orders_again(lambda: None)
    finally:
        db.close()


def test_a_ca_setting_changed_while_an_order_runs_leaves_no_backoff(db_path):
    from fazt.store import certs as store
    from fazt.store import open_database

    configure(db_path, https="on", acme_directory="https://ca.invalid/typo")
    db = open_database(str(db_path))
    try:
        tried: list = []
        running = _failing(db, tried)
        issue = running._issue

        def fixed_meanwhile(host: str, key_pem: bytes, config: dict) -> bytes:
            configure(db_path, acme_directory="https://ca.example/directory")
            running._issue = issue
            return issue(host, key_pem, config)

        running._issue = fixed_meanwhile
        now = time.time()
        running.run_once(now)  # fails against the typo, the fix arriving meanwhile
        with db.read() as conn:
            assert store.order_failures(conn) == {}
        running.run_once(now)
        assert tried == [(f"admin.{DOMAIN}", "https://ca.invalid/typo"),
                         (f"admin.{DOMAIN}", "https://ca.example/directory")]
    finally:
        db.close()


def test_a_restart_retries_a_failing_host_once_but_not_in_a_tight_loop(db_path):
    """Failures are in the database, so a restart keeps their count; but a restart is the
    owner's "try again now" (DNS fixed, a port opened), so each failing host is retried
    at start, no sooner than a minute after its last attempt."""
    from fazt import autocert
    from fazt.store import certs as store
    from fazt.store import open_database

    configure(db_path, https="on")
    db = open_database(str(db_path))
    try:
        with db.write() as conn:  # six failures in a row before the restart: 32 min backoff
            for _ in range(6):
                store.record_failure(conn, DOMAIN, "Connection refused",
                                     time.time() + autocert.backoff(6))
            conn.execute("UPDATE cert_orders SET last_attempt = ?", (time.time() - 1,))
            store.record_failure(conn, f"admin.{DOMAIN}", "Connection refused",
                                 time.time() + autocert.backoff(1))
            conn.execute("UPDATE cert_orders SET last_attempt = ?", (time.time() - 1,))
        tried: list = []
        running = _failing(db, tried)  # the restart
        now = time.time()
        running.run_once(now)
        assert tried == []  # the last attempts were a second ago: not in a tight loop
        running.run_once(now + autocert.BACKOFF_FIRST)
        running.run_once(now + autocert.BACKOFF_FIRST)
        assert sorted(h for h, _ in tried) == [f"admin.{DOMAIN}", DOMAIN]
        with db.read() as conn:
            failures = store.order_failures(conn)
        assert failures[DOMAIN][0] == 7  # the count goes on: its backoff keeps doubling
        assert failures[DOMAIN][1] >= now + autocert.backoff(7) - 5
        running.run_once(now + 2 * autocert.BACKOFF_FIRST)
        running.run_once(now + 2 * autocert.BACKOFF_FIRST)
        assert len(tried) == 2  # once a start, then the backoff again
    finally:
        db.close()


def test_a_stored_certificate_that_cannot_be_read_keeps_neither_others_nor_changes_out(
        db_path, tmp_path, ca):
    """One row whose chain no longer parses (a hand edit, a damaged restore) raised out of
    AutoCert.load: the server could not start with https on, and a running one never
    loaded a certificate imported or renewed afterwards. It is now logged and skipped."""
    import sqlite3

    from fazt.autocert import AutoCert
    from fazt.server.tls import Certificates
    from fazt.store import open_database

    for host in ("good.org", "bad.org"):
        import_cert(db_path, tmp_path / host, ca, host)
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE certificates SET chain_pem = 'garbage' WHERE host = 'bad.org'")
    db = open_database(str(db_path))
    try:
        sink = Certificates()
        running = AutoCert(db, sink, lambda: {"https": "off"})
        running.load()  # as at boot
        assert sink.hosts() == ["good.org"]
        import_cert(db_path, tmp_path / "later", ca, "later.org")
        running.run_once(time.time())  # as the running server's watch
        assert sink.hosts() == ["good.org", "later.org"]
    finally:
        db.close()


def test_an_expired_certificate_is_named_as_such_by_status_and_cert_list(db_path, tmp_path,
                                                                        ca):
    """An import left to lapse has no order error, so `fazt server status` (and the
    dashboard) counted it among the valid certificates and `cert list` said 'until' a
    past day, while browsers refused it and the plain port served its host plainly."""
    import datetime

    from test_https_serving import store_certificate

    import_cert(db_path, tmp_path / "good", ca, "good.org")
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    store_certificate(db_path, "old.org", ca.issue_cert(
        "old.org", not_before=past, not_after=past + datetime.timedelta(days=30)), "import")
    status = fazt("server", "status", "--db", str(db_path)).stdout
    assert "1 valid certificate, 0 failing, 1 expired" in status, status
    assert "old.org: expired on 2020-01-31" in status
    listing = fazt("cert", "list", "--db", str(db_path)).stdout
    assert [line.split()[0] for line in listing.splitlines() if "EXPIRED 2020-01-31" in line] \
        == ["old.org"], listing


def test_a_failing_renewal_is_retried_before_its_certificate_runs_out(db_path):
    """The backoff doubled up to a day whatever the certificate still served had left: with
    Let's Encrypt's few-day certificates, a CA outage of a day and a half ended in hours
    of an expired one. A renewal is now tried again once a quarter of what was left has
    passed, and `cert list` says when."""
    from fazt.pem import CertInfo
    from fazt.store import certs as store
    from fazt.store import open_database

    configure(db_path, https="on")
    db = open_database(str(db_path))
    try:
        tried: list = []
        running = _failing(db, tried)
        running.load()  # (the database has none: these are put in RAM, as if served)
        now = time.time()
        # D's certificate is due for renewal (1000 s left), admin.D's is not
        running.served[DOMAIN] = (CertInfo((DOMAIN,), "CA", now - 5000, now + 1000, "1"), "acme")
        running.served[f"admin.{DOMAIN}"] = (CertInfo((f"admin.{DOMAIN}",), "CA", now,
                                                      now + 10**6, "2"), "acme")
        with db.write() as conn:  # six failures in a row: the seventh backs off 64 min
            for _ in range(6):
                store.record_failure(conn, DOMAIN, "Connection refused", now - 1)
            conn.execute("UPDATE cert_orders SET last_attempt = ?", (now - 100,))
        running.run_once(now)
        assert [h for h, _ in tried] == [DOMAIN]
        with db.read() as conn:
            count, next_attempt, _ = store.order_failures(conn)[DOMAIN]
        assert count == 7 and next_attempt < time.time() + 250 + 5  # not 64 min
        listed = certs(db_path)[DOMAIN]
        assert listed["next_attempt"] == next_attempt
        running.run_once(next_attempt - 1)
        assert len(tried) == 1
        running.run_once(next_attempt)
        assert [h for h, _ in tried] == [DOMAIN, DOMAIN]
    finally:
        db.close()
