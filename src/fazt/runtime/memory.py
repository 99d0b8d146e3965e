"""Giving a dead context's heap back to the operating system.

QuickJS allocates with malloc, in many small pieces. When a context is freed
glibc keeps those pieces in its arena for reuse, so after a memory bomb the
process would keep its peak RSS (measured: 24 MB before, 150 MB after a
128 MB bomb, still 141–150 MB after the context was freed). `malloc_trim`
returns them (back to 24 MB, in about 10 ms). It runs after a script hit its
memory limit, not after every request: an ordinary request leaves little
behind, and what it leaves is reused by the next context on that thread.
"""

import ctypes
import ctypes.util

_libc = None
_name = ctypes.util.find_library("c")
if _name:
    try:
        _libc = ctypes.CDLL(_name)
        _libc.malloc_trim  # noqa: B018 - glibc only; musl and macOS have none
    except (OSError, AttributeError):
        _libc = None


def release_free_memory() -> bool:
    """Ask malloc to return free heap pages; False where the C library cannot."""
    if _libc is None:
        return False
    _libc.malloc_trim(0)
    return True
