"""Freivalds' check that C = A·B, in O(mk + kn + mn) per round (PROTOCOL §8).

Arithmetic is in Z/2^64 with vectors x of entries drawn uniformly from [0, 2^31):
the check tests (C − A·B)·x ≡ 0. If C ≠ A·B some row d of D = C − A·B is non-zero,
and since |D| < 2^32 (C is int32 and A·B is exact in int32 for k ≤ 65,536) one of
its entries d_j has 2-adic valuation v ≤ 31. Fix the other entries of x: the x_j
that make d·x ≡ 0 (mod 2^64) form at most one class modulo 2^(64−v) ≥ 2^33, so at
most one of the 2^31 values x_j may take is among them, and one round falsely
accepts with probability ≤ 2^-31. Two independent rounds give ≤ 2^-62, under the
2^-60 the protocol asks for.

31-bit entries, not 64-bit ones, because every product with x is then a 32×32→64
multiply (``vpmuldq``, one µop on every x86 with AVX2) for B·x and C·x, and on
AVX-512 VNNI (:mod:`kernels.freivalds_vnni`) x's four bytes are unsigned planes
for int8 dot products; only A·(B·x) needs full 64-bit products (``vpmullq`` on
AVX-512DQ, three 32-bit multiplies on AVX2, or the 8 byte planes of B·x on VNNI).
The vectors come from one generator per process, seeded from the OS (and again in
a forked child): they never leave the process, so a prover cannot know them in
advance, and drawing them is one call for raw words.
"""

from __future__ import annotations

import os

import numpy as np
from numba import get_num_threads, njit, prange

from kernels.isa import compile_target
from kernels.threads import exclusive
from kernels.validate import check_int8_matrix
from kernels.zmod64 import ROW_BLOCK, eight_rows, one_row, rows_times_pair

FREIVALDS_ROUNDS = 2
MAX_VNNI_WIDTH = 65_536
"""The widest k and n the VNNI kernels take: their byte-plane dot products stay exact in
int32 (255·128·65,536 < 2^31)."""
FALSE_ACCEPT_LOG2 = -31 * FREIVALDS_ROUNDS

_generator: np.random.Generator | None = None


def _reseed() -> None:
    """Forget the process's generator: the next check seeds a new one from the OS."""
    global _generator
    _generator = None


os.register_at_fork(after_in_child=_reseed)  # a forked child never repeats its parent's x


def random_vectors(rounds: int, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """(rounds, n) int32, every entry uniform over [0, 2^31): 31 bits of each raw word
    of ``rng``, or of this process's OS-seeded generator."""
    global _generator
    gen = rng
    if gen is None:
        gen = _generator
        if gen is None:
            gen = _generator = np.random.default_rng()
    words = gen.bit_generator.random_raw((rounds * n + 1) // 2)
    return (words.view(np.int32)[: rounds * n] & np.int32(0x7FFFFFFF)).reshape(rounds, n)


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _matvec(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """x (int8 or int32; Numba compiles one version per dtype) · v (int32 or int64) in Z/2^64."""
    rows, cols = x.shape
    out = np.empty(rows, dtype=np.int64)
    for i in prange(rows):
        s = np.int64(0)
        for j in range(cols):
            s += np.int64(x[i, j]) * v[j]
        out[i] = s
    return out


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _times_vectors(x: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """out[t] = x·vs[t] in Z/2^64, as (rounds, rows) int64; rounds is even (vectors go in
    pairs), vs int32 or int64."""
    rows = x.shape[0]
    rounds = vs.shape[0]
    out = np.empty((rounds, rows), dtype=np.int64)
    for blk in prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        i = blk * ROW_BLOCK
        for t in range(0, rounds, 2):
            if i + ROW_BLOCK <= rows:
                s = eight_rows(x, i, vs[t], vs[t + 1])
                for r in range(ROW_BLOCK):
                    out[t, i + r] = s[r]
                    out[t + 1, i + r] = s[ROW_BLOCK + r]
            else:
                for r in range(i, rows):
                    out[t, r], out[t + 1, r] = one_row(x[r], vs[t], vs[t + 1])
    return out


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _any_residual(a: np.ndarray, bx: np.ndarray, c: np.ndarray, xs: np.ndarray) -> bool:
    """Whether A·bx[t] ≠ C·xs[t] in some row and round: (C − A·B)·x ≢ 0 (mod 2^64).

    Rows i of A and of C go to the same task, so the threads stay balanced, and C·x
    is compared where it is made, never stored; rounds is even (vectors go in pairs).
    """
    m = a.shape[0]
    rounds = xs.shape[0]
    blocks = (m + ROW_BLOCK - 1) // ROW_BLOCK
    bad = np.zeros(blocks, dtype=np.bool_)
    for blk in prange(blocks):
        i = blk * ROW_BLOCK
        for t in range(0, rounds, 2):
            if i + ROW_BLOCK <= m:
                if eight_rows(a, i, bx[t], bx[t + 1]) != rows_times_pair(c, i, xs, t):
                    bad[blk] = True
            else:
                for r in range(i, m):
                    if one_row(a[r], bx[t], bx[t + 1]) != one_row(c[r], xs[t], xs[t + 1]):
                        bad[blk] = True
    return bool(bad.any())


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _matvecs_i8_transposed(bt: np.ndarray, vs: np.ndarray, nthreads: int) -> np.ndarray:
    """out[t] = B·vs[t] where the caller holds Bᵀ (n×k): out[t, c] = Σ_j Bᵀ[j, c]·vs[t, j]."""
    n, k = bt.shape
    rounds = vs.shape[0]
    part = np.zeros((nthreads, rounds, k), dtype=np.int64)
    step = (n + nthreads - 1) // nthreads
    for th in prange(nthreads):
        for j in range(th * step, min(n, (th + 1) * step)):
            row = bt[j]
            for t in range(rounds):
                vj = vs[t, j]
                acc = part[th, t]
                for c in range(k):
                    acc[c] += np.int64(row[c]) * vj
    out = np.zeros((rounds, k), dtype=np.int64)
    for th in range(nthreads):
        for t in range(rounds):
            for c in range(k):
                out[t, c] += part[th, t, c]
    return out


def _vnni_fits(m: int, k: int, n: int) -> bool:
    """Whether this check runs on :mod:`kernels.freivalds_vnni`: the target has AVX-512
    VNNI, BW and VL, the CPU kernels' VNNI path is the active one (``pouw bench kernels
    --isa generic`` measures the portable kernels), and the shape keeps its dot products
    exact."""
    from kernels.transcript_cpu import AMX, VNNI, active_path

    return (
        active_path() in (VNNI, AMX)
        and "avx512vl" in compile_target().features
        and min(m, k, n) >= 1
        and max(k, n) <= MAX_VNNI_WIDTH
    )


def freivalds_check(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    rng: np.random.Generator | None = None,
    rounds: int = FREIVALDS_ROUNDS,
    b_transposed: bool = False,
) -> bool:
    """True if C = A·B (false-accept probability ≤ 2^(-31·rounds)).

    ``a`` is m×k int8, ``b`` is k×n int8 (or its transpose n×k when
    ``b_transposed``), ``c`` is m×n int32. The vectors come from the process's
    OS-seeded generator unless an ``rng`` is given: a prover must not know them in
    advance.
    """
    check_int8_matrix("A", a)
    check_int8_matrix("B", b)
    m, k = a.shape
    kb, n = (b.shape[1], b.shape[0]) if b_transposed else b.shape
    if kb != k:
        raise ValueError(f"inner dimensions differ: A is {a.shape}, B is {(kb, n)}")
    if not isinstance(c, np.ndarray) or c.dtype != np.int32 or c.shape != (m, n):
        raise ValueError(f"C must be int32 with shape {(m, n)}")
    if rounds < 1:
        raise ValueError("at least one Freivalds round is needed")
    a = np.ascontiguousarray(a)
    c = np.ascontiguousarray(c)
    bb = np.ascontiguousarray(b)
    # One independent vector per round, all checked in one pass over each operand.
    xs = random_vectors(rounds, n, rng)
    if rounds == 2 and not b_transposed and _vnni_fits(m, k, n):
        from kernels import freivalds_vnni as fv

        y, y_planes = fv.times_x(bb, xs)
        return not fv.any_residual(a, y, y_planes, c, xs)
    if rounds % 2:  # the kernels take vectors in pairs: an odd last round is checked twice
        xs = np.concatenate([xs, xs[-1:]])
    if b_transposed:
        bx = _matvecs_i8_transposed(bb, xs, get_num_threads())
    else:
        bx = _times_vectors(bb, xs)
    # Then A·(B·x) against C·x row by row, in a second parallel region; int64 products
    # wrap silently in Numba: that is the Z/2^64 arithmetic we want.
    return not _any_residual(a, bx, c, xs)


def locate_error(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, rng: np.random.Generator | None = None
) -> tuple[int, int] | None:
    """An entry (i, j) where C ≠ A·B, or None if the product is right.

    Freivalds' residual A(Bx) − Cx is non-zero exactly on rows that hold an
    error (with the probability bound above), so only those rows of A·B are
    recomputed: O(mk + kn + mn) plus O(kn) per wrong row, never the whole product.
    """
    check_int8_matrix("A", a)
    check_int8_matrix("B", b)
    x = random_vectors(1, b.shape[1], rng)[0]
    residual = _matvec(np.ascontiguousarray(a), _matvec(np.ascontiguousarray(b), x))
    residual -= _matvec(np.ascontiguousarray(c), x)
    for i in np.flatnonzero(residual):
        hit = wrong_entry(a, b, int(i), c[i])
        if hit is not None:
            return int(i), hit[0]
    return None


def wrong_entry(a: np.ndarray, b: np.ndarray, i: int, c_row: np.ndarray) -> tuple[int, int] | None:
    """(j, A·B[i, j]) for the first column j where ``c_row`` (row i of a claimed C, n
    int32 entries) differs from row i of A·B; None if the whole row is right: O(kn)."""
    n = b.shape[1]
    if c_row.shape != (n,):
        raise ValueError(f"a row of C has {n} int32 entries, got shape {c_row.shape}")
    right = (a[i].astype(np.int64) @ b.astype(np.int64)).astype(np.int32)
    wrong = np.flatnonzero(c_row != right)
    return (int(wrong[0]), int(right[wrong[0]])) if wrong.size else None
