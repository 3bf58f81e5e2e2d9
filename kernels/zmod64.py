"""Matrix rows times two vectors in Z/2^64: the inner loops both Freivalds paths share.

Numba compiles one version per operand type: int8 or int32 rows, int32 vectors (each
product one ``vpmuldq``) or int64 ones (``vpmullq`` on AVX-512DQ). int64 products
wrap silently: that is the ring's arithmetic.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Rows per inner loop. Each product is one vpmullq, each vector element a 64-bit load: a
# row at a time the loop waits on loads (16 bytes of vectors per element for two rounds),
# eight rows share every load and run at the multiplier's rate (16 zmm accumulators:
# twelve rows already spill, four are 1.4x slower).
ROW_BLOCK = 8


@njit(nogil=True, cache=True, inline="always")
def eight_rows(x: np.ndarray, i: int, v0: np.ndarray, v1: np.ndarray) -> tuple[np.int64, ...]:
    """Rows i…i+7 of x (int8 or int32) · v0, then · v1, in Z/2^64 (int64 products wrap:
    that is the ring's arithmetic). For int32 vectors each product is one vpmuldq; for
    int64 ones (y = B·x) vpmullq on zmm where the target has AVX-512DQ."""
    r0, r1, r2, r3 = x[i], x[i + 1], x[i + 2], x[i + 3]
    r4, r5, r6, r7 = x[i + 4], x[i + 5], x[i + 6], x[i + 7]
    p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = np.int64(0)
    q0 = q1 = q2 = q3 = q4 = q5 = q6 = q7 = np.int64(0)
    for j in range(x.shape[1]):
        y, z = v0[j], v1[j]
        e = np.int64(r0[j])
        p0 += e * y
        q0 += e * z
        e = np.int64(r1[j])
        p1 += e * y
        q1 += e * z
        e = np.int64(r2[j])
        p2 += e * y
        q2 += e * z
        e = np.int64(r3[j])
        p3 += e * y
        q3 += e * z
        e = np.int64(r4[j])
        p4 += e * y
        q4 += e * z
        e = np.int64(r5[j])
        p5 += e * y
        q5 += e * z
        e = np.int64(r6[j])
        p6 += e * y
        q6 += e * z
        e = np.int64(r7[j])
        p7 += e * y
        q7 += e * z
    return p0, p1, p2, p3, p4, p5, p6, p7, q0, q1, q2, q3, q4, q5, q6, q7


@njit(nogil=True, cache=True, inline="always")
def one_row(row: np.ndarray, v0: np.ndarray, v1: np.ndarray) -> tuple[np.int64, np.int64]:
    """row · v0 and row · v1 in Z/2^64: the rows after the last whole block of eight."""
    p = q = np.int64(0)
    for j in range(row.shape[0]):
        e = np.int64(row[j])
        p += e * v0[j]
        q += e * v1[j]
    return p, q
