"""Explicit errors over HTTP: JSON for API paths, a small page for browsers, never a trace.

Every rejection names its reason: `{"error": {"code": "...", "message": "..."}}`.
"""

import html
import json
import sys
import traceback

import falcon

from fazt.errors import Busy, Conflict, FaztError, NotFound, TooLarge, Unavailable

_TITLES = {400: "Bad request", 401: "Sign-in required", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed", 409: "Confirmation needed", 412: "Precondition failed",
           413: "Too large", 416: "Range not satisfiable", 429: "Too many requests",
           500: "Server error", 503: "Unavailable", 504: "Timed out"}


# The HTTP status of each kind of domain error; any other FaztError is a 400.
_STATUS = ((NotFound, 404), (TooLarge, 413), (Conflict, 409), (Busy, 429), (Unavailable, 503))


def status_of(exc: FaztError) -> int:
    return next((status for kind, status in _STATUS if isinstance(exc, kind)), 400)


def http_error(status: int, code: str, message: str, retry_after: int | None = None,
               allow: str | None = None) -> falcon.HTTPError:
    """`allow`: the methods a 405's resource answers (RFC 9110 requires the Allow header)."""
    headers = {}
    if retry_after:
        headers["Retry-After"] = str(retry_after)
    if allow:
        headers["Allow"] = allow
    return falcon.HTTPError(falcon.code_to_http_status(status), title=code,
                            description=message, headers=headers or None)


def wants_json(path: str, accept: str | None) -> bool:
    if "/api/" in path or path.startswith("/_fazt/"):
        return True
    return "text/html" not in (accept or "")


def error_body(req: falcon.Request, status: int, code: str, message: str) -> tuple[str, str]:
    """(content type, body) for an error, shaped for who asked."""
    return error_for(req.path, req.get_header("Accept"), status, code, message)


def error_for(path: str, accept: str | None, status: int, code: str, message: str
              ) -> tuple[str, str]:
    """(content type, body) for an error, from the request's path and Accept header alone
    (the event loop answers some requests itself, with no framework)."""
    if wants_json(path, accept):
        return "application/json", json.dumps({"error": {"code": code, "message": message}})
    title = _TITLES.get(status, "Error")
    page = (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        f"<title>{status} {html.escape(title)}</title>"
        # No inline style: the cockpit's CSP would block it. Plain is readable.
        f"<body><h1>{status} {html.escape(title)}</h1><p>{html.escape(message)}</p>"
        "<p><small>fazt</small></p></body></html>"
    )
    return "text/html; charset=utf-8", page


def _serialize(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    status = falcon.http_status_to_code(exc.status)
    code = exc.title if exc.title and " " not in exc.title else _code_for(status)
    message = exc.description or _TITLES.get(status, "Error")
    resp.content_type, resp.text = error_body(req, status, code, message)


def _code_for(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
            413: "too_large", 416: "range_not_satisfiable", 429: "too_many_requests",
            503: "unavailable"}.get(status, f"http_{status}")


def _fazt_error(req, resp, exc: FaztError, params) -> None:
    raise http_error(status_of(exc), exc.code, exc.message, getattr(exc, "retry_after", None))


def _unexpected(req, resp, exc: Exception, params) -> None:
    if isinstance(exc, falcon.HTTPError):
        raise exc
    trace = "".join(traceback.format_exception(exc))
    sys.stderr.write(f"fazt: unexpected error on {req.method} {req.path}\n{trace}")
    raise http_error(500, "internal_error", "Something went wrong on the server; it is logged.")


def install(app: falcon.App) -> None:
    """Give a Falcon app fazt's error shapes."""
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(FaztError, _fazt_error)
    app.set_error_serializer(_serialize)
