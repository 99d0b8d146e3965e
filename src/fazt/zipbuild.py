"""The zip a deploy over HTTP uploads: a site's files, as the server's deploy reads them.

The server reads the zip with two rules a folder deploy does not have, and the
zip is made so that neither changes what the folder deploys as:
- a single top folder is unwrapped (a zipped folder): when every file of the
  site sits in one folder (a site that is only `docs/`), the zip puts them in
  one more, which the server takes off again;
- a zip that unpacks to many times its size is taken for a bomb
  (`zip_max_ratio`, `zip_max_entry_ratio`): a file that deflates past
  MAX_RATIO (a blank image, a run of zeros) is stored as it is instead.
"""

import io
import zipfile
import zlib

from fazt.archive import common_folder
from fazt.store.sites import NewFile

# Well under the archive thresholds' defaults (100 and 200): a folder that deploys
# from disk deploys over HTTP too, unless the owner set those far lower.
MAX_RATIO = 10
WRAPPER = "site/"


def build_zip(files: list[NewFile]) -> bytes:
    wrap = WRAPPER if common_folder([f.path for f in files]) else ""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for f in files:
            data = b"".join(f.pieces)
            archive.writestr(wrap + f.path, data, compress_type=_method(data))
    return buf.getvalue()


def _method(data: bytes) -> int:
    """Deflated, unless deflating packs it more than MAX_RATIO times."""
    packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    packed = len(packer.compress(data)) + len(packer.flush())
    return zipfile.ZIP_STORED if len(data) > MAX_RATIO * packed else zipfile.ZIP_DEFLATED
