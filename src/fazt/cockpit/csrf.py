"""Cross-site request protection for calls that change state with the cookie.

SameSite=Strict already keeps the cookie off cross-site requests in current
browsers; this is the second lock, for older browsers and same-site siblings
(a user site at NAME.D is "same site" as admin.D). A state-changing call must
carry the custom header `X-Fazt-Request: 1`, which a cross-site form cannot
set and a cross-origin fetch could only set after a CORS preflight that we
never answer; and when the browser says where the call comes from (`Origin`,
`Sec-Fetch-Site`), that must be admin.D itself. Calls with a Bearer token
carry no ambient credential and are exempt.
"""

import falcon

from fazt.cockpit.headers import is_api
from fazt.cockpit.session import bearer
from fazt.http_errors import http_error

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HEADER = "X-Fazt-Request"


def same_origin(req: falcon.Request) -> bool:
    origin = req.get_header("Origin")
    if origin is not None:
        expected = f"{req.forwarded_scheme}://{req.get_header('Host') or ''}".lower()
        if origin.lower() != expected:
            return False
    fetch_site = req.get_header("Sec-Fetch-Site")
    return fetch_site is None or fetch_site.lower() == "same-origin"


class CrossSiteGuard:
    """Falcon middleware: 403 for a state-changing API call that may be cross-site."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.method in SAFE_METHODS or not is_api(req.path) or bearer(req) is not None:
            return
        if req.get_header(HEADER) != "1":
            raise http_error(403, "cross_site_refused",
                             f"State-changing calls need the header {HEADER}: 1.")
        if not same_origin(req):
            raise http_error(403, "cross_site_refused",
                             "This call comes from another origin and is refused.")
