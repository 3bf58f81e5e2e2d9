"""Boundary checks shared by every kernel entry point.

Kernels never guess: a wrong dtype, shape or value range is a ``ValueError``
that names the problem, raised before any tile is computed (the VNNI packing checks
the int7 range as it reads the operands, with :func:`int7_excess`, and names the
operand through :func:`check_operand`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels.params import MAX_K, OPERAND_MAX, OPERAND_MIN
from kernels.threads import exclusive

_PARALLEL_MIN_ENTRIES = 1 << 18
"""Below this, NumPy's min and max beat waking Numba's thread pool."""


@njit(nogil=True, cache=True, inline="always")
def int7_excess(v: np.uint8) -> np.uint8:
    """The byte v of an int8 entry + 64: its bit 7 is set iff the entry lies outside
    [-64, 63]. ORed over many entries, one test of bit 7 checks them all."""
    return np.uint8(v + np.uint8(64))


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _outside_int7(x: np.ndarray) -> bool:
    """Some entry of the C-contiguous 2-D int8 x lies outside [-64, 63]: bit 7 of
    (entry + 64) as a byte is set. One parallel pass, where min and max take two serial."""
    rows = x.shape[0]
    row_bits = np.zeros(rows, dtype=np.uint8)
    for i in prange(rows):
        bits = np.uint8(0)
        for v in x[i].view(np.uint8):
            bits |= int7_excess(v)
        row_bits[i] = bits
    bits = np.uint8(0)
    for i in range(rows):
        bits |= row_bits[i]
    return bool(bits & np.uint8(0x80))


def check_int8_matrix(name: str, x: np.ndarray) -> None:
    """Require a 2-D int8 array."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got {x.ndim}-D with shape {x.shape}")
    if x.dtype != np.int8:
        raise ValueError(f"{name} must have dtype int8, got {x.dtype}")


def check_operand(name: str, x: np.ndarray) -> None:
    """Require a 2-D int8 job operand whose values lie in [-64, 63] (int7)."""
    check_int8_matrix(name, x)
    if x.size >= _PARALLEL_MIN_ENTRIES and x.flags.c_contiguous and not _outside_int7(x):
        return
    if x.size:
        lo, hi = int(x.min()), int(x.max())
        if lo < OPERAND_MIN or hi > OPERAND_MAX:
            raise ValueError(
                f"{name} has values in [{lo}, {hi}], outside the int7 range "
                f"[{OPERAND_MIN}, {OPERAND_MAX}]"
            )


def check_rank(r: int) -> None:
    """The noise rank must be a power of two ≥ 2 (two distinct rows per column)."""
    if not isinstance(r, int) or r < 2 or r & (r - 1):
        raise ValueError(f"noise rank r must be a power of two >= 2, got {r!r}")


def check_shapes(m: int, k: int, n: int, r: int, h: int, w: int) -> None:
    """Check a job shape against the mining parameters."""
    check_rank(r)
    if min(m, k, n) <= 0:
        raise ValueError(f"matrix dimensions must be positive, got m={m}, k={k}, n={n}")
    if k > MAX_K:
        raise ValueError(f"k={k} exceeds the maximum inner dimension {MAX_K}")
    if k % r:
        raise ValueError(f"k={k} is not a multiple of the noise rank r={r}")
    if h <= 0 or w <= 0:
        raise ValueError(f"hash tile must be positive, got {h}x{w}")
    if m % h:
        raise ValueError(f"m={m} is not a multiple of the hash tile height h={h}")
    if n % w:
        raise ValueError(f"n={n} is not a multiple of the hash tile width w={w}")


def check_seed(name: str, seed: bytes) -> None:
    """Seeds are 32-byte BLAKE3 outputs."""
    if not isinstance(seed, bytes | bytearray) or len(seed) != 32:
        raise ValueError(f"{name} must be 32 bytes")
