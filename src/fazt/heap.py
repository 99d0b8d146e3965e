"""What fazt asks of the C library's allocator (glibc; elsewhere nothing is asked).

Streams read a large file in 256 KiB chunks, each a fresh bytes object, a few
at a time. glibc's default thresholds (a 128 KiB mmap threshold that follows
the largest block freed, and a trim threshold twice that) give those pages
back to the kernel as soon as two or three chunks are freed together, and the
next chunks fault them in again, zeroed: measured here, about 100,000 page
faults a gigabyte, and reading a chunk cost three times the CPU whenever more
than one was held at a time. Blocks up to MMAP_THRESHOLD come from the heap,
and up to `keep_bytes` of free heap is kept for reuse (what the read-ahead
holds at most): the faults fall to about none. Peak RSS is unchanged; memory
freed after a peak is still given back by `malloc_trim` (runtime/memory.py).
"""

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024 * 1024  # above a chunk (256 KiB): chunks come from the heap


def keep_free_heap(keep_bytes: int) -> bool:
    """Let malloc keep `keep_bytes` of free heap instead of trimming it; False where the
    C library has no glibc mallopt."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(M_TRIM_THRESHOLD, keep_bytes))
