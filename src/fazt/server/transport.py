"""The byte transport under a connection: what turns socket bytes into HTTP bytes.

The event loop owns every socket and never blocks. A connection hands each
piece it receives to its transport's `feed`, which returns the plaintext the
peer sent; whatever the connection wants to send goes through `wrap`, and
whatever the transport itself wants to say (handshake messages, alerts) comes
out of `outgoing`. Plain TCP is the identity; TLS (`fazt.server.tls`) is an
`ssl.SSLObject` over two `MemoryBIO`s. A listening socket carries a factory
that makes one transport per accepted connection, so the plain port and the
TLS port share the same loop and the same connections.

A transport never touches the socket and never raises anything but
`TransportFailure` (the connection then sends `outgoing()`, an alert perhaps,
and closes).
"""

from collections.abc import Callable
from typing import Protocol


class TransportFailure(Exception):
    """The peer broke the transport's protocol: send `outgoing()`, then close.

    `answered` is the HTTP status `outgoing()` holds when the transport answered the
    peer in plain HTTP (TLS: a plain request on the HTTPS port), and `request` the bytes
    of that request it read, so that the answer gets its request log line."""

    def __init__(self, reason: str, answered: int | None = None, request: bytes = b""):
        super().__init__(reason)
        self.answered = answered
        self.request = request


class Transport(Protocol):
    handshake_done: bool  # False until plaintext may flow (always True for plain TCP)
    peer_closed: bool  # the peer said goodbye (TLS close_notify, or end of stream)
    weight: int  # connections' worth of `connection_limit` it is charged: its idle memory
    plain: bool  # the plaintext goes to the socket as it is (wrap is the identity)

    @property
    def server_name(self) -> str | None:
        """The host the client named before any HTTP (TLS SNI); None for plain TCP."""

    def handshake_expired(self, now: float) -> bool:
        """True once the peer has had its time to finish the handshake and has not."""

    def feed(self, data: bytes) -> bytes:
        """Bytes from the socket (b"" at end of stream) -> the plaintext they complete."""

    def wrap(self, plaintext: bytes) -> bytes:
        """Plaintext to send -> the bytes to put on the socket (with anything pending)."""

    def outgoing(self) -> bytes:
        """Bytes the transport wants sent now, without any plaintext (handshake, alerts)."""

    def close(self) -> bytes:
        """Say goodbye; returns the last bytes to send before the socket closes."""


TransportFactory = Callable[[], Transport]


class PlainTransport:
    """Plain TCP: the bytes are the plaintext."""

    __slots__ = ("peer_closed",)
    handshake_done = True
    server_name = None
    weight = 1
    plain = True

    def __init__(self) -> None:
        self.peer_closed = False

    def handshake_expired(self, now: float) -> bool:
        return False

    def feed(self, data: bytes) -> bytes:
        if not data:
            self.peer_closed = True
        return data

    def wrap(self, plaintext: bytes) -> bytes:
        return plaintext

    def outgoing(self) -> bytes:
        return b""

    def close(self) -> bytes:
        return b""


def plain() -> Transport:
    return PlainTransport()

