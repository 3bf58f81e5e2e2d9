"""Keep freed memory for the next attempt: three glibc settings, made once per process.

Every attempt allocates blocks of megabytes: C' (m·n int32, 16 MiB at 2048²), the
packed operands, for a posted job C itself. glibc serves blocks that big with
``mmap`` and unmaps them on free, or trims freed memory off the top of its heap, so
the next attempt's first write to every 4 KiB page is a page fault: ~3,000 faults per
2048² null attempt and ~4,100 per posted job's, measured on the dev VM (Zen 4, THP
``madvise``), where they made a 30 ms attempt take 38–70 ms. Three ``mallopt`` calls
keep those blocks on the heap (``M_MMAP_THRESHOLD`` at its 64-bit maximum, 32 MiB),
keep freed heap memory mapped (``M_TRIM_THRESHOLD``), and keep every thread on the
main heap (``M_ARENA_MAX`` = 1), so later attempts reuse pages already faulted in: 0
faults per attempt. The process keeps its high-water mark of memory instead of
returning it between attempts, which a miner reuses at once.

The third setting is what makes it hold whatever the thread count. Without it each
thread that allocates gets an arena of its own, whose heaps are 64 MiB mappings of
their own: whether an attempt's 16 MiB blocks were reused or faulted in anew then
depended on what else sat in the miner thread's arena, which changed with Numba's
thread count (with 1 or 4 threads, 4,097 faults every attempt on a 2-core VM, where 2
or 16 gave 0). One arena shares one lock among the threads, which costs little here:
the kernels allocate a few small buffers per tile, against ~10 µs of arithmetic each.
It applies to the threads that allocate for the first time after the call; ``pouw``
makes it first thing, before any thread starts.

Only where the C library is glibc (Linux distributions but Alpine); elsewhere nothing
changes. The ``pouw`` command applies it at start, so nodes and benchmarks run alike.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 << 20
"""glibc's largest M_MMAP_THRESHOLD on 64-bit (HEAP_MAX_SIZE / 2): blocks under it come
from the heap. Bigger ones (C at 4096² and up) are still mapped per call."""
TRIM_THRESHOLD = 1 << 30
"""Freed memory at the top of the heap is returned to the OS only past this much."""
ARENA_MAX = 1
"""Every thread allocates from the main heap (see the module's docstring)."""

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
    settings = (
        (M_ARENA_MAX, ARENA_MAX),
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    )
    # A list, not a generator: every setting is made even where one is refused.
    return all([bool(mallopt(option, value)) for option, value in settings])
