"""What every CPU tile kernel shares (generic, AVX-512 VNNI, AMX): the fold, the panel
width, the shape check and the block copy (PROTOCOL §4).

Each kernel module imports these from here, and ``kernels.transcript_cpu``
chooses among the kernel modules: so the imports run one way.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.params import TRANSCRIPT_ROTATION, TRANSCRIPT_WORDS

_MASK32 = np.uint64(0xFFFFFFFF)
_ROT_L = np.uint64(TRANSCRIPT_ROTATION)
_ROT_R = np.uint64(32 - TRANSCRIPT_ROTATION)

PANEL = 16
"""Columns per packed B' panel (= microkernel width: two 8×int32 registers)."""


@njit(nogil=True, cache=True)
def padded_width(w: int) -> int:
    return (w + PANEL - 1) // PANEL * PANEL


@njit(nogil=True, cache=True, inline="always")
def check_chunks(k: int, r: int) -> None:
    # The microkernel reads raw pointers in k-pairs: refuse shapes it would misread.
    if r < 2 or r % 2 or k % r:
        raise ValueError("k must be a multiple of the chunk width r, an even number")


@njit(nogil=True, cache=True, inline="always")
def fold_tile(acc: np.ndarray, T: np.ndarray, chunk: int) -> None:
    """T[c mod 16] = rotl32(T[c mod 16], 13) XOR (XOR of the tile's int32 partial sums).

    The fold is deliberately non-linear (XOR + rotate): a linear projection
    of the partial sums could be computed from (uᵀA')(B'v) without doing
    the product (PROTOCOL §4). Zero padding columns of ``acc`` do not change it.
    """
    x = np.int32(0)
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            x ^= acc[i, j]
    slot = chunk % TRANSCRIPT_WORDS
    t = np.uint64(T[slot])
    rot = ((t << _ROT_L) | (t >> _ROT_R)) & _MASK32
    T[slot] = np.uint32(rot ^ (np.uint64(np.uint32(x)) & _MASK32))


@njit(nogil=True, cache=True)
def copy_block(src: np.ndarray, dst: np.ndarray, i0: int, j0: int, rows: int, cols: int) -> None:
    """dst[i0:i0+rows, j0:j0+cols] = src[:rows, :cols] (loops: slice assignment compiles slowly)."""
    for i in range(rows):
        for j in range(cols):
            dst[i0 + i, j0 + j] = src[i, j]
