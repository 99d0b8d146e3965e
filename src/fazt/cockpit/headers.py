"""Security headers on every cockpit response, errors included.

The dashboard is plain files with no inline script or style, so the policy can
forbid everything that is not from admin.D itself; the page can never be framed
(clickjacking), and API answers are never stored by a browser or a proxy.
"""

import falcon

CSP = ("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
       "base-uri 'none'; form-action 'self'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


class SecurityHeaders:
    """Falcon middleware: runs last on the way out, so it also covers rejections."""

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource,
                         req_succeeded: bool) -> None:
        resp.set_headers(HEADERS)
        if is_api(req.path):
            resp.cache_control = ["no-store"]
