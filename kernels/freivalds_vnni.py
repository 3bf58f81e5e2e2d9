"""Freivalds' check on AVX-512 VNNI: its int8 products as dot products over byte planes.

Same check, same values, bit for bit, as the portable kernels in
:mod:`kernels.freivalds` (B·x, then A·y and C·x for y = B·x, all in Z/2^64); only
the two products with an int8 matrix change. x's entries lie in [0, 2^31), so each is
Σ_b 2^(8b)·x_b over its four bytes x_b ∈ [0, 255], and B·x = Σ_b 2^(8b)·(B·x_b) with
every B·x_b exact in int32 (|B·x_b| ≤ 255·128·n < 2^31 for n ≤ 65,536). ``vpdpbusd``
multiplies 4 unsigned bytes by 4 signed ones and adds the four products into an int32
lane, so one instruction takes a k-quad of one row of B (signed, broadcast to every
lane) against the same quad of all eight planes (2 rounds × 4 bytes, unsigned): a
``ymm`` per row, 16 rows sharing each load of the planes. A·y is the same over the 8
bytes of y mod 2^64 (2 rounds × 8 planes: a ``zmm``), which the B·x pass writes out
as it finishes each row. C is int32: C·x goes two entries a load
(:func:`kernels.zmod64.eight_rows_int32`, ``vpmuldq``), and while a block of 16 rows
has its A·y computed (bound by ``vpdpbusd``, with load slots to spare) the same loop
prefetches that block's rows of C into L2, so C·x, which comes next, reads them there
instead of waiting on L3.

Against the portable kernels on a Zen 4 (2048³, two threads): B·x 0.27 → 0.11 ms,
A·y with C·x 0.60 → 0.35 ms, of which C's pairs and prefetch took 0.42 → 0.35 (the
two in one process, the same minutes). Only targets with AVX-512 VNNI, BW and VL compile this
module (``kernels.freivalds._vnni_fits``): LLVM aborts the process on others, so they
never import it.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from kernels.irvec import I32, array_data, splat
from kernels.threads import exclusive
from kernels.zmod64 import one_row, rows_times_pair

ROWS = 16
"""Rows of the matrix a kernel call takes, each with its own accumulator."""
X_LANES = 8
"""B·x: 2 rounds × the 4 bytes of x."""
Y_LANES = 16
"""A·y: 2 rounds × the 8 bytes of y mod 2^64."""

_I8 = ir.IntType(8)


_LINE = 64
"""Bytes in a cache line: what one prefetch brings in."""
PREFETCH_PER_QUAD = 8
"""The most lines of C the A·y loop prefetches per k-quad (beside 16 ``vpdpbusd``)."""


def _make_rows_dot(lanes: int, mr: int, prefetching: bool = False):
    """Intrinsic ``dot(out, x, row0, ldx, panel, nquads)``: for r < mr and lane l,
    out[row0 + r, l] = Σ_p Σ_e panel[p, l, e] (unsigned) · x[row0 + r, 4p + e] (signed),
    p < nquads, in int32 lanes (``vpdpbusd``); ldx is x's row length in bytes.

    ``prefetching`` adds four arguments, ``(ahead, first, per_quad, last)``: with each
    k-quad p the loop also prefetches lines ``min(p·per_quad + e, last)``, e < per_quad,
    of ``ahead``'s bytes from byte ``first`` on (into L2: the next pass over them reads
    them there). The dot products keep the multipliers busy while those loads stream in.
    """
    vec = ir.VectorType(I32, lanes)
    bytes_vec = ir.VectorType(_I8, 4 * lanes)
    name = f"llvm.x86.avx512.vpdpbusd.{32 * lanes}"

    def codegen(context, builder, signature, args):
        row0, ldx, nquads = args[2], args[3], args[5]
        data = array_data(context, builder, signature, args)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec, bytes_vec, bytes_vec]), name
        )
        out_p = builder.bitcast(data(0), vec.as_pointer())
        panel_p = builder.bitcast(data(4), bytes_vec.as_pointer())
        rows, accs = [], []
        for r in range(mr):
            i = builder.add(row0, ir.Constant(row0.type, r))
            row = builder.gep(data(1), [builder.mul(i, ldx)])
            rows.append(builder.bitcast(row, I32.as_pointer()))  # a k-quad is one int32
            accs.append(cgutils.alloca_once_value(builder, ir.Constant(vec, [0] * lanes)))
        with cgutils.for_range(builder, nquads) as loop:
            if prefetching:
                _prefetch_lines(builder, data(6), args[7:], loop.index)
            # numpy buffers are only element-aligned: every vector access says so.
            planes = builder.load(builder.gep(panel_p, [loop.index]), align=1)
            for row, acc in zip(rows, accs, strict=True):
                quad = builder.load(builder.gep(row, [loop.index]), align=1)
                signed = builder.bitcast(splat(builder, quad, lanes), bytes_vec)
                builder.store(builder.call(fn, [builder.load(acc), planes, signed]), acc)
        for r, acc in enumerate(accs):
            i = builder.add(row0, ir.Constant(row0.type, r))
            builder.store(builder.load(acc), builder.gep(out_p, [i]), align=4)
        return context.get_dummy_value()

    if prefetching:

        @intrinsic
        def dot_ahead(tctx, out, x, row0, ldx, panel, nquads, ahead, first, per_quad, last):
            intp = types.intp
            sig = types.void(out, x, intp, intp, panel, intp, ahead, intp, intp, intp)
            return sig, codegen

        return dot_ahead

    @intrinsic
    def dot(tctx, out, x, row0, ldx, panel, nquads):
        return types.void(out, x, types.intp, types.intp, panel, types.intp), codegen

    return dot


def _prefetch_lines(builder: ir.IRBuilder, base: ir.Value, args, quad: ir.Value) -> None:
    """Prefetch lines min(quad·per_quad + e, last), e < per_quad, of the bytes at ``base``
    from byte ``first`` on (``args`` = first, per_quad, last), for reading (rw 0), into L2
    (locality 2, ``prefetcht1``): a hint, never a fault, whatever the address."""
    first, per_quad, last = args
    fn = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), I32, I32, I32]),
        "llvm.prefetch.p0",
    )
    start = builder.gep(builder.bitcast(base, _I8.as_pointer()), [first])
    with cgutils.for_range(builder, per_quad) as e:
        line = builder.add(builder.mul(quad, per_quad), e.index)
        line = builder.select(builder.icmp_signed("<", line, last), line, last)
        at = builder.gep(start, [builder.mul(line, ir.Constant(line.type, _LINE))])
        builder.call(fn, [at, I32(0), I32(2), I32(1)])


_x_rows = _make_rows_dot(X_LANES, ROWS)
_x_row = _make_rows_dot(X_LANES, 1)
_y_rows = _make_rows_dot(Y_LANES, ROWS, prefetching=True)
_y_row = _make_rows_dot(Y_LANES, 1)


@njit(nogil=True, cache=True)
def _x_planes(xs: np.ndarray) -> np.ndarray:
    """x's byte planes by k-quad: [p, 4t + b, e] = byte b of xs[t, 4p + e] (uint8)."""
    nq = xs.shape[1] // 4
    planes = np.empty((nq, X_LANES, 4), dtype=np.uint8)
    for p in range(nq):
        for t in range(2):
            for e in range(4):
                v = np.uint32(xs[t, 4 * p + e])
                for b in range(4):
                    planes[p, 4 * t + b, e] = np.uint8((v >> np.uint32(8 * b)) & np.uint32(255))
    return planes


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def times_x(b: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, y's planes): y[t] = B·xs[t] (2, k) int64 for B k×n int8 and xs (2, n) int32 in
    [0, 2^31), and y's byte planes by k-quad, [p, 8t + b, e] = byte b of y[t, 4p + e]
    mod 2^64 (uint8), for :func:`any_residual`."""
    k, n = b.shape
    nq = n // 4
    planes = _x_planes(xs)
    acc = np.empty((k, X_LANES), dtype=np.int32)
    y = np.empty((2, k), dtype=np.int64)
    y_planes = np.empty((k // 4, Y_LANES, 4), dtype=np.uint8)
    for blk in prange((k + ROWS - 1) // ROWS):
        i0 = blk * ROWS
        if i0 + ROWS <= k:
            _x_rows(acc, b, i0, n, planes, nq)
        else:
            for i in range(i0, k):
                _x_row(acc, b, i, n, planes, nq)
        for i in range(i0, min(k, i0 + ROWS)):
            for t in range(2):
                s = np.int64(0)
                for byte in range(4):
                    s += np.int64(acc[i, 4 * t + byte]) << np.int64(8 * byte)
                for j in range(4 * nq, n):  # columns past the last whole k-quad
                    s += np.int64(b[i, j]) * np.int64(xs[t, j])
                y[t, i] = s
                if i < 4 * (k // 4):
                    u = np.uint64(s)
                    for byte in range(8):
                        y_planes[i // 4, 8 * t + byte, i % 4] = np.uint8(
                            (u >> np.uint64(8 * byte)) & np.uint64(255)
                        )
    return y, y_planes


@njit(nogil=True, cache=True, inline="always")
def _a_times_y(acc: np.ndarray, a: np.ndarray, y: np.ndarray, i: int, t: int) -> np.int64:
    """Row i of A · y[t] in Z/2^64 from its 8 plane sums in acc, plus the columns past
    the last whole k-quad."""
    s = np.int64(0)
    for byte in range(8):
        s += np.int64(acc[i, 8 * t + byte]) << np.int64(8 * byte)
    k = a.shape[1]
    for j in range(4 * (k // 4), k):
        s += np.int64(a[i, j]) * y[t, j]
    return s


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def any_residual(
    a: np.ndarray, y: np.ndarray, y_planes: np.ndarray, c: np.ndarray, xs: np.ndarray
) -> bool:
    """Whether A·y[t] ≠ C·xs[t] (mod 2^64) in some row and round (t < 2), A·y from y's
    byte planes (:func:`times_x`); rows i of A and of C go to the same task."""
    m, k = a.shape
    nq = k // 4
    acc = np.empty((m, Y_LANES), dtype=np.int32)
    blocks = (m + ROWS - 1) // ROWS
    bad = np.zeros(blocks, dtype=np.bool_)
    # While a block's A·y is computed, its rows of C are prefetched for C·x after it: at
    # most PREFETCH_PER_QUAD lines per k-quad (4 at square shapes), so a C far wider
    # than A has only its block's first lines brought in, never more than L2 holds.
    block_bytes = ROWS * c.strides[0]
    lines = (block_bytes + _LINE - 1) // _LINE
    per_quad = min(PREFETCH_PER_QUAD, (lines + nq - 1) // nq) if nq else 0
    for blk in prange(blocks):
        i0 = blk * ROWS
        if i0 + ROWS <= m:
            _y_rows(acc, a, i0, k, y_planes, nq, c, i0 * c.strides[0], per_quad, lines - 1)
            for half in range(ROWS // 8):
                row0 = i0 + 8 * half
                cx = rows_times_pair(c, row0, xs, 0)
                for r in range(8):
                    for t in range(2):
                        if _a_times_y(acc, a, y, row0 + r, t) != cx[8 * t + r]:
                            bad[blk] = True
        else:
            for i in range(i0, m):
                _y_row(acc, a, i, k, y_planes, nq)
                cx = one_row(c[i], xs[0], xs[1])
                for t in range(2):
                    if _a_times_y(acc, a, y, i, t) != cx[t]:
                        bad[blk] = True
    return bool(bad.any())
