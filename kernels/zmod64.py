"""Matrix rows times two vectors in Z/2^64: the inner loops both Freivalds paths share.

Numba compiles one version per operand type: int8 or int32 rows, int32 vectors (each
product one ``vpmuldq``) or int64 ones (``vpmullq`` on AVX-512DQ). int64 products
wrap silently: that is the ring's arithmetic. An int32 matrix times int32 vectors (C·x)
goes by pairs of entries (:func:`rows_times_pair`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

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


_I64 = ir.IntType(64)


def _contiguous_int32(x: types.Type) -> bool:
    return isinstance(x, types.Array) and x.ndim == 2 and x.dtype == types.int32 and x.layout == "C"


_HALF = np.int64(32)


@intrinsic
def word_pair(tctx, x, i, p):
    """The int64 whose low half is x[i, 2p] and high half x[i, 2p + 1] (little-endian,
    as every Numba CPU target is), for a C-contiguous 2-D int32 x: one 8-byte load,
    aligned only to 4 as int32 rows are (a row of odd length puts every other row's
    pairs off an 8-byte boundary)."""
    if not _contiguous_int32(x):
        return None
    sig = types.int64(x, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        _, i, p = args
        byte = ir.IntType(8).as_pointer()
        row = builder.gep(
            builder.bitcast(ary.data, byte), [builder.mul(i, builder.extract_value(ary.strides, 0))]
        )
        return builder.load(builder.gep(builder.bitcast(row, _I64.as_pointer()), [p]), align=4)

    return sig, codegen


_pair = cast(Callable[[np.ndarray, int, int], np.int64], word_pair)
"""word_pair as compiled code calls it (an intrinsic's typing context is implicit)."""


@njit(nogil=True, cache=True, inline="always")
def _low(w: np.int64) -> np.int64:
    """The low int32 of w, sign-extended."""
    return (w << _HALF) >> _HALF


@njit(nogil=True, cache=True, inline="always")
def eight_rows_int32(c: np.ndarray, i: int, vs: np.ndarray, t: int) -> tuple[np.int64, ...]:
    """What ``eight_rows(c, i, vs[t], vs[t + 1])`` returns, for C-contiguous int32 c and
    vs, two entries at a time: each 8-byte load of a row of c holds a pair whose halves
    multiply the pair of each vector in place (``vpmuldq`` reads the low 32 bits of each
    64-bit lane, sign-extended; the high halves are one shift away), where the
    entry-wise loop widens every entry first (``vpmovsxdq``, a shuffle each). As exact
    for any int32 values; C·x at 2048² took 0.20 against 0.24 ms on a Zen 4 (2 threads,
    C in L3)."""
    n = c.shape[1]
    if n % 2:  # the last column of an odd width, entry-wise, seeds the sums
        last = n - 1
        p0, p1, p2, p3, p4, p5, p6, p7, q0, q1, q2, q3, q4, q5, q6, q7 = eight_rows(
            c[:, last:], i, vs[t, last:], vs[t + 1, last:]
        )
    else:
        p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = np.int64(0)
        q0 = q1 = q2 = q3 = q4 = q5 = q6 = q7 = np.int64(0)
    for j in range(n // 2):
        u = _pair(vs, t, j)
        v = _pair(vs, t + 1, j)
        ul, uh, vl, vh = _low(u), u >> _HALF, _low(v), v >> _HALF
        w = _pair(c, i, j)
        lo, hi = _low(w), w >> _HALF
        p0 += lo * ul + hi * uh
        q0 += lo * vl + hi * vh
        w = _pair(c, i + 1, j)
        lo, hi = _low(w), w >> _HALF
        p1 += lo * ul + hi * uh
        q1 += lo * vl + hi * vh
        w = _pair(c, i + 2, j)
        lo, hi = _low(w), w >> _HALF
        p2 += lo * ul + hi * uh
        q2 += lo * vl + hi * vh
        w = _pair(c, i + 3, j)
        lo, hi = _low(w), w >> _HALF
        p3 += lo * ul + hi * uh
        q3 += lo * vl + hi * vh
        w = _pair(c, i + 4, j)
        lo, hi = _low(w), w >> _HALF
        p4 += lo * ul + hi * uh
        q4 += lo * vl + hi * vh
        w = _pair(c, i + 5, j)
        lo, hi = _low(w), w >> _HALF
        p5 += lo * ul + hi * uh
        q5 += lo * vl + hi * vh
        w = _pair(c, i + 6, j)
        lo, hi = _low(w), w >> _HALF
        p6 += lo * ul + hi * uh
        q6 += lo * vl + hi * vh
        w = _pair(c, i + 7, j)
        lo, hi = _low(w), w >> _HALF
        p7 += lo * ul + hi * uh
        q7 += lo * vl + hi * vh
    return p0, p1, p2, p3, p4, p5, p6, p7, q0, q1, q2, q3, q4, q5, q6, q7


def rows_times_pair(x: np.ndarray, i: int, vs: np.ndarray, t: int) -> tuple[np.int64, ...]:
    """Rows i…i+7 of x · vs[t], then · vs[t + 1], in Z/2^64, inside compiled code: by
    pairs of entries (:func:`eight_rows_int32`) for an int32 x and int32 vectors (C·x),
    entry by entry (:func:`eight_rows`) for the rest."""
    raise NotImplementedError("rows_times_pair is called from compiled code only")


@overload(rows_times_pair, inline="always")
def _rows_times_pair(x, i, vs, t):
    if _contiguous_int32(x) and _contiguous_int32(vs):
        return lambda x, i, vs, t: eight_rows_int32(x, i, vs, t)
    return lambda x, i, vs, t: eight_rows(x, i, vs[t], vs[t + 1])
