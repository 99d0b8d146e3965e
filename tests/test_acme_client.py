"""The ACME client against a CA that trickles its answers: each request has a deadline.

The library's timeout counts the gaps between bytes, so a CA sending one byte at a
time held the certificate thread for as long as it kept sending. Here a tiny local
server does that (20 bytes a second, far inside any gap timeout) and the deadline is
shortened to one second.
"""

import json
import logging
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import init_db

from fazt import acme_client, autocert
from fazt.acme_client import Acme, AcmeError
from fazt.server.tls import Certificates
from fazt.store import certs as store
from fazt.store import open_database

TRICKLE_SECONDS = 20  # how long the CA keeps trickling before it gives up itself
DEADLINE = 1.0


class TricklingCA:
    """Answers `GET /dir` at once (when `directory_fast`), everything else one byte every
    50 ms for TRICKLE_SECONDS; with `tls`, it trickles what looks like a TLS handshake."""

    def __init__(self, *, directory_fast: bool = False, tls: bool = False):
        self.directory_fast = directory_fast
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/dir"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                if self.tls:  # a ServerHello record of 16 KiB that never arrives
                    return self._trickle(conn, b"\x16\x03\x03\x40\x00" + b"\x02" * 16384)
                while True:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        piece = conn.recv(65536)
                        if not piece:
                            return
                        head += piece
                    if self.directory_fast and head.startswith(b"GET /dir "):
                        conn.sendall(self._answer(json.dumps(self._directory()).encode()))
                        continue  # the next request comes on this kept connection
                    return self._trickle(conn, self._answer(b"{}"))
            except OSError:  # the client cut the connection: its deadline passed
                return

    def _directory(self) -> dict:
        base = f"http://127.0.0.1:{self.port}"
        return {"newNonce": f"{base}/nonce", "newAccount": f"{base}/account",
                "newOrder": f"{base}/order"}

    @staticmethod
    def _answer(body: bytes) -> bytes:
        padding = b"X-Padding: " + b"x" * 1000 + b"\r\n"  # so a trickle outlasts the test
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nReplay-Nonce: abc\r\n"
                + padding + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    @staticmethod
    def _trickle(conn: socket.socket, data: bytes) -> None:
        ends = time.monotonic() + TRICKLE_SECONDS
        for i in range(len(data)):
            if time.monotonic() > ends:
                return
            conn.sendall(data[i:i + 1])
            time.sleep(0.05)  # the CA's pace, not the test waiting

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def short_deadline(monkeypatch):
    monkeypatch.setattr(acme_client, "REQUEST_DEADLINE", DEADLINE)


@pytest.mark.parametrize("ca_kind", ["answer", "kept_connection", "tls_handshake"])
def test_a_trickling_ca_fails_the_request_at_its_deadline(short_deadline, ca_kind):
    ca = TricklingCA(directory_fast=ca_kind == "kept_connection", tls=ca_kind == "tls_handshake")
    try:
        began = time.monotonic()
        with pytest.raises(AcmeError) as failed:
            Acme(ca.url).connect()  # the directory, then a nonce and the account
        took = time.monotonic() - began
    finally:
        ca.close()
    assert took < DEADLINE + 4, took  # not TRICKLE_SECONDS
    assert failed.value.message == f"Cannot reach the ACME server at {ca.url}: timed out."


def test_a_trickling_ca_fails_the_order_with_backoff_and_the_thread_moves_on(
        short_deadline, tmp_path: Path):
    ca = TricklingCA()
    db = open_database(str(init_db(tmp_path / "data.db")))
    settings = {"https": "on", "domain": "example.test", "acme_directory": ca.url}
    certs = autocert.AutoCert(db, Certificates(), lambda: settings)
    try:
        began = time.time()
        certs.run_once(began)  # one order (admin.example.test's: first), which the CA stalls
        took = time.time() - began
        with db.read() as conn:
            failures = store.order_failures(conn)
            listed = {c["host"]: c for c in store.list_certificates(conn)}
    finally:
        db.close()
        ca.close()
    assert took < DEADLINE + 4, took
    host = "admin.example.test"
    assert set(failures) == {host}
    assert failures[host][0] == 1
    assert failures[host][1] >= began + autocert.BACKOFF_FIRST
    assert listed[host]["last_error"] == f"Cannot reach the ACME server at {ca.url}: timed out."


def _header_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("urllib3")
            and r.getMessage().startswith("Failed to parse headers")]


def test_a_deadline_cut_in_the_headers_is_one_sentence_not_a_urllib3_traceback(
        short_deadline, caplog):
    """Cut after 20 bytes ("HTTP/1.1 200 OK\\r\\nCon"), the answer's headers end in a line
    without a colon, and urllib3 logged a warning with a traceback to the server's stderr
    for it; the order's "timed out" sentence says all an owner needs."""
    caplog.set_level(logging.WARNING)
    ca = TricklingCA()
    try:
        with pytest.raises(AcmeError, match="timed out"):
            Acme(ca.url).connect()
    finally:
        ca.close()
    assert _header_warnings(caplog) == []


def test_headers_broken_by_the_ca_itself_are_still_logged(caplog):
    """Only the deadline's cut is quieted: a CA that sends a broken header line keeps
    urllib3's warning."""
    caplog.set_level(logging.WARNING)
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nbroken line\r\n\r\n{}")

    threading.Thread(target=answer, daemon=True).start()
    try:
        with pytest.raises(AcmeError):
            Acme(f"http://127.0.0.1:{listener.getsockname()[1]}/dir").connect()
    finally:
        listener.close()
    assert len(_header_warnings(caplog)) == 1
