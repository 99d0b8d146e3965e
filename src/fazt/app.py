"""The WSGI application: Host routing to the cockpit, the sites, or a 404.

Two Falcon apps sit behind one router, so that nothing registered for the
cockpit can ever be reached on a user-site host, and the other way round.
"""

import time

import falcon

from fazt import http_errors, proxies, requestlog
from fazt.cockpit.app import cockpit_app
from fazt.cockpit.resources import QuickStatus
from fazt.cockpit.session import proves_owner
from fazt.hosts import ADMIN, SITE, classify
from fazt.instance import Instance
from fazt.requestlog import RequestLog
from fazt.sites import SiteResource
from fazt.webapp import new_falcon_app


def sites_app(instance: Instance) -> falcon.App:
    app = new_falcon_app(instance)
    sink = SiteResource(instance)

    def serve(req: falcon.Request, resp: falcon.Response, **_: str) -> None:
        sink(req, resp, req.env["fazt.site"])

    app.add_sink(serve, prefix="/")
    return app


def unknown_app(instance: Instance) -> falcon.App:
    app = new_falcon_app(instance)

    def refuse(req: falcon.Request, resp: falcon.Response, **_: str) -> None:
        raise http_errors.http_error(404, "unknown_host", "This host is not served here.")

    app.add_sink(refuse, prefix="/")
    return app


class Router:
    """The WSGI callable Waitress serves."""

    def __init__(self, instance: Instance, log: RequestLog | None = None):
        self.instance = instance
        self.cockpit = cockpit_app(instance)
        self.sites = sites_app(instance)
        self.unknown = unknown_app(instance)
        self.log = log
        self.quick_status = QuickStatus(instance)  # the loop's status read (server/statuspath.py)

    def owner(self, cookie: str | None, authorization: str | None) -> bool:
        """Whether a request's Cookie and Authorization prove the owner, as the cockpit's
        Authentication middleware judges them (a bearer token, else the session cookie),
        from RAM alone: for the event loop's admission (server/admission.py)."""
        return proves_owner(self.instance, cookie, authorization)

    def __call__(self, environ: dict, start_response):
        self.instance.refresh()  # what any writer committed is served from this request on
        proxies.believe(environ, proxies.networks(tuple(self.instance.config["trusted_proxies"])))
        target = classify(environ.get("HTTP_HOST"), self.instance.domain, self.instance.domains)
        self.instance.rate.hit()
        if target.kind == ADMIN:
            app = self.cockpit
        elif target.kind == SITE:
            environ["fazt.site"] = target.site
            app = self.sites
        else:
            app = self.unknown
        if not self.log:
            return app(environ, start_response)
        began = time.monotonic()

        def logged_start(status, headers, exc_info=None):
            self.log.write(requestlog.line(
                environ.get("REMOTE_ADDR"), environ.get("HTTP_HOST"),
                environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                status.split(" ", 1)[0], (time.monotonic() - began) * 1000))
            return start_response(status, headers, exc_info)

        return app(environ, logged_start)

