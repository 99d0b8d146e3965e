"""What HTTPS changes for every request: ACME challenges, the plain port's redirect, HSTS.

With HTTPS on, the plain port keeps three jobs only: it answers the CA's
HTTP-01 checks under `/.well-known/acme-challenge/`, it keeps
`/_fazt/health` for load balancers and monitors, and it sends everything else
with `308` to the same host, path *and query* on HTTPS (308 keeps the method
and body, so a POST is not turned into a GET) once that host's certificate is
in place; a host still waiting for one is served plainly meanwhile. Responses that went out over
HTTPS carry `Strict-Transport-Security`.
"""

import functools
import re
import urllib.parse
from collections.abc import Mapping

import falcon

from fazt.hosts import host_name

CHALLENGE_PATH = "/.well-known/acme-challenge/"
HEALTH = "/_fazt/health"


# What a Host may be to be redirected: a DNS name (an IDN arrives as punycode). The Host is
# written into the Location, and a valid wildcard "serves" any one label: "x/", "a@" or
# "evil%2ecom/" under it sent browsers to another host ("https://evil%2ecom/.D/",
# which a browser reads as evil.com).
DNS_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")


def came_over_https(req: falcon.Request) -> bool:
    """TLS on this connection, or a trusted proxy in front that says it terminated TLS
    (fazt.proxies: the forwarding headers of anyone else are dropped before this)."""
    return req.forwarded_scheme == "https"


def https_url(req: falcon.Request, host: str, https_port: int) -> str:
    """The same host (its name, without the plain port), path and query on the HTTPS port."""
    port = "" if https_port == 443 else f":{https_port}"
    target = req.env.get("REQUEST_URI") or ""
    if not target.startswith("/"):  # absolute-form, or a server that does not pass it
        target = urllib.parse.quote(req.path) + (f"?{req.query_string}" if req.query_string
                                                   else "")
    return f"https://{host}{port}{target}"


def hsts(config: Mapping) -> list[tuple[str, str]]:
    """The header every answer over HTTPS carries (none when hsts_max_age is 0): the
    thread's, the fast path's and the loop's own refusals alike."""
    max_age = int(config.get("hsts_max_age") or 0)
    return [("Strict-Transport-Security", f"max-age={max_age}")] if max_age else []


def hsts_lines(config: Mapping) -> bytes:
    """hsts() as the header lines the event loop's own answers append, made once per value
    (rendering them was about 2% of the loop's time per hot file over HTTPS)."""
    return _hsts_lines(config.get("hsts_max_age"))


@functools.lru_cache(maxsize=8)
def _hsts_lines(max_age) -> bytes:
    return b"".join(f"{name}: {value}\r\n".encode("latin-1")
                    for name, value in hsts({"hsts_max_age": max_age}))


class HttpsPolicy:
    """Falcon middleware, first on every app (cockpit, sites, unknown hosts)."""

    def __init__(self, instance):
        self.instance = instance

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        autocert = self.instance.autocert
        if autocert is not None and req.path.startswith(CHALLENGE_PATH):
            answer = autocert.challenge(req.path[len(CHALLENGE_PATH):])
            if answer is None:
                raise falcon.HTTPNotFound(title="Unknown challenge")
            resp.content_type = "text/plain"
            resp.text = answer
            resp.complete = True
            return
        port = self.instance.https_port
        if not port or req.path == HEALTH or came_over_https(req) or autocert is None:
            return
        # Only a host whose certificate is in place and valid: until then (the first
        # seconds after its site is deployed, or while its order fails) and once it has
        # expired, it keeps being served plainly.
        host = host_name(req.get_header("Host"))
        if host and DNS_NAME.fullmatch(host) and autocert.serves(host):
            raise falcon.HTTPPermanentRedirect(https_url(req, host, port))

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource,
                         req_succeeded: bool) -> None:
        if self.instance.https_port and came_over_https(req):
            for name, value in hsts(self.instance.config):
                resp.set_header(name, value)
