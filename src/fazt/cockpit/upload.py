"""`POST /api/deploy?site=NAME`: a zip upload becomes a new version of a site.

The body is bounded by `max_upload_mb` (refused from its Content-Length before
a byte is read, and reading stops just past the limit when the length lies or
is absent) and spooled to a temporary file, not RAM: a few uploads at once
must not eat the memory budget. The zip is then checked member by member as
it inflates, and written in one transaction.
"""

import contextlib
import tempfile

import falcon

from fazt.archive import ArchiveLimits, files_from_zip
from fazt.cockpit.resources import user_site
from fazt.constants import MB, PIECE
from fazt.errors import FaztError, TooLarge
from fazt.instance import Instance

SPOOL_BYTES = 1 * MB  # above this the upload goes to disk


def spool(stream, limit: int) -> tempfile.SpooledTemporaryFile:
    """Copy at most `limit` bytes of `stream` into a spooled file; TooLarge past it."""
    out = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    total = 0
    try:
        while piece := stream.read(PIECE):
            total += len(piece)
            if total > limit:
                raise TooLarge(f"The upload is over the limit of {limit // MB} MB.")
            out.write(piece)
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out


def _body(req: falcon.Request, limit: int):
    """The upload as a seekable file. The event loop has already read it, within the limit,
    into RAM or an unnamed file beside the database: used as it is, never copied to $TMPDIR
    (RAM on many small hosts). Any other stream is spooled here."""
    stream = req.env["wsgi.input"]
    if getattr(stream, "seekable", lambda: False)():
        size = stream.seek(0, 2)
        stream.seek(0)
        if size > limit:
            raise TooLarge(f"The upload is over the limit of {limit // MB} MB.")
        return contextlib.nullcontext(stream)
    return spool(req.bounded_stream, limit)


def is_empty(upload) -> bool:
    """Whether a seekable upload holds no byte (its position kept)."""
    here = upload.tell()
    size = upload.seek(0, 2)
    upload.seek(here)
    return size == 0


class Deploy:
    def __init__(self, instance: Instance):
        self.instance = instance

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = req.get_param("site")
        if not name:
            raise FaztError("Name the site: POST /api/deploy?site=NAME.")
        user_site(name)
        limit = int(float(self.instance.config["max_upload_mb"]) * MB)
        if (req.content_length or 0) > limit:
            raise TooLarge(f"The upload is over the limit of {limit // MB} MB.")
        with _body(req, limit) as upload:
            if is_empty(upload):
                raise FaztError("The upload is empty: send the site as a zip archive.")
            source = files_from_zip(upload, ArchiveLimits.from_config(self.instance.config))
            result = self.instance.deploy(name, source)
        resp.media = {"site": result["site"], "version": result["version"],
                      "files": result["files"], "bytes": result["bytes"],
                      "skipped": result["skipped"]}
