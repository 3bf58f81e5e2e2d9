"""Keep freed memory for the next attempt: two glibc settings, made once per process.

Every attempt allocates blocks of megabytes: C' (m·n int32, 16 MiB at 2048²), the
packed operands, for a posted job C itself. glibc serves blocks that big with
``mmap`` and unmaps them on free, or trims freed memory off the top of its heap, so
the next attempt's first write to every 4 KiB page is a page fault: ~3,000 faults per
2048² null attempt and ~4,100 per posted job's, measured on the dev VM (Zen 4, THP
``madvise``), where they made a 30 ms attempt take 38–70 ms. Two ``mallopt`` calls
keep those blocks on the heap (``M_MMAP_THRESHOLD`` at its 64-bit maximum, 32 MiB) and
keep freed heap memory mapped (``M_TRIM_THRESHOLD``), so later attempts reuse pages
already faulted in: 0 faults per attempt. The process keeps its high-water mark of
memory instead of returning it between attempts, which a miner reuses at once.

Only where the C library is glibc (Linux distributions but Alpine); elsewhere nothing
changes. The ``pouw`` command applies it at start, so nodes and benchmarks run alike.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
"""glibc's largest M_MMAP_THRESHOLD on 64-bit (HEAP_MAX_SIZE / 2): blocks under it come
from the heap. Bigger ones (C at 4096² and up) are still mapped per call."""
TRIM_THRESHOLD = 1 << 30
"""Freed memory at the top of the heap is returned to the OS only past this much."""

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the settings (once per process); whether the C library took them."""
    global _applied
    if _applied is None:
        _applied = _mallopt()
    return _applied


def kept() -> bool:
    """Whether :func:`keep_freed_memory` has applied the settings in this process."""
    return bool(_applied)


def _mallopt() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
