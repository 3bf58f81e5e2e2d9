"""Operand layout: an int8 matrix's transpose, made in 8×8 byte blocks.

Jobs travel as A's rows and Bᵀ's rows (B's columns: the rows a tile reads), while the
kernels take B itself, so each miner turns every Bᵀ it fetches into B, and a client
turns B into Bᵀ to upload it. NumPy transposes int8 one byte at a time, strided:
~45 ms for an 8 MiB operand, on the path from a job's operands to its attempt. Here
each 8×8 block of bytes is eight 64-bit words, transposed in registers by three rounds
of masked swaps (halves, quarters, bytes): ~3 ms on two cores.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels.threads import exclusive

_HALVES = np.uint64(0x00000000FFFFFFFF)
_QUARTERS = np.uint64(0x0000FFFF0000FFFF)
_BYTES = np.uint64(0x00FF00FF00FF00FF)


@njit(nogil=True, cache=True, inline="always")
def _swap(lo: np.uint64, hi: np.uint64, shift: np.uint64, mask: np.uint64) -> tuple:
    """Exchange the bits of ``lo`` above ``shift`` in each ``mask`` field with the bits of
    ``hi`` below it (a delta swap): the step that transposes two rows' byte blocks."""
    t = ((lo >> shift) ^ hi) & mask
    return lo ^ (t << shift), hi ^ t


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _transposed_words(x: np.ndarray, out: np.ndarray) -> None:
    """out ← xᵀ for C-contiguous int8 x (r×c) and out (c×r), both dimensions multiples
    of 8: word j of row i holds bytes 8j…8j+7 (little-endian), so after the three
    swap rounds word t of the block holds column t's eight bytes."""
    xw = x.view(np.uint64)
    ow = out.view(np.uint64)
    s32, s16, s8 = np.uint64(32), np.uint64(16), np.uint64(8)
    for bi in prange(x.shape[0] // 8):
        i = bi * 8
        for bj in range(x.shape[1] // 8):
            w0, w1, w2, w3 = xw[i, bj], xw[i + 1, bj], xw[i + 2, bj], xw[i + 3, bj]
            w4, w5, w6, w7 = xw[i + 4, bj], xw[i + 5, bj], xw[i + 6, bj], xw[i + 7, bj]
            w0, w4 = _swap(w0, w4, s32, _HALVES)
            w1, w5 = _swap(w1, w5, s32, _HALVES)
            w2, w6 = _swap(w2, w6, s32, _HALVES)
            w3, w7 = _swap(w3, w7, s32, _HALVES)
            w0, w2 = _swap(w0, w2, s16, _QUARTERS)
            w1, w3 = _swap(w1, w3, s16, _QUARTERS)
            w4, w6 = _swap(w4, w6, s16, _QUARTERS)
            w5, w7 = _swap(w5, w7, s16, _QUARTERS)
            w0, w1 = _swap(w0, w1, s8, _BYTES)
            w2, w3 = _swap(w2, w3, s8, _BYTES)
            w4, w5 = _swap(w4, w5, s8, _BYTES)
            w6, w7 = _swap(w6, w7, s8, _BYTES)
            j = bj * 8
            ow[j, bi], ow[j + 1, bi], ow[j + 2, bi], ow[j + 3, bi] = w0, w1, w2, w3
            ow[j + 4, bi], ow[j + 5, bi], ow[j + 6, bi], ow[j + 7, bi] = w4, w5, w6, w7


def transposed(x: np.ndarray) -> np.ndarray:
    """xᵀ as a new C-contiguous array: any 2-D array, in 8×8 blocks where ``x`` is int8
    with both dimensions multiples of 8 (every job operand), else NumPy's copy."""
    if x.ndim != 2:
        raise ValueError(f"a matrix to transpose must be 2-D, got shape {x.shape}")
    rows, cols = x.shape
    if x.dtype != np.int8 or rows % 8 or cols % 8 or not x.size:
        return np.ascontiguousarray(x.T)
    out = np.empty((cols, rows), dtype=np.int8)
    _transposed_words(np.ascontiguousarray(x), out)
    return out
