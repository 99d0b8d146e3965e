"""The WSGI application: Host routing to the cockpit, the sites, or a 404.

Two Falcon apps sit behind one router, so that nothing registered for the
cockpit can ever be reached on a user-site host, and the other way round.
"""

import time

import falcon

from fazt import http_errors, requestlog
from fazt.hosts import ADMIN, SITE, classify
from fazt.https import HttpsPolicy
from fazt.instance import Instance
from fazt.requestlog import RequestLog
from fazt.sites import SiteResource


class Health:
    """`/_fazt/health` on every host: 200 while the process is healthy, with the mode."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok", "mode": self.instance.mode}
        resp.cache_control = ["no-store"]

    on_head = on_get


def new_falcon_app(instance: Instance) -> falcon.App:
    """A Falcon app with fazt's error shapes and the health route."""
    app = falcon.App(cors_enable=False)
    app.req_options.strip_url_path_trailing_slash = False
    app.req_options.auto_parse_qs_csv = False
    http_errors.install(app)
    app.add_middleware(HttpsPolicy(instance))  # first: the plain port redirects before all else
    app.add_route("/_fazt/health", Health(instance))
    return app


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
        from fazt.cockpit.app import cockpit_app  # the cockpit sits beside the sites

        self.instance = instance
        self.cockpit = cockpit_app(instance)
        self.sites = sites_app(instance)
        self.unknown = unknown_app(instance)
        self.log = log

    def __call__(self, environ: dict, start_response):
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

