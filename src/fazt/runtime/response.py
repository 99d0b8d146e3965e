"""What a handler may answer, checked before a byte of it reaches the client.

Anything that cannot go out as HTTP becomes fazt's JSON error (500
`bad_response`) with the reason in the site's log, instead of Waitress's bare
500 page or a response split in two: a status outside 200-599, a header name
that is not a token, a value holding a control character or a character
outside Latin-1 (the only characters an HTTP/1.1 header can carry), too many
headers. Headers that describe the connection or the framing
(`Content-Length`, `Connection`, `Transfer-Encoding` and the other hop-by-hop
ones) are the server's, as is `Strict-Transport-Security`: a handler's are dropped.

Cookies are the site's own, never the owner's: `site_cookie` refuses the
cockpit's cookie name and any `Domain` other than the host the request came
to (a site at `D` itself may set no `Domain` at all, since `D` covers
`admin.D`), and adds `Secure` to every cookie of a request that came over
HTTPS. `Set-Cookie` may be a string or an array of strings, one a cookie.
"""

import json
import re
from dataclasses import dataclass, field
from typing import Any

from fazt.constants import SCRIPT
from fazt.runtime.bridge import Bridge

COOKIE = "fazt_session"  # the cockpit's session cookie: never a site's to set
MAX_HEADERS = 64
MAX_HEADER_VALUE = 8 * 1024
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# Control characters (tab aside) and anything past Latin-1 cannot be sent in a header.
_UNSENDABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")
_SERVER_HEADERS = frozenset({  # the connection and framing are the server's to set
    "content-length", "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
    # and HSTS, the `hsts_max_age` setting's: from a site at D, `includeSubDomains` would
    # pin the cockpit and every other site to HTTPS for as long as it says (a site's
    # `_headers` may not set it either)
    "strict-transport-security",
})


@dataclass
class JsResponse:
    """The HTTP answer for one invocation."""

    status: int
    headers: dict[str, str]
    body: bytes
    error: str | None = field(default=None, compare=False)  # failure code, for the counters
    cookies: list[str] = field(default_factory=list)  # Set-Cookie values, one a cookie


def error_response(status: int, code: str, message: str, line: int | None = None
                   ) -> JsResponse:
    """The JSON error body of SPEC's "Errors over HTTP"; with the script's file and line
    when the failure has one (a line number, never a line of the source)."""
    error = {"code": code, "message": message}
    if line is not None:
        error.update(file=SCRIPT, line=line)
    body = json.dumps({"error": error}).encode()
    return JsResponse(status, {"Content-Type": "application/json"}, body, error=code)


def bad_response(bridge: Bridge, message: str) -> JsResponse:
    """A handler's answer that cannot be sent: the reason goes to the site's log, and to
    the visitor, without the site's secrets (a header's name or a cookie may hold one)."""
    message = bridge.redact(message)
    bridge.log("error", f"bad_response: {message}")
    return error_response(500, "bad_response", message)


# The checked status, headers and cookies of answers seen before, by their JSON: a handler
# answers with the same few most of the time, and checking them cost as much as running a
# trivial handler. Plain tuples of strings; bounded in count and in each entry's size.
_CHECKED: dict[str, tuple[int, tuple, tuple]] = {}
_CHECKED_COUNT = 1024
_CHECKED_META = 1024  # characters; longer descriptions are checked every time


def read_answer(answer: Any, bridge: Bridge, escaped: bool = False) -> JsResponse:
    """Check what the handler returned (the body's length, the prelude's JSON, a newline,
    the body; the body as JSON text when `escaped`) and make it a response."""
    if not isinstance(answer, str):
        return bad_response(bridge, "handler's answer could not be read.")
    meta, _, body = answer.partition("\n")
    if meta[:1] != "{":
        meta = meta.partition(" ")[2]  # the length: for the engine (_cut_short)
    if escaped:
        body = json.loads(body)
    checked = _CHECKED.get(meta)
    if checked is None:
        checked = _check(meta, bridge)
        if isinstance(checked, JsResponse):
            return checked
        if len(meta) <= _CHECKED_META:
            if len(_CHECKED) >= _CHECKED_COUNT:
                _CHECKED.clear()
            _CHECKED[meta] = checked
    status, headers, cookies = checked
    return JsResponse(status, dict(headers), body.encode("utf-8", "replace"),
                      cookies=list(cookies))


def checked_before(answer: str) -> bool:
    """Whether a usual answer's description (status, headers) was read and found good
    before: then `read_answer` cannot fail on it."""
    return answer[answer.find(" ") + 1:answer.find("\n")] in _CHECKED


def _check(meta: str, bridge: Bridge) -> "tuple[int, tuple, tuple] | JsResponse":
    """(status, headers, cookies) of an answer's description, or its bad_response."""
    data = json.loads(meta)
    if "problem" in data:
        return bad_response(bridge, data["problem"])
    status = data["status"]
    if type(status) is not int or not 200 <= status <= 599:
        return bad_response(bridge, f"handler returned status {json.dumps(status)}; "
                                    "it must be an integer from 200 to 599.")
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in data["headers"].items():
        if not _TOKEN.match(name):
            return bad_response(bridge, f"handler returned an invalid header name {name!r}.")
        values = value if isinstance(value, list) and name.lower() == "set-cookie" else [value]
        for one in values:
            problem = _unsendable(one)
            if problem:
                return bad_response(bridge, f"handler returned a value for header {name!r} "
                                            f"that HTTP cannot carry: {problem}.")
        if name.lower() == "set-cookie":
            cookies += values
        elif name.lower() not in _SERVER_HEADERS:
            headers[name] = value
    if len(headers) + len(cookies) > MAX_HEADERS:
        return bad_response(bridge, f"handler returned more than {MAX_HEADERS} headers.")
    if not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = ("application/json" if data.get("json")
                                   else "text/plain; charset=utf-8")
    return status, tuple(headers.items()), tuple(cookies)


def _unsendable(value: Any) -> str | None:
    if not isinstance(value, str):
        return "it is not a string"
    if len(value) > MAX_HEADER_VALUE:
        return f"it is longer than {MAX_HEADER_VALUE} characters"
    bad = _UNSENDABLE.search(value)
    if bad is None:
        return None
    char = bad.group()
    return (f"the character {char!r} (U+{ord(char):04X}) is outside Latin-1" if ord(char) > 0xFF
            else f"it holds the control character U+{ord(char):04X}")


def site_cookie(raw: str, host: str, admin_hosts: tuple[str, ...], https: bool) -> str:
    """The `Set-Cookie` value to send for a cookie a site's handler set on `host`,
    or ValueError saying why the site may not set it (`admin_hosts`: the cockpit's)."""
    pair, *attributes = [part.strip() for part in raw.split(";")]
    name = pair.split("=", 1)[0].strip()
    if "=" not in pair or not _TOKEN.match(name):
        raise ValueError(f"the cookie {pair[:40]!r} has no valid name=value pair")
    if name.lower() == COOKIE:
        raise ValueError(f"the cookie name {name!r} is the cockpit's")
    secure = False
    for attribute in attributes:
        key, _, value = attribute.partition("=")
        key = key.strip().lower()
        if key == "domain":
            domain = value.strip().lstrip(".").lower()
            if domain != host or any(admin == domain or admin.endswith("." + domain)
                                     for admin in admin_hosts):
                raise ValueError(f"the cookie {name!r} names Domain={value.strip()}; a site may "
                                 f"set cookies for its own host only ({host}, with no Domain "
                                 "where that host covers the cockpit's)")
        elif key == "secure":
            secure = True
    return raw if secure or not https else f"{raw}; Secure"
