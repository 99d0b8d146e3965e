"""The Falcon app every host's app starts from: fazt's error shapes and the health route."""

import falcon

from fazt import http_errors
from fazt.https import HttpsPolicy
from fazt.instance import Instance


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
