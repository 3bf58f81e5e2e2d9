"""Freivalds' check that C = A·B, in O(mk + kn + mn) per round (PROTOCOL §8).

Arithmetic is in Z/2^64 with uniformly random 64-bit vectors x: the check
tests (C − A·B)·x ≡ 0. If C ≠ A·B some row d of D = C − A·B is non-zero, and
since |D| < 2^32 (C is int32 and A·B is exact in int32 for k ≤ 65,536) each
non-zero entry has 2-adic valuation ≤ 31, so d·x ≡ 0 (mod 2^64) holds with
probability ≤ 2^-33 for one random x. Two independent rounds give a false
accept probability ≤ 2^-66, under the 2^-60 the protocol asks for.
"""

from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

from kernels.validate import check_int8_matrix

FREIVALDS_ROUNDS = 2
FALSE_ACCEPT_LOG2 = -33 * FREIVALDS_ROUNDS


@njit(parallel=True, nogil=True, cache=True)
def _matvec(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """x (int8 or int32; Numba compiles one version per dtype) · v in Z/2^64."""
    rows, cols = x.shape
    out = np.empty(rows, dtype=np.int64)
    for i in prange(rows):
        s = np.int64(0)
        for j in range(cols):
            s += np.int64(x[i, j]) * v[j]
        out[i] = s
    return out


@njit(parallel=True, nogil=True, cache=True)
def _matvecs(x: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """out[t, i] = x[i] · vs[t] in Z/2^64 for every round's vector at once.

    Row i is read from memory once for all rounds (then from L1): C, the
    largest operand, streams through once instead of once per round.
    """
    rows, cols = x.shape
    rounds = vs.shape[0]
    out = np.empty((rounds, rows), dtype=np.int64)
    for i in prange(rows):
        row = x[i]
        for t in range(rounds):
            v = vs[t]
            s = np.int64(0)
            for j in range(cols):
                s += np.int64(row[j]) * v[j]
            out[t, i] = s
    return out


@njit(nogil=True, cache=True, inline="always")
def _row_dots(row: np.ndarray, vs: np.ndarray, out: np.ndarray) -> None:
    """out[t] = row · vs[t] in Z/2^64 for every round t (int64 products wrap: that is the
    ring's arithmetic), vpmullq on zmm where the target has AVX-512DQ.

    An int8 row takes both of the protocol's two rounds in one loop (loaded and
    sign-extended once, ~20 % faster); an int32 row (C) is memory-bound and runs a loop
    per round over the row, which stays in L1.
    """
    cols = row.shape[0]
    if vs.shape[0] == 2 and row.itemsize == 1:
        v0, v1 = vs[0], vs[1]
        s0 = np.int64(0)
        s1 = np.int64(0)
        for j in range(cols):
            e = np.int64(row[j])
            s0 += e * v0[j]
            s1 += e * v1[j]
        out[0] = s0
        out[1] = s1
    else:
        for t in range(vs.shape[0]):
            v = vs[t]
            s = np.int64(0)
            for j in range(cols):
                s += np.int64(row[j]) * v[j]
            out[t] = s


@njit(parallel=True, nogil=True, cache=True)
def _bx_and_cx(b: np.ndarray, c: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B·xs[t] as (rounds, k), C·xs[t] as (m, rounds)) in one parallel region: they are
    independent, and each task takes a row of each, so the threads stay balanced."""
    k = b.shape[0]
    m = c.shape[0]
    rounds = xs.shape[0]
    bx = np.empty((k, rounds), dtype=np.int64)
    cx = np.empty((m, rounds), dtype=np.int64)
    for i in prange(max(k, m)):
        if i < k:
            _row_dots(b[i], xs, bx[i])
        if i < m:
            _row_dots(c[i], xs, cx[i])
    return np.ascontiguousarray(bx.T), cx


@njit(parallel=True, nogil=True, cache=True)
def _any_residual(a: np.ndarray, bx: np.ndarray, cx: np.ndarray) -> bool:
    """Whether A·bx[t] ≠ cx[t] for some row and round: (C − A·B)·x ≢ 0 (mod 2^64)."""
    m = a.shape[0]
    rounds = bx.shape[0]
    bad = np.zeros(m, dtype=np.bool_)
    for i in prange(m):
        res = np.empty(rounds, dtype=np.int64)
        _row_dots(a[i], bx, res)
        for t in range(rounds):
            if res[t] != cx[i, t]:
                bad[i] = True
    return bool(bad.any())


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
    ``b_transposed``), ``c`` is m×n int32. Uses fresh OS randomness unless an
    ``rng`` is given: a prover must not know the vectors in advance.
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
    gen = rng if rng is not None else np.random.default_rng()
    a = np.ascontiguousarray(a)
    c = np.ascontiguousarray(c)
    bb = np.ascontiguousarray(b)
    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    # One independent vector per round, all checked in one pass over each operand.
    xs = np.stack(
        [gen.integers(lo, hi, size=n, dtype=np.int64, endpoint=True) for _ in range(rounds)]
    )
    if b_transposed:
        bx = _matvecs_i8_transposed(bb, xs, get_num_threads())
        cx = np.ascontiguousarray(_matvecs(c, xs).T)
    else:  # B·x and C·x in one parallel region, then the residual rows in a second
        bx, cx = _bx_and_cx(bb, c, xs)
    # int64 products wrap silently in Numba: that is the Z/2^64 arithmetic we want.
    return not _any_residual(a, bx, cx)


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
    gen = rng if rng is not None else np.random.default_rng()
    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    x = np.asarray(gen.integers(lo, hi, size=b.shape[1], dtype=np.int64, endpoint=True))
    residual = _matvec(np.ascontiguousarray(a), _matvec(np.ascontiguousarray(b), x))
    residual -= _matvec(np.ascontiguousarray(c), x)
    for i in np.flatnonzero(residual):
        row = a[i].astype(np.int64) @ b.astype(np.int64)
        wrong = np.flatnonzero(row.astype(np.int32) != c[i])
        if wrong.size:
            return int(i), int(wrong[0])
    return None
