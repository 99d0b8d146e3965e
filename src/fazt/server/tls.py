"""TLS as a byte transport under a connection (see transport.py): no socket, no thread.

Python's `ssl.SSLObject` over two `MemoryBIO`s does the protocol
(measured here: 17.7 KiB per idle TLS 1.3 connection, 0.43 ms of CPU per
ECDSA P-256 handshake).

The certificate is chosen per host by SNI: `Certificates` keeps one
`SSLContext` per host name, and the base context's `sni_callback` switches the
connection to the host's context (its own certificate if valid now, else a valid
wildcard's one level up, else whichever exists: `choose`). A handshake for a
host fazt does not serve ends with an `unrecognized_name` alert, so no
certificate is ever shown for it.
A renewed certificate is a new context put in place of the old one: handshakes
from then on use it, connections already open keep theirs.
"""

import contextlib
import ipaddress
import os
import ssl
import threading
import time
from typing import NamedTuple

from fazt.certs import choose
from fazt.pem import CertInfo, read_chain
from fazt.server import responses
from fazt.server.timeouts import CLIENT_TIMEOUT
from fazt.server.transport import TransportFailure

HANDSHAKE_TIMEOUT = CLIENT_TIMEOUT  # seconds a client may take to finish its handshake
# An idle TLS connection holds 8-11 KiB of RSS in fazt (bench section 8; DESIGN.md: 17.7
# KiB with the kernel's share) against 2.6 KiB for plain TCP: admission charges it as two
# of the 8 KB connections capacity.js budgets for, so the ledger stays true under HTTPS.
TLS_WEIGHT = 2
READ_SIZE = 64 * 1024
# Mozilla's "intermediate" TLS 1.2 suites: forward secrecy and AEAD only.
# (TLS 1.3's suites are all modern and OpenSSL picks them itself.)
CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
           "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
           "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")


class TLSFailure(TransportFailure):
    """The handshake or the record layer failed: send `outgoing()` (the alert), then close."""


EARLY_BYTES = 1024  # of a plain HTTP request on the TLS port, kept for its log line
PLAIN_HTTP_TEXT = b"The plain HTTP request was sent to the HTTPS port: use https:// instead.\n"


def plain_http_answer() -> bytes:
    """What a plain HTTP request on the TLS port is told (nginx says the same), instead
    of a TLS alert it could not read: a person who typed http://host:443/ learns why."""
    return responses.head(400, [("Content-Type", "text/plain; charset=utf-8")], "1.1",
                          False, len(PLAIN_HTTP_TEXT)) + PLAIN_HTTP_TEXT


def new_context() -> ssl.SSLContext:
    """A server context with fazt's protocol choices and no certificate yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(["http/1.1"])  # a client that offers h2 falls back at once
    return ctx


def context_from_pem(chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server context for one certificate, loaded without writing the key to disk.

    `load_cert_chain` only reads files: an anonymous memory file
    (`memfd_create`) stands in for one and is gone when closed (about 0.7 ms,
    24-30 KiB a context). Raises `ssl.SSLError` when the key does not match.
    """
    ctx = new_context()
    fd = os.memfd_create("fazt-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, key_pem.rstrip(b"\n") + b"\n" + chain_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return ctx


class _Served(NamedTuple):
    context: ssl.SSLContext
    info: CertInfo

    def valid(self) -> bool:
        return self.info.valid_at(time.time())


class Certificates:
    """The certificates the TLS port shows, one context per host name, chosen by SNI."""

    def __init__(self, default_host: str | None = None):
        # A client that sends no SNI (an IP address typed by hand) gets default_host's.
        self.default_host = default_host
        self._contexts: dict[str, _Served] = {}
        self._lock = threading.Lock()
        self.base = new_context()
        self.base.sni_callback = self._choose

    def install(self, host: str, chain_pem: bytes, key_pem: bytes) -> None:
        """Serve `host` with this certificate from the next handshake on."""
        ctx = context_from_pem(chain_pem, key_pem)
        info = read_chain(chain_pem)
        with self._lock:
            self._contexts[host.lower()] = _Served(ctx, info)

    def remove(self, host: str) -> None:
        with self._lock:
            self._contexts.pop(host.lower(), None)

    def hosts(self) -> list[str]:
        with self._lock:
            return sorted(self._contexts)

    def context_for(self, host: str | None) -> ssl.SSLContext | None:
        """The host's own context if valid now, else a valid wildcard's one level up
        (`*.example.org`), else whichever exists (see `choose`)."""
        name = (host or self.default_host or "").lower().rstrip(".")
        # A dict read is atomic; writers replace entries whole.
        served = choose(name, self._contexts, _Served.valid)
        return served.context if served is not None else None

    def _choose(self, sslobj: ssl.SSLObject, server_name: str | None,
                base: ssl.SSLContext) -> int | None:
        if server_name and _is_address(server_name):
            server_name = None  # RFC 6066 forbids addresses in SNI; some clients send them
        ctx = self.context_for(server_name)
        if ctx is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = ctx
        sslobj.fazt_server_name = (server_name or self.default_host or "").lower()
        return None

    def transport(self) -> "TLSTransport":
        return TLSTransport(self)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class TLSTransport:
    """One connection's TLS: ciphertext in, plaintext out, and the other way round."""

    weight = TLS_WEIGHT
    plain = False

    def __init__(self, certificates: Certificates):
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = certificates.base.wrap_bio(self._in, self._out, server_side=True)
        self.started = time.monotonic()
        self.handshake_done = False
        self.peer_closed = False  # the peer sent close_notify (or the TCP stream ended)
        self._early = b""  # what came before the handshake ended, the first EARLY_BYTES

    @property
    def server_name(self) -> str | None:
        """The host the client asked for by SNI (the default host when it sent none)."""
        return getattr(self._ssl, "fazt_server_name", None)

    def handshake_expired(self, now: float) -> bool:
        """True once the client has had HANDSHAKE_TIMEOUT seconds (monotonic) and is not done."""
        return not self.handshake_done and now - self.started > HANDSHAKE_TIMEOUT

    def feed(self, data: bytes) -> bytes:
        """Ciphertext from the socket (b"" at end of stream) -> the plaintext it completes.

        Afterwards `outgoing()` may hold bytes to send (handshake messages,
        session tickets). Raises TLSFailure on a bad handshake or record.
        """
        if data:
            self._in.write(data)
            if not self.handshake_done and len(self._early) < EARLY_BYTES:
                self._early += data[:EARLY_BYTES]  # a plain request's head, for its log line
        else:
            self._in.write_eof()
        try:
            if not self.handshake_done:
                self._ssl.do_handshake()
                self.handshake_done = True
                self._early = b""
            return self._read()
        except ssl.SSLWantReadError:
            return b""
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self.peer_closed = True
            return b""
        except ssl.SSLError as exc:
            if exc.reason == "HTTP_REQUEST" and not self.handshake_done:
                # OpenSSL read "GET ", "POST " etc. where a ClientHello was due (and
                # queued no alert): answer in the client's own protocol.
                self._out.read()
                self._out.write(plain_http_answer())
                raise TLSFailure(exc.reason, answered=400, request=self._early) from None
            raise TLSFailure(exc.reason or str(exc)) from None

    def _read(self) -> bytes:
        parts = []
        while True:
            try:
                chunk = self._ssl.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                break
            if not chunk:
                # SSLObject.read returns b"" for the peer's close_notify (the
                # SSLZeroReturnError above is only for a shutdown seen earlier): the end
                # of the stream, as for a plain socket's b"".
                self.peer_closed = True
                break
            parts.append(chunk)
            if not self._in.pending and not self._ssl.pending():
                break  # all taken: spare the call that would only raise SSLWantReadError
        return b"".join(parts) if len(parts) != 1 else parts[0]

    def wrap(self, plaintext: bytes) -> bytes:
        """Plaintext to send -> the TLS records that carry it (plus anything pending).

        Raises TLSFailure (as the transport contract says, never `ssl.SSLError`) once
        the connection can no longer carry data: after a failed record or handshake, or
        after `close()`."""
        if plaintext:
            view = memoryview(plaintext)
            try:
                while view:
                    written = self._ssl.write(view)
                    view = view[written:]
            except ssl.SSLError as exc:
                raise TLSFailure(exc.reason or str(exc)) from None
        return self.outgoing()

    def outgoing(self) -> bytes:
        """Bytes TLS wants sent now: handshake messages, alerts, close_notify."""
        return self._out.read()

    def close(self) -> bytes:
        """Say goodbye (close_notify); returns the bytes to send before closing."""
        with contextlib.suppress(ssl.SSLError):
            self._ssl.unwrap()
        return self.outgoing()
