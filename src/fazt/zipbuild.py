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

import shutil
import tempfile
import time
import zipfile
import zlib
from typing import BinaryIO

from fazt.archive import common_folder
from fazt.constants import MB, PIECE
from fazt.store.sites import NewFile

# Well under the archive thresholds' defaults (100 and 200): a folder that deploys
# from disk deploys over HTTP too, unless the owner set those far lower.
MAX_RATIO = 10
WRAPPER = "site/"
SPOOL_BYTES = 8 * MB  # a file's bytes held in RAM while its method is chosen; more: on disk


def build_zip(files: list[NewFile]) -> BinaryIO:
    """The zip, in a temporary file (rewound) that is gone once closed: a site of any size
    is packed and sent with flat memory, a file at a time and a piece at a time."""
    wrap = WRAPPER if common_folder([f.path for f in files]) else ""
    out = tempfile.TemporaryFile()
    try:
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            for f in files:
                _add(archive, wrap + f.path, f)
        out.seek(0)
    except BaseException:
        out.close()
        raise
    return out


def _add(archive: zipfile.ZipFile, name: str, f: NewFile) -> None:
    """One file: its bytes read once (spooled while deflating them tells the method),
    then written into the archive in pieces."""
    packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    size = packed = 0
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        for piece in f.pieces:
            spool.write(piece)
            size += len(piece)
            packed += len(packer.compress(piece))
        packed += len(packer.flush())
        spool.seek(0)
        info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
        # Deflated, unless deflating packs it more than MAX_RATIO times (a zip bomb's shape)
        info.compress_type = zipfile.ZIP_STORED if size > MAX_RATIO * packed \
            else zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        with archive.open(info, "w", force_zip64=size > 2**31) as entry:
            shutil.copyfileobj(spool, entry, PIECE)
