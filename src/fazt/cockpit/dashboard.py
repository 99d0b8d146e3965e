"""The dashboard's files, from the pinned map in RAM: the database is never asked.

The dashboard routes on the URL's hash (`#/status`), so the server only needs
to know real files: `/` is `index.html`, a folder is its `index.html`, and
anything else unknown is a 404.
"""

import falcon

from fazt.deploy import ADMIN_SITE, clean_path
from fazt.errors import FaztError
from fazt.http_errors import http_error
from fazt.instance import Instance
from fazt.negotiation import not_modified, pick, static_headers


class Dashboard:
    """The sink for every non-API path on admin.D."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def __call__(self, req: falcon.Request, resp: falcon.Response, **_: str) -> None:
        if req.method not in ("GET", "HEAD"):
            raise http_error(405, "method_not_allowed", "The dashboard's files answer GET only.",
                             allow="GET, HEAD")
        vfs = self.instance.vfs
        try:
            path = clean_path(req.path.lstrip("/")) if req.path.strip("/") else ""
        except FaztError as exc:
            raise http_error(400, "bad_path", exc.message) from None
        if not path or req.path.endswith("/"):
            path = f"{path}/index.html" if path else "index.html"
        info = vfs.find(ADMIN_SITE, path)
        if info is None:
            if vfs.find(ADMIN_SITE, f"{path}/index.html") is not None:
                raise falcon.HTTPMovedPermanently(req.path + "/")
            raise http_error(404, "not_found", "There is no such page in the dashboard.")
        body = pick(info, req.get_header("Accept-Encoding"))  # variants pinned beside it
        # revalidate always: a new fazt may ship new files
        revalidate = [("Cache-Control", "no-cache")]
        if not_modified(req.get_header("If-None-Match"), body):
            resp.status = falcon.HTTP_304
            for name, value in static_headers(info, body, not_modified=True,
                                              site_headers=revalidate):
                resp.set_header(name, value)
            return
        for name, value in static_headers(info, body, site_headers=revalidate):
            if name != "Accept-Ranges":  # the dashboard's files are small: no ranges
                resp.set_header(name, value)
        if req.method == "GET":
            resp.data = vfs.content(ADMIN_SITE, info, body)
