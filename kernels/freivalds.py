"""Freivalds' check that C = A·B, in O(mk + kn + mn) per round (PROTOCOL §8).

Arithmetic is in Z/2^64 with vectors x of uniformly random int32 entries: the
check tests (C − A·B)·x ≡ 0. If C ≠ A·B some row d of D = C − A·B is non-zero,
and since |D| < 2^32 (C is int32 and A·B is exact in int32 for k ≤ 65,536) one of
its entries d_j has 2-adic valuation v ≤ 31. Fix the other entries of x: the x_j
that make d·x ≡ 0 (mod 2^64) form at most one class modulo 2^(64−v) ≥ 2^33, so at
most one of int32's 2^32 consecutive values is among them, and one round falsely
accepts with probability ≤ 2^-32. Two independent rounds give ≤ 2^-64, under the
2^-60 the protocol asks for.

32-bit entries, not 64-bit ones, because every product with x is then a 32×32→64
multiply (``vpmuldq``, one µop on every x86 with AVX2) for B·x and C·x; only
A·(B·x) needs full 64-bit products (``vpmullq`` on AVX-512DQ, three 32-bit
multiplies on AVX2). The vectors come from one generator per process, seeded from
the OS (and again in a forked child): they never leave the process, so a prover
cannot know them in advance, and drawing them is one call for raw words.
"""

from __future__ import annotations

import os

import numpy as np
from numba import get_num_threads, njit, prange

from kernels.threads import exclusive
from kernels.validate import check_int8_matrix

FREIVALDS_ROUNDS = 2
FALSE_ACCEPT_LOG2 = -32 * FREIVALDS_ROUNDS

_generator: np.random.Generator | None = None


def _reseed() -> None:
    """Forget the process's generator: the next check seeds a new one from the OS."""
    global _generator
    _generator = None


os.register_at_fork(after_in_child=_reseed)  # a forked child never repeats its parent's x


def random_vectors(rounds: int, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """(rounds, n) int32, every entry uniform over all of int32: the raw words of ``rng``,
    or of this process's OS-seeded generator."""
    global _generator
    gen = rng
    if gen is None:
        gen = _generator
        if gen is None:
            gen = _generator = np.random.default_rng()
    words = gen.bit_generator.random_raw((rounds * n + 1) // 2)
    return words.view(np.int32)[: rounds * n].reshape(rounds, n)


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


# Rows per inner loop. Each product is one vpmullq, each vector element a 64-bit load: a
# row at a time the loop waits on loads (16 bytes of vectors per element for two rounds),
# eight rows share every load and run at the multiplier's rate (16 zmm accumulators:
# twelve rows already spill, four are 1.4x slower).
ROW_BLOCK = 8


@njit(nogil=True, cache=True, inline="always")
def _eight_rows(x: np.ndarray, i: int, v0: np.ndarray, v1: np.ndarray) -> tuple[np.int64, ...]:
    """Rows i…i+7 of x (int8 or int32) · v0, then · v1, in Z/2^64 (int64 products wrap:
    that is the ring's arithmetic). For int32 vectors each product is one vpmuldq; for
    int64 ones (B·x) vpmullq on zmm where the target has AVX-512DQ."""
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
def _one_row(row: np.ndarray, v0: np.ndarray, v1: np.ndarray) -> tuple[np.int64, np.int64]:
    """row · v0 and row · v1 in Z/2^64: the rows after the last whole block of eight."""
    p = q = np.int64(0)
    for j in range(row.shape[0]):
        e = np.int64(row[j])
        p += e * v0[j]
        q += e * v1[j]
    return p, q


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
                s = _eight_rows(x, i, vs[t], vs[t + 1])
                for r in range(ROW_BLOCK):
                    out[t, i + r] = s[r]
                    out[t + 1, i + r] = s[ROW_BLOCK + r]
            else:
                for r in range(i, rows):
                    out[t, r], out[t + 1, r] = _one_row(x[r], vs[t], vs[t + 1])
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
                if _eight_rows(a, i, bx[t], bx[t + 1]) != _eight_rows(c, i, xs[t], xs[t + 1]):
                    bad[blk] = True
            else:
                for r in range(i, m):
                    if _one_row(a[r], bx[t], bx[t + 1]) != _one_row(c[r], xs[t], xs[t + 1]):
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


def freivalds_check(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    rng: np.random.Generator | None = None,
    rounds: int = FREIVALDS_ROUNDS,
    b_transposed: bool = False,
) -> bool:
    """True if C = A·B (false-accept probability ≤ 2^(-33·rounds)).

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
        row = a[i].astype(np.int64) @ b.astype(np.int64)
        wrong = np.flatnonzero(row.astype(np.int32) != c[i])
        if wrong.size:
            return int(i), int(wrong[0])
    return None
