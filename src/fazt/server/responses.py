"""Responses the loop writes itself: refusals in fazt's error shape, and the fast path's.

They must look like what a thread would have sent through Waitress's WSGI
bridge: the same status line, `Server: fazt`, a `Date`, headers sorted by name
(Waitress sorts them), and the same keep-alive rules for HTTP/1.0 and 1.1.
"""

import time
from email.utils import formatdate
from http import HTTPStatus

from fazt.http_errors import error_for

IDENT = "fazt"
_date = ["", 0]


def http_date() -> str:
    """The Date header, formatted once a second."""
    now = int(time.time())
    if _date[1] != now:
        _date[0] = formatdate(now, usegmt=True)
        _date[1] = now
    return _date[0]


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def keeps_alive(version: str, connection: str) -> bool:
    """Whether the client may send another request on this connection after this one."""
    connection = connection.lower()
    if version == "1.1":
        return connection != "close"
    return connection == "keep-alive"


def head(status: int, headers: list[tuple[str, str]], version: str, keep_alive: bool,
         content_length: int | None) -> bytes:
    """A status line and headers, as Waitress's WSGI bridge would write them."""
    version = version if version in ("1.0", "1.1") else "1.0"
    headers = list(headers)
    if content_length is not None:
        headers.append(("Content-Length", str(content_length)))
    if not keep_alive:
        headers.append(("Connection", "close"))
    elif version == "1.0":
        headers.append(("Connection", "Keep-Alive"))
    headers.append(("Server", IDENT))
    headers.append(("Date", http_date()))
    headers.sort(key=lambda h: h[0])
    lines = [f"HTTP/{version} {status} {reason(status)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def error(status: int, code: str, message: str, *, path: str = "/", accept: str | None = None,
          version: str = "1.1", keep_alive: bool = False, retry_after: int | None = None,
          method: str = "GET", extra: list[tuple[str, str]] | tuple = ()) -> bytes:
    """A whole error response in fazt's shape (JSON for APIs, a small page for browsers)."""
    content_type, text = error_for(path, accept, status, code, message)
    body = text.encode("utf-8")
    headers = [("Content-Type", content_type), *extra]
    if retry_after:
        headers.append(("Retry-After", str(retry_after)))
    return head(status, headers, version, keep_alive, len(body)) + (
        b"" if method == "HEAD" else body)
