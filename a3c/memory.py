"""Keep glibc from handing the buffers of every push back to the kernel, only to fault them in again.

Each push moves megabytes through freshly allocated buffers (message bytes, tensors) on gRPC's worker
threads. glibc's per-thread arenas give the top of a heap back with madvise as soon as more than the trim
threshold (128 KB) is free, so every push paid page faults and system calls for memory it reused a moment
later. Raising the thresholds keeps that memory in the process: a few tens of MB more resident.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
KEEP_BYTES = 64 * 1024 * 1024
MMAP_BYTES = 32 * 1024 * 1024  # glibc's largest mmap threshold on 64-bit


def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES)) and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES))
