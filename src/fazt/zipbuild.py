"""The zip a deploy over HTTP uploads: a site's files, as the server's deploy reads them."""

import io
import zipfile

from fazt.store.sites import NewFile


def build_zip(files: list[NewFile]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for f in files:
            archive.writestr(f.path, b"".join(f.pieces))
    return buf.getvalue()
