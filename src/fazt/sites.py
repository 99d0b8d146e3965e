"""Serving user sites: static files from the VFS, and `/api/...` through the runtime."""

import re

import falcon

from fazt.deploy import clean_path
from fazt.errors import FaztError, TooLarge
from fazt.http_errors import http_error
from fazt.instance import MAINTENANCE, MB, Instance
from fazt.store.sites import FileInfo
from fazt.vfs import Stale

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
SCRIPT = "api/main.js"


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """One byte range as [start, end), None for "send it all", or "416".

    RFC 9110: a Range we cannot parse (or several ranges) is ignored, and the
    whole file is sent; a well-formed range wholly past the end is 416.
    """
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
        if last and int(last) < start:
            return None
        if start >= size:
            return "416"
        return start, end
    suffix = int(last)
    if suffix == 0:
        return "416"
    return max(0, size - suffix), size


class SiteResource:
    """The sink for every path on a site's host."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def __call__(self, req: falcon.Request, resp: falcon.Response, site: str) -> None:
        if self.instance.mode == MAINTENANCE:
            raise http_error(503, "maintenance",
                             "This site is in maintenance; the owner is working on it.", 60)
        path = self._relative(req.path)
        if path == "api" or path.startswith("api/"):
            script = self.instance.vfs.find(site, SCRIPT)
            if script is not None:
                return self._run(req, resp, site, script)
        if req.method not in ("GET", "HEAD"):
            raise http_error(405, "method_not_allowed", "Static files answer GET and HEAD only.")
        try:
            self._static(req, resp, site, path)
        except Stale:  # the site was redeployed by another process: look once more
            self._static(req, resp, site, path)

    def _static(self, req: falcon.Request, resp: falcon.Response, site: str, path: str) -> None:
        info = self._find(site, path, req.path)
        if info is None:
            if req.path.endswith("/") or not path:
                raise self._missing(site)
            redirect = self.instance.vfs.find(site, _join(path, "index.html"))
            if redirect is None:
                raise self._missing(site)
            raise falcon.HTTPMovedPermanently(req.path + "/")
        self._send(req, resp, site, info)

    @staticmethod
    def _relative(raw: str) -> str:
        if raw in ("", "/"):
            return ""
        try:
            return clean_path(raw.lstrip("/")) if raw.strip("/") else ""
        except FaztError as exc:
            raise http_error(400, "bad_path", exc.message) from None

    def _find(self, site: str, path: str, raw: str) -> FileInfo | None:
        if path.startswith("api/") and self.instance.vfs.find(site, SCRIPT) is not None:
            return None  # a back end's source is never served
        if not path or raw.endswith("/"):
            return self.instance.vfs.find(site, _join(path, "index.html"))
        return self.instance.vfs.find(site, path)

    def _missing(self, site: str) -> falcon.HTTPError:
        if not self.instance.vfs.site_exists(site):
            return http_error(404, "no_such_site", f"There is no site named {site!r} here.")
        return http_error(404, "not_found", "There is no file at this address.")

    def _send(self, req: falcon.Request, resp: falcon.Response, site: str, info: FileInfo) -> None:
        etag = f'"{info.sha256}"'
        resp.set_header("ETag", etag)
        resp.cache_control = (["no-cache"] if info.mime.startswith("text/html")
                              else ["public", "max-age=300"])
        if _matches(req.get_header("If-None-Match"), etag):
            resp.status = falcon.HTTP_304
            return
        resp.set_header("Accept-Ranges", "bytes")
        resp.content_type = info.mime
        wanted = parse_range(req.get_header("Range"), info.size)
        if_range = req.get_header("If-Range")
        if if_range and if_range.strip() != etag:
            wanted = None
        if wanted == "416":
            raise falcon.HTTPError(falcon.HTTP_416, title="range_not_satisfiable",
                                   description=f"The file is {info.size} bytes long.",
                                   headers={"Content-Range": f"bytes */{info.size}"})
        start, end = wanted if wanted else (0, info.size)
        if wanted:
            resp.status = falcon.HTTP_206
            resp.set_header("Content-Range", f"bytes {start}-{end - 1}/{info.size}")
        resp.content_length = end - start
        if req.method == "HEAD":
            return
        vfs = self.instance.vfs
        if vfs.is_large(info):
            resp.stream = vfs.stream(info, start, end)
        else:
            resp.data = vfs.content(site, info)[start:end]

    def _run(self, req: falcon.Request, resp: falcon.Response, site: str, script: FileInfo) -> None:
        c = self.instance.config
        limit = int(min(float(c["max_upload_mb"]), float(c["js_memory_mb"])) * MB)
        length = req.content_length or 0
        if length > limit:
            raise TooLarge(f"The request body is over the limit of {limit // MB} MB.")
        body = req.bounded_stream.read(limit + 1) if length or req.method in ("POST", "PUT",
                                                                                  "PATCH") else b""
        if len(body) > limit:
            raise TooLarge(f"The request body is over the limit of {limit // MB} MB.")
        request = {
            "method": req.method,
            "path": req.path,
            "query": {k: v if isinstance(v, str) else v[-1] for k, v in req.params.items()},
            "headers": {k.lower(): v for k, v in req.headers.items()},
            "body": body.decode("utf-8", errors="replace"),
        }
        source = self.instance.vfs.content(site, script).decode("utf-8", errors="replace")
        answer = self.instance.runtime.handle(site, script.sha256, source, request)
        resp.status = falcon.code_to_http_status(answer.status)
        for name, value in answer.headers.items():
            resp.set_header(name, value)
        resp.data = answer.body


def _join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))
