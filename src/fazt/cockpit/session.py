"""Who is calling the admin API: the owner's session cookie, an API token, or nobody.

Both checks run in RAM: a session is an HMAC-signed token checked against the
key loaded at boot, so signing in and being recognised never wait on the
database, even when it is locked. An `Authorization: Bearer` header wins over
the cookie: such a call is judged by its token alone (and is therefore exempt
from the cross-site checks in csrf.py: a browser never adds that header to a
cross-site request on its own).

Tokens are for scripts that deploy and read; the owner's other powers (tokens,
backups holding the password hash and session key, settings, deletes) need the
session.
"""

import falcon
from falcon import request_helpers

from fazt.auth import DEVICE_SECONDS, SESSION_SECONDS, Auth
from fazt.cockpit.headers import is_api
from fazt.http_errors import http_error
from fazt.instance import Instance

COOKIE = "fazt_session"
DEVICE_COOKIE = "fazt_device"  # sent to the sign-in only: "this browser signed in before"
SESSION = "session"
TOKEN = "token"
MAX_VALUES = 8  # session cookies of the same name looked at in one request
PUBLIC = {("POST", "/api/login")}  # the one API call made before signing in
TOKEN_DENIED = ("/api/tokens", "/api/backup")  # reads a token must not make


def bearer(req: falcon.Request) -> str | None:
    """The token of an `Authorization: Bearer` header; "" when the header is another kind."""
    return bearer_token(req.get_header("Authorization"))


def bearer_token(header: str | None) -> str | None:
    """`bearer` from the raw header value."""
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def proves_owner(instance: Instance, cookie_header: str | None,
                 authorization: str | None) -> bool:
    """Whether raw Cookie and Authorization headers prove the owner, as Authentication
    judges them (a bearer header alone, else the session cookie), from RAM alone."""
    token = bearer_token(authorization)
    if token is not None:
        return instance.check_token(token)
    return session_from_header(cookie_header, instance.auth) is not None


def session_cookie(req: falcon.Request, auth: Auth) -> str | None:
    """The request's valid session token, if it carries one (see `valid_session`)."""
    return valid_session(auth, req.get_cookie_values(COOKIE) or [])


def session_from_header(cookie_header: str | None, auth: Auth) -> str | None:
    """`session_cookie` from the raw Cookie header, parsed by the same Falcon function
    `get_cookie_values` uses (private in Falcon 4: tests/test_statuspath.py compares)."""
    if not cookie_header:
        return None
    return valid_session(auth, request_helpers._parse_cookie_header(cookie_header).get(COOKIE)
                         or [])


def valid_session(auth: Auth, values: list[str]) -> str | None:
    """The first of the cookie's values that is a valid session.

    A site under D may set a cookie of this name for the whole domain (JavaScript on
    its page can: `document.cookie = "fazt_session=x; domain=D; path=/api"`), and the
    browser then sends it before the owner's own, the longer path first. Only the first
    value was read, so any site could sign the owner out of the cockpit for good. A
    handful are looked at (a check is an HMAC): a real browser sends two or three."""
    for value in values[:MAX_VALUES]:
        if auth.check_session(value):
            return value
    return None


def token_may(method: str, path: str) -> bool:
    """Whether an API token may make this call: reads, and deploys."""
    if path.startswith(TOKEN_DENIED):
        return False
    return method in ("GET", "HEAD") or (method == "POST" and path == "/api/deploy")


def set_session_cookie(req: falcon.Request, resp: falcon.Response, value: str) -> None:
    """HttpOnly, SameSite=Strict, host-only (no Domain: sites under D never see it)."""
    resp.set_cookie(COOKIE, value, max_age=SESSION_SECONDS, path="/", domain=None,
                    http_only=True, same_site="Strict",
                    secure=req.forwarded_scheme == "https")


def set_device_cookie(req: falcon.Request, resp: falcon.Response, value: str) -> None:
    """Like the session's, but for a year and sent to the sign-in call alone."""
    resp.set_cookie(DEVICE_COOKIE, value, max_age=DEVICE_SECONDS, path="/api/login",
                    domain=None, http_only=True, same_site="Strict",
                    secure=req.forwarded_scheme == "https")


def known_device(req: falcon.Request, auth: Auth) -> bool:
    """Whether the request carries a device cookie of a browser that signed in before."""
    return any(auth.check_device(v) for v in (req.get_cookie_values(DEVICE_COOKIE)
                                              or [])[:MAX_VALUES])


def clear_session_cookie(req: falcon.Request, resp: falcon.Response) -> None:
    resp.unset_cookie(COOKIE, path="/", same_site="Strict")


class Authentication:
    """Falcon middleware: 401 for any admin API call without a valid session or token."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.caller = None
        if not is_api(req.path) or (req.method, req.path) in PUBLIC:
            return
        token = bearer(req)
        if token is not None:
            if not self.instance.check_token(token):
                raise http_error(401, "unauthorized", "The API token is not valid.")
            if not token_may(req.method, req.path):
                raise http_error(403, "token_not_allowed",
                                 "API tokens may deploy and read; this call needs a session.")
            req.context.caller = TOKEN
            return
        if session_cookie(req, self.instance.auth) is None:
            raise http_error(401, "unauthorized", "Sign in first: no valid session.")
        req.context.caller = SESSION
