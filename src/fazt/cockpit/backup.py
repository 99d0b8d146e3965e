"""`GET /api/backup`: the whole database as a download, consistent and online.

SQLite's online backup writes a copy into a temporary file beside the
database (same disk, so no surprise on a small /tmp); the file is opened and
unlinked at once, so nothing is left behind even if the download is cut:
Linux keeps the bytes until the stream is closed.

The file is sent as a FileStream: the server's reader threads read it, a few
chunks ahead of the socket, and the event loop only sends them. Read by the loop
(a plain `wsgi.file_wrapper` over the file), a backup of several GB that is not
in the page cache stalled every site and the cockpit at each read from disk.
"""

import os
import time

import falcon

from fazt.instance import Instance
from fazt.store.database import backup_copy_path
from fazt.vfs import FileStream


class Backup:
    def __init__(self, instance: Instance):
        self.instance = instance

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        db = self.instance.db
        path = backup_copy_path(db.path)
        db.backup(path)
        try:
            file = open(path, "rb")
        finally:
            os.unlink(path)
        try:
            stream = FileStream(file, self.instance.vfs.loop)
        except BaseException:
            file.close()
            raise
        stamp = time.strftime("%Y%m%d-%H%M%S")
        resp.content_type = "application/vnd.sqlite3"
        resp.downloadable_as = None
        resp.set_header("Content-Disposition",
                        f'attachment; filename="fazt-backup-{stamp}.db"')
        resp.content_length = os.fstat(file.fileno()).st_size
        resp.stream = stream
