"""The TLS transport over real sockets and real handshakes: SNI, refusal, hot swap."""

import contextlib
import socket
import ssl
import threading

import pytest
import trustme

from fazt.server.tls import CIPHERS, HANDSHAKE_TIMEOUT, Certificates, TLSFailure, context_from_pem


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def leaf(ca: trustme.CA, *names: str) -> tuple[bytes, bytes]:
    cert = ca.issue_cert(*names)
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    return chain, cert.private_key_pem.bytes()


class EchoServer:
    """A one-thread server that speaks TLS only through TLSTransport, like the loop will."""

    def __init__(self, certificates: Certificates):
        self.certificates = certificates
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.failures: list[str] = []
        self.names: list[str | None] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):  # a client that hangs up first is fine
            self._exchange(conn)

    def _exchange(self, conn: socket.socket) -> None:
        transport = self.certificates.transport()
        with conn:
            while True:
                data = conn.recv(65536)
                try:
                    plain = transport.feed(data)
                except TLSFailure as exc:
                    self.failures.append(str(exc))
                    conn.sendall(transport.outgoing())  # the alert first, then close
                    return
                out = transport.outgoing()
                if transport.handshake_done and transport.server_name not in self.names:
                    self.names.append(transport.server_name)
                if plain:
                    out += transport.wrap(b"echo:" + plain)
                if out:
                    conn.sendall(out)
                if not data or transport.peer_closed:
                    conn.sendall(transport.close())
                    return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def certs(ca):
    certificates = Certificates()
    certificates.install("example.test", *leaf(ca, "example.test"))
    certificates.install("admin.example.test", *leaf(ca, "admin.example.test"))
    return certificates


@pytest.fixture
def server(certs):
    srv = EchoServer(certs)
    yield srv
    srv.close()


def client_context(ca: trustme.CA, **kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    for key, value in kw.items():
        setattr(ctx, key, value)
    return ctx


def connect(server: EchoServer, ctx: ssl.SSLContext, name: str | None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname=name)


def peer_names(sock: ssl.SSLSocket) -> list[str]:
    return [v for k, v in sock.getpeercert()["subjectAltName"] if k == "DNS"]


def test_sni_picks_each_hosts_certificate_and_data_flows(ca, server):
    for name in ("example.test", "admin.example.test"):
        with connect(server, client_context(ca), name) as tls:
            assert peer_names(tls) == [name]
            tls.sendall(b"hello")
            assert tls.recv(100) == b"echo:hello"
            assert tls.version() == "TLSv1.3"
    assert server.names == ["example.test", "admin.example.test"]


def test_large_payloads_cross_in_both_directions(ca, server):
    payload = bytes(range(256)) * 4096  # 1 MiB, many records
    with connect(server, client_context(ca), "example.test") as tls:
        tls.sendall(payload)
        got = b""
        # each read on the server side comes back with its own prefix
        while len(got.replace(b"echo:", b"")) < len(payload):
            got += tls.recv(1 << 20)
    assert got.replace(b"echo:", b"") == payload


def test_an_unknown_host_gets_unrecognized_name_and_no_certificate(ca, server):
    ctx = client_context(ca)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        connect(server, ctx, "other.test")
    assert server.failures  # the server saw the handshake fail and sent the alert


def test_no_sni_is_refused_unless_a_default_host_is_set(ca, certs, server):
    ctx = client_context(ca, check_hostname=False)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        connect(server, ctx, None)
    certs.default_host = "example.test"
    with connect(server, ctx, None) as tls:
        assert tls.getpeercert()  # verified against the CA
        tls.sendall(b"x")
        assert tls.recv(10) == b"echo:x"
    with connect(server, ctx, "127.0.0.1") as tls:  # by address, as wrk connects
        assert peer_names(tls) == ["example.test"]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_tls_1_1_is_refused_and_1_2_works(ca, server):
    old = client_context(ca)
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        connect(server, old, "example.test")
    tls12 = client_context(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    with connect(server, tls12, "example.test") as tls:
        assert tls.version() == "TLSv1.2"
        assert tls.cipher()[0] in CIPHERS.split(":")


def test_a_wildcard_covers_one_level(ca, certs, server):
    certs.install("*.sites.test", *leaf(ca, "*.sites.test"))
    with connect(server, client_context(ca), "blog.sites.test") as tls:
        assert peer_names(tls) == ["*.sites.test"]
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        connect(server, client_context(ca), "a.b.sites.test")


def test_a_new_certificate_is_used_by_new_handshakes_while_open_ones_carry_on(ca, certs, server):
    old = connect(server, client_context(ca), "example.test")
    first = old.getpeercert()["serialNumber"]
    certs.install("example.test", *leaf(ca, "example.test"))
    with connect(server, client_context(ca), "example.test") as fresh:
        assert fresh.getpeercert()["serialNumber"] != first
    old.sendall(b"still here")  # the connection made before the swap keeps working
    assert old.recv(100) == b"echo:still here"
    old.close()


def test_a_removed_host_is_refused(ca, certs, server):
    certs.remove("admin.example.test")
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        connect(server, client_context(ca), "admin.example.test")


def test_a_key_that_does_not_match_is_refused(ca):
    chain, _ = leaf(ca, "example.test")
    _, other_key = leaf(ca, "example.test")
    with pytest.raises(ssl.SSLError):
        context_from_pem(chain, other_key)


def test_the_handshake_timeout_counts_from_the_first_byte_until_done(certs):
    transport = certs.transport()
    assert not transport.handshake_expired(transport.started + HANDSHAKE_TIMEOUT - 1)
    assert transport.handshake_expired(transport.started + HANDSHAKE_TIMEOUT + 1)


def test_a_malformed_hello_is_a_failure_with_an_alert_to_send(certs):
    transport = certs.transport()
    with pytest.raises(TLSFailure):
        transport.feed(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00")
    assert transport.outgoing()[:1] == b"\x15"  # an alert record, sent before closing


def test_plain_http_on_the_tls_port_is_a_failure_answered_in_plain_http(certs):
    transport = certs.transport()
    with pytest.raises(TLSFailure):
        transport.feed(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
    # no alert (the client could not read one): a 400 that says what happened
    assert transport.outgoing().startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_a_certificate_valid_now_is_preferred_to_the_hosts_own_expired_one(ca):
    """The host's own if valid, else a valid wildcard one level up, else whatever exists:
    an expired certificate still completes the handshake, better than none."""
    import datetime

    def dated(name: str, expired: bool) -> tuple[bytes, bytes]:
        if not expired:
            return leaf(ca, name)
        past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        cert = ca.issue_cert(name, not_before=past,
                             not_after=past + datetime.timedelta(days=90))
        return (b"".join(b.bytes() for b in cert.cert_chain_pems),
                cert.private_key_pem.bytes())

    def shown(certificates: Certificates, host: str) -> list[str]:
        srv = EchoServer(certificates)
        try:
            ctx = client_context(ca)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            with connect(srv, ctx, host) as sock:
                der = sock.getpeercert(binary_form=True)
        finally:
            srv.close()
        from cryptography import x509
        san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName)
        return san.value.get_values_for_type(x509.DNSName)

    host = "blog.example.test"
    for own_expired, wildcard_expired, expected in (
            (True, False, "*.example.test"), (False, False, host), (False, True, host),
            (True, True, host)):
        certificates = Certificates()
        certificates.install(host, *dated(host, own_expired))
        certificates.install("*.example.test", *dated("*.example.test", wildcard_expired))
        assert shown(certificates, host) == [expected], (own_expired, wildcard_expired)
    certificates = Certificates()  # the expired one alone is still shown
    certificates.install("*.example.test", *dated("*.example.test", True))
    assert shown(certificates, host) == ["*.example.test"]


def _broken(certs: Certificates, ca: trustme.CA):
    """A server transport past its handshake, then broken by a forged record."""
    transport = certs.transport()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context(ca).wrap_bio(incoming, outgoing, server_hostname="example.test")
    while not transport.handshake_done:
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()
        transport.feed(outgoing.read())
        incoming.write(transport.outgoing())
    with pytest.raises(TLSFailure):
        transport.feed(b"\x17\x03\x03\x00\x10" + b"x" * 16)
    return transport


def test_wrap_raises_the_transports_failure_and_the_connection_closes_at_once(certs, ca):
    """`wrap` on a connection that can carry no more data raised ssl.SSLError, which the
    transport contract never lets out (a task's thread, the loop's flush took it for a
    bug). Now it is a TLSFailure, and either path closes the connection at once."""
    from types import SimpleNamespace

    from fazt.server.connection import CLOSING, TASK, Connection
    from fazt.server.loop import Loop

    with pytest.raises(TLSFailure):
        _broken(certs, ca).wrap(b"HTTP/1.1 200 OK\r\n\r\n")
    closed = certs.transport()
    closed.close()
    with pytest.raises(TLSFailure):
        closed.wrap(b"HTTP/1.1 200 OK\r\n\r\n")

    loop = Loop()
    server = SimpleNamespace(loop=loop, stalled=set(), forget=lambda conn: None,
                             release=lambda conn: None, linger=lambda conn: None)
    try:
        # the loop sends an answer through a transport that broke meanwhile
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        conn = Connection(server, ours, ("127.0.0.1", 1), _broken(certs, ca), None)
        conn.out.append(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        conn.flush()
        assert conn.closed or conn.state == CLOSING
        assert not conn.out and not conn.wire
        peer.settimeout(5)
        while peer.recv(65536):  # the end of the stream comes now, not after a timeout
            pass
        conn.abort()
        peer.close()
        # a task's thread sends its own answer: it leaves it to the loop, which closes
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        conn = Connection(server, ours, ("127.0.0.1", 1), _broken(certs, ca), None)
        conn.state, conn.task_running, conn.direct = TASK, True, True
        conn.out.append(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        conn.send_from_thread()
        conn.flush()
        assert conn.closed
        peer.settimeout(5)
        assert peer.recv(65536) == b""
        peer.close()
    finally:
        loop.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("before", [b"", b"GET / HTTP/1.1\r\nHost: example.test\r\n"])
def test_a_close_notify_is_the_end_of_the_stream(certs, ca, version, before):
    """SSLObject.read returns b"" (it raises nothing) when the peer's close_notify arrives,
    so the transport never set peer_closed: the loop kept a client that said goodbye open
    until its header or keep-alive timeout, and then sent it a 408 after its close_notify."""
    transport = certs.transport()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    ctx = client_context(ca, maximum_version=version)
    client = ctx.wrap_bio(incoming, outgoing, server_hostname="example.test")
    while not transport.handshake_done:
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()
        transport.feed(outgoing.read())
        incoming.write(transport.outgoing())
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()  # TLS 1.2: the server's Finished
    if before:
        client.write(before)
        assert transport.feed(outgoing.read()) == before
        assert not transport.peer_closed
    with contextlib.suppress(ssl.SSLWantReadError):
        client.unwrap()
    assert transport.feed(outgoing.read()) == b""
    assert transport.peer_closed
