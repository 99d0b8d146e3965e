"""Every error has fazt's shape, including those the HTTP layer gives before any route
runs: a request it cannot parse (400), headers too large (431), a body too large (413)."""

import json
import socket

import pytest


def raw(server, data: bytes) -> tuple[int, dict, bytes]:
    """Send bytes, read one response: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR) if len(data) < 65536 else None
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < _length(reply):
            piece = sock.recv(65536)
            if not piece:
                break
            reply += piece
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _length(reply: bytes) -> int:
    for line in reply.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


@pytest.mark.parametrize(("name", "request_bytes", "status"), [
    ("unparsable", b"GET / HTTP/1.1\r\nHost: admin.localhost\r\nContent-Length: x\r\n\r\n", 400),
    ("headers too large", b"GET /api/session HTTP/1.1\r\nHost: admin.localhost\r\n"
     + b"X-Padding: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    ("body too large", b"POST /api/login HTTP/1.1\r\nHost: admin.localhost\r\n"
     b"Content-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n", 413),
    # a token that proves nobody: the API's 401 before the body, not after reading it
    ("not the owner", b"POST /api/deploy?site=big HTTP/1.1\r\nHost: admin.localhost\r\n"
     b"Authorization: Bearer fazt_x\r\nContent-Type: application/zip\r\n"
     b"Content-Length: 99999999999\r\n\r\n", 401),
])
def test_protocol_errors_have_fazts_shape(module_server, name, request_bytes, status):
    got, headers, body = raw(module_server, request_bytes)
    assert got == status, (name, got, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), (name, headers)
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message"} and error["code"] and error["message"], error
    assert "Traceback" not in body.decode()
